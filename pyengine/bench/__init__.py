"""`pyengine bench`: the runs, the nginx discard sink, the peers (SDK, AzCopy, rclone) and the
data generators; shipped in the wheel so an installed pyengine can measure itself.

Modules: cli (the sub-parsers and run_bench), native (the native core alone), upload (copies end
to end vs the SDK), copy_child (one of our copies, measured in its own process), files (the
page-cached source files), sink, peers, dicom_tree. The names below are the bench's API for
benches/ and the tests.
"""

from pyengine.bench.cli import add_bench_parser, parse_size, parse_thread_list, run_bench
from pyengine.bench.copy_child import OurRun
from pyengine.bench.dicom_tree import make_tree
from pyengine.bench.files import write_random_file, write_small_files
from pyengine.bench.native import NativeResult, NativeRun, print_native, run_native
from pyengine.bench.upload import UploadResult, print_upload, run_upload

__all__ = [
    "NativeResult",
    "NativeRun",
    "OurRun",
    "UploadResult",
    "add_bench_parser",
    "make_tree",
    "parse_size",
    "parse_thread_list",
    "print_native",
    "print_upload",
    "run_bench",
    "run_native",
    "run_upload",
    "write_random_file",
    "write_small_files",
]
