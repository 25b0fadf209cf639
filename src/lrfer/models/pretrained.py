"""Pretrained weights from a local file (``model.weights=PATH``) for ResNet-family and zoo networks.

FER papers rarely train ResNet-18 from scratch: they start from ImageNet (``model.pretrained=true``,
torchvision's weights) or, more often, from the ResNet-18 pretrained on MS-Celeb-1M that SCN, DAN, EAC and
Emotion-FAN distribute. ``model.weights=PATH`` loads such a file into every ResNet-family network of a run
(baseline, DRGFER's experts and RRN, RA-BN, DA, MSTrain, voting, the ISR/FSR-FER ResNet extractors, and
``zoo`` networks).

What the file may hold (read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings and
containers only; a file of pickled Python objects stops with one line):

* a plain state_dict, or a dict holding it under ``state_dict``, ``model``, ``net`` (or ``method``, an lrfer
  checkpoint) next to other entries (``epoch``, ``arch``, ...);
* keys with a ``module.`` prefix (DataParallel) or any other common prefix (``backbone.``, ``features.``):
  the prefix that makes the most names match the network is removed;
* a classifier of another size (an identity head with thousands of classes, ImageNet's 1000-class head):
  it is dropped and logged. A classifier of the right size is loaded.

Every other tensor of the network (the backbone) must be in the file with the same shape; otherwise the run
stops with one line naming the first missing or mismatched names (a ResNet-50 file given to a ResNet-18).
The one tolerated exception is the stem convolution ``conv1``: a 7x7 stride-2 kernel (ImageNet/MS-Celeb)
cannot serve lrfer's 3x3 stride-1 stems (``model.stem=conv3|conv3_pool``, chosen by ``auto`` below 64 px),
nor another number of input channels, so ``conv1`` then keeps its random initialisation and the log says so
(``model.stem=imagenet`` keeps the file's stem).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from lrfer.core.errors import UserError

log = logging.getLogger(__name__)

#: Keys under which checkpoint files commonly nest their state_dict, in the order they are tried.
NESTED_KEYS = ("state_dict", "model", "net", "method", "model_state_dict", "net_state_dict")

#: How a torch.save file starts: a zip archive's local header, or (legacy format) a pickle of protocol >= 2.
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")

_loads = 0
_cache: dict[tuple, dict[str, torch.Tensor]] = {}


def load_count() -> int:
    """How many times :func:`load_into` has loaded a file in this process (lets a run check that
    ``model.weights`` reached a network)."""
    return _loads


def read_state_dict(path: str | Path, what: str = "model.weights") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file as a flat ``{name: tensor}`` dict (nested dict unwrapped,
    ``module.`` prefixes removed). Every problem is a one-line :class:`UserError`."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"{what}={path}: no such file")
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:  # DRGFER loads one file into 6 networks: read it once
        _cache.clear()
        _cache[key] = _read(file, path, what)
    return dict(_cache[key])


def _read(file: Path, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    with file.open("rb") as f:
        head = f.read(4)
    if not head.startswith(TORCH_SAVE_MAGIC):  # neither torch.save format: say so plainly
        raise UserError(
            f"{what}={file} cannot be read as a PyTorch checkpoint (not a file written by torch.save)"
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for pickled objects, RuntimeError for non-zip files ...
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(
                f"{what}={file} holds pickled Python objects, which lrfer does not load (torch.load "
                "weights_only=True): re-save its tensors with torch.save(model.state_dict(), path)"
            ) from None
        raise UserError(
            f"{what}={file} cannot be read as a PyTorch checkpoint ({type(err).__name__})"
        ) from None
    state = _unwrap(obj)
    if state is None:
        raise UserError(f"{what}={file} holds no state_dict (a dict of tensors, or one under 'state_dict')")
    return {_strip_module(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _unwrap(obj) -> dict | None:
    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            found = _unwrap(inner)
            if found is not None:
                return found
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors or None


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key.replace(".module.", ".")


def best_prefix(source: Iterable[str], target: Iterable[str]) -> str:
    """The prefix of the file's names whose removal makes the most of them names of the network."""
    target = set(target)
    counts: Counter[str] = Counter()
    for key in source:
        for name in target:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                counts[key[: len(key) - len(name)]] += 1
    if not counts:
        return ""
    return max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_into(
    net: nn.Module,
    path: str | Path,
    *,
    head: Iterable[str] = ("fc.",),
    stem: Iterable[str] = ("conv1.weight",),
    what: str = "model.weights",
    source: Mapping[str, torch.Tensor] | None = None,
    label: str | None = None,
) -> dict[str, list[str]]:
    """Load the file at ``path`` into ``net`` (see the module docstring).

    ``head``: name prefixes of ``net``'s classifier (loaded when the shapes match, dropped otherwise);
    ``stem``: names that may differ in shape (the stem convolution: kept as initialised, logged). Returns
    ``{"loaded", "dropped_head", "stem_kept", "unused"}`` name lists.
    """
    global _loads
    label = label or type(net).__name__
    file_state = dict(source) if source is not None else read_state_dict(path, what)
    own = net.state_dict()
    prefix = best_prefix(file_state, own)
    state = {k[len(prefix) :]: v for k, v in file_state.items() if k.startswith(prefix)}
    loaded, missing, mismatched, dropped, stem_kept = _match(own, state, tuple(head), tuple(stem))
    if missing or mismatched:
        raise _misfit(missing, mismatched, f"{what}={path}", label)
    net.load_state_dict(loaded, strict=False)
    unused = sorted(set(state) - set(loaded) - {n.split(" ")[0] for n in dropped + stem_kept})
    _loads += 1
    log.info(
        "%s=%s: loaded %d tensors into %s%s",
        what,
        path,
        len(loaded),
        label,
        f" (file prefix {prefix!r} removed)" if prefix else "",
    )
    _log_partial(what, dropped, stem_kept, unused)
    return {"loaded": sorted(loaded), "dropped_head": dropped, "stem_kept": stem_kept, "unused": unused}


def _match(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    head: tuple[str, ...],
    stem: tuple[str, ...],
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str], list[str]]:
    """Pair the network's tensors with the file's: (loaded, missing, mismatched, dropped head, kept stem)."""
    loaded: dict[str, torch.Tensor] = {}
    missing, mismatched, dropped, stem_kept = [], [], [], []
    for name, tensor in own.items():
        is_head = any(name.startswith(p) for p in head)
        src = state.get(name)
        if src is None:
            if name.endswith("num_batches_tracked"):
                continue
            (dropped if is_head else missing).append(name)
        elif src.shape != tensor.shape:
            shapes = f"{name} ({_shape(src)} in the file, {_shape(tensor)} here)"
            (dropped if is_head else stem_kept if name in stem else mismatched).append(shapes)
        else:
            loaded[name] = src.to(tensor.dtype)
    return loaded, missing, mismatched, dropped, stem_kept


def _misfit(missing: list[str], mismatched: list[str], given: str, label: str) -> UserError:
    """The one-line error for a file whose tensors do not fit the network."""
    parts = []
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        parts.append(f"missing {', '.join(missing[:3])}{more}")
    if mismatched:
        more = f" and {len(mismatched) - 2} more" if len(mismatched) > 2 else ""
        parts.append(f"shape mismatch {'; '.join(mismatched[:2])}{more}")
    return UserError(
        f"{given} does not fit this {label} ({'; '.join(parts)}): give a checkpoint of "
        "the same architecture (model.arch)"
    )


def _log_partial(what: str, dropped: list[str], stem_kept: list[str], unused: list[str]) -> None:
    """Log what of the network or the file was not loaded."""
    if dropped:
        log.info(
            "%s: classifier not loaded (other size, kept freshly initialised): %s", what, "; ".join(dropped)
        )
    if stem_kept:
        log.warning(
            "%s: the run's stem differs from the file's (%s): conv1 keeps its random initialisation, the "
            "rest of the network is loaded (model.stem=imagenet would use the file's 7x7 stride-2 conv1)",
            what,
            "; ".join(stem_kept),
        )
    if unused:
        log.info(
            "%s: %d tensors of the file are not used (e.g. %s)", what, len(unused), ", ".join(unused[:3])
        )


def torchvision_view(backbone: nn.Module, fc: nn.Module) -> nn.Module:
    """A module whose parameter names are torchvision's (``conv1.weight`` ... ``fc.weight``) and whose
    tensors are those of ``backbone`` (a torchvision ResNet with ``fc = Identity``) and the classifier
    ``fc``, shared, not copied: loading into the view loads into the network."""
    view = nn.Module()
    for name, child in backbone.named_children():
        if name != "fc":
            view.add_module(name, child)
    view.add_module("fc", fc)
    return view


def load_resnet_weights(
    net: nn.Module, path: str | Path, what: str = "model.weights", label: str | None = None
) -> dict[str, list[str]]:
    """:func:`load_into` for lrfer's ResNet wrappers (``backbone`` + ``fc``), with torchvision's names."""
    view = torchvision_view(net.backbone, net.fc)
    return load_into(view, path, what=what, label=label or type(net.backbone).__name__)
