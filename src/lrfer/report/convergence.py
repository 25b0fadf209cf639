"""Has a run group converged? Issue 29's "validation curve flat over its last 20 % of epochs within seed
noise", as one rule for every run of ``scripts/findings.py`` (:data:`CONVERGENCE_RULE`, :func:`convergence`).

A *run group* is one protocol run (e.g. ``efc_10px``) over all its seeds; each training stage of it (DRGFER's
experts and RRN, GME-Net's teacher and student) is judged on its own, and the group has converged when every
stage has.

* **rise** of one seed in one stage of ``E`` epochs: the least-squares line through its validation score (in
  points) at epochs ``E - w .. E``, ``w = ceil(0.2 E)``, times ``w``: the fitted change over the last 20 % of
  the epochs. A fit over all ``w + 1`` points, not the last epoch minus one epoch ``w`` earlier: a single
  epoch's jitter (about one point on 500 validation faces) moves a two-point difference by as much as the
  noise it is compared with.
* **noise**: the standard deviation over seeds of the final validation score: how far apart the seeds end.
* **converged** when ``|mean rise over seeds| <= noise``: the group's mean, the number every verdict of the
  findings table compares, moves over the last 20 % of training by less than the seeds differ. The mean,
  not every seed: one seed's fitted rise carries the validation jitter (its standard error is about a point
  over 5-6 epochs), which the mean divides by the square root of the number of seeds. Undecided (``None``)
  with fewer than two seeds or a stage of a single epoch.

The rule is necessary, not sufficient: a cosine learning rate that ends near zero flattens the end of any
run, long or short. Whether more epochs would help is measured by training longer: :func:`budget_check`
(:data:`BUDGET_RULE`) compares each run group's final validation accuracy at two budgets.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

LAST_FRACTION = 0.2  # "flat over the last 20 % of epochs"

CONVERGENCE_RULE = (
    "Convergence rule (every run group, each stage): a seed's **rise** is the least-squares line through "
    "its validation accuracy at epochs E - w .. E (E the stage's epochs, w = ceil(0.2 E)) times w, the "
    "fitted change over the last 20 % of the epochs; the **noise** is the standard deviation over seeds "
    "of the final validation accuracy. A stage has **converged** when |mean rise over seeds| <= noise, a "
    "run group when all its stages have; n/a with fewer than 2 seeds or a 1-epoch stage. Necessary, not "
    "sufficient: a cosine learning rate flattens the end of every run; whether training longer still "
    "gains is the budget check (protocol.yaml check_fraction; experiments/findings/README.md)."
)


BUDGET_RULE = (
    "Budget check (every run group, each stage, where the runs of a second fraction of the papers' epochs "
    "are there): a seed's **gain** is its final validation accuracy at the longer budget minus that at the "
    "shorter one (the same seed); the **noise** is the standard deviation over seeds of the final validation "
    "accuracy at the shorter budget. The shorter budget has **converged** when the mean gain over seeds is "
    "at most the noise (training longer moves the mean by less than the seeds differ); n/a with fewer than "
    "2 seeds at both budgets. Validation accuracy: choosing a budget is model selection, never on the test."
)


class HasHistory(Protocol):
    """A finished run: its protocol name, seed and validation history (``val_history.json``)."""

    run: str
    seed: int
    history: list[dict]


def window(epochs: int) -> int:
    """``w``: the number of epochs in the last 20 % of ``epochs`` (at least 1)."""
    return max(1, math.ceil(LAST_FRACTION * epochs))


def stage_curves(history: Iterable[dict]) -> dict[str, list[tuple[int, float]]]:
    """Stage -> [(epoch, validation score in points)], sorted by epoch."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for e in history:
        curves.setdefault(e["stage"], []).append((int(e["epoch"]), 100.0 * float(e["score"])))
    return {s: sorted(v) for s, v in curves.items()}


def window_fit(curve: list[tuple[int, float]]) -> tuple[float, float, float] | None:
    """The least-squares line through ``curve``'s points at epochs ``E - w .. E``: (slope in points per
    epoch, mean epoch, mean score); None when fewer than two epochs fall there (a stage of one epoch)."""
    if not curve:
        return None
    last = curve[-1][0]
    points = [(e, s) for e, s in curve if e >= last - window(last)]
    if len(points) < 2:
        return None
    mean_e = statistics.fmean(e for e, _ in points)
    mean_s = statistics.fmean(s for _, s in points)
    sxx = sum((e - mean_e) ** 2 for e, _ in points)
    sxy = sum((e - mean_e) * (s - mean_s) for e, s in points)
    return sxy / sxx, mean_e, mean_s


def fitted_rise(curve: list[tuple[int, float]]) -> float | None:
    """The rise of :func:`window_fit`'s line over the last ``w`` epochs (points); None without a line."""
    fit = window_fit(curve)
    return None if fit is None else fit[0] * window(curve[-1][0])


@dataclass
class Convergence:
    """One stage of one run group: each seed's fitted rise over the last 20 % of the epochs and the seed
    noise, both in accuracy points."""

    run: str
    stage: str
    epochs: int
    rises: list[float]  # per seed with a rise (see fitted_rise)
    noise: float  # std over seeds of the final validation score (nan with one seed)

    @property
    def mean_rise(self) -> float:
        return statistics.fmean(self.rises) if self.rises else math.nan

    @property
    def converged(self) -> bool | None:
        if len(self.rises) < 2 or not math.isfinite(self.noise):
            return None
        return abs(self.mean_rise) <= self.noise


def convergence(records: Iterable[HasHistory]) -> list[Convergence]:
    """One :class:`Convergence` per (run, stage) of ``records``, in the records' order."""
    by_stage: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
    for r in records:
        for stage, curve in stage_curves(r.history).items():
            by_stage.setdefault((r.run, stage), []).append(curve)
    out = []
    for (run, stage), curves in by_stage.items():
        rises = [x for x in (fitted_rise(c) for c in curves) if x is not None]
        finals = [c[-1][1] for c in curves]
        noise = statistics.stdev(finals) if len(finals) > 1 else math.nan
        out.append(Convergence(run, stage, max(c[-1][0] for c in curves), rises, noise))
    return out


def group_converged(conv: Iterable[Convergence]) -> dict[str, bool | None]:
    """Run -> converged in every stage (True), not in some stage (False), or undecided (None)."""
    out: dict[str, bool | None] = {}
    for c in conv:
        before = out.get(c.run, True)
        if before is False or c.converged is False:
            out[c.run] = False
        elif before is None or c.converged is None:
            out[c.run] = None
        else:
            out[c.run] = True
    return out


def verdict_word(converged: bool | None) -> str:
    """ "yes", "no" or "n/a" (fewer than 2 seeds or 1-epoch stages)."""
    return {True: "yes", False: "no", None: "n/a"}[converged]


@dataclass
class BudgetCheck:
    """One stage of one run group at two budgets: each shared seed's gain in final validation accuracy from
    the shorter budget to the longer one, and the seed noise at the shorter one (points)."""

    run: str
    stage: str
    shorter: float  # fractions of the papers' epochs
    longer: float
    gains: list[float]  # per seed trained at both budgets, in seed order
    noise: float  # std over seeds of the final validation score at the shorter budget (nan with one seed)

    @property
    def mean_gain(self) -> float:
        return statistics.fmean(self.gains) if self.gains else math.nan

    @property
    def converged(self) -> bool | None:
        """Whether the shorter budget has converged: training longer gains no more than the seed noise."""
        if len(self.gains) < 2 or not math.isfinite(self.noise):
            return None
        return self.mean_gain <= self.noise


def _finals(records: Iterable[HasHistory]) -> dict[tuple[str, str], dict[int, float]]:
    """(run, stage) -> seed -> the stage's final validation score (points)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        for stage, curve in stage_curves(r.history).items():
            out.setdefault((r.run, stage), {})[r.seed] = curve[-1][1]
    return out


def budget_check(
    shorter: Iterable[HasHistory], longer: Iterable[HasHistory], fractions: tuple[float, float]
) -> list[BudgetCheck]:
    """One :class:`BudgetCheck` per (run, stage) trained at both budgets (``fractions``: shorter, longer),
    in the longer records' order."""
    short, long_ = _finals(shorter), _finals(longer)
    out = []
    for key, at_long in long_.items():
        at_short = short.get(key, {})
        seeds = sorted(set(at_short) & set(at_long))
        if not seeds:
            continue
        gains = [at_long[s] - at_short[s] for s in seeds]
        noise = statistics.stdev(at_short.values()) if len(at_short) > 1 else math.nan
        out.append(BudgetCheck(*key, *fractions, gains, noise))
    return out
