"""The `pyengine` command line: argument parsing and presentation only; every command calls the
library API (pyengine.copy, pyengine.state.verify, pyengine.engine.rekey, pyengine.bench).

Importing it is cheap (a few milliseconds): main() installs the SIGINT/SIGTERM handlers before
it imports the command groups (see cli/main.py).
"""

from pyengine.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
