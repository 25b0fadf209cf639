"""Plant plausible one-line bugs in the README's guarantees, one at a time, and check that a test fails.

    python scripts/planted_bugs.py                      # every bug below, JSON to outputs/planted_bugs.json
    python scripts/planted_bugs.py --only imresize gmenet   # the bugs whose names contain one of the words
    python scripts/planted_bugs.py --list

A reviewer's way of mutation testing: where mutmut (``scripts/mutation.py``) makes every mechanical
change, this script makes the changes a person would plant to test the suite: a sign flipped, the wrong
image given to a teacher, a mirror index off by one. Each bug is an exact text replacement in one file; the
replaced text must occur exactly once (else the entry is reported as stale, so the list cannot rot silently).
The bugs go into a scratch checkout (``git worktree add --detach`` of HEAD in a temporary folder, removed
afterwards), never into this working tree, and only the test files listed for the bug run (``pytest -x
-n 0``, the default tier).
Caught = the tests fail; the first failing test is recorded. docs/mutation.md holds the measured results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lrfer.tools.latency import cpu_model

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    # The seven bugs of issue 26's review (each survived the tests of its time).
    Bug("imresize rounds halves to even", "src/lrfer/data/imresize.py",
        "x = torch.floor(x.clamp(0.0, 255.0) + 0.5)", "x = torch.round(x.clamp(0.0, 255.0))",
        ("tests/test_imresize.py",)),
    Bug("fsrfer critic objective sign flipped", "src/lrfer/methods/fsrfer.py",
        '"loss": d_real - d_fake + gp,', '"loss": d_fake - d_real + gp,',
        ("tests/test_fsrfer.py", "tests/test_fsrfer_recipe.py")),
    Bug("gmenet teacher sees the low-resolution image", "src/lrfer/methods/gmenet.py",
        '_, teacher_maps = self.teacher(batch["image_hr"], return_maps=True)',
        '_, teacher_maps = self.teacher(batch["image"], return_maps=True)',
        ("tests/test_gmenet.py", "tests/test_gmenet_eq11.py")),
    Bug("trainer resume without the scheduler state", "src/lrfer/engine/trainer.py",
        'rebuilt = scheduler.load_state_dict(state["schedulers"][step])', "rebuilt = None",
        ("tests/test_resume.py", "tests/test_trainer_guarantees.py")),
    Bug("pipeline ranks share one augmentation stream", "src/lrfer/data/pipeline.py",
        "manual_seed(seed + 1 + self.rank)", "manual_seed(seed + 1)", ("tests/test_pipeline.py",)),
    Bug("runfolder last.pt alone is not a run", "src/lrfer/engine/runfolder.py",
        'RUN_RESULTS = ("metrics.json", "checkpoints/last.pt")', 'RUN_RESULTS = ("metrics.json",)',
        ("tests/test_runfolder.py",)),
    Bug("leaderboard population std", "src/lrfer/report/leaderboard.py",
        "statistics.stdev(values)", "statistics.pstdev(values)", ("tests/test_leaderboard_table.py",)),
    # More of the same kind, in the same guarantees.
    Bug("imresize sampling grid offset", "src/lrfer/data/imresize.py",
        "u = x / scale + 0.5 * (1.0 - 1.0 / scale)", "u = x / scale + 0.5 * (1.0 - scale)",
        ("tests/test_imresize.py",)),
    Bug("imresize mirror padding off by one", "src/lrfer/data/imresize.py",
        "period - 1 - idx", "period - idx", ("tests/test_imresize.py",)),
    Bug("imresize output size rounded, not ceil", "src/lrfer/data/imresize.py",
        "return (math.ceil(height * scale), math.ceil(width * scale)), (scale, scale)",
        "return (round(height * scale), round(width * scale)), (scale, scale)", ("tests/test_imresize.py",)),
    Bug("imresize passes in the wrong order", "src/lrfer/data/imresize.py",
        "passes.sort(key=lambda p: p[3])", "passes.sort(key=lambda p: -p[3])", ("tests/test_imresize.py",)),
    Bug("imresize kernel cut short", "src/lrfer/data/imresize.py",
        "taps = math.ceil(width) + 2", "taps = math.ceil(width)", ("tests/test_imresize.py",)),
    Bug("fsrfer divergence term on the fake features", "src/lrfer/methods/fsrfer.py",
        "x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)",
        "x_hat = fake.detach().clone().requires_grad_(True)", ("tests/test_fsrfer.py",)),
    Bug("gmenet kd weight ignored", "src/lrfer/methods/gmenet.py",
        "loss = ce + self.kd_weight * kd", "loss = ce + kd",
        ("tests/test_gmenet.py", "tests/test_gmenet_eq11.py")),
    Bug("gmenet frozen teacher back in train mode", "src/lrfer/methods/gmenet.py",
        "        if self.teacher is not None and self.teacher_frozen:\n            self.teacher.eval()",
        "        if self.teacher is not None and self.teacher_frozen:\n            pass",
        ("tests/test_gmenet.py",)),
    Bug("gmenet blurs the x1 rows too", "src/lrfer/methods/gmenet.py",
        "low = factor.float() > 1.0 + 1e-6", "low = factor.float() > 1.0 - 1e-6", ("tests/test_gmenet.py",)),
    Bug("leaderboard mean over n + 1", "src/lrfer/report/leaderboard.py",
        "mean = 100 * statistics.fmean(values)", "mean = 100 * sum(values) / (len(values) + 1)",
        ("tests/test_leaderboard_table.py",)),
    Bug("metrics mean over degradations is the first one", "src/lrfer/engine/metrics.py",
        "return float(sum(float(r[metric]) for r in chosen) / len(chosen))",
        "return float(chosen[0][metric])",
        ("tests/test_metrics.py",)),
    Bug("voting hard vote by the least likely class", "src/lrfer/models/voting.py",
        "F.one_hot(probs.argmax(dim=2), probs.shape[2])", "F.one_hot(probs.argmin(dim=2), probs.shape[2])",
        ("tests/test_voting.py",)),
    Bug("voting mirrored crops not mirrored", "src/lrfer/models/voting.py",
        "for src in (x, mirrored)", "for src in (x, x)", ("tests/test_voting.py",)),
    Bug("drgfer oracle routes every face to expert 0", "src/lrfer/methods/drgfer.py",
        "return self.mrafer.route(images, self.resolutions.index(factor))",
        "return self.mrafer.route(images, 0)",
        ("tests/test_drgfer.py",)),
    Bug("pipeline high-resolution pair augmented differently", "src/lrfer/data/pipeline.py",
        "                generator.set_state(state)\n", "", ("tests/test_pipeline.py",)),
    Bug("pipeline the same augmentation every epoch", "src/lrfer/data/pipeline.py",
        "manual_seed(seed + 1 + self.rank)", "manual_seed(1 + self.rank)", ("tests/test_pipeline.py",)),
    Bug("checkpoint written in place, not renamed", "src/lrfer/core/checkpoint.py",
        "        os.replace(tmp, path)\n",
        "        import shutil; shutil.copyfile(tmp, path); os.unlink(tmp)\n",
        ("tests/test_checkpoint.py", "tests/test_checkpoint_writer.py")),
    Bug("checkpoint temporary left after a failed write", "src/lrfer/core/checkpoint.py",
        "            Path(tmp).unlink(missing_ok=True)\n", "            pass\n",
        ("tests/test_checkpoint.py",)),
    Bug("cache trusts the modification time", "src/lrfer/data/cache.py",
        'if every_byte or st.st_mtime_ns != record["mtime_ns"]:', 'if st.st_mtime_ns != record["mtime_ns"]:',
        ("tests/test_cache.py",)),
    Bug("cache accepts a label one past the classes", "src/lrfer/data/cache.py",
        "labels.max() < len(class_names))", "labels.max() <= len(class_names))", ("tests/test_cache.py",)),
    # The camera path's Ctrl-C (CI of 2026-12-07: 45 frames in the annotated video, 38 in the summary).
    Bug("video Ctrl-C does not stop the reading", "src/lrfer/tools/video.py",
        "                return\n            chunk = []", "                pass\n            chunk = []",
        ("tests/test_video.py",)),
    Bug("video Ctrl-C waits for the camera's next frame", "src/lrfer/tools/video.py",
        "                if stop():\n                    return\n                continue",
        "                continue", ("tests/test_video.py",)),
    Bug("video first Ctrl-C raises in the middle of a frame", "src/lrfer/core/signals.py",
        "        self._event.set()\n", "        raise KeyboardInterrupt\n",
        ("tests/test_video.py", "tests/test_signals.py")),
    Bug("deferred signal's handler left installed", "src/lrfer/core/signals.py",
        "        finally:\n            signal.signal(self.signum, self._previous)",
        "        finally:\n            pass", ("tests/test_video.py", "tests/test_signals.py")),
    Bug("deferred signal's second one deferred too", "src/lrfer/core/signals.py",
        "        signal.signal(self.signum, self._previous)  # a second", "        pass  # a second",
        ("tests/test_video.py", "tests/test_signals.py")),
)  # fmt: skip


def run_bug(bug: Bug, checkout: Path) -> dict:
    """Plant ``bug`` in ``checkout``, run its tests there, restore the file; the verdict as a dict."""
    path = checkout / bug.file
    source = path.read_text()
    if source.count(bug.old) != 1:
        times = source.count(bug.old)
        return {"bug": bug.name, "stale": f"the text to replace occurs {times} times in {bug.file}"}
    path.write_text(source.replace(bug.old, bug.new))
    start = time.monotonic()
    try:
        env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider", *bug.tests]
        proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env=env)
    finally:
        path.write_text(source)
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return {
        "bug": bug.name,
        "file": bug.file,
        "caught": proc.returncode != 0,
        "first_failing_test": failed[0] if failed else None,
        "tests": list(bug.tests),
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], help="bugs whose names contain one of these words")
    parser.add_argument("--list", action="store_true", help="print the bugs and their test files")
    parser.add_argument("--out", default="outputs/planted_bugs.json")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or any(w in b.name for w in args.only)]
    if args.list or not bugs:
        for b in bugs:
            print(f"{b.name}: {b.file} -> {' '.join(b.tests)}")
        return 0 if bugs else 2
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="planted-bugs-") as tmp:
        checkout = Path(tmp) / "checkout"
        subprocess.run([*git, "worktree", "add", "-q", "--detach", str(checkout), "HEAD"], check=True)
        try:
            for bug in bugs:
                results.append(run_bug(bug, checkout))
                print(json.dumps(results[-1]), flush=True)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(checkout)], check=False)
    caught = sum(1 for r in results if r.get("caught"))
    checked = sum(1 for r in results if "caught" in r)
    summary = {
        "command": " ".join(["python scripts/planted_bugs.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": commit.stdout.strip(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__},
        "caught": caught,
        "checked": checked,
        "stale": [r["bug"] for r in results if "stale" in r],
        "bugs": results,
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{caught} of {checked} planted bugs caught; {len(summary['stale'])} stale; {out}")
    return 0 if caught == checked and not summary["stale"] else 1


if __name__ == "__main__":
    sys.exit(main())
