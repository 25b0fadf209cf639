"""The shared trainer: metrics.json, checkpoints, resume, stages and steps, validation-only selection."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_RESNET, compose_cfg, run_cli, tiny

from lrfer.core.errors import UserError
from lrfer.data.pipeline import FaceDataModule
from lrfer.engine.metrics import named_metric
from lrfer.engine.run import run_training


def _run(tmp, run_dir, *extra):
    cfg = compose_cfg(*tiny(tmp, *extra))
    return run_training(cfg, run_dir)


def test_metrics_json_schema(tmp_path):
    metrics = _run(tmp_path, tmp_path / "run", "degrade.test=[x1,x4,14px]")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["method"] == "baseline" and on_disk["dataset"] == "synthetic"
    assert list(on_disk["test"]) == ["x1", "x4", "14px"]
    for row in on_disk["test"].values():
        assert set(row) >= {"acc", "balanced_acc", "n", "confusion"}
        assert 0.0 <= row["acc"] <= 1.0 and row["n"] == 70
        assert sum(map(sum, row["confusion"])) == 70
    assert list(on_disk["val"]) == ["x1"]
    assert on_disk["train"]["loss"] > 0 and on_disk["train"]["stages"]["train"]["epochs"] == 2
    assert on_disk["test"] == metrics["test"]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_checkpoints_load_with_weights_only_and_leave_no_temporary_files(tmp_path):
    _run(tmp_path, tmp_path / "run")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.pt", "last.pt"]
    last = torch.load(ckpt_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and "method" in last and "optimizers" in last


def test_extending_a_finished_run_past_an_lr_drop_equals_training_it_that_long(tmp_path):
    """``trainer.max_epochs=1``, then ``trainer.resume=true`` with 3: the step schedule (lr x 0.1 every 2
    epochs) continues where it stopped, so the lr drops after epoch 2 as in a 3-epoch run, and the weights,
    Adam state, learning rate and metrics are those of the 3-epoch run (the tests/test_resume.py tests
    interrupt a run instead)."""
    step = (TINY_RESNET, "trainer.scheduler.name=step", "trainer.scheduler.step_size=2")
    straight = _run(tmp_path, tmp_path / "a", *step, "trainer.max_epochs=3")
    _run(tmp_path, tmp_path / "b", *step, "trainer.max_epochs=1")
    resumed = _run(tmp_path, tmp_path / "b", *step, "trainer.max_epochs=3", "trainer.resume=true")
    assert resumed["test"] == straight["test"] and resumed["train"] == straight["train"]
    assert resumed["val"] == straight["val"]
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(0.0003)  # dropped once
    assert (
        b["optimizers"]["main"]["param_groups"][0]["lr"] == a["optimizers"]["main"]["param_groups"][0]["lr"]
    )
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    moments = [
        (a["optimizers"]["main"]["state"][i], b["optimizers"]["main"]["state"][i])
        for i in a["optimizers"]["main"]["state"]
    ]
    assert all(torch.equal(x[k], y[k]) for x, y in moments for k in x)


def test_cpu_runs_repeat_bit_for_bit(tmp_path):
    first = _run(tmp_path, tmp_path / "a", "trainer.max_epochs=1")
    second = _run(tmp_path, tmp_path / "b", "trainer.max_epochs=1")
    assert first["test"] == second["test"] and first["train"] == second["train"]


def test_selection_and_the_objective_use_named_validation_metrics(tmp_path):
    metrics = _run(
        tmp_path,
        tmp_path / "run",
        "trainer.max_epochs=1",
        "degrade.val=[x1,x4]",
        "trainer.monitor=x4/balanced_acc",
    )
    val = metrics["val"]
    objective = metrics["objective"]  # default: mean validation accuracy over degrade.val
    assert objective == {"name": "acc", "split": "val", "over": ["x1", "x4"], "value": objective["value"]}
    assert objective["value"] == pytest.approx((val["x1"]["acc"] + val["x4"]["acc"]) / 2)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["objective"] == objective
    history = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["val_history"]
    assert [h["monitor"] for h in history] == ["x4/balanced_acc"]
    assert history[0]["score"] == history[0]["val"]["x4"]["balanced_acc"]
    assert named_metric(val, "x4/balanced_acc") == val["x4"]["balanced_acc"]
    assert named_metric(val, "balanced_acc") == pytest.approx(
        (val["x1"]["balanced_acc"] + val["x4"]["balanced_acc"]) / 2
    )


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("objective=x8/acc", "x8 is not a validated degradation"),
        ("objective=a/b/c", "give <metric>"),
        ("trainer.monitor=x3/acc", "x3 is not a validated degradation"),
    ],
)
def test_unknown_metric_names_are_user_errors_before_training(tmp_path, override, needle):
    with pytest.raises(UserError, match=needle):
        _run(tmp_path, tmp_path / "run", override)


def test_a_metric_the_validation_does_not_report_is_a_user_error():
    rows = {"x1": {"acc": 0.5, "balanced_acc": 0.4, "n": 10}}
    with pytest.raises(UserError, match="reports no 'rrn_acc'; it reports \\['acc', 'balanced_acc'\\]"):
        named_metric(rows, "rrn_acc")
    with pytest.raises(UserError, match="reports no 'n'"):
        named_metric(rows, "n")


def test_resume_without_a_previous_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"last\.pt"):
        _run(tmp_path, tmp_path / "new", "trainer.resume=true")


def test_test_split_is_only_touched_after_training(tmp_path, monkeypatch):
    seen = []
    original = FaceDataModule.eval_batches

    def spy(self, split, deg, need_hr=False):
        seen.append(split)
        return original(self, split, deg, need_hr)

    monkeypatch.setattr(FaceDataModule, "eval_batches", spy)
    _run(tmp_path, tmp_path / "run", "degrade.test=[x1,x2]")
    first_test = seen.index("test")
    assert all(s == "val" for s in seen[:first_test]) and seen[first_test:] == ["test", "test"]


def test_stages_steps_and_their_degradations(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "+method.critic_lr=0.25", "method.epochs=2", "trainer.max_epochs=3"))
    cfg.method._target_ = "toy_methods.TwoStageToy"
    from lrfer.engine.resolve import resolve
    from lrfer.engine.run import build_parts
    from lrfer.engine.trainer import Trainer

    spec = resolve(cfg, tmp_path / "run")
    parts = build_parts(spec)
    trainer = Trainer(spec, parts.method, parts.datamodule)
    summaries = trainer.fit()
    calls = parts.method.calls
    assert [s.name for s in summaries] == ["teacher", "student"]
    assert [s.epochs for s in summaries] == [2, 3]  # stage epochs, capped by trainer.max_epochs
    assert {c[2] for c in calls if c[0] == "teacher"} == {(1.0,)}
    assert {c[2] for c in calls if c[0] == "student"} == {(2.0,)}
    student_steps = [c[1] for c in calls if c[0] == "student"]
    assert student_steps[:4] == ["critic", "student", "critic", "student"]
    assert "loss_critic" in summaries[1].losses and "critic_out" in summaries[1].losses
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["optimizers"]["critic"]["param_groups"][0]["lr"] == 0.25
    assert not any(p.requires_grad for p in parts.method.teacher.parameters())
    rows = trainer.evaluate("test", ["x1", "x2"])
    assert rows["x1"]["is_x1"] == 1.0 and rows["x2"]["is_x1"] == 0.0


def test_a_diverging_loss_stops_with_a_clear_message(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path))
    cfg.method._target_ = "toy_methods.Diverging"
    with pytest.raises(UserError, match="learning rate"):
        run_training(cfg, tmp_path / "run")


@pytest.mark.parametrize(
    ("options", "lr"),
    [
        (["trainer.scheduler.name=none"], 3e-3),
        (["trainer.scheduler.name=step", "trainer.scheduler.step_size=1"], 3e-5),  # x 0.1 twice
        (["trainer.scheduler.name=step", "trainer.scheduler.step_size=2"], 3e-4),  # x 0.1 once
        (["trainer.scheduler.name=multistep", "trainer.scheduler.milestones=[1]"], 3e-4),
        (["trainer.scheduler.name=exponential", "trainer.scheduler.gamma=0.5"], 7.5e-4),  # x 0.5 twice
        (["trainer.scheduler.name=cosine", "trainer.scheduler.min_lr=1e-4"], 1e-4),  # the end of its 2 epochs
    ],
    ids=["none", "step1", "step2", "multistep", "exponential", "cosine"],
)
def test_every_scheduler_steps_once_per_epoch(tmp_path, options, lr):
    """Two epochs at trainer.optimizer.lr=0.003: the learning rate the optimiser holds at the end."""
    extra = [TINY_RESNET, "trainer.max_epochs=2", "dataset.num_train=56", *options]
    _run(tmp_path, tmp_path / "run", *extra)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(lr, rel=1e-9)


@pytest.mark.parametrize("monitor", ["val_acc", "train_acc"])
def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(monitor):
    from omegaconf import OmegaConf

    from lrfer.engine.optim import EpochScheduler

    cfg = OmegaConf.create(
        {"name": "plateau", "monitor": monitor, "factor": 0.5, "patience": 1, "min_lr": 0.0}
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = EpochScheduler(opt, cfg, epochs=10)
    lrs = []
    for acc in (0.5, 0.6, 0.6, 0.55, 0.6, 0.6):
        other = 1.0 - acc  # the metric it does not watch, improving whenever the watched one does not
        sched.step(*((acc, other) if monitor == "val_acc" else (other, acc)))
        lrs.append(opt.param_groups[0]["lr"])
    # best 0.6 at the 2nd epoch; the 3rd and 4th bring nothing better (2 > patience): x 0.5; again
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    sched.step(None, None)  # an epoch without the metric (no validation that epoch): no step
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


@pytest.mark.parametrize(
    "option",
    [
        "trainer.optimizer.name=lion",
        "trainer.scheduler.name=wavy",
        "trainer.device=tpu",
        "trainer.precision=fp8",
        "dataset.sampler=odd",
    ],
)
def test_unknown_options_are_user_errors(tmp_path, option):
    with pytest.raises(UserError):
        _run(tmp_path, None, option, "trainer.max_epochs=1")


def test_channels_last_true_with_bf16_trains_on_the_cpu_as_documented(tmp_path):
    """`trainer.channels_last=true dataset.on_device=false` as documented, not quoted (issue 17)."""
    run_dir = tmp_path / "run"
    small = ["dataset.num_train=28", "dataset.num_val=14", "dataset.num_test=14", "degrade.test=[x1]"]
    overrides = ["trainer.channels_last=true", "trainer.precision=bf16", "dataset.on_device=false"]
    proc = run_cli(
        ["train.py", *tiny(tmp_path, "trainer.max_epochs=1", *small), *overrides, f"hydra.run.dir={run_dir}"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bf16 autocast, channels_last=true" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["x1"]["n"] == 14


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_decay_norm_and_bias_false_exempts_vectors_from_weight_decay(name):
    """``decay_norm_and_bias=false`` (the FSR-FER extractor recipe) splits the parameters into two groups:
    weight decay on the matrices only (a regression: the grouped parameters once reached the fused check)."""
    from omegaconf import OmegaConf

    from lrfer.engine.optim import build_optimizer

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    cfg = OmegaConf.merge(
        compose_cfg().trainer.optimizer, {"name": name, "weight_decay": 0.05, "decay_norm_and_bias": False}
    )
    opt = build_optimizer(net.parameters(), cfg)
    decays = [(g["weight_decay"], sorted(p.dim() for p in g["params"])) for g in opt.param_groups]
    assert decays == [(0.05, [2, 4]), (0.0, [1, 1, 1, 1])]
    for p in net.parameters():  # one step runs with the two groups
        p.grad = torch.ones_like(p)
    opt.step()


def test_a_resume_with_another_learning_rate_applies_it_with_a_log_line(tmp_path, caplog):
    _run(tmp_path, tmp_path / "run", "trainer.max_epochs=1", "trainer.scheduler.name=none")
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert stored["settings"]["main"]["optimizer"]["lr"] == 0.003
    with caplog.at_level("WARNING"):
        _run(
            tmp_path,
            tmp_path / "run",
            "trainer.max_epochs=2",
            "trainer.resume=true",
            "trainer.scheduler.name=none",
            "trainer.optimizer.lr=0.5",
        )
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert [g["lr"] for g in last["optimizers"]["main"]["param_groups"]] == [0.5]
    assert last["settings"]["main"]["optimizer"]["lr"] == 0.5
    assert "trainer.optimizer.lr=0.5 (the run used 0.003)" in caplog.text


def test_a_resume_with_another_scheduler_type_is_refused_in_one_line(tmp_path):
    _run(tmp_path, tmp_path / "run", "trainer.max_epochs=1", "trainer.scheduler.name=cosine")
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    refused = r"cannot resume stage train, step main with trainer.scheduler.name=exponential "
    refused += r"\(the run used cosine\)"
    with pytest.raises(UserError, match=refused):
        _run(
            tmp_path,
            tmp_path / "run",
            "trainer.max_epochs=2",
            "trainer.resume=true",
            "trainer.scheduler.name=exponential",
        )
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_progress_lines_come_once_per_interval_and_never_after_the_last_step(caplog):
    from lrfer.engine.trainer import progress_lines

    ticks = iter(range(0, 1000, 25))  # 25 s per step
    with caplog.at_level("INFO", logger="lrfer.engine.trainer"):
        items = list(progress_lines(range(10), 10, "[train] epoch 1/3", 60.0, clock=lambda: next(ticks)))
    assert items == list(range(10))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(": step ")[1].split(" ")[0] for line in lines] == ["3/10", "6/10", "9/10"]
    assert lines[0].startswith("[train] epoch 1/3: step 3/10 (30%)")


def test_training_without_a_terminal_logs_progress_lines(tmp_path, caplog):
    with caplog.at_level("INFO", logger="lrfer.engine.trainer"):
        _run(
            tmp_path,
            tmp_path / "run",
            "trainer.max_epochs=1",
            "trainer.progress=false",
            "trainer.progress_every_s=1e-9",
        )
    steps = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert steps[0].startswith("[train] epoch 1/1: step 1/5") and len(steps) == 4  # not after the last step
