#!/usr/bin/env python3
"""Write a deterministic, DICOM-like demo archive (see :mod:`pyengine.bench.dicom_tree`).

    python scripts/make_dicom_tree.py OUT_DIR --total-mb 300 --seed 1

The generator lives in the package so that ``pyengine bench`` runs from an installed wheel; this
wrapper keeps the command the Makefile and older notes use.
"""

from __future__ import annotations

import sys

from pyengine.bench.dicom_tree import Totals, main, make_tree

__all__ = ["Totals", "main", "make_tree"]

if __name__ == "__main__":
    sys.exit(main())
