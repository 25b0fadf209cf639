"""Import torchvision even when its compiled operators cannot load.

PyPI ships torchvision built against CUDA torch only. Next to a CPU build of torch (the usual set-up on
a CPU-only machine), torchvision's C extension fails to load, and torchvision's ``__init__`` then fails on
``register_fake("torchvision::nms")`` because that operator's schema was never defined. lrfer uses only
torchvision's pure-Python model definitions and image utilities, never its compiled detection operators,
so when the extension is missing we define the two schemas that import needs (with no kernels: calling
them raises) and import again.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_placeholder_library: torch.library.Library | None = None


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, working around a torchvision build whose C ops cannot load."""
    global _placeholder_library
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _placeholder_library is None:
        _placeholder_library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _placeholder_library.define(schema)
    return importlib.import_module("torchvision")


torchvision = import_torchvision()
