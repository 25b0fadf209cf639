"""Shared helpers: compose lrfer configs in-process and train tiny runs on generated faces."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from lrfer.config import compose_config, register_schemas

REPO = Path(__file__).resolve().parents[1]

register_schemas()
#: True in a pytest-xdist worker (``-n auto``, the default in pyproject.toml). Each worker trains with one
#: intra-op thread, and so do the command-line runs it starts: on a 2-core machine two one-thread workers get
#: through the suite faster than one two-thread process, whose OpenMP threads wait on each other.
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
#: ``-n auto`` starts one worker per core, at most this many (the FSR-FER tests need a few GB each).
MAX_WORKERS = 4
torch.set_num_threads(1 if XDIST_WORKER else min(2, os.cpu_count() or 1))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: the cores, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


#: The factors FSR-FER and its image-SR baselines train and test on (configs/degrade/fsrfer.yaml).
FSR_FACTORS = ["x2", "x3", "x4", "x5", "x6", "x7", "x8"]
#: A CovPoolFER small enough for seconds-long fsrfer / isr runs.
TINY_COVPOOL = [
    "method.covpool.widths=[8,8,8,8,16,16]",
    "method.covpool.bimap_dim=8",
    "method.covpool.fc_dims=[16,8]",
]
#: fsrfer with every network tiny: CovPoolFER, generator and critic.
TINY_FSRFER = [
    "method=fsrfer",
    *TINY_COVPOOL,
    "method.generator.channels=8",
    "method.generator.blocks=1",
    "method.generator.growth=4",
    "method.critic.channels=[4,4]",
    "method.critic.hidden=8",
]
#: A two-block ResNet (tests/multires_toys.py) in place of ResNet-18 for the ResNet-family methods.
TINY_RESNET = "model._target_=multires_toys.tiny_classifier"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads can be many times slower.

    Test modules that train networks use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(*overrides: str) -> DictConfig:
    """The composed ``train`` config with overrides, as ``python train.py`` would see it (no Hydra run)."""
    return compose_config(overrides, hydra_errors=True)


def method_options(name: str, *overrides: str) -> dict:
    """The keyword arguments ``method=<name>`` gives its method class (configs/method/<name>.yaml, without
    ``_target_`` and ``name``): a method built in a test gets its defaults from the one place runs do."""
    options = OmegaConf.to_container(compose_cfg(f"method={name}", *overrides).method, resolve=True)
    return {k: v for k, v in options.items() if k not in ("_target_", "name")}


def tiny(tmp: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long run: few small synthetic faces, tiny batches, no TensorBoard."""
    return [
        "dataset.num_train=140",
        "dataset.num_val=56",
        "dataset.num_test=70",
        "dataset.image_size=32",
        "trainer.batch_size=28",
        "trainer.eval_batch_size=64",
        "trainer.max_epochs=2",
        "trainer.device=cpu",
        "trainer.optimizer.lr=0.003",
        # last.pt after every epoch: `auto` picks the interval from measured write and epoch times, so
        # which epoch a killed run resumes from would depend on the machine's speed.
        "trainer.checkpoint_every=1",
        "logger=none",
        f"paths.cache_dir={tmp / 'cache'}",
        *extra,
    ]


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (``lrfer_script_<name>``), its ``main`` not run."""
    spec = importlib.util.spec_from_file_location(f"lrfer_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command-line entry (``train.py ...`` or a script) in a fresh Python process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    if XDIST_WORKER:
        env.setdefault("OMP_NUM_THREADS", "1")
    return run_process([sys.executable, *args], cwd or REPO, env, timeout)


def run_process(cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, except that a command still
    running after ``timeout`` seconds is killed with every process it started (:func:`kill_tree`) before
    :class:`subprocess.TimeoutExpired` is raised: ``subprocess.run`` kills the command alone, then waits
    with no limit for its pipes, which a torchrun rank (a session of its own) keeps open."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        try:  # the pipes close once every process that holds them is gone
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "(the pipes stayed open)"
        raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


#: Two processes on this machine (gloo on a CPU), as ``torchrun --standalone --nproc_per_node=2`` starts them.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run_two_ranks(args: list[str], timeout: int, hang: str, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``torchrun`` with two ranks on ``args`` (a worker script and its arguments, or ``train.py ...``).

    The workers find the test helpers (``tests/`` on ``PYTHONPATH``) and use one OpenMP thread each. A
    collective mismatch may hang rather than fail, so the whole process group is killed after ``timeout``
    seconds and the test fails with ``hang`` (what the hang means). Returns the finished process; its return
    code is not checked.
    """
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    try:
        return run_process([*TORCHRUN, *args], REPO, env, timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{hang} ({timeout} s): {(err.stderr or '')[-2000:]}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every process below it. torchrun (torch 2.13) starts each rank
    in a session of its own: killing torchrun's group alone leaves the ranks running, holding its pipes."""
    below = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def end_torchrun_worker() -> None:
    """The end of a multi-process test worker (torchrun's, or :func:`spawn_ranks`'), once its results are
    written: a last barrier (every rank's last collective is complete everywhere), then the process ends at
    once, with no interpreter teardown.

    A teardown can deadlock: the main thread frees the process group (the DDP reducer's reference, when the
    trainer goes) and joins gloo's worker thread holding the GIL, while that thread drops its reference to
    the last Work, which needs the GIL (torch 2.13, seen on a loaded 2-core machine, py-spy dump --native: the
    main thread in ``~ProcessGroupGloo`` -> ``std::thread::join``, gloo's thread in ``~AsyncBarrierWork`` ->
    ``gil_scoped_acquire``; keeping the Work alive past ``destroy_process_group`` did not prevent it).
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_ranks(worker, args: tuple, nprocs: int, timeout: int, hang: str) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes (torch.multiprocessing); wait for them.

    A rank that raises fails the test with its traceback; a collective mismatch may hang rather than fail, so
    after ``timeout`` seconds every rank is killed and the test fails with ``hang`` (what the hang means).
    """
    context = torch.multiprocessing.start_processes(
        worker, args=args, nprocs=nprocs, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            for process in context.processes:
                process.join()
            pytest.fail(f"{hang} ({timeout} s)")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny finished run (through the real CLI) shared by evaluate / predict / report tests."""
    tmp = tmp_path_factory.mktemp("run")
    run_dir = tmp / "run"
    proc = run_cli(["train.py", *tiny(tmp), "degrade.test=[x1,x4]", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
