"""`pyengine` command line: the parser wiring every command group, main(), and the mapping of
errors onto exit codes. Each group parses and presents in its own module (copy, jobs, verify,
rekey, and pyengine.bench); none holds logic the library API lacks.

Exit codes: 0 everything copied, 1 some files failed, 2 usage or configuration error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pyengine import __version__
from pyengine.cli import copy, jobs, rekey, restore, verify
from pyengine.cli.common import EXIT_USAGE, Parser, stderr

# Re-exported: tests/integration/test_faults.py drives the presenter through this module.
from pyengine.cli.progress import _Presenter
from pyengine.errors import PyEngineError

__all__ = ["_Presenter", "build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pyengine", description="Bulk copy of archives into Azure Blob Storage.")
    parser.add_argument("--version", action="version", version=f"pyengine {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    # The order here is the order `pyengine --help` lists the commands in.
    copy.add_parsers(sub)
    jobs.add_parser(sub)
    verify.add_parser(sub)
    rekey.add_parser(sub)
    restore.add_parser(sub)

    from pyengine.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "copy": copy.cmd_copy,
        "resume": copy.cmd_resume,
        "jobs": jobs.cmd_jobs,
        "verify": verify.cmd_verify,
        "rekey": rekey.cmd_rekey,
        "restore": restore.cmd_restore,
    }
    try:
        if args.command == "bench":
            from pyengine.bench import run_bench

            return run_bench(args)
        return commands[args.command](args)
    except PyEngineError as e:
        stderr.print(f"error: {e.one_line()}", markup=False, highlight=False)
        if getattr(args, "json", False):  # tools reading stdout get the failure too
            print(
                json.dumps(
                    {
                        "kind": "error",
                        "subject": e.subject,
                        "reason": e.reason,
                        "exit_code": e.exit_code,
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        return e.exit_code
    except OSError as e:  # a path given on the command line that cannot be used
        subject = e.filename if e.filename is not None else args.command
        stderr.print(f"error: {subject}: {e.strerror or e}", markup=False, highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.print("interrupted: run the same command (or `pyengine resume JOB`) to go on")
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
