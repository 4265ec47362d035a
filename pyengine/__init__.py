"""pyengine: bulk transfer of large archives into Azure Blob Storage, with a native core that
reads, hashes and encrypts.

report = await pyengine.copy("/archive", "https://acct.blob.core.windows.net/pacs/2026",
                             pyengine.CopyOptions(encrypt=True, kek=pyengine.load_kek_file("k")))
"""

from importlib.metadata import PackageNotFoundError, version

from pyengine.engine.job import copy
from pyengine.engine.report import CopyReport, Event
from pyengine.restore import RestoreOptions, RestoreReport, restore

from .crypto import LocalKeyWrapper, load_kek_file
from .errors import (
    AuthError,
    ConfigError,
    DestinationError,
    FileChangedError,
    IntegrityError,
    JournalError,
    PyEngineError,
    SourceError,
)
from .options import CopyOptions, RetryPolicy

try:
    __version__ = version("pyengine")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "AuthError",
    "ConfigError",
    "CopyOptions",
    "CopyReport",
    "DestinationError",
    "Event",
    "FileChangedError",
    "IntegrityError",
    "JournalError",
    "LocalKeyWrapper",
    "PyEngineError",
    "RestoreOptions",
    "RestoreReport",
    "RetryPolicy",
    "SourceError",
    "__version__",
    "copy",
    "load_kek_file",
    "restore",
]
