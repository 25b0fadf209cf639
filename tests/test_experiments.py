"""Every experiment config trains what it names: ``experiment=<method>/<table>`` alone trains ``<method>``
(``*_isr`` configs train ``isr``) with every setting the file writes, ``method=...`` on the command line
still overrides it, and (slow, a smoke test) each trains one epoch on tiny synthetic faces of its size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli, tiny
from dataset_fixtures import write_kdef
from omegaconf import OmegaConf

from lrfer.cli import CONFIG_DIR
from lrfer.core.errors import UserError
from lrfer.engine.run import build_parts, run_training

EXPERIMENTS = sorted(
    str(p.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
)


def expected_method(name: str) -> str:
    folder, table = name.split("/", 1)
    return "isr" if table.endswith("_isr") else folder


def test_there_are_experiment_configs_for_every_paper():
    folders = {e.split("/")[0] for e in EXPERIMENTS}
    assert folders == {"drgfer", "efc", "fsrfer", "gmenet", "voting"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_the_method_its_folder_names(name):
    cfg = compose_cfg(f"experiment={name}")
    want = expected_method(name)
    assert cfg.method.name == want, f"experiment={name} trains {cfg.method.name}, not {want}"
    assert cfg.method._target_.split(".")[2] == want  # lrfer.methods.<want>.<Class>


def _settings(node, prefix: str = "") -> list[str]:
    """The dotted keys of every leaf an experiment file sets (its defaults list aside)."""
    keys = []
    for key, value in node.items():
        if prefix == "" and key == "defaults":
            continue
        dotted = f"{prefix}{key}"
        keys += _settings(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return keys


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_setting_an_experiment_names_is_what_its_run_gets(name):
    """The paper's settings written in ``configs/experiment/<name>.yaml`` (epochs, optimiser, lr, batch,
    degradations, augmentation, model) all reach the composed run config: nothing composed after the
    experiment (a method, dataset or model default) replaces them."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml"))
    cfg = compose_cfg(f"experiment={name}")
    # what the file says, resolved in the run's config (``test: ${degrade.train}`` means the run's list)
    said = OmegaConf.merge(cfg, {k: v for k, v in raw.items() if k != "defaults"})
    keys = _settings(raw)
    assert keys, f"experiment={name} sets nothing"
    for key in keys:
        got = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)
        want = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(said, key)}), resolve=True)
        assert got == want, (
            f"experiment={name}: {key} is {got['v']!r} in the run, the file says {want['v']!r}"
        )


@pytest.mark.parametrize(
    ("name", "override", "method"),
    [
        ("efc/kdef", ["method=zoo", "method.arch=mobilenet_v2"], "zoo"),
        ("drgfer/rafdb", ["method=rabn"], "rabn"),
        ("drgfer/ferplus", ["method=mstrain"], "mstrain"),
        ("drgfer/rafdb", ["method=da"], "da"),
    ],
)
def test_command_line_method_still_overrides_the_experiment(name, override, method):
    cfg = compose_cfg(f"experiment={name}", *override)
    assert cfg.method.name == method
    assert cfg.method.epochs == compose_cfg(f"experiment={name}").method.epochs  # the recipe still applies


def test_voting_rafdb_without_init_from_stops_with_one_line(tmp_path):
    cfg = compose_cfg(
        *tiny(tmp_path, "experiment=voting/rafdb", "dataset=synthetic", "dataset.image_size=24")
    )
    with pytest.raises(UserError, match=r"method\.init_from must be given.*AffectNet.*init_from=none"):
        build_parts(cfg)
    proc = run_cli(
        [
            "train.py",
            "experiment=voting/rafdb",
            "dataset=synthetic",
            f"paths.cache_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "method.init_from" in errors[0]


def test_voting_rafdb_accepts_an_explicit_none(tmp_path):
    overrides = tiny(tmp_path, "experiment=voting/rafdb", "dataset=synthetic", "dataset.image_size=24")
    parts = build_parts(compose_cfg(*overrides, "method.init_from=none"))
    assert parts.method.init_from is None


def test_efc_kdef_trains_efc_on_a_kdef_folder(tmp_path):
    """Must-show: ``python train.py experiment=efc/kdef dataset=kdef dataset.root=...`` trains EFC."""
    subjects = [f"F{i:02d}" for i in range(1, 6)] + [f"M{i:02d}" for i in range(1, 6)]
    root = write_kdef(tmp_path / "data", subjects=subjects, angles=("S",))
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "train.py",
            "experiment=efc/kdef",
            "dataset=kdef",
            f"dataset.root={root}",
            "dataset.image_size=40",
            "trainer.max_epochs=1",
            "trainer.device=cpu",
            "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = OmegaConf.to_container(OmegaConf.load(run_dir / "metrics.json"))
    assert metrics["method"] == "efc" and metrics["dataset"] == "kdef"
    assert list(metrics["test"]) == ["32px"]
    assert metrics["model_selection"]["mode"] == "last_epoch"  # efc/kdef: no validation split
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert cfg.dataset.fold_mode == "image" and cfg.dataset.val_fraction == 0.0


# -- slow: every experiment, one epoch on tiny synthetic faces of its image size --------
def _synthetic_experiment(name: str, tmp: Path):
    extra = ["method.init_from=none"] if name.startswith("voting/rafdb") else []
    cfg = compose_cfg(
        f"experiment={name}",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.batch_size=8",
        "trainer.eval_batch_size=16",
        "trainer.num_threads=2",
        "logger=none",
        f"paths.cache_dir={tmp / 'cache'}",
        *extra,
    )
    syn = compose_cfg(
        "dataset=synthetic",
        f"dataset.image_size={cfg.dataset.image_size}",
        "dataset.num_train=24",
        "dataset.num_val=8",
        "dataset.num_test=8",
    ).dataset
    OmegaConf.set_struct(cfg, False)
    for key in ("val_fraction", "sampler", "mean", "std"):
        syn[key] = cfg.dataset[key]
    if syn.val_fraction and syn.val_fraction * 24 < 1:
        syn.val_fraction = 0.25
    cfg.dataset = syn
    if cfg.get("model") is not None:
        cfg.model.pretrained = False  # no download in tests
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(3600)  # one epoch of the paper-sized networks (FSR-FER's GAN, voting): many minutes
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_experiment_trains_one_epoch_on_tiny_synthetic_faces(name, tmp_path):
    """A smoke test (the settings themselves are checked by
    test_every_setting_an_experiment_names_is_what_its_run_gets): the experiment's method, model and
    degradations train one epoch and test every degradation the experiment names, on all 8 test faces."""
    cfg = _synthetic_experiment(name, tmp_path)
    threads = torch.get_num_threads()
    try:
        metrics = run_training(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert metrics["method"] == expected_method(name)
    assert list(metrics["test"]) == [str(label) for label in cfg.degrade.test]
    for row in metrics["test"].values():
        assert row["n"] == 8 and sum(map(sum, row["confusion"])) == 8
