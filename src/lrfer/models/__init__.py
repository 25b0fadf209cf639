"""Networks only: nn.Modules that know nothing about training."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from lrfer.core.errors import UserError


def build_model(cfg: DictConfig, num_classes: int, input_size: int, **kwargs) -> nn.Module:
    """Instantiate the network described by a ``model/`` config node (its ``_target_`` is a builder)."""
    try:
        return instantiate(cfg, num_classes=num_classes, input_size=input_size, **kwargs)
    except UserError:
        raise
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"cannot build model {cfg.get('_target_')}: {cause}") from None
