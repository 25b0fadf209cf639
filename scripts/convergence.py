#!/usr/bin/env python
"""How many epochs / iterations each run needed to reach given validation accuracies.

    python scripts/convergence.py RUN_DIR... [--stage gan] [--thresholds 0.5 0.6] [--of-best 0.95 0.99]
        [--train-count N] [--curves] [--out FILE.md]

Reads ``val_history`` (one entry per validated epoch: stage, epoch, monitor, score = the stage's monitored
validation metric, by default the mean accuracy over the stage's degradations, per-degradation rows) from
each run's ``checkpoints/last.pt``
(``torch.load(weights_only=True)``) and prints a markdown table: per run (named by its folder), the
first epoch of the stage at which the score reached each threshold, with the iterations of the stage up
to then (``epoch * batches per epoch``). ``--thresholds`` are absolute accuracies; ``--of-best`` are
fractions of the best score any of the given runs reached in that stage (the paper's "iterations to
reach the same performance", Table 2 of FSR-FER). Batches per epoch = training faces //
``trainer.batch_size`` of the run's ``.hydra/config.yaml``, the training faces being ``--train-count``,
else ``dataset.num_train`` (synthetic), else inferred from the checkpoint (iterations so far / epochs so
far, exact for ``degrade.train_mode=random``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lrfer.core.errors import UserError, exit_on_user_error


@dataclass
class RunCurve:
    name: str
    batches_per_epoch: int
    history: list[dict]  # val_history entries of the selected stage, in epoch order

    def first_reaching(self, threshold: float) -> int | None:
        for entry in self.history:
            if entry["score"] >= threshold - 1e-12:
                return int(entry["epoch"])
        return None

    @property
    def best(self) -> float:
        return max((e["score"] for e in self.history), default=float("nan"))


def batches_per_epoch(run_dir: Path, state: dict, train_count: int | None) -> int:
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"{run_dir} has no .hydra/config.yaml: give lrfer run folders")
    cfg = OmegaConf.load(cfg_file)
    batch = int(cfg.trainer.batch_size)
    count = train_count or cfg.dataset.get("num_train")
    if count:
        return max(1, int(count) // batch) if int(count) >= batch else 1
    epochs = sum(int(s.get("epochs", 0)) for s in state.get("summaries", []))
    epochs += int(state.get("summary", {}).get("epochs", 0))
    if epochs <= 0:
        raise UserError(f"{run_dir}: cannot infer the batches per epoch: pass --train-count")
    return max(1, round(int(state["global_step"]) / epochs))


def load_curve(run_dir: Path, stage: str, train_count: int | None) -> RunCurve:
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give run folders of finished (or running) lrfer runs")
    state = torch.load(path, map_location="cpu", weights_only=True)
    history = [e for e in state.get("val_history", []) if e["stage"] == stage]
    if not history:
        stages = sorted({e["stage"] for e in state.get("val_history", [])})
        raise UserError(f"{path} has no validation history for stage {stage!r} (it has {stages})")
    return RunCurve(
        run_dir.name,
        batches_per_epoch(run_dir, state, train_count),
        sorted(history, key=lambda e: e["epoch"]),
    )


def convergence_table(curves: list[RunCurve], thresholds: list[float], of_best: list[float]) -> str:
    """Markdown: one row per run, one column per target accuracy: ``epoch (iterations)`` or ``-``."""
    best_all = max(c.best for c in curves)
    targets = [(f"acc >= {100 * t:.1f}%", t) for t in thresholds]
    targets += [(f"{100 * f:g}% of best ({100 * f * best_all:.1f}%)", f * best_all) for f in of_best]
    header = ["run", "batches/epoch", "epochs", "best val %", "best at epoch", *[t[0] for t in targets]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in curves:
        best_epoch = max(c.history, key=lambda e: e["score"])["epoch"]
        cells = [
            c.name,
            str(c.batches_per_epoch),
            str(c.history[-1]["epoch"]),
            f"{100 * c.best:.2f}",
            str(best_epoch),
        ]
        for _, value in targets:
            epoch = c.first_reaching(value)
            cells.append("-" if epoch is None else f"{epoch} ({epoch * c.batches_per_epoch})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(curves: list[RunCurve]) -> str:
    """Markdown: validation score (%) of every run at every epoch."""
    epochs = sorted({int(e["epoch"]) for c in curves for e in c.history})
    lines = ["| epoch | " + " | ".join(c.name for c in curves) + " |", "|" + "---|" * (len(curves) + 1)]
    for ep in epochs:
        cells = []
        for c in curves:
            score = next((e["score"] for e in c.history if int(e["epoch"]) == ep), None)
            cells.append("" if score is None else f"{100 * score:.2f}")
        lines.append(f"| {ep} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lrfer run folders")
    parser.add_argument(
        "--stage", default="gan", help="the stage whose validation history is read (default gan)"
    )
    parser.add_argument(
        "--thresholds", type=float, nargs="*", default=[], help="absolute accuracies in [0, 1]"
    )
    parser.add_argument(
        "--of-best",
        type=float,
        nargs="*",
        default=[0.9, 0.95, 0.99],
        help="fractions of the best run's score",
    )
    parser.add_argument("--train-count", type=int, default=None, help="training faces per epoch")
    parser.add_argument("--curves", action="store_true", help="also print the score of every epoch")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown to this file too")
    args = parser.parse_args(argv)
    curves = [load_curve(r, args.stage, args.train_count) for r in args.runs]
    text = (
        f"Validation accuracy of stage `{args.stage}`: first epoch (iterations of the stage) reaching it\n\n"
    )
    text += convergence_table(curves, args.thresholds, args.of_best)
    if args.curves:
        text += "\n\nValidation accuracy per epoch (%)\n\n" + curve_table(curves)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
