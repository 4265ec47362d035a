"""`python -m pyengine ...`: the console script without an install."""

from pyengine.cli.main import run

run()
