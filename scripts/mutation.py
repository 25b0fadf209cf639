#!/usr/bin/env python
"""Mutation testing (mutmut 3) of the modules that hold the README's guarantees, one module at a time.

    python scripts/mutation.py src/lrfer/data/imresize.py [more modules ...] [--max-children 1]
    python scripts/mutation.py --list          # the modules and the test files that check each one
    python scripts/mutation.py src/lrfer/engine/trainer.py --sample 60 --seed 0   # a seeded random sample

``[tool.mutmut]`` in pyproject.toml configures mutmut for all the modules at once (``mutmut run`` in the
repository root mutates every one of them against every listed test file: hours on a laptop). This script
runs the same configuration narrowed to the given modules and to the test files that check them
(``[tool.lrfer.mutation]`` in pyproject.toml), so a module's run takes minutes. Each module gets its own
working folder, ``.mutmut/<module>/`` (git-ignored): a ``pyproject.toml`` with the narrowed ``[tool.mutmut]``
and links to ``src``, ``tests``, ``configs``, ``scripts``, ``train.py`` and ``experiments``; mutmut copies
them into its ``mutants/`` there and runs pytest in that copy (``-n 0``: mutmut follows the tests in its own
process, so pytest-xdist is off). A second call resumes where the first stopped.

After the run the script prints mutmut's summary and writes ``.mutmut/<module>/summary.json``
(killed, survived, timeout, no tests, ...); ``mutmut results`` and ``mutmut show <mutant>`` in that folder
list and show the survivors. docs/mutation.md holds the measured numbers and what each survivor means.

``--sample N --seed S`` checks a seeded random sample of N of a module's mutants (for modules with hundreds of
mutants on a busy machine): the mutants are generated first, N names are drawn with ``random.Random(S)`` from
the sorted list of all of them and passed to ``mutmut run <names>`` (names already checked by an earlier call
are skipped). The summary then also gives the sample's kill rate with a 95 % Wilson interval: an estimate for
the module, labelled as a sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutmut"
#: What the tests read from the repository besides src/ and tests/ (mutmut copies these into mutants/).
LINKED = ("src", "tests", "configs", "scripts", "train.py", "experiments")


def load_pyproject() -> tuple[str, dict]:
    text = (REPO / "pyproject.toml").read_text()
    return text, tomllib.loads(text)


def tests_by_module(pyproject: dict) -> dict[str, list[str]]:
    """``[tool.lrfer.mutation].tests``: module path -> the test files that check it."""
    return pyproject["tool"]["lrfer"]["mutation"]["tests"]


def narrowed_pyproject(text: str, config: dict, module: str, tests: list[str]) -> str:
    """pyproject.toml with ``[tool.mutmut]`` narrowed to one module and its test files."""
    section = dict(config)
    section["only_mutate"] = [module]
    section["pytest_add_cli_args_test_selection"] = tests
    # the working folder is not a git checkout of its own: compare files, not commits
    section["use_git_change_detection"] = False
    without = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    lines = ["[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    return without.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"


def prepare(module: str, text: str, config: dict, tests: list[str]) -> Path:
    work = WORK / module.removeprefix("src/lrfer/").removesuffix(".py").replace("/", ".")
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(REPO / name)
    (work / "pyproject.toml").write_text(narrowed_pyproject(text, config, module, tests))
    return work


def generate_mutants(work: Path, module: str, env: dict) -> list[str]:
    """Let mutmut write the module's mutants (no test runs) and return all their names, sorted."""
    code = (
        "import os\n"
        "from mutmut.__main__ import create_mutants\n"
        "from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths\n"
        "os.makedirs('mutants', exist_ok=True)\n"
        "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=work, env=env, check=True, capture_output=True)
    return sorted(json.loads((work / "mutants" / f"{module}.meta").read_text())["exit_code_by_key"])


def mutant_results(work: Path, module: str) -> dict[str, int | None]:
    """mutant name -> mutmut's exit code (None: not checked yet)."""
    return json.loads((work / "mutants" / f"{module}.meta").read_text())["exit_code_by_key"]


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (the sample's kill rate)."""
    if n == 0:
        return 0.0, 1.0
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_summary(work: Path, module: str, names: list[str]) -> dict:
    """Counts over the sampled mutants only (by mutmut's own reading of its exit codes)."""
    from mutmut.stats import status_by_exit_code

    codes = mutant_results(work, module)
    counts: dict[str, int] = {}
    for name in names:
        key = status_by_exit_code[codes.get(name)]
        counts[key] = counts.get(key, 0) + 1
    checked = counts.get("killed", 0) + counts.get("survived", 0)
    low, high = wilson(counts.get("killed", 0), checked)
    return {
        "sample": len(names),
        "counts": counts,
        "kill_rate_estimate": round(counts.get("killed", 0) / checked, 3) if checked else None,
        "kill_rate_95ci": [round(low, 3), round(high, 3)],
        "survivors": [n for n in names if codes.get(n) == 0],
    }


def summary(work: Path) -> dict:
    """mutmut's own counts (``mutmut export-cicd-stats``) plus the surviving mutants' names."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(["mutmut", "export-cicd-stats"], cwd=work, env=env, check=True, capture_output=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = subprocess.run(["mutmut", "results"], cwd=work, env=env, capture_output=True, text=True).stdout
    stats["survivors"] = [line.split(":")[0].strip() for line in listed.splitlines() if "survived" in line]
    (work / "summary.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("modules", nargs="*", help="paths such as src/lrfer/data/imresize.py")
    parser.add_argument("--list", action="store_true", help="print the modules and their test files")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--sample", type=int, default=0, help="check a random sample of N mutants per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default 0)")
    args = parser.parse_args()
    text, pyproject = load_pyproject()
    config = pyproject["tool"]["mutmut"]
    tests = tests_by_module(pyproject)
    if args.list or not args.modules:
        for module, files in tests.items():
            print(f"{module}: {' '.join(files)}")
        return 0
    unknown = [m for m in args.modules if m not in tests]
    if unknown:
        print(
            f"error: no test files listed for {', '.join(unknown)} in [tool.lrfer.mutation.tests] "
            "of pyproject.toml; --list shows the modules",
            file=sys.stderr,
        )
        return 2
    for module in args.modules:
        work = prepare(module, text, config, tests[module])
        # the tests import the mutated copy: mutmut puts mutants/src first on sys.path in its processes, and
        # PYTHONPATH does so in the command-line runs the tests start (they inherit the mutant to switch on)
        # (the folder must exist before mutmut starts: Python skips a sys.path folder missing at its start)
        (work / "mutants" / "src").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(work / "mutants" / "src")}
        print(f"== {module} ({' '.join(tests[module])}) in {work.relative_to(REPO)}", flush=True)
        run = ["mutmut", "run", "--max-children", str(args.max_children)]
        if not args.sample:
            subprocess.run(run, cwd=work, env=env)
            print(json.dumps({"module": module, **summary(work)}, indent=2), flush=True)
            continue
        names = generate_mutants(work, module, env)
        drawn = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))
        stem = work / f"sample-{args.sample}-seed-{args.seed}"
        stem.with_suffix(".json").write_text(json.dumps(drawn, indent=2) + "\n")
        todo = [n for n in drawn if mutant_results(work, module).get(n) is None]
        print(f"   sample of {len(drawn)} of {len(names)} mutants (seed {args.seed}), {len(todo)} to check")
        if todo:
            subprocess.run(run + todo, cwd=work, env=env)
        report = {"module": module, "mutants": len(names), "seed": args.seed}
        report.update(sample_summary(work, module, drawn))
        Path(f"{stem}-summary.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
