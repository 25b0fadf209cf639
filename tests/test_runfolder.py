"""Run-folder protection (lrfer.engine.runfolder), piece by piece on hand-made folders and plain configs.

What a folder counts as a run, which differences stop a resume, what ``trainer.overwrite=true`` deletes and
keeps. The end-to-end versions, through ``run_training`` and the command line, are in test_reliability.py and
test_reliability_cli.py. Written to kill the mutants mutmut found surviving (docs/mutation.md).
"""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from lrfer.core.checkpoint import save_checkpoint
from lrfer.core.errors import UserError
from lrfer.engine.runfolder import (
    RESUME_CONFIG_DIR,
    check_run_folder,
    identity_differences,
    open_run_folder,
    prepare_run_folder,
    previous_results,
    resume_output_subdir,
    run_identity,
    stored_identity,
)


def _cfg(resume: bool = False, overwrite: bool = False, method: str = "baseline", **dataset):
    return OmegaConf.create(
        {
            "method": {"_target_": f"lrfer.methods.{method}.M", "name": method, "epochs": 4, "lr": 0.1},
            "model": {"_target_": "torchvision.models.resnet18", "num_classes": 7},
            "dataset": {"name": "synthetic", "num_classes": 7, "image_size": 32, "num_train": 100, **dataset},
            "trainer": {"resume": resume, "overwrite": overwrite, "max_epochs": 4},
        }
    )


def _checkpoint(run_dir, cfg, name="last.pt"):
    state = {"method": {"w": torch.ones(1)}, "config": run_identity(cfg)}
    save_checkpoint(state, run_dir / "checkpoints" / name)


RUN_FILES = [["metrics.json"], ["checkpoints/last.pt"], ["metrics.json", "checkpoints/last.pt"]]


@pytest.mark.parametrize("files", RUN_FILES)
def test_a_folder_with_metrics_or_a_last_checkpoint_holds_a_run(tmp_path, files):
    """A killed first epoch leaves only checkpoints/last.pt: that is a run too (resumable, not to be lost)."""
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert previous_results(tmp_path) == files
    with pytest.raises(UserError, match=re.escape(f"already holds a run ({', '.join(files)})")):
        check_run_folder(_cfg(), tmp_path)


def test_other_files_and_folders_do_not_make_a_run(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("")
    (tmp_path / "checkpoints" / "best.pt").parent.mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"x")
    (tmp_path / "metrics.json").mkdir()  # a folder of that name is not a result
    assert previous_results(tmp_path) == []
    check_run_folder(_cfg(), tmp_path)  # nothing raised: a new run may start here
    check_run_folder(_cfg(), None)  # no run folder (Hydra's output off): nothing to check


def test_overwrite_lets_a_run_folder_be_reused(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    check_run_folder(_cfg(overwrite=True), tmp_path)


def test_resume_and_overwrite_together_are_refused_even_in_an_empty_folder(tmp_path):
    with pytest.raises(UserError, match="choose one"):
        check_run_folder(_cfg(resume=True, overwrite=True), tmp_path)


def test_resume_without_a_last_checkpoint_names_the_missing_file(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    missing = re.escape(str(tmp_path / "checkpoints" / "last.pt"))
    with pytest.raises(UserError, match=missing + " does not exist"):
        check_run_folder(_cfg(resume=True), tmp_path)


def test_resume_with_the_same_identity_and_more_epochs_is_accepted(tmp_path):
    _checkpoint(tmp_path, _cfg())
    longer = _cfg(resume=True)
    longer.method.epochs = 40
    longer.trainer.max_epochs = 40
    longer.dataset.num_train = 500  # not part of the identity: the dataset's size may change
    check_run_folder(longer, tmp_path)


def test_resume_with_another_identity_is_one_line_naming_the_first_three_differences(tmp_path):
    _checkpoint(tmp_path, _cfg())
    other = _cfg(resume=True, method="efc", image_size=64, num_classes=8)
    other.method.lr = 0.5
    with pytest.raises(UserError) as err:
        check_run_folder(other, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot resume {tmp_path}: it was trained with ")
    # the method's target and name come first, then the other keys in order; 5 differences: 3 named, 2 counted
    first = "method._target_=lrfer.methods.baseline.M (now lrfer.methods.efc.M); method.name=baseline "
    assert first + "(now efc); dataset.image_size" in message
    assert "dataset.image_size=32 (now 64) and 2 more" in message


def test_identity_differences_skip_epoch_counts_and_name_unset_keys():
    stored = {"method": {"name": "a", "epochs": 1, "stage1_epochs": 2, "schedule_scale": 1.0, "gone": 3}}
    current = {"method": {"name": "a", "epochs": 9, "stage1_epochs": 9, "schedule_scale": 2.0, "new": 4}}
    expected = ["method.gone=3 (now <unset>)", "method.new=<unset> (now 4)"]
    assert identity_differences(stored, current) == expected
    assert identity_differences(stored, stored) == []
    # a key that only ends like an epoch count is still compared
    assert identity_differences({"m": {"epochsx": 1}}, {"m": {"epochsx": 2}}) == ["m.epochsx=1 (now 2)"]


def test_the_run_identity_holds_method_model_and_the_datasets_shape_only():
    cfg = _cfg()
    identity = run_identity(cfg)
    assert identity == {
        "method": {"_target_": "lrfer.methods.baseline.M", "name": "baseline", "epochs": 4, "lr": 0.1},
        "model": {"_target_": "torchvision.models.resnet18", "num_classes": 7},
        "dataset": {"name": "synthetic", "num_classes": 7, "image_size": 32},
    }
    assert all(type(v) is dict for v in identity.values())  # plain values: weights_only loading reads them


def test_the_identity_is_read_from_last_pt_else_from_the_runs_hydra_config(tmp_path):
    assert stored_identity(tmp_path) is None
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(_cfg(method="efc")))
    assert stored_identity(tmp_path)["method"]["name"] == "efc"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")  # unreadable: the config decides
    assert stored_identity(tmp_path)["method"]["name"] == "efc"
    _checkpoint(tmp_path, _cfg(method="baseline"))
    assert stored_identity(tmp_path)["method"]["name"] == "baseline"


def test_an_unreadable_hydra_config_gives_no_identity(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("method: [unclosed")
    assert stored_identity(tmp_path) is None


def test_overwrite_deletes_results_checkpoints_and_logs_and_keeps_everything_else(tmp_path):
    for name in ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt", "tb/events", "train.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".hydra").mkdir()
    prepare_run_folder(_cfg(overwrite=True), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "train.log"]


def test_without_overwrite_nothing_is_deleted(tmp_path):
    for name in ("metrics.json", "checkpoints/last.pt", "tb/events"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    prepare_run_folder(_cfg(), tmp_path)
    prepare_run_folder(_cfg(resume=True, overwrite=True), tmp_path)  # a resume never deletes
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "checkpoints", "tb"}
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    prepare_run_folder(_cfg(overwrite=True), None)  # no folder: nothing to do


def test_orphan_temporaries_go_only_on_rank_zero(tmp_path, monkeypatch):
    orphan = tmp_path / "checkpoints" / ".last.pt.tmp-1-abcd1234"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    monkeypatch.setenv("RANK", "1")
    open_run_folder(_cfg(), tmp_path)
    assert orphan.exists()
    monkeypatch.setenv("RANK", "0")
    open_run_folder(_cfg(), tmp_path)
    assert not orphan.exists()


def test_a_resumed_invocation_writes_its_config_under_a_timestamped_folder():
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"
    assert re.fullmatch(re.escape(RESUME_CONFIG_DIR) + "/" + stamp, resume_output_subdir())
    assert RESUME_CONFIG_DIR == ".hydra-resumes"


def test_exactly_three_differences_are_all_named_and_none_counted(tmp_path):
    _checkpoint(tmp_path, _cfg())
    other = _cfg(resume=True, image_size=64, num_classes=8)
    other.method.lr = 0.5
    with pytest.raises(UserError) as err:
        check_run_folder(other, tmp_path)
    assert "method.lr=0.1 (now 0.5)" in str(err.value) and "more" not in str(err.value)


def test_an_identity_with_an_interpolation_only_hydra_resolves_is_kept_unresolved():
    cfg = _cfg()
    cfg.method.out = "${hydra:runtime.output_dir}/x"
    assert run_identity(cfg)["method"]["out"] == "${hydra:runtime.output_dir}/x"


def test_a_checkpoint_without_a_stored_identity_falls_back_to_the_runs_config(tmp_path):
    old = {"method": {"w": torch.ones(1)}}  # a checkpoint from before the identity was stored
    save_checkpoint(old, tmp_path / "checkpoints" / "last.pt")
    assert stored_identity(tmp_path) is None
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(_cfg(method="efc")))
    assert stored_identity(tmp_path)["method"]["name"] == "efc"
    with pytest.raises(UserError, match=r"method\.name=efc \(now baseline\)"):
        check_run_folder(_cfg(resume=True), tmp_path)


def test_a_refused_folder_is_left_as_it_was(tmp_path):
    """The check comes before any deletion: a refused start does not even remove temporary files."""
    (tmp_path / "metrics.json").write_text("{}")
    orphan = tmp_path / ".metrics.json.tmp-1-abcd1234"
    orphan.write_bytes(b"half")
    with pytest.raises(UserError, match="already holds a run"):
        open_run_folder(_cfg(), tmp_path)
    assert orphan.exists()


def test_overwrite_logs_what_it_removed(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "tb").mkdir()
    with caplog.at_level("INFO", logger="lrfer.engine.runfolder"):
        prepare_run_folder(_cfg(overwrite=True), tmp_path)
    assert "trainer.overwrite=true: removed the previous run's metrics.json, tb" in caplog.text


def test_only_an_explicit_overwrite_deletes(tmp_path):
    """A config whose trainer section does not mention overwrite (hand-made, older) deletes nothing."""
    (tmp_path / "metrics.json").write_text("{}")
    cfg = _cfg()
    del cfg.trainer["overwrite"]
    prepare_run_folder(cfg, tmp_path)
    assert (tmp_path / "metrics.json").is_file()


def test_removing_an_orphan_temporary_is_logged_with_its_path(tmp_path, caplog):
    orphan = tmp_path / "checkpoints" / ".last.pt.tmp-1-abcd1234"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    with caplog.at_level("INFO", logger="lrfer.engine.runfolder"):
        prepare_run_folder(_cfg(), tmp_path)
    assert f"removed {orphan}, left by an interrupted write" in caplog.text


def test_overwrite_deletes_what_there_is_even_when_the_first_result_is_missing(tmp_path):
    """A run killed before its metrics.json still loses its checkpoints and logs to an explicit overwrite."""
    for name in ("checkpoints/last.pt", "tb/events"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    cfg = _cfg(overwrite=True)
    del cfg.trainer["resume"]  # a config that does not mention resume does not resume
    prepare_run_folder(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_new_default_folder_is_never_one_that_exists_and_is_kept_for_the_same_request(
    tmp_path, monkeypatch
):
    """claim_new_dir (the default hydra.run.dir): a folder another run made gets a suffix; asking again in
    this process gives the folder it claimed; a folder that cannot get a free suffix is one clear line."""
    import lrfer.engine.runfolder as runfolder

    monkeypatch.setattr(runfolder, "_CLAIMED", {})
    base = tmp_path / "outputs" / "baseline" / "12-00-00"
    first = runfolder.claim_new_dir(str(base))
    assert first == str(base) and base.is_dir()
    assert runfolder.claim_new_dir(str(base)) == first  # the same request, the same folder
    monkeypatch.setattr(runfolder, "_CLAIMED", {})  # another process, the same second
    assert runfolder.claim_new_dir(str(base)) == f"{base}_2"
    monkeypatch.setattr(runfolder, "_CLAIMED", {})
    monkeypatch.setattr(runfolder, "MAX_DIR_SUFFIX", 3)  # <base>, <base>_2, <base>_3
    assert runfolder.claim_new_dir(str(base)) == f"{base}_3"  # the last one allowed
    assert runfolder.claimed_dirs() == {f"{base}_3"}
    monkeypatch.setattr(runfolder, "_CLAIMED", {})
    with pytest.raises(UserError, match=r"12-00-00 and 2 suffixed folders exist: set hydra.run.dir"):
        runfolder.claim_new_dir(str(base))


def test_overwrite_empties_the_previous_runs_log_and_says_whether_there_was_one(tmp_path):
    from lrfer.engine.runfolder import start_fresh_log

    assert not start_fresh_log(tmp_path)  # no log
    (tmp_path / "train.log").write_text("")
    assert not start_fresh_log(tmp_path)  # an empty log
    (tmp_path / "train.log").write_text("the previous run\n")
    assert start_fresh_log(tmp_path)
    assert (tmp_path / "train.log").read_text() == ""


def test_a_resume_that_cannot_start_says_what_is_wrong_and_what_to_do(tmp_path):
    """The two refusals of ``trainer.resume=true`` before any file is read: no run folder at all, and a
    folder without ``checkpoints/last.pt``. Each is one line naming the problem and the way out."""
    with pytest.raises(UserError) as err:
        check_run_folder(_cfg(resume=True), None)
    assert str(err.value) == ("trainer.resume=true needs the run folder to continue: set hydra.run.dir to it")
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as err:
        check_run_folder(_cfg(resume=True), tmp_path)
    assert str(err.value) == (
        f"trainer.resume=true but {last} does not exist: run once without resume, "
        "or set hydra.run.dir to the run you want to continue"
    )


def test_four_differences_name_the_first_three_and_count_the_fourth(tmp_path):
    _checkpoint(tmp_path, _cfg())
    other = _cfg(resume=True, image_size=64, num_classes=8)
    other.method.lr = 0.5
    other.model.num_classes = 8
    with pytest.raises(UserError) as err:
        check_run_folder(other, tmp_path)
    message = str(err.value)
    assert message.count("(now ") == 3
    assert " and 1 more; resume with the run's own settings" in message


def test_the_identity_holds_the_configs_resolved_values():
    """An interpolation is stored as the value it had: a resume whose interpolation now gives another value
    is a difference, whatever the reference's text."""
    cfg = _cfg()
    cfg.method.lr = "${dataset.image_size}"
    cfg.model.num_classes = "${dataset.num_classes}"
    identity = run_identity(cfg)
    assert identity["method"]["lr"] == 32 and identity["model"]["num_classes"] == 7
    assert identity == run_identity(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)))


def test_a_key_set_on_one_side_only_is_a_difference_even_when_it_is_null():
    """A key added to, or gone from, the method or model differs from a missing one, also with value null."""
    assert identity_differences({"m": {"a": 1}}, {"m": {"a": 1, "b": None}}) == ["m.b=<unset> (now None)"]
    assert identity_differences({"m": {"a": 1, "b": None}}, {"m": {"a": 1}}) == ["m.b=None (now <unset>)"]


def test_an_identity_is_read_from_a_last_pt_written_on_a_gpu(tmp_path, monkeypatch):
    """A run trained on a GPU machine and resumed on one without a GPU still has its identity checked."""
    import torch.serialization

    with monkeypatch.context() as m:  # torch.save records every tensor's device by its location tag
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        _checkpoint(tmp_path, _cfg(method="efc"))
    last = tmp_path / "checkpoints" / "last.pt"
    if not torch.cuda.is_available():  # the file really names a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(last, weights_only=True)
    assert stored_identity(tmp_path)["method"]["name"] == "efc"
    with pytest.raises(UserError, match=r"method\.name=efc \(now baseline\)"):
        check_run_folder(_cfg(resume=True), tmp_path)


class _Planted:
    """An object whose unpickling runs code (what a crafted last.pt could hold)."""

    ran = False

    def __reduce__(self):
        return (_planted_code_ran, ())


def _planted_code_ran():
    _Planted.ran = True
    return {"method": {"name": "planted"}}


def test_reading_a_runs_identity_never_runs_code_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(_Planted, "ran", False)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"method": {}, "config": _Planted()}, tmp_path / "checkpoints" / "last.pt")
    assert stored_identity(tmp_path) is None  # not loadable with weights_only, no .hydra config
    assert not _Planted.ran


def test_a_trainer_config_without_resume_or_overwrite_protects_the_run(tmp_path):
    """A hand-made or older config that mentions neither option neither resumes nor replaces a run."""
    (tmp_path / "metrics.json").write_text("{}")
    cfg = _cfg()
    del cfg.trainer["resume"]
    del cfg.trainer["overwrite"]
    with pytest.raises(UserError, match=r"already holds a run \(metrics\.json\)"):
        check_run_folder(cfg, tmp_path)


def test_a_run_without_any_stored_identity_can_be_resumed(tmp_path):
    """A checkpoint from before the identity was stored, and no .hydra config: nothing to compare, the
    resume goes on (loading the weights reports a method that does not fit)."""
    save_checkpoint({"method": {"w": torch.ones(1)}}, tmp_path / "checkpoints" / "last.pt")
    check_run_folder(_cfg(resume=True), tmp_path)


def test_every_refusal_is_one_whole_line_with_the_way_out(tmp_path):
    with pytest.raises(UserError) as err:
        check_run_folder(_cfg(resume=True, overwrite=True), tmp_path)
    assert str(err.value) == (
        "trainer.resume=true continues a run and trainer.overwrite=true replaces it: choose one"
    )
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(UserError) as err:
        check_run_folder(_cfg(), tmp_path)
    assert str(err.value) == (
        f"{tmp_path} already holds a run (metrics.json): continue it with trainer.resume=true, "
        "choose a new hydra.run.dir, or replace it with trainer.overwrite=true"
    )
    _checkpoint(tmp_path, _cfg())
    other = _cfg(resume=True)
    other.method.lr = 0.5
    with pytest.raises(UserError) as err:
        check_run_folder(other, tmp_path)
    assert str(err.value) == (
        f"cannot resume {tmp_path}: it was trained with method.lr=0.1 (now 0.5); resume with the "
        "run's own settings, or train into a new hydra.run.dir"
    )


def test_what_the_folder_preparation_removes_is_logged_line_by_line(tmp_path, caplog):
    orphan = tmp_path / "checkpoints" / ".last.pt.tmp-1-abcd1234"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    (tmp_path / "metrics.json").write_text("{}")
    with caplog.at_level("INFO", logger="lrfer.engine.runfolder"):
        prepare_run_folder(_cfg(overwrite=True), tmp_path)
    assert [r.getMessage() for r in caplog.records if r.name == "lrfer.engine.runfolder"] == [
        f"removed {orphan}, left by an interrupted write",
        "trainer.overwrite=true: removed the previous run's metrics.json, checkpoints",
    ]
