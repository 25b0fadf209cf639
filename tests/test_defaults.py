"""One source of defaults: where Python and the YAML configs both give a default, they agree.

* Every method config (``configs/method/*.yaml`` that names a ``_target_``) sets exactly the keyword
  arguments of its method class (followed through the ``**options`` a class hands on to its base class or
  network), and none of them has a Python default: the YAML file is where a method's defaults live.
* The schemas (``lrfer.config.schema``, the dataset adapters' and the face detector's) hold types only: no
  field has a value in Python, and every option file of the trainer, degrade, augment, logger, paths and
  dataset groups gives every schema field a value.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from conftest import REPO, compose_cfg
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf

from lrfer.config.schema import schema_nodes
from lrfer.detect.detectors import DetectorConfig
from lrfer.detect.tracking import TrackerConfig
from lrfer.methods.gmenet import GMENetMethod
from lrfer.models.gmenet import GMENet
from lrfer.tools.photos import detector_config
from lrfer.tools.video import VideoOptions, video_options

CONFIGS = REPO / "configs"
#: Where a method class's ``**options`` go when not to its base class.
FORWARDED: dict[type, type] = {GMENetMethod: GMENet}
#: Arguments the method itself fills in (from the data context), never config keys.
FILLED_IN = {"self", "context", "num_classes", "input_size", "in_channels"}
#: Keys of a method config that are not constructor options.
NOT_OPTIONS = {"_target_", "name"}


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


def group_options(group: str) -> list[str]:
    """``<group>=<option>`` for every option file of a config group."""
    return [f"{group}={p.stem}" for p in sorted((CONFIGS / group).glob("*.yaml"))]


@pytest.mark.parametrize("name", method_files())
def test_method_config_sets_exactly_the_constructor_options(name):
    cls = get_class(str(compose_cfg(f"method={name}").method._target_))
    options = constructor_options(cls)
    keys = set(method_config(name))
    assert not keys - set(options), f"{name}.yaml keys {cls.__name__} does not take: {keys - set(options)}"
    assert not set(options) - keys, f"{cls.__name__} options missing from {name}.yaml: {set(options) - keys}"


@pytest.mark.parametrize("name", method_files())
def test_a_method_option_has_no_python_default(name):
    """configs/method/<name>.yaml is the one place a method's (and its network's) defaults live."""
    cls = get_class(str(compose_cfg(f"method={name}").method._target_))
    defaults = {k: p.default for k, p in constructor_options(cls).items() if p.default is not p.empty}
    assert not defaults, f"{cls.__name__} gives defaults in Python (set them in configs/method/{name}.yaml)"


@pytest.mark.parametrize(
    "option",
    [o for g in ("trainer", "degrade", "augment", "logger", "paths", "dataset") for o in group_options(g)],
)
def test_every_schema_field_has_a_yaml_value(option):
    """The schemas are types only (``MISSING``): every group option's YAML gives each field its value."""
    group = option.split("=")[0]
    missing = sorted(OmegaConf.missing_keys(compose_cfg(option)[group]))
    assert not missing, f"configs/{group}/{option.split('=')[1]}.yaml gives no value to {missing}"


def schema_values(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every field of a schema dataclass (nested ones followed) that has a value other than ``MISSING``."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = f.default
        if dataclasses.is_dataclass(value):
            values.update(schema_values(type(value), f"{prefix}{f.name}."))
        elif value is not dataclasses.MISSING and value != MISSING:
            values[f"{prefix}{f.name}"] = value
    return values


#: Every schema: the registered ones (``<group>/<class>``), the face detector's (``configs/detector/``) and
#: lrfer-predict's video and tracker options (``configs/video/``).
SCHEMAS = {
    **{f"{g}/{c.__name__}": c for g, nodes in schema_nodes().items() for c in nodes.values()},
    "detector/DetectorConfig": DetectorConfig,
    "video/VideoOptions": VideoOptions,
    "video/TrackerConfig": TrackerConfig,
}


def test_the_video_config_gives_every_video_and_tracker_option_a_value():
    """configs/video/default.yaml (with the detector's margin) fills every field of VideoOptions."""
    options = video_options()
    assert not OmegaConf.missing_keys(OmegaConf.structured(options))
    assert (options.margin, options.tracker.min_track) == (detector_config().margin, 15)


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_a_schema_gives_no_value_in_python(schema):
    """A schema holds types only: a value in Python would be a second copy of its YAML's (or one no YAML
    shows)."""
    values = schema_values(SCHEMAS[schema])
    assert not values, (
        f"{schema} gives values in Python (set them in configs/{schema.split('/')[0]}/): {values}"
    )


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


def test_a_da_run_made_before_the_batch_normalised_discriminator_reopens_with_the_mlp_it_trained(tmp_path):
    """An option whose default changed as it was added takes, in an older run, the value that run trained
    with (the method's ``VALUES_BEFORE_OPTIONS``), not today's default: its checkpoint must load."""
    from lrfer.engine.loading import load_run_config

    old = OmegaConf.to_container(compose_cfg("method=da"))
    del old["method"]["disc_batch_norm"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / ".hydra" / "config.yaml")
    assert load_run_config(tmp_path).method.disc_batch_norm is False
