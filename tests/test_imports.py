"""Imports of lrfer happen at the top of every module and script: an import hidden inside a function keeps
an import cycle or a wrong-way import from failing at import time. Optional third-party packages (cv2, optuna,
submitit, onnxruntime, matplotlib) may still be imported lazily."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lrfer_imports_inside_functions(source: str) -> list[int]:
    """Line numbers of ``import lrfer...`` / ``from lrfer... import`` statements inside a function body."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                names = [inner.module]
            elif isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            else:
                continue
            if any(name == "lrfer" or name.startswith("lrfer.") for name in names):
                lines.append(inner.lineno)
    return sorted(set(lines))


def test_the_scan_finds_an_lrfer_import_inside_a_function():
    source = "import os\n\ndef f():\n    from lrfer.core import errors\n    import lrfer.data\n"
    assert lrfer_imports_inside_functions(source) == [4, 5]


def test_the_scan_accepts_lazy_optional_imports_and_top_level_lrfer_imports():
    source = "from lrfer.core import errors\n\ndef f():\n    import cv2\n    from optuna import trial\n"
    assert lrfer_imports_inside_functions(source) == []


def test_no_lrfer_import_inside_a_function_in_the_library_or_the_scripts():
    files = [*sorted((REPO / "src" / "lrfer").rglob("*.py")), *sorted((REPO / "scripts").glob("*.py"))]
    files.append(REPO / "train.py")
    found = {
        str(path.relative_to(REPO)): lines
        for path in files
        if (lines := lrfer_imports_inside_functions(path.read_text(encoding="utf-8")))
    }
    assert found == {}
