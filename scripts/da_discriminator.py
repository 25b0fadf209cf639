#!/usr/bin/env python
"""Is a DA run's resolution discriminator alive? Its first layer's units on the run's own training faces.

    python scripts/da_discriminator.py RUN_DIR [--checkpoint last|best] [--faces 300] [--batches 6]

Rebuilds the run (its ``.hydra/config.yaml``, ``--faces`` training faces drawn as the run drew them), loads
the checkpoint, passes ``--batches`` training batches through the network's pooled features and the
discriminator in evaluation mode, and prints one JSON line:

* ``units_ever_active``: the fraction of the first hidden layer's units above zero for at least one face,
  computed as training computes them (a BatchNorm with each batch's own statistics; the rest of the
  discriminator, and ``domain_accuracy``, in evaluation mode). A dead discriminator (Ganin &
  Lempitsky's dropout MLP under Adam, DA's default before 2026-12-07) has almost none: it passes no
  gradient back, and DA trains as MSTrain;
* ``active_fraction``: the mean fraction of those units above zero per face;
* ``domain_accuracy``: how often the discriminator names the face's resolution (chance: 1 / domains). Near
  chance is what DA aims at once training has made the features resolution-invariant; it says nothing
  about a dead discriminator on its own, hence the two values above;
* ``feature_norm_by_domain``: the mean norm of the pooled features at each resolution.

Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra.utils import get_class

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.engine.loading import load_method_weights, load_run_config
from lrfer.engine.run import build_parts
from lrfer.methods.da import DomainAdversarial


def units_as_trained(layers: list[torch.nn.Module], features: torch.Tensor) -> torch.Tensor:
    """The first hidden layer's pre-ReLU values of one training batch as training computes them: a
    BatchNorm normalises with the batch's own statistics (its running ones untouched)."""
    hidden = layers[0](features)
    if isinstance(layers[1], torch.nn.BatchNorm1d):
        bn = layers[1]
        hidden = torch.nn.functional.batch_norm(hidden, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return hidden


def discriminator_health(run_dir: Path, checkpoint: str, faces: int, batches: int) -> dict:
    """The values the module docstring lists, for the run in ``run_dir``."""
    cfg = load_run_config(run_dir)
    target = get_class(str(cfg.method._target_)) if cfg.method.get("_target_") else None
    if not (isinstance(target, type) and issubclass(target, DomainAdversarial)):
        raise UserError(f"{run_dir} is a method={cfg.method.get('name')} run, not a DA run (method=da)")
    cfg.dataset.num_train = faces
    parts = build_parts(cfg)
    method = parts.method
    meta = load_method_weights(method, run_dir, checkpoint)
    method.eval()
    layers = list(method.discriminator.layers)
    features, domains = [], []
    degradations = parse_degradations(method.stages()[0].train_degrade)
    with torch.no_grad():
        for index, batch in enumerate(parts.datamodule.train_batches(degradations, seed=0)):
            if index == batches:
                break
            features.append(method.net.features(batch["image"]))
            domains.append(method.resolutions.index(batch["factor"]))
        pooled, domain = torch.cat(features), torch.cat(domains)
        hidden = torch.cat([units_as_trained(layers, f) for f in features]) > 0
        accuracy = (method.discriminator(pooled).argmax(dim=1) == domain).float().mean()
    labels = method.resolutions.labels
    return {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "stage_index": meta.get("stage_index"),
        "epoch": meta.get("epoch"),
        "faces": int(pooled.shape[0]),
        "batch_norm": isinstance(layers[1], torch.nn.BatchNorm1d),
        "hidden_units": int(hidden.shape[1]),
        "units_ever_active": round(hidden.any(dim=0).float().mean().item(), 4),
        "active_fraction": round(hidden.float().mean().item(), 4),
        "domain_accuracy": round(accuracy.item(), 4),
        "chance": round(1 / len(labels), 4),
        "feature_norm_by_domain": {
            label: round(pooled[domain == k].norm(dim=1).mean().item(), 2)
            for k, label in enumerate(labels)
            if bool((domain == k).any())
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a DA run folder (method=da)")
    parser.add_argument("--checkpoint", default="last", choices=["last", "best"])
    parser.add_argument("--faces", type=int, default=300, help="training faces to draw (default 300)")
    parser.add_argument("--batches", type=int, default=6, help="training batches to pass (default 6)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(discriminator_health(args.run_dir, args.checkpoint, args.faces, args.batches)))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
