"""pyengine: bulk transfer of large archives into Azure Blob Storage, with a native core that
reads, hashes and encrypts.

report = await pyengine.copy("/archive", "https://acct.blob.core.windows.net/pacs/2026",
                             pyengine.CopyOptions(encrypt=True, kek=pyengine.load_kek_file("k")))
report = await pyengine.copy("/archive", policy=pyengine.load_policy("policy.toml"))

The names below are imported on first use (PEP 562): `import pyengine.cli` must stay cheap, so
that the command line installs its SIGINT/SIGTERM handlers before the engine, aiohttp and the
native core load (most of a second), and a Ctrl-C during start-up is one line, not a traceback.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not `from typing import ...`: typing alone costs milliseconds here
if TYPE_CHECKING:
    from typing import Any

    from pyengine.crypto import LocalKeyWrapper, load_kek_file
    from pyengine.engine.job import copy
    from pyengine.engine.report import CopyReport, Event
    from pyengine.engine.restore import RestoreOptions, RestoreReport, restore
    from pyengine.errors import (
        AuthError,
        ClusterError,
        ConfigError,
        DestinationError,
        FileChangedError,
        IntegrityError,
        JournalError,
        PyEngineError,
        SourceError,
    )
    from pyengine.options import CopyOptions, RetryPolicy
    from pyengine.policy import Policy, load_policy

#: public name -> the module that defines it
_EXPORTS = {
    "copy": "pyengine.engine.job",
    "CopyReport": "pyengine.engine.report",
    "Event": "pyengine.engine.report",
    "LocalKeyWrapper": "pyengine.crypto",
    "load_kek_file": "pyengine.crypto",
    "AuthError": "pyengine.errors",
    "ConfigError": "pyengine.errors",
    "DestinationError": "pyengine.errors",
    "FileChangedError": "pyengine.errors",
    "IntegrityError": "pyengine.errors",
    "JournalError": "pyengine.errors",
    "PyEngineError": "pyengine.errors",
    "ClusterError": "pyengine.errors",
    "SourceError": "pyengine.errors",
    "CopyOptions": "pyengine.options",
    "RetryPolicy": "pyengine.options",
    "Policy": "pyengine.policy",
    "load_policy": "pyengine.policy",
    "restore": "pyengine.engine.restore",
    "RestoreOptions": "pyengine.engine.restore",
    "RestoreReport": "pyengine.engine.restore",
}

__all__ = [
    "AuthError",
    "ClusterError",
    "ConfigError",
    "CopyOptions",
    "CopyReport",
    "DestinationError",
    "Event",
    "FileChangedError",
    "IntegrityError",
    "JournalError",
    "LocalKeyWrapper",
    "Policy",
    "PyEngineError",
    "RestoreOptions",
    "RestoreReport",
    "RetryPolicy",
    "SourceError",
    "__version__",
    "copy",
    "load_kek_file",
    "load_policy",
    "restore",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("pyengine")
        except PackageNotFoundError:  # running from a source tree without an install
            value = "0.0.0"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'pyengine' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
