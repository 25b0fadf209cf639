#!/usr/bin/env python
"""Mutation testing (mutmut 3) of the modules that hold the README's guarantees, one module at a time.

    python scripts/mutation.py src/lrfer/data/imresize.py [more modules ...] [--max-children 1]
    python scripts/mutation.py src/lrfer/data/pipeline.py --sample 60 --seed 0   # a random sample only
    python scripts/mutation.py src/lrfer/methods/fsrfer.py --only '*critic_step*'  # chosen functions' mutants
    python scripts/mutation.py src/lrfer/methods/gmenet.py --in-process -k "not tiny_run" --sample 25
    python scripts/mutation.py --list          # the modules and the test files that check each one

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

``--sample N --seed S``: when a module's mutants cannot all be run in the time there is, check a random sample
of N of them (drawn with ``random.Random(S)`` from the sorted mutant names, so the same N and S draw the same
sample): mutmut first generates the mutants and collects which test reaches which function (it is given a
name that matches nothing, so it stops there), then runs the sampled mutants by name. A second call with the
same N and S checks only the sampled mutants that have no verdict yet; ``--no-run`` only writes the summary
of what has been checked (mutmut checks the mutants with the fastest tests first, so a stopped sample is not
a random subset of it). ``summary.json`` then holds the
sample's counts and the kill rate among its checked mutants with a 95 % (Wilson) interval: an estimate for
the module, labelled as a sample.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import re
import shutil
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


#: Matches no mutant name: ``mutmut run`` with it generates the mutants and the test statistics, then stops.
GENERATE_ONLY = "lrfer-generate-only-no-such-mutant"
#: mutmut's exit codes (mutmut/stats.py) that count as killed, survived, and not checked.
KILLED, SURVIVED, UNCHECKED = {1, 3}, {0}, {None}


def meta_file(work: Path, module: str) -> Path:
    return work / "mutants" / (module + ".meta")


def verdicts(work: Path, module: str) -> dict[str, int | None]:
    """mutant name -> mutmut's exit code (None: not checked yet), from mutmut's meta file of the module."""
    return json.loads(meta_file(work, module).read_text())["exit_code_by_key"]


def draw_sample(names: list[str], n: int, seed: int) -> list[str]:
    """``n`` of the mutant names, drawn reproducibly (the same names, n and seed give the same sample)."""
    return sorted(random.Random(seed).sample(sorted(names), min(n, len(names))))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_summary(work: Path, module: str, sample: list[str], seed: int) -> dict:
    codes = verdicts(work, module)
    got = [codes.get(name) for name in sample]
    killed = sum(code in KILLED for code in got)
    survived = [name for name, code in zip(sample, got, strict=True) if code in SURVIVED]
    checked = sum(code not in UNCHECKED for code in got)
    low, high = wilson(killed, killed + len(survived))
    return {
        "sample": len(sample),
        "seed": seed,
        "mutants_in_module": len(codes),
        "checked": checked,
        "killed": killed,
        "survived": len(survived),
        "other": checked - killed - len(survived),  # timeout, suspicious, no tests, ...
        "kill_rate_of_killed_or_survived": round(killed / max(1, killed + len(survived)), 4),
        "kill_rate_95ci_wilson": [round(low, 4), round(high, 4)],
        "survivors": survived,
        "sampled": sample,
    }


#: Runs mutants one after another in ONE pytest process (``--in-process``): the trampolines mutmut writes read
#: ``MUTANT_UNDER_TEST`` at every call, so no process or torch start-up is paid per mutant. A clean run first.
IN_PROCESS = """
import json, os, sys
import pytest
names, files, select, out = json.loads(sys.argv[1])
base = ["-x", "-q", "-n", "0", "-p", "no:cacheprovider", "--no-header", "--tb=no"]
base += ["-k", select] if select else []
# mutmut's stats run says which tests reach each function: the others are deselected (tests newer than the
# stats always run)
reach, known = {}, set()
if os.path.exists("mutmut-stats.json"):
    with open("mutmut-stats.json") as f:
        stats = json.load(f)
    reach, known = stats["tests_by_mangled_function_name"], set(stats["duration_by_test"])
os.environ["MUTANT_UNDER_TEST"] = ""
if pytest.main([*base, *files]) != 0:
    sys.exit("the clean run of the selected tests fails: fix it before testing mutants")
results = {}
for name in names:
    function = name.rsplit("__mutmut_", 1)[0]
    skip = sorted(known - set(reach.get(function, ())))
    os.environ["MUTANT_UNDER_TEST"] = name
    code = int(pytest.main([*base, *files, *(a for t in skip for a in ("--deselect", t))]))
    results[name] = {0: "survived", 1: "killed", 5: "no tests"}.get(code, f"pytest exit {code}")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
"""


def in_process(
    work: Path, names: list[str], tests: list[str], select: str | None, out: Path, env: dict
) -> dict[str, str]:
    """``names`` against ``tests`` (``-k select``) in one pytest process; {mutant: killed/survived}."""
    # the tests as they are now (mutmut copied them into mutants/ when it first ran)
    shutil.copytree(REPO / "tests", work / "mutants" / "tests", dirs_exist_ok=True)
    files = [t for t in tests if not t.startswith("-")]
    payload = json.dumps([names, files, select, str(out)])
    subprocess.run([sys.executable, "-c", IN_PROCESS, payload], cwd=work / "mutants", env=env, check=True)
    return json.loads(out.read_text())


def in_process_summary(
    status: dict[str, str], chosen: list[str], total: int, args: argparse.Namespace
) -> dict:
    """The counts of an ``--in-process`` run, with the kill rate's 95 % interval."""
    killed = sum(1 for s in status.values() if s == "killed")
    survived = [n for n, s in status.items() if s == "survived"]
    low, high = wilson(killed, killed + len(survived))
    return {
        "runner": "in-process (scripts/mutation.py --in-process)",
        "chosen": len(chosen),
        "sample": args.sample,
        "seed": args.seed,
        "only": args.only,
        "k": args.select,
        "mutants_in_module": total,
        "checked": len(status),
        "killed": killed,
        "survived": len(survived),
        "kill_rate_of_killed_or_survived": round(killed / max(1, killed + len(survived)), 4),
        "kill_rate_95ci_wilson": [round(low, 4), round(high, 4)],
        "survivors": survived,
        "status": status,
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
    parser.add_argument("--sample", type=int, default=None, help="check only N randomly drawn mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default 0)")
    parser.add_argument("--no-run", action="store_true", help="--sample: summary only")
    parser.add_argument(
        "--only", action="append", default=[], help="only mutants whose names match this glob (repeatable)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the chosen mutants in one pytest process (fast; not mutmut's runner), see docs/mutation.md",
    )
    parser.add_argument(
        "-k", dest="select", help="with --in-process: a pytest -k expression (the fast tests)"
    )
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
        if args.sample is None and not args.only and not args.in_process:
            subprocess.run(run, cwd=work, env=env)
            print(json.dumps({"module": module, **summary(work)}, indent=2), flush=True)
            continue
        if not meta_file(work, module).exists():  # generate the mutants and the test statistics only
            subprocess.run([*run, GENERATE_ONLY], cwd=work, env=env)
        names = list(verdicts(work, module))
        pool = [n for n in names if not args.only or any(fnmatch.fnmatch(n, p) for p in args.only)]
        sample = draw_sample(pool, args.sample, args.seed) if args.sample else sorted(pool)
        tag = "-".join(re.sub(r"[^A-Za-z0-9_]+", "", p) for p in args.only)
        name = f"sample-{args.sample or 'every'}-seed-{args.seed}" + (f"-{tag}" if tag else "")
        if args.in_process:
            status = in_process(work, sample, tests[module], args.select, work / f"{name}.progress.json", env)
            stats = {"module": module, **in_process_summary(status, sample, len(names), args)}
            (work / f"{name}.inprocess.json").write_text(json.dumps(stats, indent=2) + "\n")
            print(json.dumps(stats, indent=2), flush=True)
            continue
        todo = [name for name in sample if verdicts(work, module)[name] is None]
        if todo and not args.no_run:
            subprocess.run([*run, *todo], cwd=work, env=env)
        stats = {"module": module, **sample_summary(work, module, sample, args.seed)}
        (work / f"{name}.json").write_text(json.dumps(stats, indent=2) + "\n")
        print(json.dumps(stats, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
