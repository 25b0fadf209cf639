"""Checkpoint files (lrfer.core.checkpoint): atomic writes, verified reads, split last.pt, run folders.

Specifications of what a user relies on: a write either replaces the file whole or leaves the previous one
(never half a file, never a stray temporary), what is read back is checked to be an lrfer checkpoint before
anything uses it, a mid-stage ``last.pt`` reads back as the whole method, and a run folder names the
checkpoint the documentation says (``best.pt``, else ``last.pt``).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import lrfer.core.checkpoint as ckpt
from lrfer.core.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    remove_orphan_temporaries,
    resolve_run_checkpoint,
    save_checkpoint,
    write_json,
)
from lrfer.core.errors import UserError


class Boom(RuntimeError):
    pass


def test_a_checkpoint_reads_back_as_written_and_is_the_only_file_left(tmp_path):
    state = {"method": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_checkpoint(state, tmp_path / "run" / "last.pt")  # the folder is created
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]
    back = load_checkpoint(tmp_path / "run" / "last.pt", require=("method", "epoch"))
    assert back["epoch"] == 3 and torch.equal(back["method"]["w"], state["method"]["w"])


def test_a_write_that_fails_midway_keeps_the_previous_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"method": {"w": torch.ones(3)}}, path)

    def half_then_fail(f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise Boom("killed while writing")

    with pytest.raises(Boom):
        atomic_write_bytes(path, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert torch.equal(load_checkpoint(path)["method"]["w"], torch.ones(3))


def test_an_interrupt_while_writing_also_removes_the_temporary(tmp_path):
    """Ctrl-C (a BaseException, not an Exception) during a write: no temporary file is left behind."""

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "last.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_the_data_is_on_disk_before_the_file_takes_its_name(tmp_path, monkeypatch):
    """Durability: the temporary is flushed and fsynced, and only then renamed over the target."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_json({"a": 1}, tmp_path / "metrics.json")
    assert events == ["fsync", "replace"]


def test_a_temporary_name_already_taken_is_never_reused(tmp_path, monkeypatch):
    """Two writers (or a leftover file) with the same temporary name: the second picks another name and
    leaves the other file alone."""
    tokens = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(ckpt.secrets, "token_hex", lambda n: next(tokens))
    taken = tmp_path / f".last.pt.tmp-{os.getpid()}-aaaaaaaa"
    save_checkpoint({"method": {}}, tmp_path / "first.pt")  # uses aaaaaaaa (free at that time)
    taken.write_bytes(b"another writer's data")
    save_checkpoint({"method": {"x": torch.zeros(1)}}, tmp_path / "last.pt")  # aaaaaaaa taken: bbbbbbbb
    assert taken.read_bytes() == b"another writer's data"
    assert "x" in load_checkpoint(tmp_path / "last.pt")["method"]


def test_write_json_writes_indented_json_with_a_final_newline(tmp_path):
    obj = {"test": {"x1": {"acc": 0.5}}, "order": [3, 1, 2]}
    write_json(obj, tmp_path / "metrics.json")
    text = (tmp_path / "metrics.json").read_text()
    assert text == json.dumps(obj, indent=2) + "\n"
    assert list(json.loads(text)) == ["test", "order"]  # the keys keep their order


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ([1, 2, 3], "a list, not a dict"),
        ({"weights": torch.ones(1)}, "no 'method'"),
        ({"method": torch.ones(1)}, "a Tensor as its method weights"),
    ],
    ids=["not-a-dict", "no-method", "method-not-a-dict"],
)
def test_a_file_of_another_structure_is_refused_in_one_line_naming_what_it_holds(tmp_path, content, needle):
    torch.save(content, tmp_path / "best.pt")
    with pytest.raises(UserError, match="is not an lrfer checkpoint") as err:
        load_checkpoint(tmp_path / "best.pt")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_required_key_that_is_missing_is_named(tmp_path):
    torch.save({"method": {}, "epoch": 1}, tmp_path / "last.pt")
    with pytest.raises(UserError, match=r"no 'optimizers', 'schedulers'"):
        load_checkpoint(tmp_path / "last.pt", require=("method", "optimizers", "epoch", "schedulers"))
    assert load_checkpoint(tmp_path / "last.pt", require=("epoch",))["epoch"] == 1


def test_a_missing_or_corrupt_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "best.pt")
    (tmp_path / "best.pt").write_bytes(b"\x00garbage, not a checkpoint")
    try:
        torch.load(tmp_path / "best.pt", weights_only=True)
    except Exception as err:  # what torch says, named in the one line
        reason = type(err).__name__
    with pytest.raises(UserError, match=rf"cannot be read \({reason}\): it is corrupt"):
        load_checkpoint(tmp_path / "best.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "folder.pt")


def test_a_checkpoint_holding_arbitrary_objects_is_not_executed_but_refused(tmp_path):
    """weights_only: a pickle of an arbitrary class (code a file could run) is not loaded."""
    torch.save({"method": {}, "payload": Boom("x")}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "last.pt")


def _split_last(tmp_path, base_stage: int = 1):
    """A mid-stage last.pt holding only what its stage changes, and the stage_start.pt it names."""
    save_checkpoint(
        {"stage_index": base_stage, "method": {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}},
        tmp_path / "stage_start.pt",
    )
    save_checkpoint(
        {
            "stage_index": 1,
            "epoch": 2,
            "method": {"b": torch.tensor(3.0), "c": torch.tensor(4.0)},
            "method_base": "stage_start.pt",
        },
        tmp_path / "last.pt",
    )


def test_a_mid_stage_last_pt_reads_back_as_the_whole_method(tmp_path):
    _split_last(tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    assert "method_base" not in state and state["epoch"] == 2
    assert {k: v.item() for k, v in state["method"].items()} == {"a": 1.0, "b": 3.0, "c": 4.0}
    assert list(state["method"]) == ["a", "b", "c"]  # the whole method's order, then the stage's own keys


def test_a_last_pt_whose_stage_start_belongs_to_another_stage_is_refused(tmp_path):
    _split_last(tmp_path, base_stage=0)
    with pytest.raises(UserError, match=r"continues stage 1 but .*stage_start\.pt is the start of stage 0"):
        load_checkpoint(tmp_path / "last.pt")


def test_a_last_pt_whose_stage_start_is_gone_is_refused(tmp_path):
    _split_last(tmp_path)
    (tmp_path / "stage_start.pt").unlink()
    with pytest.raises(UserError, match=r"stage_start\.pt does not exist"):
        load_checkpoint(tmp_path / "last.pt")


def test_a_run_folder_names_its_best_checkpoint_else_its_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"init_from=.* folder without checkpoints/best\.pt or last\.pt"):
        resolve_run_checkpoint(run, "init_from")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resolve_run_checkpoint(run) == run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    assert resolve_run_checkpoint(run) == run / "checkpoints" / "best.pt"
    assert resolve_run_checkpoint(str(run / "checkpoints" / "last.pt")) == run / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match=r"teacher=.*missing\.pt does not exist"):
        resolve_run_checkpoint(tmp_path / "missing.pt", "teacher")


def test_only_temporaries_of_killed_writes_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphans = [".last.pt.tmp-123-0a1b2c3d", ".best.pt.Ab_9xYz0", ".metrics.json.tmp-7-ff"]
    kept = [
        "last.pt",
        "best.pt",
        ".hidden",
        "notes.pt.tmp-1-ab",
        ".last.pt.tmp-x-ab",
        ".best.pt.short",
        ".a.txt.abcdefgh",
    ]
    for name in orphans + kept:
        (folder / name).write_bytes(b"x")
    (folder / ".sub.pt.tmp-1-ab").mkdir()  # a folder, even with such a name, is not a temporary file
    removed = remove_orphan_temporaries([tmp_path / "absent", folder])  # a missing folder is skipped
    assert sorted(p.name for p in removed) == sorted(orphans)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*kept, ".sub.pt.tmp-1-ab"])
