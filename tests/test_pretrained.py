"""``model.weights=PATH``: a local checkpoint into every ResNet-family network (lrfer.models.pretrained)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, run_cli, tiny

from lrfer.core.compat import torchvision
from lrfer.core.errors import UserError
from lrfer.engine.run import build_method, build_parts, method_context, run_training
from lrfer.models.pretrained import best_prefix, load_into, read_state_dict
from lrfer.models.rabn import MultiBatchNorm2d
from lrfer.models.resnet import build_resnet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    """A DataParallel-style ResNet-18 checkpoint with a 1000-class head, as SCN / DAN distribute them:
    ``{"state_dict": {"module.<key>": tensor}, "epoch": ...}``. Returns (path, the plain state dict)."""
    torch.manual_seed(123)
    net = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that copying them is visible
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_msceleb.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 40, "arch": "r18"}, path)
    return path, state


def _backbone_equal(backbone: torch.nn.Module, state: dict, skip: tuple[str, ...] = ()) -> int:
    """Assert every tensor of a torchvision-named backbone equals the file's; return how many compared."""
    n = 0
    for name, tensor in backbone.state_dict().items():
        if name.startswith("fc.") or name in skip or name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(tensor, state[name]), name
        n += 1
    return n


# -- reading files --------
def test_nested_state_dict_with_module_prefix_and_other_entries_is_read(r18_file):
    path, state = r18_file
    got = read_state_dict(path)
    assert set(got) == set(state)
    assert torch.equal(got["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


@pytest.mark.parametrize("key", ["model", "net"])
def test_state_dict_under_model_or_net_is_read(tmp_path, r18_file, key):
    _, state = r18_file
    torch.save({key: state, "epoch": 3}, tmp_path / "w.pt")
    assert set(read_state_dict(tmp_path / "w.pt")) == set(state)


def test_best_prefix_strips_a_wrapper_prefix():
    assert (
        best_prefix(["backbone.conv1.weight", "backbone.fc.weight"], ["conv1.weight", "fc.weight"])
        == "backbone."
    )
    assert (
        best_prefix(["conv1.weight", "layer1.0.conv1.weight"], ["conv1.weight", "layer1.0.conv1.weight"])
        == ""
    )


def test_pickled_objects_give_one_line_error(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="pickled Python objects"):
        read_state_dict(tmp_path / "pickled.pth")


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_state_dict(tmp_path / "nope.pth")


# -- ResNet builders --------
def test_imagenet_stem_loads_everything_but_the_other_size_classifier(r18_file, caplog):
    path, state = r18_file
    with caplog.at_level("INFO"):
        net = build_resnet(7, 100, stem="imagenet", weights=str(path))
    assert _backbone_equal(net.backbone, state) == 100
    assert net.fc.weight.shape == (7, 512)
    assert "classifier not loaded" in caplog.text and "1000x512" in caplog.text


def test_same_size_classifier_is_loaded(tmp_path):
    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=7)
    torch.save(src.state_dict(), tmp_path / "r18_7.pt")
    net = build_resnet(7, 100, stem="imagenet", weights=str(tmp_path / "r18_7.pt"))
    assert torch.equal(net.fc.weight, src.fc.weight)


def test_small_stem_keeps_conv1_initialised_and_says_so(r18_file, caplog):
    path, state = r18_file
    with caplog.at_level("INFO"):
        net = build_resnet(7, 32, stem="auto", weights=str(path))  # 32 px: conv3_pool stem
    assert net.backbone.conv1.weight.shape == (64, 3, 3, 3)
    assert _backbone_equal(net.backbone, state, skip=("conv1.weight",)) == 99
    assert "conv1 keeps its random initialisation" in caplog.text


def test_resnet50_file_into_resnet18_is_one_line(tmp_path):
    torch.save({"state_dict": torchvision.models.resnet50().state_dict()}, tmp_path / "r50.pth")
    with pytest.raises(UserError) as err:
        build_resnet(7, 100, weights=str(tmp_path / "r50.pth"))
    message = str(err.value)
    assert "\n" not in message
    assert "does not fit this resnet18" in message and "layer1.0.conv1.weight" in message


def test_zoo_network_loads_a_torchvision_file(tmp_path):
    torch.manual_seed(0)
    src = torchvision.models.mobilenet_v3_small(num_classes=1000)
    torch.save({"model": src.state_dict()}, tmp_path / "mnv3.pth")
    cfg = compose_cfg(
        "method=zoo", "method.arch=mobilenet_v3_small", f"model.weights={tmp_path / 'mnv3.pth'}"
    )
    method = build_method(cfg, method_context(cfg))
    assert torch.equal(method.net.features[3].block[0][0].weight, src.features[3].block[0][0].weight)
    assert method.net.classifier[-1].out_features == 7


# -- methods (the must-show) --------
METHODS = {
    "baseline": [],
    "drgfer": ["method.factors=[x1,x2]"],
    "rabn": ["method.factors=[x1,x2]"],
    "voting": ["dataset.image_size=24"],
}


def _resnets(method) -> list[torch.nn.Module]:
    """The torchvision backbones of a method's ResNet-family networks."""
    name = type(method).__name__
    if name == "DRGFER":
        return [method.rrn.backbone, *(e.backbone for e in method.mrafer.experts)]
    return [method.net.backbone] if name != "ResolutionAwareBNMethod" else [method.net.net.backbone]


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_load_the_file_then_train(tmp_path, r18_file, name):
    """Must-show: the MS-Celeb-style file trains with baseline, drgfer, rabn and voting; every loaded
    backbone tensor equals the file's (conv1 excepted where the run's 3x3 stem differs)."""
    path, state = r18_file
    overrides = tiny(
        tmp_path,
        f"method={name}",
        f"model.weights={path}",
        "trainer.max_epochs=1",
        "degrade.test=[x1]",
        "dataset.num_train=56",
        "dataset.num_val=28",
        "dataset.num_test=28",
        *METHODS[name],
    )
    cfg = compose_cfg(*overrides)
    method = build_method(cfg, method_context(cfg))
    nets = _resnets(method)
    for backbone in nets:
        if name == "rabn":
            _check_rabn(backbone, state)
        else:
            assert _backbone_equal(backbone, state, skip=("conv1.weight",)) == 99
    metrics = run_training(cfg, tmp_path / "run")
    assert metrics["method"] == name and 0.0 <= metrics["test"]["x1"]["acc"] <= 1.0


def _check_rabn(backbone: torch.nn.Module, state: dict) -> None:
    """RA-BN copies the loaded BatchNorm into every per-resolution BN."""
    multi = dict(backbone.named_modules())
    checked = 0
    for name, module in multi.items():
        if isinstance(module, MultiBatchNorm2d):
            assert module.num_branches == 2
            for bn in module.bns:
                for key in ("weight", "bias", "running_mean", "running_var"):
                    assert torch.equal(getattr(bn, key), state[f"{name}.{key}"]), (name, key)
            checked += 1
        elif isinstance(module, torch.nn.Conv2d) and name != "conv1":
            assert torch.equal(module.weight, state[f"{name}.weight"])
    assert checked == 20


def test_cli_resnet50_file_stops_with_one_line_and_no_traceback(tmp_path):
    torch.save({"state_dict": torchvision.models.resnet50().state_dict(), "epoch": 1}, tmp_path / "r50.pth")
    args = tiny(tmp_path, f"model.weights={tmp_path / 'r50.pth'}", f"hydra.run.dir={tmp_path / 'run'}")
    proc = run_cli(["train.py", *args])
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit this resnet18" in errors[0]
    assert "Traceback" not in proc.stderr


def test_weights_on_a_method_without_resnet_is_refused(tmp_path, r18_file):
    cfg = compose_cfg("method=efc", f"model.weights={r18_file[0]}")
    with pytest.raises(UserError, match="builds no ResNet-family network"):
        build_method(cfg, method_context(cfg))


def test_load_into_reports_what_it_did(r18_file):
    path, _ = r18_file
    net = torchvision.models.resnet18(num_classes=7)
    report = load_into(net, path)
    assert report["dropped_head"][0].startswith("fc.weight")
    assert "conv1.weight" in report["loaded"] and not report["stem_kept"]


def test_a_missing_weights_file_stops_before_the_dataset_is_read(tmp_path):
    cfg = compose_cfg(
        "dataset=rafdb", f"dataset.root={tmp_path / 'no_dataset'}", f"model.weights={tmp_path / 'x.pth'}"
    )
    with pytest.raises(UserError, match=r"model\.weights=.*no such file"):
        build_parts(cfg)


def test_an_unreadable_weights_file_stops_before_the_dataset_is_read(tmp_path):
    (tmp_path / "x.pth").write_text("not a checkpoint")
    cfg = compose_cfg(
        "dataset=rafdb", f"dataset.root={tmp_path / 'no_dataset'}", f"model.weights={tmp_path / 'x.pth'}"
    )
    with pytest.raises(UserError, match="cannot be read as a PyTorch checkpoint"):
        build_parts(cfg)
