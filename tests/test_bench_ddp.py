"""scripts/bench_ddp.py starts its ranks with torchrun: the ranks' options survive torchrun's parser."""

from __future__ import annotations

from conftest import REPO, load_script
from torch.distributed.run import get_args_parser

SCRIPT = REPO / "scripts" / "bench_ddp.py"


def test_a_rank_receives_the_bench_options_through_torchrun_unchanged(tmp_path):
    bench = load_script("bench_ddp")
    args = bench.parse_args(["--nproc", "2", "--size", "32", "--batch-size", "8", "--method", "efc"])
    argv = bench.worker_argv(args, str(tmp_path / "cache"), tmp_path / "r0.json", threads=1)
    launched = get_args_parser().parse_args(["--standalone", "--nproc_per_node=2", str(SCRIPT), *argv])
    assert launched.training_script_args == argv
    rank = bench.parse_args(launched.training_script_args)
    assert rank.worker and (rank.size, rank.batch_size, rank.method, rank.threads) == (32, 8, "efc", 1)
    assert (rank.cache, rank.out) == (str(tmp_path / "cache"), str(tmp_path / "r0.json"))
