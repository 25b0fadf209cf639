"""The findings' convergence rule (lrfer.report.convergence): a run group's validation curves are flat over
their last 20 % of epochs within the seed noise, on constructed curves."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import yaml
from conftest import run_cli
from PIL import Image

from lrfer.core.errors import UserError
from lrfer.report.convergence import (
    BUDGET_RULE,
    CONVERGENCE_RULE,
    budget_check,
    convergence,
    fitted_rise,
    group_converged,
)
from lrfer.report.findings import (
    Claim,
    ClaimResult,
    Measure,
    RunRecord,
    _convergence_text,
    load_findings_protocol,
    plot_curves,
    with_convergence_notes,
    write_findings,
)


def _record(seed: int, points: list[float], stage: str = "train", run: str = "r") -> RunRecord:
    """A finished run whose validation accuracy (in %) at epochs 1.. is ``points``."""
    history = [{"stage": stage, "epoch": i + 1, "score": p / 100} for i, p in enumerate(points)]
    return RunRecord(run, seed, None, {}, history)


def _plateau(level: float, epochs: int = 25) -> list[float]:
    """Climbing to ``level`` over the first half, then flat at it."""
    half = epochs // 2
    return [level * (i + 1) / half if i < half else level for i in range(epochs)]


def test_a_group_flat_over_its_last_fifth_within_the_seed_noise_is_converged():
    flat = [_record(s, _plateau(level)) for s, level in enumerate((80.0, 82.0, 84.0))]
    (c,) = convergence(flat)
    assert c.rises == [pytest.approx(0.0)] * 3 and c.noise == pytest.approx(2.0)
    assert c.converged is True


def test_a_group_still_climbing_over_its_last_fifth_is_not_converged():
    # one point per epoch, the seeds 0.5 apart: a rise of 5 points over the last 5 of 25 epochs
    climbing = [_record(s, [30.0 + i + 0.5 * s for i in range(25)]) for s in range(3)]
    (c,) = convergence(climbing)
    assert c.rises == [pytest.approx(5.0)] * 3 and c.noise == pytest.approx(0.5)
    assert c.converged is False


def test_a_group_falling_by_more_than_the_seed_noise_is_not_flat_either():
    falling = [_record(s, [90.0 - i + 0.5 * s for i in range(25)]) for s in range(3)]
    assert convergence(falling)[0].converged is False


def test_the_rise_is_the_least_squares_line_over_the_last_fifth_times_its_epochs():
    # 25 epochs: w = 5, the fit runs through epochs 20..25; what came before does not count
    curve = [(e, 0.0 if e < 20 else 50.0 + 0.3 * e) for e in range(1, 26)]
    assert fitted_rise(curve) == pytest.approx(0.3 * 5)
    assert fitted_rise([(1, 50.0)]) is None  # one epoch: no line


def test_one_jittery_epoch_at_the_start_of_the_window_does_not_decide():
    # flat at 80, 82 and 84 %; seed 0 dips by 3 points at epoch 20 (w = 5 epochs before the end): the last
    # epoch minus epoch 20 would be +3 against a noise of 2; the line through epochs 20..25 rises by 1.4
    curves = [_plateau(level) for level in (80.0, 82.0, 84.0)]
    curves[0][19] -= 3.0
    (c,) = convergence([_record(s, curve) for s, curve in enumerate(curves)])
    assert c.rises[0] == pytest.approx(3.0 * 2.5 / 17.5 * 5)
    assert c.converged is True


def test_the_mean_rise_over_seeds_is_compared_with_the_noise_not_every_seed():
    # seeds 0.5 apart at their last epoch (noise 0.5); one rises by +0.6, one falls by -0.6 (each seed's
    # validation jitter is about a point): the group's mean does not move
    up = [80.0] * 20 + [80.0 + 0.12 * i for i in range(1, 6)]
    down = [81.7] * 20 + [81.7 - 0.12 * i for i in range(1, 6)]
    (c,) = convergence([_record(0, up), _record(1, down)])
    assert c.rises == [pytest.approx(0.6), pytest.approx(-0.6)] and c.noise == pytest.approx(
        0.5 / math.sqrt(2)
    )
    assert c.converged is True


def test_one_seed_or_a_one_epoch_stage_is_undecided():
    assert convergence([_record(0, _plateau(80.0))])[0].converged is None
    assert convergence([_record(0, [50.0]), _record(1, [52.0])])[0].converged is None


def test_a_run_group_has_converged_when_every_stage_has():
    flat = [_record(s, _plateau(80.0 + 2 * s), "expert_x1") for s in range(2)]
    climbing = [_record(s, [30.0 + i + 0.5 * s for i in range(25)], "rrn") for s in range(2)]
    other = [_record(s, _plateau(70.0 + 2 * s), run="other") for s in range(2)]
    conv = convergence([*flat, *climbing, *other])
    assert [c.converged for c in conv] == [True, False, True]
    assert group_converged(conv) == {"r": False, "other": True}
    table = _convergence_text(conv)
    assert table.startswith(CONVERGENCE_RULE)
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| r |")}
    assert rows["expert_x1"].endswith("| yes | **no** |") and rows["rrn"].endswith("| no | **no** |")


def test_each_runs_curves_png_says_whether_its_group_converged(tmp_path):
    records = [_record(s, _plateau(80.0 + 2 * s), run="flat") for s in range(2)]
    records += [_record(s, [30.0 + i + 0.5 * s for i in range(25)], run="climbing") for s in range(2)]
    paths = plot_curves(records, tmp_path)
    titles = {p.stem: Image.open(p).text["Title"] for p in paths}
    assert titles["flat"].endswith("converged: yes") and titles["climbing"].endswith("converged: no")
    assert Image.open(paths[0]).text["Description"] == CONVERGENCE_RULE


# -- the budget check: does training longer still gain? -----------------------------------------------------
def _finals_at(finals: list[float], stage: str = "train") -> list[RunRecord]:
    """One run per seed whose validation accuracy ends at ``finals[seed]`` (%) after a climb."""
    return [_record(s, [f - 10.0, f - 5.0, f], stage) for s, f in enumerate(finals)]


def test_a_budget_whose_longer_runs_gain_no_more_than_the_seed_noise_has_converged():
    (c,) = budget_check(_finals_at([80.0, 81.0, 82.0]), _finals_at([80.5, 81.0, 82.5]), (0.5, 1.0))
    assert c.gains == [pytest.approx(0.5), pytest.approx(0.0), pytest.approx(0.5)]
    assert c.noise == pytest.approx(1.0) and (c.shorter, c.longer) == (0.5, 1.0)
    assert c.converged is True


def test_a_budget_whose_longer_runs_gain_more_than_the_seed_noise_has_not_converged():
    # EFC at 10 px: +1.0 and +10.2 points of validation accuracy from 1/2 to 1 against a noise of 0.5
    (c,) = budget_check(_finals_at([47.2, 46.6, 47.6]), _finals_at([48.2, 56.8]), (0.5, 1.0))
    assert c.gains == [pytest.approx(1.0), pytest.approx(10.2)] and c.noise == pytest.approx(0.5, abs=0.01)
    assert c.converged is False


def test_longer_runs_that_score_lower_do_not_make_the_shorter_budget_unconverged():
    (c,) = budget_check(_finals_at([80.0, 81.0]), _finals_at([75.0, 76.0]), (0.5, 1.0))
    assert c.mean_gain == pytest.approx(-5.0) and c.converged is True


def _result(a: str, b: str, measured: bool = True) -> ClaimResult:
    claim = Claim("P", "T", "a > b", Measure(a, ("x1",)), Measure(b, ("x1",)), 90.0, 80.0, note="Paper's.")
    values = {0: 1.0, 1: 2.0} if measured else {}
    return ClaimResult(claim, values, values, 0.0, 0.0, 2 if measured else 0, "holds", claim.note)


def _checks() -> list:
    """Run ``short`` still gains 5 points against a noise of 0.5 from 1/2 to 1; run ``flat`` gains nothing."""
    (short,) = budget_check(_finals_at([47.0, 48.0, 47.5]), _finals_at([52.0, 53.0, 52.5]), (0.5, 1.0))
    (flat,) = budget_check(_finals_at([80.0, 81.0, 82.0]), _finals_at([80.0, 81.0, 82.0]), (0.5, 1.0))
    return [replace(short, run="short"), replace(flat, run="flat")]


def test_a_verdict_on_runs_still_gaining_at_the_longer_budget_says_so_in_its_note():
    (result,) = with_convergence_notes([_result("short", "flat")], [], _checks())
    assert result.note.startswith("Paper's. Budget check: still gaining from 0.5 to 1 of the paper's epochs")
    assert "short +5.0 against a seed noise of 0.5" in result.note and "flat" not in result.note.split("(")[1]


def test_a_verdict_on_runs_that_converged_or_were_not_run_keeps_its_note():
    results = [_result("flat", "flat"), _result("short", "flat", measured=False)]
    converged, not_run = with_convergence_notes(results, [], _checks())
    assert converged.note == "Paper's." and not_run.note == "Paper's."


def test_a_verdict_on_a_group_still_rising_over_its_last_fifth_says_so_in_its_note():
    rising = [_record(s, [30.0 + i + 0.5 * s for i in range(25)], run="short") for s in range(3)]
    flat = [_record(s, _plateau(level), run="flat") for s, level in enumerate((80.0, 82.0, 84.0))]
    (result,) = with_convergence_notes([_result("short", "flat")], convergence(rising + flat), [])
    assert result.note == (
        "Paper's. Convergence: still rising over the last 20 % of its epochs (short +5.0 against a seed "
        "noise of 0.5 points, validation), so the verdict may move with a longer budget."
    )


def test_a_verdict_on_flat_groups_keeps_its_note():
    flat = [_record(s, _plateau(level), run="flat") for s, level in enumerate((80.0, 82.0, 84.0))]
    (result,) = with_convergence_notes([_result("flat", "flat")], convergence(flat), [])
    assert result.note == "Paper's."


def test_the_budget_check_pairs_seeds_and_is_undecided_with_one_seed_at_both_budgets():
    (c,) = budget_check(_finals_at([80.0, 81.0, 82.0]), [_record(2, [70.0, 80.0, 90.0])], (0.5, 1.0))
    assert c.gains == [pytest.approx(8.0)] and c.converged is None
    assert budget_check(_finals_at([80.0]), _finals_at([90.0, 91.0]), (0.5, 1.0))[0].converged is None


def test_the_table_has_a_budget_section_only_with_a_check_fraction(tmp_path):
    checks = budget_check(_finals_at([70.0, 71.0]), _finals_at([78.0, 79.0]), (0.5, 1.0))
    with_check = write_findings([], [], tmp_path / "a", "t", "title", [], checks).read_text()
    assert "## Budget check" in with_check and BUDGET_RULE in with_check
    assert "| r | train | 0.5 -> 1 | +8.0, +8.0 | +8.0 | 0.7 | **no** |" in with_check
    assert "## Budget check" not in write_findings([], [], tmp_path / "b", "t", "title", []).read_text()


@pytest.mark.parametrize(
    ("check", "message"), [("fraction", "must differ from fraction"), (2.0, r"must be in \(0, 1\]")]
)
def test_a_check_fraction_is_a_second_budget_within_the_papers_epochs(tmp_path, check, message):
    protocol = load_findings_protocol("experiments/findings/protocol.yaml")
    protocol["check_fraction"] = protocol["fraction"] if check == "fraction" else check
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    with pytest.raises(UserError, match=message):
        load_findings_protocol(path)


def test_the_estimate_prices_another_fraction_of_the_papers_epochs():
    """``--estimate --fraction 0.25`` against the protocol's fraction 1: GME-Net's teacher and student priced
    for 25 epochs each against the paper's 100."""
    full, quarter = (
        json.loads(run_cli(["scripts/findings.py", "--estimate", *f]).stdout.strip().splitlines()[-1])
        for f in (["--fraction", "1"], ["--fraction", "0.25"])
    )
    assert (full["fraction"], quarter["fraction"]) == (1.0, 0.25)
    assert full["cpu_h"]["gmenet"] == pytest.approx(4 * quarter["cpu_h"]["gmenet"], rel=0.01)
    refused = run_cli(["scripts/findings.py", "--estimate", "--fraction", "0"])
    assert refused.returncode != 0 and "--fraction must be in (0, 1]" in refused.stderr
