"""Issue 29's item-3 checks that need no training, on the findings protocol's own configs
(experiments/findings/protocol.yaml): what DRGFER's experts and router train and test on."""

from __future__ import annotations

import math

import pytest
import torch

from lrfer.config.compose import compose_config
from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import build_method, method_context
from lrfer.methods.gmenet import gaussian_blur
from lrfer.report.findings import load_findings_protocol, plan_runs

PROTOCOL = "experiments/findings/protocol.yaml"


@pytest.fixture(scope="module")
def findings_drgfer():
    """The findings' DRGFER run (seed 0): its composed config and its method, built without data."""
    protocol = load_findings_protocol(PROTOCOL)
    cfg = compose_config(plan_runs(protocol, ["drgfer"], 1)[("drgfer", 0)])
    return cfg, build_method(cfg, method_context(cfg))


def test_each_findings_drgfer_expert_trains_on_every_training_face_at_its_own_factor_only(findings_drgfer):
    """Expert k trains and is selected on its own factor alone (sec. 4.2), one draw per face per epoch from a
    one-item list: all 3,000 training faces at that factor every epoch, for the protocol's fraction of the
    paper's 80 epochs, as MSTrain's single network does over the five factors together."""
    cfg, method = findings_drgfer
    epochs = math.ceil(80 * float(load_findings_protocol(PROTOCOL)["fraction"]))
    factors = ["x1", "x2", "x4", "x6", "x8"]
    stages = {s.name: s for s in method.stages()}
    assert list(stages) == [*(f"expert_{f}" for f in factors), "rrn"]
    for f in factors:
        stage = stages[f"expert_{f}"]
        assert stage.train_degrade == [f] and stage.val_degrade == [f], f
        assert stage.epochs == epochs
    assert stages["rrn"].train_degrade == factors and stages["rrn"].epochs == epochs
    assert cfg.degrade.train_mode == "random" and cfg.dataset.num_train == 3000


def test_the_findings_oracle_routes_each_test_factor_to_its_own_expert_on_100px_faces(findings_drgfer):
    """The oracle (and the RRN's target) is the nearest trained factor of the face's effective factor on
    the protocol's 100 px faces (x8: 13 px, 7.7; x6: 17 px, 5.9): each test factor is its own expert's."""
    cfg, method = findings_drgfer
    native = int(cfg.dataset.image_size)
    tests = parse_degradations(list(cfg.degrade.test))
    assert [d.label for d in tests] == method.resolutions.labels
    effective = torch.tensor([d.effective_factor(native) for d in tests])
    assert method.resolutions.index(effective).tolist() == list(range(len(tests)))


# -- GME-Net's student at high resolution -----------------------------------------------------------------
def test_the_findings_gmenet_student_is_tested_at_x1_on_the_unblurred_face():
    """Sec. 3.1's Gaussian blur is for low-resolution faces: at the converged leaderboard's labels, the
    findings' GME-Net student sees the x1 face as it is and only the low-resolution faces blurred. (Its x1
    accuracy below its 14 px one is the student never having seen a sharp face in training: blurring the x1
    validation faces on purpose raises it, experiments/leaderboard/README.md.)"""
    protocol = load_findings_protocol(PROTOCOL)
    cfg = compose_config(plan_runs(protocol, ["gmenet"], 1)[("gmenet", 0)])
    method = build_method(cfg, method_context(cfg)).eval()
    labels = ["x1", "14px", "x4+blur1+noise8", "x2"]
    factor = torch.tensor(
        [d.effective_factor(int(cfg.dataset.image_size)) for d in parse_degradations(labels)]
    )
    torch.manual_seed(0)
    size = int(cfg.degrade.input_size)
    images = torch.randn(len(labels), 3, size, size)
    with torch.no_grad():
        got = method.evaluate_step({"image": images, "factor": factor})["logits"]
        sharp = torch.cat([method.student(im[None]) for im in images])
        blurred = torch.cat(
            [method.student(im[None]) for im in gaussian_blur(images, cfg.method.lr_blur_sigma)]
        )
    assert cfg.method.lr_blur_sigma > 0
    assert torch.allclose(got[0], sharp[0], atol=1e-5) and not torch.allclose(got[0], blurred[0], atol=1e-3)
    assert torch.allclose(got[1:], blurred[1:], atol=1e-5) and not torch.allclose(
        got[1:], sharp[1:], atol=1e-3
    )


# -- the residual voting network's crops -------------------------------------------------------------------
def _crop_windows(cfg) -> tuple[int, int, list[tuple[int, int]]]:
    """(map side at the split, crop side, the five windows' corners) of the run's network on one face."""
    from lrfer.models import voting

    sides = []
    ten_crops = voting.ten_crops

    def spy(x: torch.Tensor, ratio: float = 5 / 6) -> torch.Tensor:
        sides.append(int(x.shape[-1]))
        return ten_crops(x, ratio)

    method = build_method(cfg, method_context(cfg)).eval()
    size = int(cfg.degrade.input_size or cfg.dataset.image_size)
    voting.ten_crops = spy
    try:
        with torch.no_grad():
            method.net(torch.zeros(1, 3, size, size))
    finally:
        voting.ten_crops = ten_crops
    (side,) = sides
    crop, corners = voting.crop_boxes(side, float(cfg.method.crop_ratio))
    return side, crop, corners


def _assert_ten_distinct_crops(cfg) -> None:
    side, crop, corners = _crop_windows(cfg)
    assert crop < side and len(set(corners)) == 5, f"{crop}px crops of a {side}px map at {corners}"


@pytest.mark.parametrize("split", [1, 2, 3])
def test_the_papers_voting_network_cuts_five_distinct_windows_at_every_split(split):
    """The paper's network (3x3 stride-1 stem, 48 px faces): maps of 48, 24 and 12 px, crops of 40, 20 and
    10 px at the four corners and the centre (Algorithm 1)."""
    cfg = compose_config(["experiment=voting/rafdb", "method.init_from=none", f"method.split_after={split}"])
    _assert_ten_distinct_crops(cfg)


@pytest.mark.parametrize("run", ["voting_soft", "voting_split2", "voting_split3"])
def test_the_findings_voting_runs_cut_five_distinct_windows_as_the_paper_does(run):
    """The findings' voting runs use the paper's geometry (the quick network, ImageNet stem at 32 px, cuts
    maps of 8, 4 and 2 px: its centre crop is a corner crop, after module 3 every crop is the whole map)."""
    protocol = load_findings_protocol(PROTOCOL)
    _assert_ten_distinct_crops(compose_config(plan_runs(protocol, [run], 1)[(run, 0)]))


@pytest.mark.parametrize("run", ["voting_soft", "voting_single", "voting_split2", "voting_split3"])
def test_the_findings_voting_runs_train_with_the_papers_adam_learning_rate(run):
    """The paper's stride-1 network stayed at chance for its first 3 epochs on the synthetic faces at the
    protocol's common Adam 1e-3 (experiments/findings/README.md, "Voting: the paper's learning rate"): its
    runs take the paper's 2e-4
    (Section 3.3, experiment=voting/rafdb), and keep the protocol's common batch and cosine schedule."""
    protocol = load_findings_protocol(PROTOCOL)
    cfg = compose_config(plan_runs(protocol, [run], 1)[(run, 0)])
    paper = compose_config(["experiment=voting/rafdb", "method.init_from=none"])
    common = compose_config(plan_runs(protocol, ["mstrain"], 1)[("mstrain", 0)])
    assert cfg.trainer.optimizer.name == paper.trainer.optimizer.name == "adam"
    assert cfg.trainer.optimizer.lr == paper.trainer.optimizer.lr != common.trainer.optimizer.lr
    assert cfg.trainer.batch_size == common.trainer.batch_size
    assert cfg.trainer.scheduler.name == common.trainer.scheduler.name == "cosine"
