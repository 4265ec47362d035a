"""STAGE_MD5: the whole-blob MD5 the core computes in the read pass (--put-md5)."""

from __future__ import annotations

import hashlib
import os

import pytest

from pyengine import _core

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
REGION = _core.REGION_BYTES


def pattern(n: int, seed: int = 0) -> bytes:
    """i % 251, so swapped chunks change the digest."""
    base = bytes((i + seed) % 251 for i in range(251 * 64))
    reps, rest = divmod(n, len(base))
    return base * reps + base[:rest]


def drain(pipe, files: int) -> tuple[dict[int, dict[int, bytes]], dict[int, object]]:
    """Every payload by file and chunk index, and each file's final event."""
    payloads: dict[int, dict[int, bytes]] = {}
    finals: dict[int, object] = {}
    while len(finals) < files:
        assert pipe.wait(30.0), "pipeline produced nothing for 30 s (deadlock?)"
        for ev in pipe.poll():
            if isinstance(ev, _core.Chunk):
                with ev:
                    payloads.setdefault(ev.file_id, {})[ev.index] = bytes(ev.data)
            else:
                finals[ev.file_id] = ev
    return payloads, finals


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 37 * CHUNK + 11])
def test_md5_equals_hashlib_over_the_file_in_chunk_order(tmp_path, size):
    path = tmp_path / "f"
    data = pattern(size)
    path.write_bytes(data)
    with _core.Pipeline(8, 4 * CHUNK) as pipe:  # 8 readers racing for 4 buffers
        pipe.submit(
            1,
            str(path),
            size_bytes=size,
            chunk_bytes=CHUNK,
            stages=_core.STAGE_ALL | _core.STAGE_MD5,
        )
        _, finals = drain(pipe, 1)
    assert isinstance(finals[1], _core.FileDone)
    assert finals[1].md5 == hashlib.md5(data).digest()


def test_md5_of_an_encrypted_file_covers_the_stored_ciphertext(tmp_path):
    size = 3 * REGION + 5
    path = tmp_path / "f"
    path.write_bytes(pattern(size, seed=3))
    with _core.Pipeline(4, 2 * (REGION + 28)) as pipe:
        pipe.submit(
            1,
            str(path),
            size_bytes=size,
            chunk_bytes=REGION,
            content_key=os.urandom(32),
            stages=_core.STAGE_ALL | _core.STAGE_MD5,
        )
        payloads, finals = drain(pipe, 1)
    stored = b"".join(payloads[1][i] for i in sorted(payloads[1]))
    assert len(stored) == size + 4 * 28
    assert finals[1].md5 == hashlib.md5(stored).digest()


def test_md5_is_none_unless_asked_and_for_a_partial_range(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(pattern(4 * CHUNK))
    with _core.Pipeline(2, 8 * CHUNK) as pipe:
        pipe.submit(1, str(path), size_bytes=4 * CHUNK, chunk_bytes=CHUNK)
        pipe.submit(
            2,
            str(path),
            size_bytes=4 * CHUNK,
            chunk_bytes=CHUNK,
            offset_bytes=CHUNK,
            stages=_core.STAGE_ALL | _core.STAGE_MD5,
        )
        _, finals = drain(pipe, 2)
    assert finals[1].md5 is None
    assert finals[2].md5 is None


def test_many_files_under_a_tight_memory_cap_all_finish_with_their_md5(tmp_path):
    # Readers of later chunks hold buffers while they wait for their MD5 turn: without buffers
    # taken in chunk order this configuration deadlocks.
    files = {}
    for i in range(1, 9):
        data = pattern(23 * CHUNK + i, seed=i)
        (tmp_path / str(i)).write_bytes(data)
        files[i] = data
    with _core.Pipeline(6, 3 * CHUNK) as pipe:
        for i, data in files.items():
            pipe.submit(
                i,
                str(tmp_path / str(i)),
                size_bytes=len(data),
                chunk_bytes=CHUNK,
                stages=_core.STAGE_ALL | _core.STAGE_MD5,
            )
        _, finals = drain(pipe, len(files))
    for i, data in files.items():
        assert finals[i].md5 == hashlib.md5(data).digest()


def test_a_file_that_fails_mid_read_releases_the_readers_waiting_for_their_turn(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(pattern(16 * CHUNK))
    with _core.Pipeline(4, 4 * CHUNK) as pipe:
        # scanned larger than it is: the read past the end fails the file
        pipe.submit(
            1,
            str(path),
            size_bytes=32 * CHUNK,
            chunk_bytes=CHUNK,
            stages=_core.STAGE_ALL | _core.STAGE_MD5,
        )
        pipe.submit(2, str(path), size_bytes=16 * CHUNK, chunk_bytes=CHUNK, stages=_core.STAGE_MD5)
        _, finals = drain(pipe, 2)
    assert isinstance(finals[1], _core.FileFailed)
    assert finals[2].md5 == hashlib.md5(pattern(16 * CHUNK)).digest()


def test_stage_seconds_measures_md5():
    assert _core.stage_seconds("md5", pattern(MiB), 1) > 0
