"""Restore: blobs back into a local tree, decrypted and checked (the copy's stages reversed)."""

from pyengine.restore.job import restore
from pyengine.restore.report import RestoreOptions, RestoreReport

__all__ = ["RestoreOptions", "RestoreReport", "restore"]
