"""Restore: blobs back into a local tree, decrypted and checked (the copy's stages reversed)."""

from pyengine.engine.restore.job import restore
from pyengine.engine.restore.report import RestoreOptions, RestoreReport

__all__ = ["RestoreOptions", "RestoreReport", "restore"]
