"""Every config option composes; typos and unknown choices fail at start-up with a clear message."""

from __future__ import annotations

import pytest
from conftest import compose_cfg, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from lrfer.cli import CONFIG_DIR
from lrfer.config.schema import auto_bool_keys, parse_auto_bool, resolve_auto_bool
from lrfer.config.validate import validate_config
from lrfer.core.errors import UserError

GROUPS = ["method", "model", "dataset", "trainer", "degrade", "augment", "logger", "paths", "launcher"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_cfg(f"{group}={option}")
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.seed == 0
    validate_config(cfg)  # and every value is in range


def _experiments() -> list[str]:
    return sorted(
        str(p.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
        for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
    )


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    OmegaConf.resolve(cfg)
    validate_config(cfg)


def test_defaults_are_the_quick_start():
    cfg = compose_cfg()
    assert (cfg.method.name, cfg.dataset.name) == ("baseline", "synthetic")
    assert list(cfg.degrade.train) == ["x1"]
    assert cfg.trainer.device == "auto" and cfg.trainer.resume is False


def test_misspelt_trainer_key_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg("trainer.max_epoch=3")


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("trainer.batch_size=lots")


def test_degrade_and_dataset_are_schema_checked():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg("degrade.trian=[x2]")
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg("dataset.rot=/data")


def test_unknown_method_lists_the_choices():
    proc = run_cli(["train.py", "method=nosuchmethod"])
    assert proc.returncode != 0
    assert "nosuchmethod" in proc.stderr and "baseline" in proc.stderr  # the available options are listed
    assert "Traceback" not in proc.stderr


def test_unknown_dataset_lists_the_choices():
    proc = run_cli(["train.py", "dataset=nosuchdata"])
    assert proc.returncode != 0
    assert "synthetic" in proc.stderr and "Traceback" not in proc.stderr


# -- auto | true | false options (issue 17) --------
AUTO_BOOL_KEYS = auto_bool_keys()


def test_every_documented_auto_bool_option_is_typed_as_one():
    assert {"trainer.channels_last", "trainer.progress", "dataset.on_device"} <= set(AUTO_BOOL_KEYS)


@pytest.mark.parametrize("key", AUTO_BOOL_KEYS)
@pytest.mark.parametrize("word,expected", [("true", True), ("false", False), ("auto", None), ("null", None)])
def test_auto_bool_options_take_true_false_and_auto(key, word, expected):
    cfg = compose_cfg(f"{key}={word}")  # as typed on the command line
    assert parse_auto_bool(OmegaConf.select(cfg, key), key) is expected
    group, name = key.split(".", 1)
    from_yaml = OmegaConf.merge(compose_cfg(), OmegaConf.create(f"{group}:\n  {name}: {word}\n"))
    assert parse_auto_bool(OmegaConf.select(from_yaml, key), key) is expected  # as written in a YAML file
    assert resolve_auto_bool(OmegaConf.select(cfg, key), auto=True, key=key) is (
        True if expected is None else expected
    )


@pytest.mark.parametrize("value", ["maybe", 2, 0.5])
def test_an_auto_bool_option_refuses_other_values_in_one_line(value):
    with pytest.raises(UserError, match=r"trainer\.channels_last must be auto, true or false"):
        parse_auto_bool(value, "trainer.channels_last")
