"""`pyengine verify TARGET`: the sub-parser only; the check itself is
pyengine.state.verify.run_verify (0 all ok, 1 any finding)."""

from __future__ import annotations

import argparse
from typing import Any

from pyengine.cli.common import add_credential_flags, size_mib
from pyengine.options import CopyOptions, MiB


def add_parser(sub: Any) -> None:
    v = sub.add_parser("verify", help="check a destination against the journal")
    v.add_argument(
        "target",
        help="a destination URL (every blob the journal knows under it, and blobs it does not "
        "know), or a job id (that job's committed files)",
    )
    v.add_argument(
        "--deep", action="store_true", help="read back (ranged), decrypt and re-hash every blob"
    )
    v.add_argument(
        "--kek-file", help="key-encryption key: checks encrypted blobs' digests (--deep: needed)"
    )
    v.add_argument(
        "--memory-cap",
        type=size_mib,
        default=CopyOptions.memory_cap_bytes,
        metavar="MIB",
        help="hard cap on --deep read buffers in MiB, as for copy "
        f"(default: {CopyOptions.memory_cap_bytes // MiB})",
    )
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_credential_flags(v)


def cmd_verify(args: argparse.Namespace) -> int:
    from pyengine.state.verify import run_verify

    return run_verify(args)
