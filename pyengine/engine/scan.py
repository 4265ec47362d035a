"""Streaming scan of the source tree: regular files to copy, and one-line problems for the rest.

Built for archives of millions of files: :func:`scan` is a generator over ``os.scandir`` driven by
an explicit stack (no recursion limit, no list of the whole tree). Memory is bounded by the names
of the directories on the current path (each directory's names are sorted for a stable order),
never by the size of the tree. The order is blob-listing order (see :func:`_list_dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import re
import stat
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyengine.errors import SourceError


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A regular file to copy, as it was when scanned. Its identity (device, inode, size, mtime,
    ctime) is what the journal keys a file version on; the native reader takes the identity again
    from the open descriptor and reports a change between its first and last read."""

    path: str  # absolute (through symlinks as found, not resolved)
    rel_path: str  # relative to the scan root, "/" separators: the blob name after the prefix
    size_bytes: int
    mtime_ns: int
    inode: int
    device: int
    #: an in-place rewrite can restore mtime (utime), never ctime: the kernel sets it on every
    #: write and on utime itself
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """An entry that cannot be copied, with a one-line reason. The scan goes on.

    When ``path`` is a directory (unreadable, a symlink loop), nothing under it was listed: a
    caller that mirrors deletions must not treat blobs under ``rel_path`` as deleted at source.
    Paths with undecodable bytes are shown with ``\\xNN`` escapes (safe to print).
    """

    path: str
    rel_path: str
    reason: str
    #: False for an entry the filters would not take but which could not be examined (its
    #: lstat failed, or it is a dangling link that may have led to a directory): not a failed
    #: file, but the scan did not see the whole tree, so a mirroring caller deletes nothing
    counted: bool = True


#: C0/C1 control characters and DEL, shown escaped so that any path prints on one line
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def display_path(text: str) -> str:
    """``text`` printable on one line: undecodable file-name bytes (surrogate escapes) shown as
    ``\\xNN``, control characters (a newline, a tab in a file name) as ``\\xNN`` too."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from os.fsdecode
        shown = text.encode("utf-8", "backslashreplace").decode("ascii")
    else:
        shown = raw.decode("utf-8", "backslashreplace")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", shown)


def _is_valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_ERRNO_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symlink loop",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "I/O error",
    errno.ENOTDIR: "not a directory",
    errno.ESTALE: "stale file handle (NFS)",
}


def _reason(exc: OSError) -> str:
    if exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    return (exc.strerror or type(exc).__name__).lower()


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unknown type"


# --- include / exclude patterns ---------------------------------------------------------------


def _glob_to_regex(pattern: str) -> str:
    """Regex source for one glob: ``**`` spans directories, ``*`` and ``?`` do not cross ``/``,
    ``[...]`` as in fnmatch (``[!...]`` negates)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" = zero or more whole directories
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "[" (fnmatch does the same)
                out.append("\\[")
            else:
                body = pattern[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(("[^/" if negate else "[") + body + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class PathFilter:
    """include / exclude globs over relative paths; see :func:`scan` for the rules."""

    __slots__ = ("_exclude", "_include", "_prune")

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self._include = [re.compile(_glob_to_regex(p), re.DOTALL) for p in include]
        self._exclude = [re.compile(_glob_to_regex(p), re.DOTALL) for p in exclude]
        # "X/**" excludes every file under a directory matching X: skip listing that directory
        self._prune = [
            re.compile(_glob_to_regex(p[:-3]), re.DOTALL)
            for p in exclude
            if p.endswith("/**") and len(p) > 3
        ]

    @staticmethod
    def _any(patterns: list[re.Pattern[str]], rel_path: str) -> bool:
        base = rel_path.rpartition("/")[2]
        return any(p.fullmatch(rel_path) or p.fullmatch(base) for p in patterns)

    def accepts(self, rel_path: str) -> bool:
        if self._include and not self._any(self._include, rel_path):
            return False
        return not self._any(self._exclude, rel_path)

    def prunes(self, rel_dir: str) -> bool:
        return any(p.fullmatch(rel_dir) for p in self._prune)


# --- the scan ---------------------------------------------------------------------------------


def scan(
    root: str, *, include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> Iterator[SourceFile | ScanProblem]:
    """Yield every regular file under ``root`` as a :class:`SourceFile`, and every entry that
    cannot be copied as a :class:`ScanProblem`, in a deterministic order (depth first, each
    directory's entries in the order List Blobs gives their blob names: :func:`_list_dir`), so
    that job plans are stable across runs and the scan merge-joins with a listing.

    - ``root`` a regular file: yields just it (``rel_path`` = its basename). ``root`` missing or
      not a file/directory: raises :class:`SourceError` (the job cannot start).
    - Symlinks to files are followed (the file's own size, mtime, inode are reported).
      Symlinked directories are followed; one that leads back to a directory on the current path
      is reported as "symlink loop" and not entered. Dangling or self-referential links,
      FIFOs, sockets and devices are reported (FIFOs are never opened: that would block).
      Unreadable directories are reported and skipped. Names that are not valid UTF-8 cannot
      become blob names and are reported.
    - Filters: globs over ``rel_path`` (``/`` separators). ``**`` matches across directories
      (``**/`` also matches no directory at all), ``*`` and ``?`` match within one path segment,
      ``[...]`` is a character class as in fnmatch; matching is case-sensitive. Each pattern is
      tried against the whole ``rel_path`` and against the basename, so ``*.dcm`` matches at any
      depth and ``scans/*.dcm`` only directly under ``scans``. A file is taken when it matches
      any include (or there are no includes) and no exclude. Problems of excluded entries are not
      reported; directories are not matched (a directory problem such as "permission denied"
      is reported whatever the includes) except that an exclude ``DIR/**`` skips listing DIR
      altogether. The filters apply to a
      single-file root too (against its basename).
    """
    filt = PathFilter(include, exclude)
    root = os.path.abspath(root)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceError(display_path(root), _reason(exc)) from None

    if stat.S_ISREG(st.st_mode):
        rel_path = os.path.basename(root)
        if filt.accepts(rel_path):
            yield _file(root, rel_path, st)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(display_path(root), f"not a regular file ({_special_kind(st.st_mode)})")

    names = _list_dir(root)
    if isinstance(names, str):
        raise SourceError(display_path(root), names)

    # One frame per directory on the current path: (path, rel prefix, iterator over sorted
    # names, (dev, ino)). `ancestors` holds the (dev, ino) of those directories: a directory
    # reached again on its own path is a loop, whatever symlink or bind mount led there.
    root_key = (st.st_dev, st.st_ino)
    stack: list[tuple[str, str, Iterator[str], tuple[int, int]]] = [
        (root, "", iter(names), root_key)
    ]
    ancestors = {root_key}
    while stack:
        dir_path, rel_prefix, it, dir_key = stack[-1]
        name = next(it, None)
        if name is None:
            stack.pop()
            ancestors.discard(dir_key)
            continue
        path = os.path.join(dir_path, name)
        rel_path = rel_prefix + name
        try:
            lst = os.lstat(path)
        except OSError as exc:  # vanished since listed, or no search permission on dir_path
            # It may have been a directory: never treated as absent (that would look like
            # deletions), even when the filters would not take it as a file.
            if not filt.prunes(rel_path):
                yield ScanProblem(
                    display_path(path),
                    display_path(rel_path),
                    _reason(exc),
                    counted=filt.accepts(rel_path),
                )
            continue

        is_link = stat.S_ISLNK(lst.st_mode)
        st = lst
        if is_link:
            try:
                st = os.stat(path)
            except OSError as exc:
                # a dangling link may be a directory on a mount that is away this run
                if not filt.prunes(rel_path):
                    reason = _reason(exc)
                    if exc.errno == errno.ENOENT:
                        reason = "dangling symlink"
                    yield ScanProblem(
                        display_path(path),
                        display_path(rel_path),
                        reason,
                        counted=filt.accepts(rel_path),
                    )
                continue

        if stat.S_ISDIR(st.st_mode):
            if filt.prunes(rel_path):
                continue
            if not _is_valid_utf8(name):
                yield ScanProblem(
                    display_path(path), display_path(rel_path), "file name is not valid UTF-8"
                )
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                reason = "symlink loop" if is_link else "directory loop (bind mount)"
                yield ScanProblem(display_path(path), display_path(rel_path), reason)
                continue
            sub_names = _list_dir(path)
            if isinstance(sub_names, str):
                yield ScanProblem(display_path(path), display_path(rel_path), sub_names)
                continue
            stack.append((path, rel_path + "/", iter(sub_names), key))
            ancestors.add(key)
            continue

        if not filt.accepts(rel_path):
            continue
        if not _is_valid_utf8(name):
            yield ScanProblem(
                display_path(path), display_path(rel_path), "file name is not valid UTF-8"
            )
        elif stat.S_ISREG(st.st_mode):
            yield _file(path, rel_path, st)
        else:
            yield ScanProblem(
                display_path(path),
                display_path(rel_path),
                f"not a regular file ({_special_kind(st.st_mode)})",
            )


def _file(path: str, rel_path: str, st: os.stat_result) -> SourceFile:
    return SourceFile(
        path=path,
        rel_path=rel_path,
        size_bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        ctime_ns=st.st_ctime_ns,
    )


def restat(src: SourceFile) -> SourceFile | ScanProblem:
    """``src`` as it is now, taken the way the scan takes it (a symlink is followed): for reading
    a file again from scratch after it changed while being read."""
    try:
        st = os.stat(src.path)
    except OSError as exc:
        return ScanProblem(display_path(src.path), display_path(src.rel_path), _reason(exc))
    if not stat.S_ISREG(st.st_mode):
        reason = f"not a regular file ({_special_kind(st.st_mode)})"
        return ScanProblem(display_path(src.path), display_path(src.rel_path), reason)
    return _file(src.path, src.rel_path, st)


def _list_dir(path: str) -> list[str] | str:
    """Entry names of ``path`` in blob-listing order, or the one-line reason it cannot be
    listed.

    The order is the one List Blobs returns the flat names in (UTF-8 bytes, which for valid
    names is Python's code point order), so the scan and a listing can be merge-joined
    (engine/delta.py): a directory sorts as ``name + "/"``, because its files' blob names all
    continue with "/" (0x2F) after it: "a.b" < "a/x" < "a0" although "a" < "a.b". A directory
    is what ``is_dir()`` says at listing time (symlinks followed, the d_type most file systems
    give for free); one that changes type before its lstat is taken as found then, and the
    join, which checks the order it is fed, falls back to a HEAD for it.

    A listing that fails part way is dropped whole: a partial listing would look like deletions.
    """
    keyed: list[tuple[str, str]] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()
                except OSError:  # taken as a file here; its lstat reports the problem
                    is_dir = False
                keyed.append((entry.name + "/" if is_dir else entry.name, entry.name))
    except OSError as exc:
        return _reason(exc)
    keyed.sort()
    return [name for _, name in keyed]


#: scan entries handed from the scanner thread to the loop at once (one thread hop per batch)
SCAN_BATCH = 256


async def scan_batches(
    root: str, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> AsyncIterator[list[SourceFile | ScanProblem]]:
    """The scan runs in a thread (one lstat per entry blocks); a bounded queue of batches
    keeps memory flat on a million-file tree."""
    q: queue.Queue[Any] = queue.Queue(maxsize=8)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        batch: list[Any] = []
        try:
            for item in scan(root, include=include, exclude=exclude):
                batch.append(item)
                if len(batch) >= SCAN_BATCH:
                    q.put(batch)
                    batch = []
                if stop.is_set():
                    return
            q.put(batch)
        except BaseException as e:  # handed to the loop, raised there
            q.put(e)
        q.put(end)

    thread = threading.Thread(target=produce, name="pyengine-scan", daemon=True)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(q.get)
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        # A cancellation during `await to_thread(q.get)` leaves that worker thread waiting on
        # a producer that has stopped: hand it the end mark so it returns.
        with contextlib.suppress(queue.Full):
            q.put_nowait(end)


__all__ = [
    "PathFilter",
    "ScanProblem",
    "SourceFile",
    "display_path",
    "restat",
    "scan",
    "scan_batches",
]
