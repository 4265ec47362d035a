"""`python -m pyengine.cli ...`: the console script without an install."""

from pyengine.cli import run

run()
