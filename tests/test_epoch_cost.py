"""scripts/epoch_cost.py: CPU seconds per epoch from three short runs whose fixed costs cancel out."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

from lrfer.core.errors import UserError
from lrfer.report.findings import load_findings_protocol, plan_runs


def test_the_fixed_costs_cancel_and_an_epoch_is_its_steps_plus_its_validation_faces():
    # A: 10 steps and 32 validation faces cost 70 s of which 20 are fixed; B: 30 steps; C: 352 faces
    cpu = {"A": 20 + 10 * 4.0 + 32 * 0.25, "B": 20 + 30 * 4.0 + 32 * 0.25, "C": 20 + 10 * 4.0 + 352 * 0.25}
    cost = load_script("epoch_cost").epoch_cost(cpu, [10, 30], [32, 352], steps_per_epoch=94, num_val=500)
    assert cost["cpu_s_per_step"] == pytest.approx(4.0) and cost["cpu_s_per_val_face"] == pytest.approx(0.25)
    assert cost["cpu_s_per_epoch"] == pytest.approx(94 * 4.0 + 500 * 0.25)


def test_runs_whose_cpu_time_does_not_grow_stop_with_one_line():
    with pytest.raises(UserError, match="do not grow with their size"):
        load_script("epoch_cost").epoch_cost({"A": 50.0, "B": 49.0, "C": 60.0}, [10, 30], [32, 352], 94, 500)


def test_overrides_may_follow_the_options_as_the_usage_line_shows():
    args = load_script("epoch_cost").parse_args(["fsrfer", "--epochs", "2", "dataset.num_train=32"])
    assert (args.run, args.epochs, args.overrides) == ("fsrfer", 2, ["dataset.num_train=32"])


def test_a_key_prices_the_stages_it_scales_with_the_epochs_the_method_gives_them():
    """FSR-FER at the protocol's plan: one extractor epoch per unit of method.extractor_epochs, and one unit
    of schedule_scale is the paper's 116 pre-training and 435 GAN epochs (the method's stages, not a copy of
    its numbers here)."""
    script = load_script("epoch_cost")
    protocol = load_findings_protocol(REPO / "experiments" / "findings" / "protocol.yaml")
    keys = script.priced_keys(protocol, "fsrfer")
    assert keys == ["method.extractor_epochs", "method.schedule_scale"]
    overrides = plan_runs(protocol, ["fsrfer"], 1)[("fsrfer", 0)]
    per_unit = script.epochs_per_unit(overrides, keys)
    assert per_unit == {
        "method.extractor_epochs": {"extractor": 1.0},
        "method.schedule_scale": {"pretrain": 116.0, "gan": 435.0},
    }


def test_a_keys_unit_cost_sums_its_stages_epochs_times_their_measured_cost():
    script = load_script("epoch_cost")
    per_unit = {"k": {"pretrain": 116.0, "gan": 435.0}, "e": {"extractor": 1.0}}
    costs = script.stage_costs(
        [
            {
                "stage": "extractor",
                "epoch": 1,
                "score": 0.1,
                "cpu_s": 9.0,
            },  # the first epoch pays the warm-up
            {"stage": "extractor", "epoch": 2, "score": 0.2, "cpu_s": 5.0},
            {"stage": "pretrain", "epoch": 2, "score": 0.2, "cpu_s": 100.0},
            {"stage": "gan", "epoch": 2, "score": 0.2, "cpu_s": 150.0},
        ]
    )
    assert costs == {"extractor": 5.0, "pretrain": 100.0, "gan": 150.0}
    assert script.unit_costs(per_unit, costs) == {"k": 116 * 100.0 + 435 * 150.0, "e": 5.0}
    with pytest.raises(UserError, match=r"stage\(s\) \['gan'\] recorded no validated epoch"):
        script.unit_costs(per_unit, {"extractor": 5.0, "pretrain": 100.0})
    with pytest.raises(UserError, match="records no epoch's CPU seconds"):
        script.stage_costs([{"stage": "gan", "epoch": 1, "score": 0.2}])


@pytest.mark.slow
def test_a_run_of_several_stages_is_priced_from_its_own_history_and_reused_when_run_again(tmp_path, capsys):
    """End to end on tiny faces: one FSR-FER run, each stage capped at 2 epochs; every stage is priced at
    its last epoch's recorded CPU seconds, each key at those costs times the method's epochs per unit; a
    second call trains nothing."""
    script = load_script("epoch_cost")
    argv = ["fsrfer", "--epochs", "2", "--out", str(tmp_path), "dataset.num_train=32", "dataset.num_val=16"]
    argv += ["dataset.num_test=16", "trainer.batch_size=16", "dataset.image_size=32", "degrade.input_size=32"]
    first = script.main(argv)
    history = script.validation_history(tmp_path / "fsrfer" / "stages2")
    last = {entry["stage"]: entry["cpu_s"] for entry in history}
    assert first["stage_cpu_s_per_epoch"] == pytest.approx(last, abs=0.01)
    per_unit = first["stage_epochs_per_unit"]["method.schedule_scale"]
    assert per_unit == {"pretrain": 116.0, "gan": 435.0}
    assert first["cpu_s_per_unit"]["method.schedule_scale"] == pytest.approx(
        116 * last["pretrain"] + 435 * last["gan"], rel=1e-3
    )
    capsys.readouterr()
    assert script.main(argv)["stage_cpu_s_per_epoch"] == first["stage_cpu_s_per_epoch"]
    assert "stages: measured earlier" in capsys.readouterr().out
