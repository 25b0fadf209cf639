"""scripts/epoch_cost.py: CPU seconds per epoch from three short runs whose fixed costs cancel out."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

from lrfer.core.errors import UserError
from lrfer.report.findings import load_findings_protocol


def test_the_fixed_costs_cancel_and_an_epoch_is_its_steps_plus_its_validation_faces():
    # A: 10 steps and 32 validation faces cost 70 s of which 20 are fixed; B: 30 steps; C: 352 faces
    cpu = {"A": 20 + 10 * 4.0 + 32 * 0.25, "B": 20 + 30 * 4.0 + 32 * 0.25, "C": 20 + 10 * 4.0 + 352 * 0.25}
    cost = load_script("epoch_cost").epoch_cost(cpu, [10, 30], [32, 352], steps_per_epoch=94, num_val=500)
    assert cost["cpu_s_per_step"] == pytest.approx(4.0) and cost["cpu_s_per_val_face"] == pytest.approx(0.25)
    assert cost["cpu_s_per_epoch"] == pytest.approx(94 * 4.0 + 500 * 0.25)


def test_runs_whose_cpu_time_does_not_grow_stop_with_one_line():
    with pytest.raises(UserError, match="do not grow with their size"):
        load_script("epoch_cost").epoch_cost({"A": 50.0, "B": 49.0, "C": 60.0}, [10, 30], [32, 352], 94, 500)


def test_only_a_one_stage_run_is_measured():
    protocol = load_findings_protocol(REPO / "experiments" / "findings" / "protocol.yaml")
    assert load_script("epoch_cost").epoch_key(protocol, "voting_soft") == "method.epochs"
    with pytest.raises(UserError, match=r"run drgfer has 2 priced stages .*: this measures one-stage runs"):
        load_script("epoch_cost").epoch_key(protocol, "drgfer")
