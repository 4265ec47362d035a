"""One exception tree for pyengine. Every error carries a one-line message fit for an operator.

The CLI prints ``error: <subject>: <reason>`` and never a traceback for these. ``subject`` is the
file path, blob name or destination the error is about; it never contains a secret (URLs are
redacted by :func:`pyengine.targets.auth.redact` before they get here).
"""

from __future__ import annotations


class PyEngineError(Exception):
    """Base of every error pyengine raises on purpose."""

    #: exit code the CLI uses when this error aborts the whole command (the table in
    #: pyengine/cli/common.py: 1 failed, 2 usage or configuration, 3 destination)
    exit_code = 1

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason

    def one_line(self) -> str:
        return f"{self.subject}: {self.reason}".replace("\n", " ")


class ConfigError(PyEngineError):
    """Bad usage or configuration: wrong destination URL, missing key file, bad option."""

    exit_code = 2


class SourceError(PyEngineError):
    """A source file cannot be read as it was planned (missing, not regular, changed, I/O error).

    Raised by the native core (pyengine._core maps its C++ exceptions here) and by the scanner.
    """


class FileChangedError(SourceError):
    """The file's size or mtime changed while it was being read: it is reported, never committed."""


class DestinationError(PyEngineError):
    """The destination refused a request (auth, missing container, invalid name, quota). Raised
    out of a command it means the destination could not be reached or refused us (exit 3); a
    per-file refusal is counted in the report instead."""

    exit_code = 3


class AuthError(DestinationError):
    """Credentials missing, refused or expired."""


class ContainerNotFoundError(DestinationError):
    """The destination container does not exist and was not to be created: the job cannot
    start, the command must change (add --create-container or fix the name)."""

    exit_code = 2


class ClusterError(PyEngineError):
    """The Dask cluster of a distributed job is gone (its scheduler closed or lost the
    connection): the job stops, and a re-run resumes it from its journal."""


class IntegrityError(PyEngineError):
    """Bytes at the destination do not match the source (CRC64 or BLAKE3 mismatch)."""


class JournalError(PyEngineError):
    """The job store cannot be opened or is inconsistent with the job being run."""

    exit_code = 2


class JobLockedError(PyEngineError):
    """The job is already running in another process (its lock is held): the second run must not
    start, so it is a usage error (exit 2) naming the holder's pid."""

    exit_code = 2

    def __init__(self, subject: str, reason: str, *, holder_pid: int | None = None) -> None:
        super().__init__(subject, reason)
        self.holder_pid = holder_pid
