"""DRGFER: Assign / Gather routing (eq. 4-7), binarisation (eq. 3), routing modes, Mean / Max fusion,
rrn_acc, stages and restore-best, metrics.json, and lrfer-predict on faces of mixed sizes."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, compose_cfg, method_options, tiny
from multires_toys import FixedLogits, MarkerRouter, SnapshotDRGFER, TaggedExpert
from omegaconf import OmegaConf
from PIL import Image

from lrfer.core.errors import UserError
from lrfer.engine.run import method_context, run_training
from lrfer.methods.base import Stage
from lrfer.methods.drgfer import DRGFER
from lrfer.methods.rabn import ResolutionAwareBNMethod
from lrfer.methods.resolution import ResolutionSet, build_network
from lrfer.models.mrafer import MRAFER, assign, binarize, fuse_max, fuse_mean, gather

TINY_MODEL = "model._target_=multires_toys.tiny_classifier"


def _context(*overrides):
    return method_context(compose_cfg("method=drgfer", "dataset.image_size=32", *overrides))


def _marked_images(ids, markers):
    """Images whose pixel [0, 0, 0] is the sample's id and [0, 0, 1] its resolution marker."""
    x = torch.zeros(len(ids), 3, 8, 8)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
    x[:, 0, 0, 1] = torch.tensor(markers, dtype=torch.float32)
    return x


def _fake_drgfer(routing="rrn", factors=("x1", "x2", "x4")):
    method = DRGFER(
        _context(TINY_MODEL), **{**method_options("drgfer"), "factors": list(factors), "routing": routing}
    )
    method.rrn = MarkerRouter(len(factors))
    method.mrafer = MRAFER([TaggedExpert(k) for k in range(len(factors))])
    return method.eval()


def test_binarize_sets_a_one_at_the_maximum_only():  # eq. 3
    scores = torch.tensor([[0.1, 2.0, -1.0], [5.0, 4.9, 0.0], [-3.0, -2.0, -1.0]])
    assert binarize(scores).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_assign_and_gather_route_every_sample_through_its_group_and_restore_order():  # eq. 4-7
    route = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    images = _marked_images(range(7), route.tolist())
    experts = [TaggedExpert(k) for k in range(4)]  # expert 3 gets nobody
    out = MRAFER(experts)(images, torch.nn.functional.one_hot(route, 4))
    assert out[:, 0].tolist() == route.float().tolist()  # each sample went through its group's expert
    assert out[:, 1].tolist() == list(map(float, range(7)))  # and came back in the original order
    assert [e.calls for e in experts] == [[2], [1], [4], []]  # one batched call per non-empty group
    groups = assign(torch.nn.functional.one_hot(route, 4))
    assert [g.tolist() for g in groups] == [[1, 4], [3], [0, 2, 5, 6], []]
    parts = [torch.tensor([[10.0], [40.0]]), torch.tensor([[30.0]]), torch.tensor([[0.0], [20], [50], [60]])]
    parts.append(None)
    assert gather(parts, groups, 7).flatten().tolist() == [0, 10, 20, 30, 40, 50, 60]
    with pytest.raises(ValueError):
        gather([*parts[:2], None, None], groups, 7)


def test_predict_with_no_factor_routes_a_mixed_batch_by_the_rrn():
    method = _fake_drgfer("rrn")
    markers = [2, 0, 1, 1, 2, 0]
    images = _marked_images(range(6), markers)
    out = method.predict(images, factor=None)
    assert out[:, 0].tolist() == [float(m) for m in markers]  # each image went to the RRN's expert
    assert out[:, 1].tolist() == list(map(float, range(6)))  # in order
    wrong = torch.full((6,), 4.0)  # a given factor is ignored: the RRN decides
    assert torch.equal(method.predict(images, factor=wrong), out)


def test_oracle_routes_by_the_nearest_trained_factor_and_rrn_by_the_router():
    images = _marked_images(range(5), [0, 0, 0, 0, 0])  # the router says x1 for all of them
    factor = torch.tensor([1.0, 2.0, 4.0, 3.0, 16.0])  # x3 -> x4 (log scale), x16 -> x4 (largest trained)
    oracle = _fake_drgfer("oracle").predict(images, factor)
    assert oracle[:, 0].tolist() == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert _fake_drgfer("rrn").predict(images, factor)[:, 0].tolist() == [0.0] * 5
    assert _fake_drgfer("x2").predict(images, factor)[:, 0].tolist() == [1.0] * 5  # one fixed expert
    with pytest.raises(UserError, match="oracle"):
        _fake_drgfer("oracle").predict(images, None)
    with pytest.raises(UserError, match="routing"):
        _fake_drgfer("x3")


def test_mean_and_max_fusion_formulas():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 0.1, 0.0]],
            [[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
            [[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]],
        ]
    )  # (K=3 experts, N=2 images, C=3)
    probs = logits.softmax(dim=2)
    assert torch.allclose(fuse_mean(probs), (probs[0] + probs[1] + probs[2]) / 3)
    pooled = torch.maximum(torch.maximum(probs[0], probs[1]), probs[2])
    assert torch.allclose(fuse_max(probs), pooled / pooled.sum(1, keepdim=True))
    most_confident = probs.amax(dim=2).argmax(dim=0)  # per image, the expert with the largest probability
    assert fuse_max(probs).argmax(1).tolist() == [int(probs[most_confident[i], i].argmax()) for i in range(2)]
    method = _fake_drgfer("mean")
    method.mrafer = MRAFER([FixedLogits(logits[k]) for k in range(3)])
    images = _marked_images([0, 1], [0, 0])
    assert torch.allclose(method.predict(images).softmax(1), fuse_mean(probs), atol=1e-6)
    method.routing = "max"
    assert torch.allclose(method.predict(images).softmax(1), fuse_max(probs), atol=1e-6)


def test_factors_null_trains_on_degrade_train_with_factors_relative_to_the_native_side():
    res = ResolutionSet.from_config(None, _context("degrade.train=[x1,x3,25px]", "dataset.image_size=100"))
    assert res.labels == ["x1", "x3", "25px"] and res.factors == pytest.approx((1.0, 3.0, 4.0))


def test_rrn_accuracy_counts_the_nearest_trained_factor_in_log_scale():
    res = ResolutionSet.from_config(["x1", "x2", "x4", "x6", "x8"], _context("dataset.image_size=100"))
    factors = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 12.0, 16.0, 100 / 14])  # 14px of a 100 px face = x7.14
    assert res.index(factors).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    method = _fake_drgfer("rrn")
    batch = {"image": _marked_images(range(4), [0, 1, 2, 2]), "factor": torch.tensor([1.0, 4.0, 4.0, 3.0])}
    out = method.evaluate_step(batch, None)
    assert out["rrn_acc"].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_default_drgfer_is_an_rrn_and_five_resnet18_experts():
    method = DRGFER(_context(), **method_options("drgfer"))
    n18 = sum(p.numel() for p in method.mrafer.experts[0].parameters())
    assert len(method.mrafer.experts) == 5 and 11_000_000 < n18 < 11_300_000
    assert method.rrn.fc.out_features == 5 and method.mrafer.experts[0].fc.out_features == 7
    assert [s.name for s in method.stages()] == [
        "expert_x1",
        "expert_x2",
        "expert_x4",
        "expert_x6",
        "expert_x8",
        "rrn",
    ]
    assert all(s.train_degrade == [s.name[7:]] for s in method.stages()[:5])
    assert method.stages()[-1].train_degrade == ["x1", "x2", "x4", "x6", "x8"]


def test_paper_experiment_configs_compose():
    cfg = compose_cfg("method=drgfer", "experiment=drgfer/rafdb")
    assert cfg.dataset.name == "rafdb" and cfg.dataset.image_size == 100 and cfg.degrade.input_size == 224
    assert cfg.trainer.optimizer.lr == 3e-4 and cfg.trainer.batch_size == 256 and cfg.method.epochs == 80
    assert list(cfg.degrade.test) == ["x1", "x2", "x4", "x6", "x8"]
    assert compose_cfg("method=mstrain", "experiment=drgfer/ferplus").dataset.name == "ferplus"


@pytest.fixture(scope="module")
def drgfer_run(tmp_path_factory):
    """A tiny DRGFER (2 factors, 2 epochs per stage) trained like train.py does, with its run folder."""
    tmp = tmp_path_factory.mktemp("drgfer")
    run_dir = tmp / "run"
    cfg = compose_cfg(
        *tiny(tmp, "method=drgfer", TINY_MODEL, "method.factors=[x1,x4]", "degrade.test=[x1,x4,x3,12px]")
    )
    cfg.method._target_ = "multires_toys.SnapshotDRGFER"
    metrics = run_training(cfg, run_dir)
    method = SnapshotDRGFER.instances[-1]
    cfg.method._target_ = "lrfer.methods.drgfer.DRGFER"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return {"cfg": cfg, "method": method, "metrics": metrics, "run_dir": run_dir}


def test_each_stage_trains_only_its_module_and_restore_best_keeps_the_others(drgfer_run):
    method, snaps = drgfer_run["method"], drgfer_run["method"].snapshots
    owner = {"expert_x1": "mrafer.experts.0.", "expert_x4": "mrafer.experts.1.", "rrn": "rrn."}
    assert list(drgfer_run["metrics"]["train"]["stages"]) == list(owner)
    final = method.state_dict()
    for stage, prefix in owner.items():
        start, end = snaps[(stage, "start")], snaps[(stage, "end")]
        changed = {k for k in start if not torch.equal(start[k], end[k])}
        assert changed and all(k.startswith(prefix) for k in changed)  # nothing else moved in this stage
        mine = [k for k in final if k.startswith(prefix)]
        assert all(torch.equal(final[k], end[k]) for k in mine)  # later restores did not clobber it
    best = torch.load(drgfer_run["run_dir"] / "checkpoints" / "best.pt", weights_only=True)
    assert best["stage"] == "rrn" and all(torch.equal(best["method"][k], final[k]) for k in final)


def test_metrics_json_has_acc_and_rrn_acc_at_every_test_degradation(drgfer_run):
    metrics = json.loads((drgfer_run["run_dir"] / "metrics.json").read_text())
    assert metrics["method"] == "drgfer" and list(metrics["test"]) == ["x1", "x4", "x3", "12px"]
    for row in metrics["test"].values():
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["rrn_acc"] <= 1.0
    assert [s["epochs"] for s in metrics["train"]["stages"].values()] == [2, 2, 2]
    stages = metrics["train"]["stages"]
    assert "rrn_acc" in stages["rrn"] and "train_acc" not in stages["rrn"]  # RRN logits are not expressions
    assert "train_acc" in stages["expert_x1"]


def _evaluator(run):
    from lrfer.engine.run import build_parts
    from lrfer.engine.trainer import Trainer

    parts = build_parts(run["cfg"])
    return Trainer(parts.spec, run["method"], parts.datamodule)


def test_routing_modes_share_one_training_and_report_rrn_acc(drgfer_run):
    trainer, method = _evaluator(drgfer_run), drgfer_run["method"]
    rows = {}
    for routing in ("rrn", "oracle", "mean", "max", "x1"):
        method.routing = routing
        rows[routing] = trainer.evaluate("test", ["x1", "x4"])
    method.routing, method.eval_all_routings = "rrn", True  # every expert once: every routing's accuracy
    both = trainer.evaluate("test", ["x1", "x4"])
    method.eval_all_routings = False
    for routing, row in rows.items():
        for label in ("x1", "x4"):
            assert math.isclose(both[label][f"acc_{routing}"], row[label]["acc"], abs_tol=1e-9), routing
    assert both["x4"]["acc"] == rows["rrn"]["x4"]["acc"]
    assert all(r["x1"]["rrn_acc"] == rows["rrn"]["x1"]["rrn_acc"] for r in rows.values())
    assert rows["oracle"]["x1"]["acc"] == rows["x1"]["x1"]["acc"]  # at x1 the oracle is the x1 expert
    if rows["rrn"]["x4"]["rrn_acc"] == 1.0:
        assert rows["rrn"]["x4"]["acc"] == rows["oracle"]["x4"]["acc"]


def test_lrfer_predict_routes_faces_of_mixed_sizes_by_the_rrn(drgfer_run, tmp_path, monkeypatch):
    from lrfer.cli import predict as predict_cli

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, side in enumerate([32, 16, 8, 11, 32]):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    seen = []
    original = DRGFER.predict

    def spy(self, images, factor=None):
        out = original(self, images, factor)
        seen.append((self, images.clone(), factor.clone(), out))
        return out

    monkeypatch.setattr(DRGFER, "predict", spy)
    rows = predict_cli.main(
        [str(drgfer_run["run_dir"]), str(folder), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]
    )
    assert len(rows) == 5 and {r["width"] for r in rows} == {32, 16, 8, 11}
    ((method, images, factor, out),) = seen
    assert np.allclose(sorted(set(factor.tolist())), [1.0, 2.0, 32 / 11, 4.0])  # the CLI's native/side
    with torch.inference_mode():
        assert torch.equal(original(method, images, None), out)  # the factor the CLI passes is ignored
    with (tmp_path / "p.csv").open() as f:
        probs = [[float(r[k]) for k in r if k.startswith("p_")] for r in csv.DictReader(f)]
    assert np.allclose(probs, out.softmax(1).numpy(), atol=1e-4)
    assert all(math.isclose(sum(p), 1.0, abs_tol=1e-3) for p in probs)


def test_split_routings_writes_one_run_per_routing(tmp_path):
    import importlib.util

    from lrfer.report.tables import collect_runs

    path = REPO / "experiments" / "drgfer" / "split_routings.py"
    spec = importlib.util.spec_from_file_location("split_routings", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = {
        "acc": 0.5,
        "balanced_acc": 0.5,
        "n": 10,
        "rrn_acc": 0.9,
        "acc_rrn": 0.5,
        "acc_mean": 0.4,
        "acc_max": 0.3,
        "acc_oracle": 0.6,
        "acc_x1": 0.7,
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"method": "drgfer", "test": {"x1": row}}))
    module.split(tmp_path / "run", tmp_path / "rows")
    rows = {r.name: r for r in collect_runs([tmp_path / "rows"])}
    assert {n: r.values["x1"] for n, r in rows.items()} == {
        "DRGFER": 0.5,
        "Mean": 0.4,
        "Max": 0.3,
        "DRGFER oracle routing": 0.6,
        "expert x1 alone": 0.7,
    }
    assert rows["Mean"].extras["rrn_acc"]["x1"] == 0.9 and "rrn_acc" not in rows["expert x1 alone"].extras


def test_the_rrn_stage_is_selected_on_the_rrn_accuracy(drgfer_run):
    last = torch.load(drgfer_run["run_dir"] / "checkpoints" / "last.pt", weights_only=True)
    history = [h for h in last["val_history"] if h["stage"] == "rrn"]
    assert len(history) == 2
    for entry in history:
        assert entry["monitor"] == "rrn_acc"
        rows = list(entry["val"].values())
        assert math.isclose(entry["score"], sum(r["rrn_acc"] for r in rows) / len(rows))
        # the stage's acc is the routed expression accuracy, not a stand-in for the RRN's
        assert all(0.0 <= r["acc"] <= 1.0 for r in rows)
    best = max(history, key=lambda h: h["score"])
    stage = drgfer_run["metrics"]["train"]["stages"]["rrn"]
    assert (stage["best_epoch"], stage["best_val"]) == (best["epoch"], best["score"])
    expert = [h for h in last["val_history"] if h["stage"] == "expert_x4"]
    assert all(h["monitor"] == "acc" for h in expert)


def _confident_experts(method: DRGFER, n: int) -> None:
    """Expert k predicts class k for every image, with confidence growing with k (logit 3 + k)."""
    tables = []
    for k in range(len(method.mrafer.experts)):
        table = torch.zeros(n, 3)
        table[:, k] = 3.0 + k
        tables.append(FixedLogits(table))
    method.mrafer = MRAFER(tables)


def test_every_routing_scores_the_expert_it_names():
    """eval_all_routings by hand: expert k says class k; the RRN picks the marker's expert, the oracle the
    true factor's, ``x2`` always expert 1, Mean and Max the most confident expert (2); rrn_acc = marker ==
    truth."""
    method = _fake_drgfer("rrn")
    _confident_experts(method, 4)
    method.eval_all_routings = True
    batch = {
        "image": _marked_images(range(4), [0, 2, 2, 1]),  # the RRN's choices
        "label": torch.tensor([0, 1, 2, 1]),
        "factor": torch.tensor([1.0, 2.0, 4.0, 4.0]),  # the true resolutions: 0, 1, 2, 2
    }
    out = method.evaluate_step(batch, None)
    expected = {
        "acc_rrn": [1, 0, 1, 1],
        "acc_oracle": [1, 1, 1, 0],
        "acc_mean": [0, 0, 1, 0],
        "acc_max": [0, 0, 1, 0],
        "acc_x1": [1, 0, 0, 0],
        "acc_x2": [0, 1, 0, 1],
        "acc_x4": [0, 0, 1, 0],
        "rrn_acc": [1, 0, 1, 0],
    }
    assert {k: out[k].tolist() for k in expected} == {k: [float(v) for v in vs] for k, vs in expected.items()}
    assert out["logits"].argmax(1).tolist() == [0, 2, 2, 1]  # routing=rrn
    method.routing = "oracle"
    assert method.evaluate_step(batch, None)["logits"].argmax(1).tolist() == [0, 1, 2, 2]
    method.eval_all_routings = False
    assert method.evaluate_step(batch, None)["logits"].argmax(1).tolist() == [0, 1, 2, 2]
    # Mean and Max part: two experts mildly for class 0, one surely for class 2 -> Mean says 0, Max says 2
    mild, sure = torch.tensor([[1.0, 0.0, 0.0]] * 4), torch.tensor([[0.0, 0.0, 2.0]] * 4)
    method.mrafer = MRAFER([FixedLogits(mild), FixedLogits(mild), FixedLogits(sure)])
    method.eval_all_routings = True
    out = method.evaluate_step({**batch, "label": torch.tensor([0, 2, 0, 2])}, None)
    assert out["acc_mean"].tolist() == [1, 0, 1, 0] and out["acc_max"].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(("rrn_epochs", "epochs"), [(None, 3), (2, 2)])
def test_the_rrn_stage_trains_and_validates_on_every_trained_resolution_selected_on_rrn_acc(
    rrn_epochs, epochs
):
    """DRGFER's last stage and RA-BN's (``bn_select=rrn``): the RRN learns and is validated on all of
    ``factors``, its best epoch is the one of the highest ``rrn_acc``; ``rrn_epochs`` null = ``epochs``."""
    labels = ["x1", "x2", "x4"]
    common = {"factors": labels, "epochs": 3, "rrn_epochs": rrn_epochs}
    drgfer = DRGFER(_context(TINY_MODEL), **{**method_options("drgfer"), **common})
    rabn = ResolutionAwareBNMethod(
        _context(TINY_MODEL), **{**method_options("rabn"), "bn_select": "rrn", **common}
    )
    expected = Stage("rrn", epochs=epochs, train_degrade=labels, val_degrade=labels, monitor="rrn_acc")
    assert drgfer.stages()[-1] == rabn.stages()[-1] == expected


def test_without_a_model_config_the_networks_are_resnet18_for_the_runs_input_channels():
    context = dataclasses.replace(_context(), model=None, in_channels=1)
    with torch.device("meta"):  # shapes only
        net = build_network(context, 4)
    assert type(net.backbone).__name__ == "ResNet" and len(net.backbone.layer3) == 2
    assert net.backbone.conv1.in_channels == 1 and net.fc.out_features == 4


def test_stages_train_and_validate_their_own_network():
    """Stage ``expert_x2`` trains expert 1 with cross-entropy on its logits and validates expert 1 alone;
    stage ``rrn`` trains the RRN towards each face's resolution index (eq. 1-2) and validates the RRN-routed
    prediction with rrn_acc."""
    real = DRGFER(_context(TINY_MODEL), **{**method_options("drgfer"), "factors": ["x1", "x2", "x4"]})
    stages = {s.name: s for s in real.stages()}
    for name, module in (("expert_x1", 0), ("expert_x2", 1), ("expert_x4", 2), ("rrn", None)):
        net = real.rrn if module is None else real.mrafer.experts[module]
        assert [id(p) for p in real.stage_parameters(stages[name], "main")] == [
            id(p) for p in net.parameters()
        ]
    method = _fake_drgfer("rrn")
    _confident_experts(method, 4)
    batch = {
        "image": _marked_images(range(4), [0, 2, 2, 1]),
        "label": torch.tensor([0, 1, 2, 1]),
        "factor": torch.tensor([1.0, 2.0, 3.0, 4.0]),  # x3 -> x4
    }
    table = method.mrafer.experts[1].table
    out = method.training_step(batch, stages["expert_x2"], "main")
    assert torch.equal(out["logits"], table)
    assert out["loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(table, batch["label"]).item()
    )
    assert torch.equal(method.evaluate_step(batch, stages["expert_x2"])["logits"], table)
    rrn = method.training_step(batch, stages["rrn"], "main")
    scores = method.rrn(batch["image"])
    target = torch.tensor([0, 1, 2, 2])
    assert rrn["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(scores, target).item())
    assert rrn["rrn_acc"].item() == pytest.approx(0.5)  # markers 0, 2, 2, 1 against 0, 1, 2, 2
    val = method.evaluate_step(batch, stages["rrn"])
    assert val["logits"].argmax(1).tolist() == [0, 2, 2, 1] and val["rrn_acc"].tolist() == [1, 0, 1, 0]
