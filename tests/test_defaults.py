"""One source of defaults: where Python and the YAML configs both give a default, they agree.

* Every method config (``configs/method/*.yaml`` that names a ``_target_``) sets exactly the keyword
  arguments of its method class (followed through the ``**options`` a class hands on to its base class or
  network), and a Python default of any of them equals the file's value. Method classes take their options
  without defaults, so the YAML file is where a method's defaults live.
* The trainer, degrade and augment schemas (``lrfer.config.schema``) equal their group's ``default.yaml``
  wherever both give a value, and every dataset's schema equals the dataset's YAML file.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, compose_cfg
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from lrfer.config.schema import AugmentConfig, DegradeConfig, TrainerConfig, schema_node
from lrfer.methods.gmenet import GMENetMethod
from lrfer.models.gmenet import GMENet

CONFIGS = REPO / "configs"
#: Where a method class's ``**options`` go when not to its base class.
FORWARDED: dict[type, type] = {GMENetMethod: GMENet}
#: Arguments the method itself fills in (from the data context), never config keys.
FILLED_IN = {"self", "context", "num_classes", "input_size", "in_channels"}
#: Keys of a method config that are not constructor options.
NOT_OPTIONS = {"_target_", "name"}


def plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that a Python default compares with a YAML list."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def method_files() -> list[str]:
    """The method configs that name their class (``gmenet_paper`` only resizes ``gmenet``'s network)."""
    names = []
    for path in sorted((CONFIGS / "method").glob("*.yaml")):
        raw = OmegaConf.load(path)
        node = raw.get("method", raw) if "_target_" not in raw else raw
        if "_target_" in node:
            names.append(path.stem)
    return names


def constructor_options(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``cls(context, **options)`` takes, through every ``**options`` it hands on."""
    options: dict[str, inspect.Parameter] = {}
    target: type | None = cls
    while target is not None:
        params = inspect.signature(target.__init__).parameters.values()
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in FILLED_IN:
                options.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
        target = FORWARDED.get(target) or next(k for k in target.__mro__[1:] if "__init__" in vars(k))
    return options


def method_config(name: str) -> dict[str, Any]:
    """``method=<name>`` as composed (experiment-free), without the keys that are not options."""
    node = OmegaConf.to_container(compose_cfg(f"method={name}").method, resolve=True)
    return {k: v for k, v in node.items() if k not in NOT_OPTIONS}


def disagreements(schema: DictConfig, yaml: DictConfig, prefix: str) -> list[str]:
    """``key: schema value != yaml value`` for every key both give a value (nested nodes followed)."""
    out = []
    for key in yaml:
        if key == "defaults" or key not in schema or OmegaConf.is_missing(schema, key):
            continue
        mine, theirs = schema[key], yaml[key]
        if isinstance(mine, DictConfig) and isinstance(theirs, DictConfig):
            out += disagreements(mine, theirs, f"{prefix}{key}.")
            continue
        a, b = (plain(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v) for v in (mine, theirs))
        if a != b:
            out.append(f"{prefix}{key}: schema {a!r} != yaml {b!r}")
    return out


def dataset_schema(path: Path) -> str:
    """The schema a dataset YAML names in its defaults list (``/schema/dataset@_here_: <name>``)."""
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, DictConfig) and "/schema/dataset@_here_" in entry:
            return str(entry["/schema/dataset@_here_"])
    raise AssertionError(f"{path} names no dataset schema")


@pytest.mark.parametrize("name", method_files())
def test_method_config_sets_exactly_the_constructor_options(name):
    cls = get_class(str(compose_cfg(f"method={name}").method._target_))
    options = constructor_options(cls)
    keys = set(method_config(name))
    assert not keys - set(options), f"{name}.yaml keys {cls.__name__} does not take: {keys - set(options)}"
    assert not set(options) - keys, f"{cls.__name__} options missing from {name}.yaml: {set(options) - keys}"


@pytest.mark.parametrize("name", method_files())
def test_python_defaults_of_a_method_equal_its_config(name):
    config = method_config(name)
    cls = get_class(str(compose_cfg(f"method={name}").method._target_))
    wrong = [
        f"{key}: python {plain(p.default)!r} != yaml {config[key]!r}"
        for key, p in constructor_options(cls).items()
        if p.default is not inspect.Parameter.empty and key in config and plain(p.default) != config[key]
    ]
    assert not wrong, f"{cls.__name__} vs configs/method/{name}.yaml: {wrong}"


@pytest.mark.parametrize(
    ("group", "schema"), [("trainer", TrainerConfig), ("degrade", DegradeConfig), ("augment", AugmentConfig)]
)
def test_schema_defaults_equal_the_default_yaml(group, schema):
    yaml = OmegaConf.load(CONFIGS / group / "default.yaml")
    wrong = disagreements(OmegaConf.structured(schema), yaml, f"{group}.")
    assert not wrong, f"lrfer.config.schema.{schema.__name__} vs configs/{group}/default.yaml: {wrong}"


@pytest.mark.parametrize("path", sorted((CONFIGS / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_schema_defaults_equal_the_dataset_yaml(path):
    schema = schema_node("dataset", dataset_schema(path))
    wrong = disagreements(OmegaConf.structured(schema), OmegaConf.load(path), "dataset.")
    assert not wrong, f"{schema.__name__} vs configs/dataset/{path.name}: {wrong}"


def test_every_method_config_is_checked():
    """A method config without ``_target_`` must extend one that has it (as gmenet_paper extends gmenet)."""
    checked = set(method_files())
    for path in (CONFIGS / "method").glob("*.yaml"):
        if path.stem not in checked:
            parents = [d for d in OmegaConf.load(path).get("defaults", []) if isinstance(d, str)]
            assert set(parents) & checked, f"{path.name} names no class and extends no checked method config"


def test_a_run_made_before_a_method_option_existed_still_loads(tmp_path, caplog):
    from lrfer.engine.loading import load_run_config

    cfg = compose_cfg("method=isr")
    old = OmegaConf.to_container(cfg)
    del old["method"]["sr_gamma"]  # an option added after the run was made
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / ".hydra" / "config.yaml")
    loaded = load_run_config(tmp_path)
    assert loaded.method.sr_gamma == cfg.method.sr_gamma
    assert "sr_gamma" in caplog.text
