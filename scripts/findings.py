#!/usr/bin/env python
"""The papers' findings on the synthetic faces: train the runs each claim needs, one verdict per claim.

    python scripts/findings.py [key=value ...] [--out DIR] [--seeds N] [--runs NAME ...] [--jobs N]
    python scripts/findings.py --collect [--out DIR]     # no training: copy finished runs, rebuild
    python scripts/findings.py --from-repo               # no training: rebuild from the repository alone
    python scripts/findings.py --quick --out DIR         # 2 cheap runs, 1 seed, tiny faces (the tests)
    python scripts/findings.py --estimate [--fraction F] # no training: the runs' CPU time, estimated
    python scripts/findings.py --max-run-hours 2.5       # start only runs estimated to end within 2.5 CPU h

The claims and the verdict rule are in ``lrfer.report.findings`` (``CLAIMS``, ``RULE``); the runs and the
budget (one scaling rule: a fraction of each paper's epochs) in ``experiments/findings/protocol.yaml``.
Runs train in ``<out>/runs/<run>/seed<k>-<hash of overrides>/`` (default ``outputs/findings``, git-ignored;
an interrupted run resumes, a finished one is reused only when its overrides and the generator version
match: another override is another folder). Each finished run's ``metrics.json``, config, overrides and
validation history (small files, never checkpoints) are copied to ``<results>/runs/`` (default
``experiments/findings``), and the table is built from that copy: ``<results>/synthetic.{md,csv,png}`` and
``<results>/curves/<run>.png``. ``key=value`` arguments are Hydra overrides for every run (they change the
runs' folders). ``--max-run-hours H`` starts only the runs whose estimated CPU time (one seed,
``--costs``, priced at the protocol's faces and epochs) is at most H: on a machine that is taken away after
a few hours, a longer run would be lost with it (its checkpoints are git-ignored); each run left out is
named with its estimate. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lrfer.config.compose import compose_config
from lrfer.core.errors import UserError, exit_on_user_error
from lrfer.data.datasets import build_adapter
from lrfer.report.calls import call_outcome, merge_calls, previous_calls
from lrfer.report.convergence import BudgetCheck, Convergence, budget_check
from lrfer.report.extra_test import retest_missing
from lrfer.report.findings import (
    claims_for,
    convergence,
    copy_artefacts,
    duration,
    embed_provenance,
    estimate_cpu,
    evaluate_claim,
    leaderboard_labels,
    load_epoch_costs,
    load_findings_protocol,
    load_records,
    metrics_by_run,
    plan_runs,
    plot_curves,
    provenance_lines,
    remaining_line,
    run_folder,
    runs_over_budget,
    with_convergence_notes,
    write_calls,
    write_findings,
)
from lrfer.report.provenance import provenance as result_provenance
from lrfer.report.provenance import provenance_line, script_command
from lrfer.tools.latency import cpu_model
from lrfer.tools.launch import add_threads_argument, finished_run, train_side_by_side

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROTOCOL = REPO / "experiments" / "findings" / "protocol.yaml"
DEFAULT_RESULTS = REPO / "experiments" / "findings"
DEFAULT_COSTS = DEFAULT_RESULTS / "epoch_costs.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("outputs/findings"), help="where runs train")
    parser.add_argument("--results", type=Path, default=None, help="table + run copies (default: the repo's)")
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the protocol's)")
    parser.add_argument(
        "--fraction", type=float, default=None, help="of the papers' epochs (default: the protocol's)"
    )
    parser.add_argument("--runs", nargs="+", default=None, help="train only these runs (the table: all)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per core)")
    add_threads_argument(parser)
    mode = parser.add_mutually_exclusive_group()
    parser.add_argument("--quick", action="store_true", help="the protocol's quick runs, 1 seed, tiny faces")
    mode.add_argument("--collect", action="store_true", help="train nothing; copy finished runs, rebuild")
    mode.add_argument("--from-repo", action="store_true", help="train nothing; rebuild from <results>/runs")
    mode.add_argument("--estimate", action="store_true", help="train nothing; estimate the runs' CPU time")
    parser.add_argument(
        "--costs", type=Path, default=DEFAULT_COSTS, help="CPU s per epoch (--estimate, --max-run-hours)"
    )
    parser.add_argument(
        "--max-run-hours", type=float, default=None, help="start no run estimated at more CPU hours"
    )
    args = parser.parse_args(argv)
    if args.max_run_hours is not None and args.max_run_hours <= 0:
        raise UserError(f"--max-run-hours must be positive, got {args.max_run_hours:g}")
    return args


def keep_finished(protocol: dict, run: str, folder: Path, copy: Path, failed: list[str]) -> None:
    """A finished run's small files to its copy, after testing it at the converged leaderboard's labels when
    the leaderboard reuses it (protocol ``leaderboard``): from its checkpoint, which no copy keeps."""
    labels = leaderboard_labels(protocol, run)
    if labels:
        try:
            if tested := retest_missing(folder, labels):
                print(f"{run}: tested at the leaderboard's {', '.join(tested)} ({folder})", flush=True)
        except UserError as err:
            print(f"{run}: {err}", flush=True)
            failed.append(f"{run}/{folder.name} leaderboard test ({err})")
    copy_artefacts(folder, copy)


def runs_to_train(
    args: argparse.Namespace, protocol: dict, plan: dict, all_runs: list[str], copies: Path, failed: list[str]
) -> list[tuple]:
    """(run, seed, folder, copy, overrides) of every planned run not finished yet (finished ones are copied
    to ``copies``: :func:`keep_finished`), of the runs ``--runs`` names; none with ``--collect``."""
    provenance = dataset_provenance(plan)
    to_train = set(args.runs or all_runs)
    if to_train - set(all_runs):  # also catches key=value overrides given after --runs
        raise UserError(
            f"--runs: unknown run(s) {sorted(to_train - set(all_runs))}; the protocol has "
            f"{', '.join(all_runs)} (give key=value overrides before --runs)"
        )
    todo = []
    for (run, seed), overrides in plan.items():
        folder = run_folder(args.out / "runs", run, seed, overrides).resolve()
        copy = run_folder(copies, run, seed, overrides)
        if finished_run(folder, overrides, provenance):
            print(f"{run} seed {seed}: finished earlier ({folder})", flush=True)
            keep_finished(protocol, run, folder, copy, failed)
        elif finished_run(copy, overrides, provenance):
            print(f"{run} seed {seed}: finished earlier (copy in {copy})", flush=True)
            embed_provenance(copy)  # a copy made before provenance was embedded in its files
        elif run in to_train and not args.collect:
            todo.append((run, seed, folder, copy, overrides))
    if args.max_run_hours is None or not todo:
        return todo
    plan_left = {(run, seed): overrides for run, seed, _, _, overrides in todo}
    over = runs_over_budget(plan_left, load_epoch_costs(args.costs), args.max_run_hours * 3600)
    for (run, seed), seconds in over.items():
        print(
            f"{run} seed {seed}: not started, estimated at {duration(seconds)} of CPU "
            f"(--costs {args.costs}), over --max-run-hours {args.max_run_hours:g}",
            flush=True,
        )
    return [entry for entry in todo if (entry[0], entry[1]) not in over]


def dataset_provenance(plan: dict) -> dict:
    """What a finished run's ``metrics.json`` ``dataset_info`` must match to be reused (the generator
    version of the synthetic faces)."""
    first = next(iter(plan.values()))
    return build_adapter(compose_config(first).dataset).provenance()


def check_copies(plan: dict, copies: Path) -> None:
    """Stop (:class:`UserError`, naming the folder) at a finished copy in ``copies`` of other overrides or
    another generator version: the table built from the copies alone reuses them as a call would."""
    provenance = dataset_provenance(plan)
    for (run, seed), overrides in plan.items():
        finished_run(run_folder(copies, run, seed, overrides), overrides, provenance)


def train(
    args: argparse.Namespace,
    protocol: dict,
    todo: list[tuple],
    command: str,
    failed: list[str],
    start: float,
    cpu0: float,
) -> int:
    """Train ``todo`` side by side, copying each finished run (:func:`keep_finished`); returns how many
    trained.

    The calls that trained runs: their history lives with the runs (<out>/calls.json), is updated as each run
    ends (a call that runs for days is on record from its start; ``start``, ``cpu0``: when this call began)
    and is copied with them."""
    if not todo:
        return 0
    calls = previous_calls(args.out / "calls.json")
    call = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "code": code_version(),
        "machine": f"{cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}",
        "runs_planned": len(todo),
        "runs_trained": 0,
        "wall_s": 0.0,
        "cpu_s": 0.0,
    }
    lock = threading.Lock()

    def record_call() -> None:
        call.update(wall_s=round(time.perf_counter() - start, 1), cpu_s=round(_children_cpu() - cpu0, 1))
        write_calls(args.out / "calls.json", [*calls, call])

    def done(index: int, ok: bool, seconds: float) -> None:
        run, seed, folder, copy, _ = todo[index]
        print(f"{run} seed {seed}: {'done' if ok else 'FAILED'} in {seconds / 60:.1f} min", flush=True)
        if ok:
            keep_finished(protocol, run, folder, copy, failed)
        with lock:
            if ok:
                call["runs_trained"] += 1
            else:
                failed.append(f"{run}/seed{seed} (see {folder.with_suffix('.log')})")
            record_call()

    print(f"{len(todo)} run(s) to train", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record_call()
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    train_side_by_side([(o, f) for _, _, f, _, o in todo], max(1, jobs), done, args.threads)
    record_call()
    return call["runs_trained"]


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = script_command("scripts/findings.py", argv)
    protocol = load_findings_protocol(args.protocol)
    if args.fraction is not None:
        if not 0 < args.fraction <= 1 or args.fraction == protocol.get("check_fraction"):
            raise UserError(f"--fraction must be in (0, 1] and not check_fraction, got {args.fraction}")
        protocol["fraction"] = args.fraction
    quick = protocol["quick"]
    all_runs = list(quick["runs"] if args.quick else protocol["runs"])
    seeds = args.seeds if args.seeds is not None else int(quick["seeds"] if args.quick else protocol["seeds"])
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    extra = [*(quick["overrides"] if args.quick else []), *args.overrides]
    plan = plan_runs(protocol, all_runs, seeds, extra)
    if args.estimate:
        return print_estimate(plan, load_epoch_costs(args.costs), seeds, float(protocol["fraction"]))
    results = args.results or (args.out / "results" if args.quick else DEFAULT_RESULTS)
    copies = results / "runs"
    start, cpu0 = time.perf_counter(), _children_cpu()
    trained = 0
    failed: list[str] = []
    if args.from_repo:
        check_copies(plan, copies)
    else:
        todo = runs_to_train(args, protocol, plan, all_runs, copies, failed)
        trained = train(args, protocol, todo, command, failed, start, cpu0)

    calls = previous_calls(results / "calls.json")
    if not args.from_repo:  # the calls on record in <results> stay, those of <out> are added or updated
        calls = merge_calls(calls, previous_calls(args.out / "calls.json"))
        if calls:
            results.mkdir(parents=True, exist_ok=True)
            write_calls(results / "calls.json", calls)

    records = load_records(copies, plan)
    budget = check_budget(protocol, all_runs, seeds, extra, copies, records)
    conv = convergence(records)
    claim_results = evaluate_claims(all_runs, records, conv, budget)
    title = f"Papers' findings on SYNTHETIC faces (not real data), {seeds} seed(s)"
    if args.quick:
        title += ", QUICK mode: not converged"
    notes = table_notes(args, command, records, calls, protocol, plan)
    md = write_findings(claim_results, conv, results, "synthetic", title, notes, budget)
    curves = plot_curves(records, results / "curves", all_runs)
    summary = {
        "table": str(md),
        "curves": [str(p) for p in curves],
        "runs_finished": len(records),
        "runs_planned": len(plan),
        "runs_trained_this_call": trained,
        "verdicts": {c.claim.text: c.verdict if c.measured else "not run yet" for c in claim_results},
        "failed": failed,
    }
    outcome = call_outcome(md.read_text(), summary, failed)
    print(outcome.out)
    if outcome.status:
        print(outcome.error, file=sys.stderr)
        sys.exit(outcome.status)
    return summary


def table_notes(
    args: argparse.Namespace, command: str, records: list, calls: list[dict], protocol: dict, plan: dict
) -> list[str]:
    """The lines under the table: provenance, budget, CPU time and calls, and what is still to run."""
    notes = [provenance_line(result_provenance(synthetic=True))]
    notes += [f"Table made {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `{command}`."]
    notes += provenance_lines(records, calls, float(protocol["fraction"]))
    if not args.quick:  # the cost file prices the protocol's epochs, not the quick mode's single epoch
        notes.append(remaining_line(plan, {(r.run, r.seed) for r in records}, load_epoch_costs(args.costs)))
    return notes


def evaluate_claims(
    runs: list[str], records: list, conv: list[Convergence], budget: list[BudgetCheck]
) -> list:
    """Every claim of ``runs`` judged on the finished ``records``, each note with its groups' convergence
    (rule 1) and budget check (rule 2)."""
    metrics = metrics_by_run(records)
    return with_convergence_notes([evaluate_claim(c, metrics) for c in claims_for(runs)], conv, budget)


def check_budget(
    protocol: dict, runs: list[str], seeds: int, extra: list[str], copies: Path, records: list
) -> list[BudgetCheck]:
    """The protocol's runs (``records``) against the finished copies of the same runs and seeds at its
    ``check_fraction`` (none without one): does training longer still gain? Trains nothing."""
    if "check_fraction" not in protocol:
        return []
    fraction, check = float(protocol["fraction"]), float(protocol["check_fraction"])
    other = load_records(copies, plan_runs({**protocol, "fraction": check}, runs, seeds, extra))
    shorter, longer = (other, records) if check < fraction else (records, other)
    return budget_check(shorter, longer, (min(check, fraction), max(check, fraction)))


def print_estimate(plan: dict, costs: dict, seeds: int, fraction: float) -> dict:
    """The estimated CPU time of every run of ``plan`` (all seeds), in training order, and the total."""
    per_run = estimate_cpu(plan, costs)
    print(f"Estimated CPU time at fraction {fraction:g} of the papers' epochs, {seeds} seed(s) per run:")
    total = 0.0
    for run, seconds in per_run.items():
        total += seconds
        print(f"  {run:20s} {seconds / 3600:6.2f} h   (cumulative {total / 3600:6.1f} h)")
    print(f"  total                {total / 3600:6.1f} h CPU")
    hours = {r: round(s / 3600, 2) for r, s in per_run.items()}
    summary = {"fraction": fraction, "seeds": seeds, "cpu_h": hours, "total_cpu_h": round(total / 3600, 1)}
    print(json.dumps(summary))
    return summary


def code_version() -> str:
    """The ``COMMIT`` file of an exported copy (``git archive`` into a git-ignored folder, which a
    ``git rev-parse`` would see as the enclosing checkout), else the repository's commit."""
    commit = REPO / "COMMIT"
    if commit.is_file():
        return commit.read_text().strip()[:12]
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(git, cwd=REPO, capture_output=True, text=True)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        pass
    return "unknown"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
