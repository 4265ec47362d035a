"""`python -m pyengine.cli ...`: the console script without an install."""

from pyengine.cli.main import run

run()
