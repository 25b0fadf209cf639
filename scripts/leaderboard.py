#!/usr/bin/env python
"""Train every method under one protocol and write one table: accuracy per face size, and what it costs.

    python scripts/leaderboard.py [key=value ...] [--methods baseline efc ...] [--seeds 2] [--out DIR]
                                  [--budget 1.0] [--protocol experiments/leaderboard/protocol.yaml]
                                  [-- key=value ...]

``key=value`` arguments are Hydra overrides applied to every run (``dataset=rafdb dataset.root=/data/RAF-DB``,
``trainer.max_epochs=1``, ``trainer.device=cuda``); they win over the protocol's. They may stand anywhere,
also after ``--methods`` (an argument holding ``=`` is an override, not a method) or after ``--``; every
run's config is composed and validated before the first run trains. Each method trains with its
own recipe (``methods:`` in the protocol: its method config's training degradations, input size and stages;
epochs scaled by ``--budget``) on the same dataset, split and source image size, and is tested at the
protocol's degradations. Runs go to ``<out>/runs/<method>/seed<k>/`` (ordinary run folders; a finished one
is never trained again, an interrupted one resumes), each method's cost (parameters, GMACs at its input,
CPU batch-1 latency) to ``<out>/runs/<method>/cost.json``, the table to ``<out>/leaderboard.{md,csv,png}``.
A protocol method with ``findings_run: <run>`` (``experiments/leaderboard/converged.yaml``) is that run of the
findings protocol, in ``--findings-out`` (``scripts/findings.py --out``), trained there if not finished and
tested at the protocol's degradations its own test lacked, from a checkpoint that first reproduces its own
test accuracy (``<run folder>/leaderboard_test.json``). The findings make that file as each such run finishes
and copy it with the run's small files (``--findings-results``, default ``experiments/findings``): a run not
finished in ``--findings-out`` but finished in its copy there (trained on a machine since replaced, its
checkpoints gone) is read from the copy.
Model selection stays on each run's validation split; the test split is evaluated once per run. The table
states the wall time of every call that trained runs or measured costs (``leaderboard.json``: ``calls``); a
call on a finished folder only writes the table again and leaves that history alone. The last line printed
is JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lrfer.config.compose import compose_config, merge_overrides
from lrfer.config.validate import validate_config
from lrfer.core.checkpoint import write_json
from lrfer.core.errors import UserError, exit_on_user_error, make_output_folder
from lrfer.data.datasets import build_adapter
from lrfer.data.synthetic import GENERATOR_VERSION
from lrfer.engine.loading import load_run_config
from lrfer.report.calls import call_outcome, previous_calls
from lrfer.report.extra_test import retest_missing
from lrfer.report.findings import load_findings_protocol, run_folder
from lrfer.report.findings import plan_runs as plan_findings_runs
from lrfer.report.leaderboard import (
    budget_label,
    budget_overrides,
    collect,
    cpu_time_note,
    load_protocol,
    provenance_notes,
    write_leaderboard,
)
from lrfer.report.provenance import provenance as result_provenance
from lrfer.report.provenance import script_command
from lrfer.tools.latency import cpu_model
from lrfer.tools.launch import add_threads_argument, finished_run, train_side_by_side
from lrfer.tools.model_stats import method_cost

DEFAULT_PROTOCOL = Path(__file__).resolve().parents[1] / "experiments" / "leaderboard" / "protocol.yaml"
DEFAULT_FINDINGS_RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "findings"


def default_jobs(device: str) -> int:
    """Runs trained at once: one per core on a CPU (independent runs scale better than one run's threads
    across cores), one on a GPU (the runs would share it)."""
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (dataset=..., ...)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the protocol")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per method")
    parser.add_argument("--out", type=Path, default=Path("leaderboard"), help="output folder")
    parser.add_argument("--budget", type=float, default=None, help="epoch factor (default: the protocol's)")
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    parser.add_argument(
        "--findings-out",
        type=Path,
        default=Path("outputs/findings"),
        help="where the findings' runs train (scripts/findings.py --out): a method with a findings_run "
        "in the protocol reuses (or trains) its run there",
    )
    parser.add_argument(
        "--findings-results",
        type=Path,
        default=DEFAULT_FINDINGS_RESULTS,
        help="the findings' copies of finished runs (scripts/findings.py --results): a findings run that is "
        "not finished in --findings-out is read from its copy there, with the leaderboard test it carries",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once, each on cores/jobs threads (default: one per core on a CPU, 1 on a GPU)",
    )
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    # ``--methods a b key=value``: argparse gives the override to --methods; an override holds "="
    args.overrides += [m for m in args.methods or [] if "=" in m]
    if args.methods is not None:
        args.methods = [m for m in args.methods if "=" not in m] or None
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    return args


def findings_plan(protocol: dict, budget: float, seeds: int, overrides: list[str]) -> dict:
    """(findings run, seed) -> its overrides, as ``scripts/findings.py`` plans them at the findings protocol's
    fraction times ``budget`` with the same command-line ``overrides``: the same run folders, so the two
    scripts train each shared run once. Empty when no method of the protocol reuses a findings run."""
    runs = [spec["findings_run"] for spec in protocol["methods"].values() if spec.get("findings_run")]
    if not runs:
        return {}
    findings = load_findings_protocol(protocol["findings"])
    findings["fraction"] = float(findings["fraction"]) * budget
    return plan_findings_runs(findings, runs, seeds, overrides)


def plan_runs(
    protocol: dict,
    methods: list[str],
    budget: float,
    base: list[str],
    args: argparse.Namespace,
    provenance: dict,
) -> tuple[dict[str, list[Path]], list[tuple[str, int, Path, list[str]]]]:
    """Every method's run folders, and (method, seed, run folder, overrides) of every run still to train,
    method by method (a method's seeds train side by side); every method's config is validated before the
    first run trains. A method with a ``findings_run`` is that run of the findings (in ``--findings-out``,
    tested there at its own degradations; :func:`retest_reused` adds the protocol's)."""
    shared = findings_plan(protocol, budget, args.seeds, args.overrides)
    folders: dict[str, list[Path]] = {}
    todo = []
    for name in methods:
        spec = protocol["methods"][name]
        run = spec.get("findings_run")
        scaled = [] if run else budget_overrides(spec, budget, base)
        for seed in range(args.seeds):
            if run:
                overrides = shared[(run, seed)]
                run_dir = run_folder(args.findings_out / "runs", run, seed, overrides).resolve()
                copy = run_folder(args.findings_results / "runs", run, seed, overrides).resolve()
                if not finished_run(run_dir, overrides, provenance) and finished_run(
                    copy, overrides, provenance
                ):
                    run_dir = copy  # trained on another machine: its copy carries its leaderboard test
            else:
                run_dir = (args.out / "runs" / name / f"seed{seed}").resolve()
                overrides = merge_overrides(spec["overrides"], scaled, base, [f"seed={seed}"])
            folders.setdefault(name, []).append(run_dir)
            if seed == 0:
                try:
                    validate_config(compose_config(overrides), warn=False)
                except UserError as err:
                    raise UserError(f"method {name}: {err}") from None
            if finished_run(run_dir, overrides, provenance):
                print(f"{name} seed {seed}: finished earlier ({run_dir})", flush=True)
            else:
                todo.append((name, seed, run_dir, overrides))
    return folders, todo


def retest_reused(
    protocol: dict, folders: dict[str, list[Path]], labels: list[str], failed: list[str]
) -> int:
    """Test each finished run reused from the findings at the protocol's ``labels`` its own test did not
    cover, into its :data:`EXTRA_TEST_FILE` (once: a label already there is not tested again; the findings
    test their runs there as they finish); returns how many runs were tested."""
    tested = 0
    for name, runs in folders.items():
        if not protocol["methods"][name].get("findings_run"):
            continue
        for run_dir in runs:
            if not (run_dir / "metrics.json").is_file():
                continue
            try:
                tested += bool(retest_missing(run_dir, labels))
            except UserError as err:
                print(f"{name}: {err}", flush=True)
                failed.append(f"{name}/{run_dir.name} retest ({err})")
    return tested


def measure_costs(out: Path, folders: dict[str, list[Path]], latency: dict, failed: list[str]) -> int:
    """Write each method's ``cost.json`` not measured yet (after all training: the latency column is timed
    with nothing else running on the machine), from its first run; returns how many were measured."""
    measured = 0
    for name, runs in folders.items():
        first = runs[0]
        cost_file = out / "runs" / name / "cost.json"
        if (first / "metrics.json").is_file() and not cost_file.is_file():
            try:
                cost_file.parent.mkdir(parents=True, exist_ok=True)
                write_json(method_cost(load_run_config(first), latency), cost_file)
                measured += 1
            except UserError as err:  # one method's cost must not stop the other methods' costs
                print(f"{name}: cost not measured: {err}", flush=True)
                failed.append(f"{name}/cost ({err})")
    return measured


def record_call(
    out: Path, argv: list[str] | None, runs_trained: int, measured: int, jobs, start: float
) -> list:
    """The calls that trained runs or measured costs, this one appended when it did either (a call that only
    writes the table again made none of it: the history stays)."""
    calls = previous_calls(out / "leaderboard.json")
    if runs_trained or measured:
        calls.append(
            {
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": script_command("scripts/leaderboard.py", argv),
                "runs_trained": runs_trained,
                "jobs": jobs,
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
    return calls


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    protocol = load_protocol(args.protocol)
    methods = args.methods or list(protocol["methods"])
    unknown = [m for m in methods if m not in protocol["methods"]]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}: the protocol has {', '.join(protocol['methods'])}")
    budget = float(args.budget if args.budget is not None else protocol["budget"])
    test = "[" + ",".join(protocol["test"]) + "]"
    dataset = compose_config(merge_overrides(protocol["common"], args.overrides)).dataset.name
    own = protocol["datasets"].get(dataset, [])  # e.g. the synthetic faces' test-split size
    base = merge_overrides(protocol["common"], own, [f"degrade.test={test}"], args.overrides)
    cfg = compose_config(base)  # also checks the overrides' keys and types before anything trains
    out = args.out

    provenance = build_adapter(cfg.dataset).provenance()  # e.g. the synthetic generator's version
    jobs_wanted = args.jobs if args.jobs is not None else default_jobs(cfg.trainer.device)
    if jobs_wanted < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs_wanted}")

    start, failed = time.perf_counter(), []
    folders, todo = plan_runs(protocol, methods, budget, base, args, provenance)

    def trained(index: int, ok: bool, seconds: float) -> None:
        name, seed, run_dir, _ = todo[index]
        print(f"{name} seed {seed}: {'done' if ok else 'FAILED'} in {seconds / 60:.1f} min", flush=True)
        if not ok:
            failed.append(f"{name}/seed{seed} (see {run_dir.with_suffix('.log')})")

    make_output_folder(out)
    print(f"{len(todo)} run(s) to train, {max(1, min(jobs_wanted, len(todo)))} at a time", flush=True)
    jobs = train_side_by_side(
        [(overrides, run_dir) for *_, run_dir, overrides in todo], jobs_wanted, trained, args.threads
    )
    train_wall = time.perf_counter() - start
    retested = retest_reused(protocol, folders, list(protocol["test"]), failed)
    measured = measure_costs(out, folders, protocol["latency"], failed)
    calls = record_call(out, argv, len(todo), measured + retested, jobs, start)

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__}
    if dataset == "synthetic":
        machine["generator_version"] = GENERATOR_VERSION
    results = collect(out, methods, folders)
    labels = sorted({lbl for r in results for lbl in r.accuracies})
    data = "SYNTHETIC faces (not real data)" if dataset == "synthetic" else dataset
    budget_text = budget_label(budget, protocol["converged_budget"])
    title = f"lrfer leaderboard on {data}, {budget_text}, {args.seeds} seed(s)"
    notes = [*provenance_notes(calls, machine), cpu_time_note(results)]
    md = write_leaderboard(results, labels, out, title, notes)
    summary = {
        "dataset": dataset,
        "budget": budget,
        "seeds": args.seeds,
        "methods": methods,
        "overrides": args.overrides,
        "jobs": jobs,
        "wall_s_this_call": round(time.perf_counter() - start, 1),
        "train_wall_s_this_call": round(train_wall, 1),
        "train_s_total": round(sum(sum(r.durations) for r in results), 1),
        "calls": calls,
        "failed": failed,
        "table": str(md),
        "machine": machine,
        "torch": torch.__version__,
        "provenance": result_provenance(synthetic=dataset == "synthetic"),
    }
    write_json(summary, out / "leaderboard.json")
    outcome = call_outcome(md.read_text(), summary, failed)
    print(outcome.out)
    if outcome.status:
        print(outcome.error, file=sys.stderr)
        sys.exit(outcome.status)
    return summary


if __name__ == "__main__":
    main()
