"""The `pyengine` command line: argument parsing and presentation only; every command calls the
library API (pyengine.copy, pyengine.state.verify, pyengine.engine.rekey, pyengine.bench).

main() here is the console script's entry point. It installs the SIGINT/SIGTERM handlers
before it imports the rest of the command line (rich, the engine, aiohttp: most of a second),
so a Ctrl-C or a SIGTERM during start-up ends with one line and exit 130/143, not a traceback.
"""

from __future__ import annotations

import sys

from pyengine.cli.signals import Interrupted, exit_status, install_sync_handlers

TYPE_CHECKING = False  # not `from typing import ...`: kept light (see above)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["build_parser", "main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    install_sync_handlers()
    try:
        from pyengine.cli.main import main as cli_main
    except Interrupted as e:
        sys.stderr.write("interrupted during start-up: nothing was done\n")
        return exit_status(e.signum)
    return cli_main(argv)


def run() -> None:
    sys.exit(main())


def __getattr__(name: str) -> Any:
    if name == "build_parser":
        from pyengine.cli.main import build_parser

        return build_parser
    raise AttributeError(name)
