"""`pyengine bench`: the runs, the nginx discard sink, the peers (SDK, AzCopy, rclone) and the
data generators; shipped in the wheel so an installed pyengine can measure itself.

Modules: cli (the sub-parsers and run_bench), native (the native core alone), upload (copies end
to end vs the SDK), copy_child (one of our copies, measured in its own process), files (the
page-cached source files), sink, peers, dicom_tree. The names below are the bench's API for
benches/ and the tests.
"""

import importlib
from typing import Any

#: name -> module that defines it, imported on first use (PEP 562): a copy measured in its own
#: process (copy_child) imports this package, and must not pay for the peers' SDK import
_WHERE = {
    "add_bench_parser": "cli",
    "parse_size": "cli",
    "parse_thread_list": "cli",
    "run_bench": "cli",
    "OurRun": "copy_child",
    "make_tree": "dicom_tree",
    "write_random_file": "files",
    "write_small_files": "files",
    "NativeResult": "native",
    "NativeRun": "native",
    "print_native": "native",
    "run_native": "native",
    "UploadResult": "upload",
    "print_upload": "upload",
    "run_upload": "upload",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"pyengine.bench.{module}"), name)


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
