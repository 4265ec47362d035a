"""`pyengine bench`: the runs, the nginx discard sink, the peers (SDK, AzCopy, rclone) and the
data generators; shipped in the wheel so an installed pyengine can measure itself."""

from pyengine.bench.runs import add_bench_parser, run_bench

__all__ = ["add_bench_parser", "run_bench"]
