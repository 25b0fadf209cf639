"""Where a committed result came from: the command, the date, the machine, torch and the face generator.

Every results JSON a script writes for ``experiments/`` carries :func:`provenance` under the key
``"provenance"`` (``tests/test_provenance.py`` checks the committed files), so a figure quoted in a README can
be traced to the command and the machine that produced it.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timezone

import torch

from lrfer.data.synthetic import GENERATOR_VERSION
from lrfer.tools.latency import cpu_model

#: The fields every committed results file's provenance holds (``generator_version`` where faces are drawn).
REQUIRED = ("command", "date", "machine", "torch")


def portable_path(arg: str, cwd: str | None = None) -> str:
    """``arg`` with an absolute path inside the parent of ``cwd`` (default: the working directory; so the
    checkout and the folders beside it) made relative to ``cwd``: in place of a whole argument, of the value
    of ``--option=path`` or of a Hydra ``key=path``. A committed command then names no folder of the machine
    that ran it, and still runs from the same place. Other absolute paths (`/tmp/...`, `/data/...`) stay."""
    head, sep, value = arg.rpartition("=") if "=" in arg else ("", "", arg)
    here = os.path.abspath(cwd or os.getcwd())
    parent = os.path.dirname(here)
    if not os.path.isabs(value) or os.path.commonpath([parent, value]) != parent:
        return arg
    return f"{head}{sep}{os.path.relpath(value, here)}"


def portable_command(argv: list[str], cwd: str | None = None) -> str:
    """The command line ``argv`` (program first), every absolute path made relative (:func:`portable_path`),
    quoted for a shell."""
    return shlex.join([portable_path(arg, cwd) for arg in argv])


def script_command(script: str, argv: list[str] | None = None) -> str:
    """``python <script> <arguments>`` of this call as results record it (``argv``, default ``sys.argv[1:]``):
    absolute paths made relative (:func:`portable_path`), the arguments joined as given."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, *(portable_path(arg) for arg in given)])


def provenance(synthetic: bool = False) -> dict:
    """The command line of this process, the UTC time now, CPU model and cores, torch (and generator) version.

    ``synthetic=True`` adds ``generator_version`` (:data:`lrfer.data.synthetic.GENERATOR_VERSION`): results on
    generated faces change when the generator does.
    """
    record = {
        "command": portable_command(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        record["machine"]["gpu"] = torch.cuda.get_device_name()
    if synthetic:
        record["generator_version"] = GENERATOR_VERSION
    return record


def provenance_line(record: dict) -> str:
    """``record`` as the ``Provenance:`` line under a markdown table (tests/test_provenance.py reads it)."""
    machine = record.get("machine", {})
    parts = [
        f"command `{record.get('command', 'not recorded')}`",
        f"date {record.get('date', 'not recorded')}",
        f"machine {machine.get('cpu', 'not recorded')} ({machine.get('cores', '?')} cores"
        + (f", {machine['gpu']}" if machine.get("gpu") else "")
        + ")",
        f"torch {record.get('torch', 'not recorded')}",
    ]
    if "generator_version" in record:
        parts.append(f"synthetic-face generator v{record['generator_version']}")
    return "Provenance: " + "; ".join(parts) + "."
