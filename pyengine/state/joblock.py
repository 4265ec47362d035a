"""A job runs at most once at a time: an exclusive flock on a lock file beside the journal
(``jobs.sqlite.job-<digest of source and destination>.lock``).

Why one lock per job, keyed by (source, redacted destination), and not one per journal: the default
journal (``~/.local/state/pyengine/jobs.sqlite``) is shared by every job of a user and is built for
several processes at once (file ids come in reserved ranges), so a journal-wide lock would
serialise unrelated migrations. What must never run twice is one source copied to one
destination: that pair is what a re-run resumes (:meth:`Journal.find_unfinished_job`) and two runs
of it upload the same blobs and write every manifest line twice. The key exists before the job id
does, so two first runs racing to create the job are caught too.

Why flock: the kernel drops the lock when the holder dies, kill -9 included, so a lock left by a
dead process is taken over without any pid check; the pid written into the file is only there to
name the holder in the error. flock (not fcntl/POSIX record locks) because a POSIX lock is dropped
when the process closes ANY descriptor of the file, and is not exclusive between two opens in one
process (two jobs in one library process must exclude each other too). On Linux NFS, flock is
carried by the server's byte-range locks, so the lock also holds across hosts.

The file is removed on release. Removing a lock file is racy by nature (a waiter may hold the
descriptor of the unlinked file), so an acquirer checks after locking that the path still names
the inode it locked, and starts over if not.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path

from pyengine.errors import JobLockedError, JournalError

#: a holder writes its pid right after locking; a reader that finds the file still empty waits
#: this long for it before naming the holder "unknown"
PID_WAIT_S = 0.5


def job_lock_path(journal_path: str | os.PathLike[str], source: str, dest: str) -> Path:
    """The lock file of the job copying source to dest (dest redacted), beside the journal:
    ``<journal>.job-<digest of the pair>.lock`` (paths may be long and carry any character).
    It exists only while a run holds it (or after a kill -9, until the next run takes it)."""
    key = hashlib.sha256(f"{source}\0{dest}".encode("utf-8", "surrogateescape")).hexdigest()
    journal = Path(journal_path)
    return journal.with_name(f"{journal.name}.job-{key[:32]}.lock")


def read_holder_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid written in a lock file, or None (no file, empty, or not a number)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    first = text.split("\n", 1)[0].strip()
    return int(first) if first.isdigit() else None


def lock_is_held(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the job lock at path (`pyengine jobs` asks it of every job
    the journal calls running: a holder killed by kill -9 leaves the row "running" but its lock
    free, since the kernel drops a dead process's flock).

    Probed with a shared, non-blocking flock taken and dropped at once on a read-only
    descriptor: it never creates the file, and cannot succeed while an exclusive holder lives.
    (A run starting in that same microsecond would see the probe as a holder and refuse to
    start, with exit 2: harmless, and it names a pid that is gone.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # released cleanly (release() unlinks) or never taken
    except OSError:
        return True  # cannot tell: do not call a job dead on a permission error
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class JobLock:
    """Exclusive lock of one job: ``with JobLock(path, subject=...):`` holds it for the block.

    :meth:`acquire` never waits: a job already running is an error for the second run
    (JobLockedError, exit 2), not a queue.
    """

    def __init__(self, path: str | os.PathLike[str], *, subject: str) -> None:
        self.path = Path(path)
        #: what the error names: the job's source and (redacted) destination
        self.subject = subject
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise JobLockedError naming the holder's pid."""
        if self._fd is not None:
            raise RuntimeError("JobLock is not reentrant")
        try:
            # the journal's directory (Journal.open makes it the same way): owner only, the
            # journal names patient paths
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise JournalError(
                str(self.path), f"cannot create the job lock: {e.strerror or e}"
            ) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise JournalError(
                    str(self.path), f"cannot open the job lock: {e.strerror or e}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise JournalError(str(self.path), f"cannot lock: {e.strerror or e}") from None
                pid = self._wait_for_pid()
                holder = f"pid {pid}" if pid is not None else "pid unknown"
                raise JobLockedError(
                    self.subject,
                    f"this job is already running ({holder}); lock {self.path}",
                    holder_pid=pid,
                ) from None
            # Locked: but the file may have been unlinked by its last holder's release between
            # our open and our flock; then we hold a lock nobody else can see: start over.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # pid first, then cut: a reader sees the old pid or the new one, never an empty file
        # (a killed holder's pid is what an empty-then-written sequence could otherwise hide)
        data = f"{os.getpid()}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._fd = fd

    def _wait_for_pid(self) -> int | None:
        deadline = time.monotonic() + PID_WAIT_S
        while True:
            pid = read_holder_pid(self.path)
            if pid is not None or time.monotonic() >= deadline:
                return pid
            time.sleep(0.02)

    def release(self) -> None:
        """Remove the lock file and drop the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Unlink while still holding the lock, so no one can lock this inode and believe
            # it is the current file (see acquire's inode check).
            os.unlink(self.path)
        except OSError:
            pass  # gone or not removable: the flock below is what matters
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
