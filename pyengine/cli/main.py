"""`pyengine` command line: the parser wiring every command group, main(), and the mapping of
errors onto exit codes. Each group parses and presents in its own module (copy, jobs, verify,
rekey, and pyengine.bench); none holds logic the library API lacks.

Exit codes: the one table in cli/common.py (EXIT_CODES_HELP, printed by `pyengine --help`).

This module imports nothing heavy at its top: main() installs the SIGINT/SIGTERM handlers
(cli/signals.py) before it imports the command groups (rich, the engine, aiohttp: about 0.2 s
here, most of a second on a cold cache), so a signal during start-up ends with one line and exit
130/143, not a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from pyengine.cli.signals import STOP_SIGNALS, Interrupted, exit_status, install_sync_handlers

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main", "run"]  # and _Presenter, on first use (__getattr__)


def __getattr__(name: str) -> Any:
    # Re-exported: tests/integration/test_faults.py drives the presenter through this module.
    if name == "_Presenter":
        from pyengine.cli.progress import _Presenter

        return _Presenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    from pyengine import __version__
    from pyengine.cli import copy, finalize, jobs, policy, rekey, restore, studies, verify
    from pyengine.cli.common import EXIT_CODES_HELP, Parser

    parser = Parser(
        prog="pyengine",
        description="Bulk copy of archives into Azure Blob Storage.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyengine {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    # The order here is the order `pyengine --help` lists the commands in.
    copy.add_parsers(sub)
    jobs.add_parser(sub)
    verify.add_parser(sub)
    finalize.add_parser(sub)
    rekey.add_parser(sub)
    restore.add_parser(sub)
    studies.add_parser(sub)
    policy.add_parser(sub)

    from pyengine.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code (the table in cli/common.py). SIGINT and SIGTERM
    stop it gracefully (cli/signals.py); the handlers before the call are restored after it
    (a library or test process calling main() keeps its own)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if in_main_thread else {}
    try:
        if in_main_thread:
            install_sync_handlers()
        return _main(argv)
    except KeyboardInterrupt as e:  # Interrupted, or Ctrl-C off the main thread (no handlers)
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        # plain write: the interrupted import may have been rich's
        sys.stderr.write(
            f"interrupted ({signal.Signals(signum).name}): run the same command (or "
            "`pyengine resume JOB`) to go on\n"
        )
        return exit_status(signum)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _main(argv: Sequence[str] | None) -> int:
    import json
    import logging

    from pyengine.cli import copy, finalize, jobs, policy, rekey, restore, studies, verify
    from pyengine.cli.common import EXIT_USAGE, exit_code_of, stderr
    from pyengine.errors import PyEngineError

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
        "finalize": finalize.cmd_finalize,
        "rekey": rekey.cmd_rekey,
        "restore": restore.cmd_restore,
        "studies": studies.cmd_studies,
        "policy": policy.cmd_policy,
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
                        "exit_code": exit_code_of(e),
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        return exit_code_of(e)
    except OSError as e:  # a path given on the command line that cannot be used
        subject = e.filename if e.filename is not None else args.command
        stderr.print(f"error: {subject}: {e.strerror or e}", markup=False, highlight=False)
        return EXIT_USAGE


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
