"""The `pyengine` command line: argument parsing and presentation only; every command calls the
library API (pyengine.copy, pyengine.state.verify, pyengine.engine.rekey, pyengine.bench)."""

from pyengine.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
