"""What travels between the driver and its Dask workers: the job's setup (once per shard, the
same object each time), the send work of one file version (WorkItem), and the events and
results a worker streams back.

A WorkItem is built by the driver at (re)submission time from its journal: the blocks it may
resume are those the journal holds acknowledged *now*, so a shard retried after its worker died
resends none of them. Secrets travel in task arguments, never in a task key or an event: the
connection string (SetUp), and an encrypted file's content key (WorkItem). Over a LocalCluster
they stay on this host; on a remote cluster they travel in Dask's messages, which Dask's TLS
security settings protect (README "Scale-out with Dask").

Events are msgpack-able tuples (Dask's event log carries them), each tagged with its kind:
- ("ack", file_id, index, length_bytes, crc64, xxh3_128): the service acknowledged a block;
- ("committing", file_id): the commit request is about to be sent;
- ("progress", file_id, bytes): plaintext bytes of the file done (sent or resumed) since its
  last progress event; only when the driver has a listener, and summed per file between
  flushes: a small file's progress rides in its result instead (``progress_bytes``);
- ("done", file_id, result): the file's result (a dict, see :func:`file_result`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, fields
from typing import Any

from pyengine.engine.context import FileTask
from pyengine.engine.scan import SourceFile
from pyengine.options import CopyOptions
from pyengine.state.records import BlockAck, FileRecord
from pyengine.targets.auth import Destination

#: a shard closes at this many files (each Dask task costs the driver ~1.7 ms of its loop: at 64
#: files a shard that was ~27 us a small file; 128 measured 5-14 % less driver CPU, and 3-12 %
#: more files/s, with --workers 1 on 2 cores) ...
SHARD_FILES = 128
#: ... or this many bytes (so a worker that dies loses little, and the load spreads) ...
SHARD_BYTES = 256 * 1024 * 1024
#: ... or this long after its first file, while every worker has SHARDS_AHEAD shards of files
#: under way; a worker with fewer gets the open shard at once (dispatch.py)
SHARD_LINGER_S = 0.05
#: shards with files under way per worker before the driver lets a shard fill up: enough that a
#: worker never waits for its next shard, few enough that full shards spread a large tree
SHARDS_AHEAD = 2


@dataclass(frozen=True)
class SetUp:
    """What a worker needs to open its engine for a job (the same for every shard)."""

    #: one per run of a job: names the engine in each worker process and the event topic
    token: str
    job_id: str
    dest: Destination
    #: the job's options without key-encryption keys (a worker gets content keys only)
    options: CopyOptions
    #: the credential environment of the driver (connection string, account key): workers
    #: resolve the same credential. Secret: repr=False, never logged
    env: dict[str, str] = field(repr=False)
    #: the scheduler may run a shard again after its worker died (cluster.Cluster.reruns)
    reruns: bool = True
    #: the driver has a listener for progress events (without one, none are sent)
    progress: bool = True

    @property
    def topic(self) -> str:
        return f"pyengine-{self.token}"


@dataclass
class WorkItem:
    """One file version to read, send and commit, as the driver decided it."""

    src: SourceFile
    record: FileRecord
    chunk_bytes: int
    single_put: bool
    content_key: bytes | None = field(repr=False)
    encryptiondata: str | None
    resumable: set[int]
    #: the commit's precondition (If-Match / If-None-Match) when the file is sent again after
    #: its worker died: that worker's commit may still land, and then this one must not
    commit_if: dict[str, str] | None = None

    @classmethod
    def from_task(cls, task: FileTask, commit_if: dict[str, str] | None = None) -> WorkItem:
        record = task.record
        # only the acknowledgements of blocks it may resume: their digests are compared with
        # the re-read bytes (send.matches_journal)
        acked = {i: a for i, a in (record.acked_blocks or {}).items() if i in task.resumable}
        slim = FileRecord(**{**record.__dict__, "acked_blocks": acked})
        return cls(
            src=task.src,
            record=slim,
            chunk_bytes=task.chunk_bytes,
            single_put=task.single_put,
            content_key=task.content_key,
            encryptiondata=task.encryptiondata,
            resumable=set(task.resumable),
            commit_if=commit_if,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # SourceFile is a frozen dataclass with slots: pickle's default rebuilds each one field
        # by field through dataclasses.fields(), which showed in the worker's profile (a shard
        # of 128 files is unpickled on the worker's loop, which the engine shares). Its values
        # as a tuple are rebuilt by one constructor call.
        src = tuple(getattr(self.src, name) for name in _SOURCE_FIELDS)
        return (
            _work_item,
            (src, self.record, self.chunk_bytes, self.single_put, self.content_key,
             self.encryptiondata, self.resumable, self.commit_if),
        )  # fmt: skip

    def to_task(self) -> FileTask:
        return FileTask(
            src=self.src,
            record=self.record,
            chunk_bytes=self.chunk_bytes,
            single_put=self.single_put,
            content_key=self.content_key,
            encryptiondata=self.encryptiondata,
            resumable=set(self.resumable),
        )


_SOURCE_FIELDS = tuple(f.name for f in fields(SourceFile))


def _work_item(src: tuple[Any, ...], *rest: Any) -> WorkItem:
    return WorkItem(SourceFile(*src), *rest)


class Shard:
    """The files of one Dask task. They travel as one pickled payload, made once by the driver
    and decoded once, by the worker that runs the shard: the scheduler unpickles a task's
    arguments and pickles them again for the worker, which for a list of WorkItems showed as a
    tenth of the driver's CPU a small file (the scheduler runs in the driver's process)."""

    __slots__ = ("_items", "_payload", "key")

    def __init__(
        self, key: str, items: list[WorkItem] | None = None, *, payload: bytes | None = None
    ) -> None:
        if (items is None) == (payload is None):
            raise ValueError("a shard is made of its items or of their payload")
        #: the Dask key of the shard's task: one per submission, so a retry is a new task
        self.key = key
        self._items = items
        self._payload = payload

    @property
    def items(self) -> list[WorkItem]:
        if self._items is None:
            assert self._payload is not None
            self._items = pickle.loads(self._payload)
        return self._items

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:  # the payload holds content keys: never shown
        return f"Shard({self.key!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._payload is None:
            self._payload = pickle.dumps(self._items, protocol=pickle.HIGHEST_PROTOCOL)
        return (_shard, (self.key, self._payload))


def _shard(key: str, payload: bytes) -> Shard:
    return Shard(key, payload=payload)


def file_result(
    file_id: int,
    status: str,
    *,
    reason: str | None = None,
    etag: str | None = None,
    blake3_hex: str | None = None,
    acks: list[tuple[int, int, int, bytes]] | None = None,
    blocks_resumed: int = 0,
    progress_bytes: int = 0,
) -> dict[str, Any]:
    """A file's result: status "copied" | "failed" | "changed" | "foreign" (the driver reads it
    again or discards another tool's blocks, as in one process) | "lost" (its worker died or
    its shard failed: the driver retries it from its journal). ``acks`` are the blocks this
    attempt had acknowledged, so the driver journals every one even if an event was late;
    ``progress_bytes`` the file's progress not sent as a "progress" event yet."""
    return {
        "file_id": file_id,
        "status": status,
        "reason": reason,
        "etag": etag,
        "blake3_hex": blake3_hex,
        "acks": acks or [],
        "blocks_resumed": blocks_resumed,
        "progress_bytes": progress_bytes,
    }


def ack_of(event: tuple[Any, ...]) -> tuple[int, BlockAck]:
    """The journal's view of an "ack" event or result entry (index, BlockAck)."""
    index, length_bytes, crc64, xxh3_128 = event[-4:]
    return index, BlockAck(
        index=index, length_bytes=length_bytes, crc64=crc64, xxh3_128=bytes(xxh3_128)
    )
