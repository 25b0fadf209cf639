"""DRGFER's joint-expert mode: Table 3's DRGFER x4 / x6 cells equal models trained on x1&x2&x4 / x1..x6."""

from __future__ import annotations

import pytest
from conftest import compose_cfg, method_options

from lrfer.core.errors import UserError
from lrfer.engine.run import method_context
from lrfer.methods.drgfer import DRGFER

TINY_MODEL = "model._target_=multires_toys.tiny_classifier"


def _expert_stages(expert_data: str) -> dict[str, tuple[list[str], list[str]]]:
    context = method_context(compose_cfg("method=drgfer", "dataset.image_size=32", TINY_MODEL))
    method = DRGFER(context, **{**method_options("drgfer"), "expert_data": expert_data})
    return {s.name: (s.train_degrade, s.val_degrade) for s in method.stages() if s.name != "rrn"}


def test_cumulative_experts_train_on_every_listed_resolution_up_to_their_own():
    joint = _expert_stages("cumulative")
    assert joint["expert_x1"] == (["x1"], ["x1"])
    assert joint["expert_x4"] == (["x1", "x2", "x4"], ["x4"])
    assert joint["expert_x6"] == (["x1", "x2", "x4", "x6"], ["x6"])
    assert joint["expert_x8"] == (["x1", "x2", "x4", "x6", "x8"], ["x8"])


def test_own_experts_by_default_and_unknown_modes_refused():
    assert compose_cfg("method=drgfer").method.expert_data == "own"
    assert _expert_stages("own")["expert_x4"] == (["x4"], ["x4"])
    with pytest.raises(UserError, match="expert_data 'joint': choose own or cumulative"):
        _expert_stages("joint")
