"""A paper-table experiment run without the paper's initialisation says so in one warning line."""

from __future__ import annotations

import logging

import pytest
from conftest import compose_cfg

from lrfer.config.validate import paper_init_warning, validate_config


@pytest.mark.parametrize("experiment", ["drgfer/rafdb", "drgfer/ferplus"])
def test_drgfer_tables_without_model_weights_warn_of_the_imagenet_fallback(experiment, caplog):
    cfg = compose_cfg(f"experiment={experiment}")
    with caplog.at_level(logging.WARNING):
        warnings = validate_config(cfg).warnings
    line = paper_init_warning(cfg)
    assert line in warnings and line in caplog.text and "\n" not in line
    assert line.startswith("model.weights is unset") and "ImageNet" in line and "MS-Celeb-1M" in line


@pytest.mark.parametrize("method", ["drgfer", "rabn", "baseline"])
def test_no_warning_once_the_paper_initialisation_is_given(method):
    cfg = compose_cfg(
        "experiment=drgfer/rafdb", f"method={method}", "model.weights=/weights/resnet18_msceleb.pth"
    )
    assert paper_init_warning(cfg) is None
    assert not any("initialisation" in w for w in validate_config(cfg, warn=False).warnings)


def test_the_baselines_of_the_table_warn_too_and_runs_outside_paper_tables_never():
    assert paper_init_warning(compose_cfg("experiment=drgfer/rafdb", "method=rabn")) is not None
    assert paper_init_warning(compose_cfg("method=drgfer")) is None  # no paper_init block: a quick run
    assert paper_init_warning(compose_cfg("experiment=drgfer/rafdb", "model.weights=null")) is not None


def test_fsrfer_tables_warn_without_the_covpoolfer_extractor_and_its_own_run_does_not():
    for experiment in ("fsrfer/rafdb", "fsrfer/rafdb_official", "fsrfer/rafdb_isr"):
        line = paper_init_warning(compose_cfg(f"experiment={experiment}"))
        assert line is not None and line.startswith("method.extractor_weights is unset"), experiment
    assert (
        paper_init_warning(compose_cfg("experiment=fsrfer/rafdb", "method.extractor_weights=runs/cp")) is None
    )
    assert paper_init_warning(compose_cfg("experiment=fsrfer/rafdb_covpoolfer_isr")) is None
