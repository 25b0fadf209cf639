"""Nothing lost, nothing silent (issue 16): protected run folders, a verified cache, validated values, images.

The tests here build no network and train nothing (run folders are made by hand), so they are fast; the
end-to-end versions through the command line, which train, are in ``test_reliability_cli.py`` (slow).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, tiny
from omegaconf import OmegaConf
from PIL import Image

from lrfer.config.validate import validate_config
from lrfer.core.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint, write_json
from lrfer.core.errors import UserError, disk_error
from lrfer.data.cache import cache_path, load_or_build, read_cache, write_cache
from lrfer.data.datasets import build_adapter
from lrfer.data.datasets.common import decode_image
from lrfer.data.images import to_square
from lrfer.engine.loading import load_run_config
from lrfer.engine.optim import EpochScheduler
from lrfer.engine.run import run_training
from lrfer.engine.runfolder import claim_new_dir, open_run_folder, run_identity, start_fresh_log
from lrfer.engine.runlock import LOCK_FILE, acquire


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    """One composed tiny config; tests copy it and change what they need."""
    return compose_cfg(
        *tiny(tmp_path_factory.mktemp("cfg")),
        "dataset.num_train=28",
        "dataset.num_val=14",
        "dataset.num_test=14",
        "dataset.image_size=16",
    )


def _with(cfg, **values):
    cfg = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _finished_run(run_dir: Path, cfg) -> None:
    """A run folder as a finished training leaves it (small stand-in files, the real structure)."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "train.log").write_text("[...] epoch 1/1\n")
    write_json({"method": "baseline", "test": {}}, run_dir / "metrics.json")
    state = {"version": 1, "method": {"w": torch.ones(2)}, "config": run_identity(cfg)}
    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")


# -- run folders --------
def test_training_again_into_a_finished_run_is_refused_and_changes_nothing(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    before = _checksums(run_dir)
    with pytest.raises(UserError, match=r"already holds a run .*resume=true.*overwrite=true"):
        run_training(base_cfg, run_dir)
    assert _checksums(run_dir) == before


def test_a_run_killed_in_its_first_epoch_is_a_run_too(base_cfg, tmp_path):
    """A folder with ``checkpoints/last.pt`` but no ``metrics.json`` (killed before it finished) holds a
    resumable run: training into it again is refused and nothing in it changes; resume is accepted."""
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    (run_dir / "metrics.json").unlink()
    (run_dir / "checkpoints" / "best.pt").unlink()
    before = _checksums(run_dir)
    with pytest.raises(UserError, match="already holds a run"):
        run_training(base_cfg, run_dir)
    assert _checksums(run_dir) == before
    open_run_folder(_with(base_cfg, trainer__resume=True), run_dir)


def test_overwrite_replaces_the_previous_results_explicitly(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    open_run_folder(_with(base_cfg, trainer__overwrite=True), run_dir)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()
    with pytest.raises(UserError, match="choose one"):
        open_run_folder(_with(base_cfg, trainer__overwrite=True, trainer__resume=True), run_dir)


def test_overwrite_leaves_nothing_of_the_previous_run(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    (run_dir / "eval_test.json").write_text("{}")  # lrfer-evaluate
    (run_dir / "export").mkdir()  # scripts/export.py
    (run_dir / "export" / "model.pt").write_bytes(b"x")
    (run_dir / ".hydra-resumes" / "2026-01-01_00-00-00").mkdir(parents=True)  # a resumed invocation
    open_run_folder(_with(base_cfg, trainer__overwrite=True), run_dir)
    assert start_fresh_log(run_dir)  # what the run guard does before the new run logs
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "train.log"]  # .hydra: Hydra rewrites it
    assert (run_dir / "train.log").read_text() == ""


def test_a_resume_with_another_method_is_refused_in_one_line_before_anything_is_written(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    before = _checksums(run_dir)
    other = _with(base_cfg, trainer__resume=True)
    other.method = OmegaConf.create({"_target_": "lrfer.methods.efc.EFC", "name": "efc", "epochs": 50})
    with pytest.raises(UserError, match=r"cannot resume .*method\.name=baseline \(now efc\)") as err:
        run_training(other, run_dir)
    assert "\n" not in str(err.value)
    assert _checksums(run_dir) == before
    # a longer run of the same method is not a difference
    open_run_folder(_with(base_cfg, trainer__resume=True, method__epochs=99, trainer__max_epochs=99), run_dir)


def test_an_orphan_temporary_checkpoint_is_removed_on_the_next_start(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    orphan = run_dir / "checkpoints" / ".last.pt.tmp-123-abcd1234"  # a kill during the first write of last.pt
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a checkpoint")
    old_style = run_dir / "checkpoints" / ".best.pt.x1y2z3w4"  # what tempfile.mkstemp used to name them
    old_style.write_bytes(b"")
    open_run_folder(base_cfg, run_dir)
    assert not orphan.exists() and not old_style.exists()


def test_a_second_run_cannot_take_the_lock_of_a_folder_in_use(tmp_path):
    first = acquire(tmp_path / "run")
    owner = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on host ") as err:
        acquire(tmp_path / "run")
    assert "\n" not in str(err.value)
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # the run ended: the folder is free again
    acquire(tmp_path / "run").release()


def test_the_lock_of_a_run_that_is_gone_is_broken_with_a_log_line(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="lrfer.engine.runlock"):
        lock = acquire(tmp_path)
    assert f"left by a run that is gone (pid {dead.pid} on host {socket.gethostname()}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_written_on_another_host_is_not_broken(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-node"}))
    refused = r"locked by a run on another host \(pid 1 on host another-node\).*delete"
    with pytest.raises(UserError, match=refused):
        acquire(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "another-node"


@contextlib.contextmanager
def killed_at_exit(procs: list):
    """Start forked test processes; at the end, wait a minute for each, then kill what is left (a child that
    hangs must fail its test, not keep the test worker from exiting)."""
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()


def _claim(base: str, queue) -> None:
    queue.put(claim_new_dir(base))


def test_runs_that_claim_one_default_folder_at_once_get_distinct_folders(tmp_path):
    base = str(tmp_path / "outputs" / "2026-12-06_06-00-00")  # the same second for every run
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(base, queue), daemon=True) for _ in range(3)]
    with killed_at_exit(procs):
        claimed = sorted(queue.get(timeout=60) for _ in procs)
    assert claimed == [base, f"{base}_2", f"{base}_3"]
    assert all(Path(c).is_dir() for c in claimed)


def test_an_optuna_storage_that_cannot_be_opened_or_is_missing_is_one_line():
    pytest.importorskip("optuna")
    from lrfer.cli.sweep import check_storage, continue_study

    sweeper = {"storage": "nosuchdb://host/study", "study_name": "s", "n_trials": 3}
    with pytest.raises(UserError, match=r"cannot open hydra\.sweeper\.storage=nosuchdb://host/study") as err:
        check_storage(OmegaConf.create({"hydra": {"sweeper": sweeper}}))
    assert "\n" not in str(err.value)
    without = OmegaConf.create({"hydra": {"sweeper": {**sweeper, "storage": None}}})
    with pytest.raises(UserError, match="extends an Optuna study only from its storage"):
        continue_study(without)  # trainer.resume=true with an in-memory study: nothing was kept


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_extending_a_cosine_run_rebuilds_its_schedule_for_the_new_length():
    lr, final = 0.1, 1e-3
    cfg = OmegaConf.create({"name": "cosine", "monitor": "val_acc", "min_lr": final})

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)

    first_opt = optimizer()
    first = EpochScheduler(first_opt, cfg, epochs=1)  # trainer.max_epochs=1
    first.step(None, None)
    stored_opt, stored = first_opt.state_dict(), first.state_dict()
    opt = optimizer()
    extended = EpochScheduler(opt, cfg, epochs=2)  # trainer.max_epochs=2 trainer.resume=true
    opt.load_state_dict(stored_opt)
    message = extended.load_state_dict(stored)
    assert message is not None and "T_max=1" in message and "T_max=2" in message
    extended.step(None, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(final)  # ends where a 2-epoch cosine ends
    straight_opt = optimizer()
    straight = EpochScheduler(straight_opt, cfg, epochs=2)
    straight.step(None, None)
    straight.step(None, None)
    assert opt.param_groups[0]["lr"] == straight_opt.param_groups[0]["lr"]


def test_a_checkpoint_of_the_wrong_structure_is_one_line(tmp_path):
    for content in ([1, 2, 3], {"weights": torch.ones(1)}, {"method": torch.ones(1)}):
        path = tmp_path / "best.pt"
        torch.save(content, path)
        with pytest.raises(UserError, match="is not an lrfer checkpoint") as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)


def test_a_full_disk_while_writing_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.serialization, "_save", full)
    with pytest.raises(UserError, match=r"cannot write .*last\.pt: no space left on the device"):
        save_checkpoint({"method": {}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_torch_save_is_recognised_through_its_wrapped_cause(tmp_path):
    try:
        try:
            raise OSError(27, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    except RuntimeError as wrapped:  # what torch.save raises when the file cannot grow
        err = disk_error(wrapped, tmp_path / "best.pt")
    assert err is not None and "cannot write" in str(err) and "file size limit" in str(err)
    assert disk_error(RuntimeError("a bug"), tmp_path / "best.pt") is None


def test_evaluate_overrides_are_parsed_as_on_hydras_command_line(base_cfg, tmp_path):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, base_cfg)
    cfg = load_run_config(run_dir, ["trainer.eval_batch_size=64", "degrade.test=[x1,x2]", "+extra='7'"])
    assert cfg.trainer.eval_batch_size == 64 and list(cfg.degrade.test) == ["x1", "x2"] and cfg.extra == "7"
    with pytest.raises(UserError, match=r"trainer\.eval_batch_size=0 must be"):
        load_run_config(run_dir, ["trainer.eval_batch_size=0"])
    with pytest.raises(UserError, match="cannot read the overrides"):
        load_run_config(run_dir, ["trainer.eval_batch_size"])


def test_written_files_and_cache_folders_respect_the_umask(base_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "best.pt", lambda f: f.write(b"x"))
        adapter = build_adapter(base_cfg.dataset)
        load_or_build(adapter, tmp_path / "cache")
        entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "best.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert stat.S_IMODE((entry / "manifest.json").stat().st_mode) == 0o644


# -- the cache --------
def _noise(entry: Path) -> None:
    path = entry / "train_images.npy"
    raw = bytearray(path.read_bytes())
    raw[-500:] = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "noise bytes of the same size": _noise,
    "truncated .npy": lambda e: (e / "val_images.npy").write_bytes((e / "val_images.npy").read_bytes()[:300]),
    "garbage manifest": lambda e: (e / "manifest.json").write_text("{ not json"),
    "missing labels file": lambda e: (e / "test_labels.npy").unlink(),
    "labels out of range": lambda e: np.save(e / "test_labels.npy", np.full(14, 99, dtype=np.int64)),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_damaged_cache_is_detected_logged_and_rebuilt(base_cfg, tmp_path, corruption, caplog):
    adapter = build_adapter(base_cfg.dataset)
    clean = load_or_build(adapter, tmp_path / "cache")
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    CORRUPTIONS[corruption](entry)
    with caplog.at_level(logging.WARNING, logger="lrfer.data.cache"):
        again = load_or_build(adapter, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "rebuilding" in warnings[0]
    for data in (again, read_cache(entry)):  # the same faces as before, and a sound entry on disk
        for name, split in clean.splits.items():
            assert torch.equal(data.splits[name].images, split.images)
            assert torch.equal(data.splits[name].labels, split.labels)


def _write_and_read(entry: str, data, fingerprint, rounds: int, queue) -> None:
    failures, digests = 0, set()
    for _ in range(rounds):
        try:
            write_cache(Path(entry), data, fingerprint)
            loaded = read_cache(Path(entry))
            digests.add(hashlib.sha1(loaded.splits["train"].images.numpy().tobytes()).hexdigest())
        except Exception:
            failures += 1
    queue.put((failures, sorted(digests)))


def test_three_processes_writing_and_reading_one_cache_entry_all_succeed(base_cfg, tmp_path):
    adapter = build_adapter(base_cfg.dataset)
    data, fingerprint = adapter.load(), adapter.fingerprint()
    entry = str(cache_path(tmp_path / "cache", adapter.name, fingerprint))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    args = (entry, data, fingerprint, 15, queue)
    procs = [ctx.Process(target=_write_and_read, args=args, daemon=True) for _ in range(3)]
    with killed_at_exit(procs):
        results = [queue.get(timeout=120) for _ in procs]
    assert [failures for failures, _ in results] == [0, 0, 0]
    assert len({d for _, digests in results for d in digests}) == 1  # identical data everywhere
    assert [p.name for p in Path(entry).parent.iterdir()] == [Path(entry).name]  # no temporary left


# -- values --------
INVALID = {
    "trainer.max_epochs": 0,
    "trainer.optimizer.lr": -0.1,
    "method.label_smoothing": 1.0,
    "dataset.image_size": 0,
    "dataset.num_classes": 0,
    "augment.hflip": 2.0,
    "dataset.val_fraction": 1.5,
    "trainer.channels_last": "maybe",
    "degrade.test": ["x0"],
    "objective": "bar",
    "trainer.monitor": "foo",
}


@pytest.mark.parametrize("key", list(INVALID))
def test_an_invalid_value_is_one_line_naming_it(base_cfg, key):
    cfg = base_cfg.copy()
    OmegaConf.update(cfg, key, INVALID[key], merge=False)
    with pytest.raises(UserError) as err:
        validate_config(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_method_s_own_metric_may_be_monitored_only_by_that_method(base_cfg):
    drgfer = compose_cfg(
        *tiny(Path("unused")), "method=drgfer", "trainer.monitor=rrn_acc", "objective=x1/rrn_acc"
    )
    assert validate_config(drgfer, warn=False) is not None
    with pytest.raises(UserError, match=r"trainer\.monitor=rrn_acc: the method reports no 'rrn_acc'"):
        validate_config(_with(base_cfg, trainer__monitor="rrn_acc"))
    with pytest.raises(UserError, match=r"objective=x4/acc: x4 is not a validated degradation"):
        validate_config(_with(base_cfg, objective="x4/acc"))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"dataset__image_size": 5},
            r"dataset\.image_size=5: the synthetic faces are drawn at 16 px or more",
        ),
        ({"dataset__image_size": 15}, r"dataset\.image_size=15: "),
        ({"dataset__num_train": 0}, r"dataset\.num_train=0: the synthetic set needs train faces"),
        ({"dataset__root": "/data/rafdb"}, r"dataset\.root=/data/rafdb but the dataset is synthetic"),
    ],
)
def test_synthetic_dataset_values_it_cannot_use_are_refused_at_composition(base_cfg, values, expected):
    with pytest.raises(UserError, match=expected):
        validate_config(_with(base_cfg, **values))


def test_every_problem_is_reported_at_once(base_cfg):
    cfg = _with(base_cfg, trainer__max_epochs=-1, augment__hflip=3.0)
    with pytest.raises(UserError, match=r"trainer\.max_epochs=-1 .*; augment\.hflip=3\.0 "):
        validate_config(cfg)


def test_a_degradation_down_to_one_pixel_is_a_warning(base_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="lrfer.config.validate"):
        warnings = validate_config(
            _with(base_cfg, dataset__image_size=100, degrade__test=["x1", "x1000"])
        ).warnings
    assert len(warnings) == 1 and "x1000" in warnings[0] and "1x1" in warnings[0]
    assert "x1000" in caplog.text


# -- images --------
def test_a_16_bit_png_decodes_like_its_8_bit_version(tmp_path):
    grey8 = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # mode I;16
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    eight, sixteen = decode_image(tmp_path / "eight.png", 16), decode_image(tmp_path / "sixteen.png", 16)
    assert np.array_equal(eight, sixteen)


def test_a_16_bit_png_is_predicted_like_its_8_bit_version(trained_run, tmp_path):
    from lrfer.cli import predict

    rgb = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    grey8 = np.asarray(Image.fromarray(rgb).convert("L"))
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(grey8).save(faces / "a_eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(faces / "b_sixteen.png")
    rows = predict.main([str(trained_run), str(faces), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    eight, sixteen = ({k: v for k, v in r.items() if k != "path"} for r in rows)
    assert eight == sixteen


def test_a_face_stored_sideways_with_an_exif_orientation_is_predicted_upright(trained_run, tmp_path):
    """A phone keeps the sensor's pixels and says "rotate 90 degrees" in EXIF (Orientation 6): lrfer-predict
    classifies the face as it is shown, like the upright copy (the --detect path already did)."""
    from lrfer.cli import predict

    upright = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    upright[:8] = 255  # a bright top: a sideways face is another input
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(upright).save(faces / "a_upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are turned 90 degrees anticlockwise
    Image.fromarray(np.rot90(upright, 1).copy()).save(faces / "b_sideways.png", exif=exif)
    rows = predict.main([str(trained_run), str(faces), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    shown, sideways = ({k: v for k, v in r.items() if k != "path"} for r in rows)
    assert shown == sideways


def test_non_square_images_are_centre_cropped_or_padded_not_squashed():
    image = torch.arange(2 * 6).reshape(1, 2, 6)
    assert torch.equal(to_square(image, "crop"), image[:, :, 2:4])
    padded = to_square(image, "pad")
    assert padded.shape == (1, 6, 6) and torch.equal(padded[:, 2:4], image) and padded[:, :2].sum() == 0
    assert torch.equal(to_square(image, "stretch"), image)


def test_report_skips_a_missing_folder_with_a_warning(trained_run, tmp_path):
    from conftest import run_cli

    out = tmp_path / "rep"
    proc = run_cli(["scripts/report.py", str(trained_run), str(tmp_path / "multirun"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "multirun does not exist: skipped" in proc.stderr and out.with_suffix(".md").exists()
    assert "| run |" in proc.stdout  # the table is on stdout
