"""The native core against the reference packages: xxhash, blake3 (and b3sum), cryptography's
AESGCM, and Microsoft's azure-storage-extensions CRC64."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import threading
import time

import blake3
import pytest
import xxhash
from azure.storage.extensions.checksums import crc64 as azure_crc64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine import _core
from pyengine.errors import FileChangedError, SourceError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REGION = _core.REGION_BYTES
CRC64_POLY_REFLECTED = 0x9A6C9329AC4BC9B5


def reference_crc64(data: bytes, crc: int = 0) -> int:
    """Bitwise Azure Storage CRC64: the definition, independent of both native kernels."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC64_POLY_REFLECTED if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def pattern(n: int, seed: int = 0) -> bytes:
    """BLAKE3 test-vector style input (i % 251), so swapped blocks change every digest."""
    base = bytes((i + seed) % 251 for i in range(251 * 64))
    reps, rest = divmod(n, len(base))
    return base * reps + base[:rest]


def run_file(path, size_bytes, chunk_bytes, *, key=None, threads=2, cap=256 * MiB, keep=True, **kw):
    """Runs one file through a pipeline; returns ({index: (chunk attrs, payload)}, final event).
    keep=False drops the payloads (multi-GB files)."""
    chunks = {}
    with _core.Pipeline(threads, cap) as pipe:
        pipe.submit(
            1, str(path), size_bytes=size_bytes, chunk_bytes=chunk_bytes, content_key=key, **kw
        )
        while True:
            assert pipe.wait(30.0), "pipeline produced nothing for 30 s"
            for ev in pipe.poll():
                if isinstance(ev, _core.Chunk):
                    with ev:
                        chunks[ev.index] = (ev, bytes(ev.data) if keep else None)
                else:
                    return chunks, ev


def decrypt_payload(key: bytes, payload: bytes, first_region: int) -> bytes:
    out, pos, region = [], 0, first_region
    aes = AESGCM(key)
    while pos < len(payload):
        frame = payload[pos : pos + REGION + 28]
        nonce = frame[:12]
        assert int.from_bytes(nonce, "big") == region
        out.append(aes.decrypt(nonce, frame[12:], None))
        pos += len(frame)
        region += 1
    return b"".join(out)


# --- CRC64 ------------------------------------------------------------------------------------

# Published values of the Azure Storage CRC64 (azure-storage-extensions computes the same).
AZURE_CRC64_VECTORS = [(b"", 0), (b"123456789", 0xAE8B14860A799888)]


@pytest.mark.parametrize(("data", "expected"), AZURE_CRC64_VECTORS)
def test_crc64_matches_published_vectors(data, expected):
    assert _core.crc64(data) == expected
    assert azure_crc64.compute(data, 0) == expected


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 2**64 - 1))
def test_crc64_equals_reference_and_azure_for_any_input(data, seed):
    assert _core.crc64(data) == reference_crc64(data) == azure_crc64.compute(data, 0)
    # continuing from a previous value is the streaming contract Put Block relies on
    assert _core.crc64(data, seed) == azure_crc64.compute(data, seed)
    assert _core._crc64_portable(data, seed) == _core.crc64(data, seed)


@pytest.mark.parametrize("n", [255, 256, 257, 4096 + 15, 1 * MiB + 3])
def test_crc64_clmul_and_table_kernels_agree_on_long_inputs(n):
    data = os.urandom(n)
    assert _core.crc64(data) == _core._crc64_portable(data) == azure_crc64.compute(data, 0)


def test_buffer_inputs_release_their_export_and_refuse_non_contiguous():
    data = bytearray(b"abc" * 1000)
    _core.crc64(data)
    _core.xxh3_128(memoryview(data))
    data.extend(b"still resizable")  # would raise BufferError if an export leaked
    with pytest.raises(BufferError):
        _core.crc64(memoryview(bytes(100))[::2])


# --- Pipeline digests -------------------------------------------------------------------------

CHUNK = 64 * KiB
PLAIN_SIZES = [0, 1, 1023, 1024, 1025, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 3, 16 * CHUNK]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.one_of(st.sampled_from(PLAIN_SIZES), st.integers(0, 40 * CHUNK)),
    seed=st.integers(0, 250),
)
def test_chunks_and_file_digests_equal_reference_packages(tmp_path, size, seed):
    data = pattern(size, seed)
    path = tmp_path / f"f{size}-{seed}"
    path.write_bytes(data)
    chunks, done = run_file(path, size, CHUNK)
    assert isinstance(done, _core.FileDone)
    assert done.size_bytes == size and done.chunks == len(chunks) == -(-size // CHUNK)
    assert done.blake3 == blake3.blake3(data).digest()
    for index, (chunk, payload) in chunks.items():
        expected = data[index * CHUNK : (index + 1) * CHUNK]
        assert payload == expected
        assert chunk.offset_bytes == index * CHUNK and chunk.plain_bytes == len(expected)
        assert chunk.xxh3_128 == xxhash.xxh3_128(expected).digest()
        assert chunk.crc64 == azure_crc64.compute(expected, 0)


ENC_SIZES = [0, 1, REGION - 1, REGION, REGION + 1, 2 * REGION - 1, 2 * REGION + 1, 5 * REGION + 17]


@pytest.mark.parametrize("size", ENC_SIZES)
def test_encrypted_regions_decrypt_to_plaintext_with_cryptography(tmp_path, size):
    data = pattern(size, size % 251)
    path = tmp_path / "f"
    path.write_bytes(data)
    key = os.urandom(32)
    chunk_bytes = 2 * REGION
    chunks, done = run_file(path, size, chunk_bytes, key=key)
    assert isinstance(done, _core.FileDone)
    assert done.blake3 == blake3.blake3(data).digest()  # BLAKE3 is of the plaintext
    plain = []
    for index in sorted(chunks):
        chunk, payload = chunks[index]
        assert chunk.crc64 == azure_crc64.compute(payload, 0)  # CRC of what goes on the wire
        assert (
            chunk.xxh3_128
            == xxhash.xxh3_128(data[index * chunk_bytes :][: chunk.plain_bytes]).digest()
        )
        plain.append(decrypt_payload(key, payload, index * chunk_bytes // REGION))
    assert b"".join(plain) == data
    assert _core.encrypt_regions(data, key) == b"".join(
        p for _, p in (chunks[i] for i in sorted(chunks))
    )


def test_whole_file_blake3_equals_b3sum(tmp_path):
    if shutil.which("b3sum") is None:
        pytest.fail("b3sum is not installed: run `make test`, which installs it")
    data = os.urandom(9 * MiB + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    _, done = run_file(path, len(data), 1 * MiB)
    out = subprocess.run(
        ["b3sum", "--no-names", str(path)], capture_output=True, text=True, check=True
    )
    assert done.blake3.hex() == out.stdout.strip()


@pytest.mark.slow
def test_sparse_file_over_4_gib_reads_past_32_bit_offsets(tmp_path):
    path = tmp_path / "sparse"
    size = 4 * GiB + 3 * MiB + 5
    tail = os.urandom(5 * MiB)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size - len(tail))
        f.write(tail)
    chunk_bytes = 8 * MiB
    # the chunks past 4 GiB as a range, compared byte for byte and digest for digest
    offset = 4 * GiB - chunk_bytes
    chunks, done = run_file(path, size, chunk_bytes, offset_bytes=offset)
    with open(path, "rb") as f:
        f.seek(offset)
        expected = f.read()
    assert done.blake3 is None and done.size_bytes == len(expected)
    for index, (chunk, payload) in chunks.items():
        part = expected[index * chunk_bytes : (index + 1) * chunk_bytes]
        assert chunk.offset_bytes == offset + index * chunk_bytes
        assert payload == part and chunk.xxh3_128 == xxhash.xxh3_128(part).digest()
    # and the whole file's BLAKE3, assembled from pieces past 2^32, equals b3sum's
    _, whole = run_file(path, size, 64 * MiB, keep=False)
    out = subprocess.run(
        ["b3sum", "--no-names", str(path)], capture_output=True, text=True, check=True
    )
    assert whole.blake3.hex() == out.stdout.strip()


# --- Memory cap and backpressure --------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_rss_stays_under_cap_while_the_test_holds_buffers(tmp_path):
    size = 3 * GiB
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: the page cache does not count against our RSS
    cap = 64 * MiB
    chunk_bytes = 8 * MiB
    baseline = rss_bytes()
    peak = baseline
    held: list = []
    seen = 0
    with _core.Pipeline(2, cap) as pipe:
        pipe.submit(1, str(path), size_bytes=size, chunk_bytes=chunk_bytes)
        done = None
        while done is None:
            assert pipe.wait(30.0)
            for ev in pipe.poll():
                if isinstance(ev, _core.Chunk):
                    held.append(ev)
                    seen += 1
                else:
                    done = ev
            peak = max(peak, rss_bytes())
            stats = pipe.pool_stats()
            assert stats.allocated_bytes <= cap
            if len(held) >= cap // chunk_bytes:  # hold the whole pool for a moment, then let go
                if seen < size // chunk_bytes:
                    assert not pipe.wait(0.05)  # readers are blocked: nothing new arrives
                for c in held:
                    c.release()
                held.clear()
        waits = pipe.pool_stats().waits
    assert isinstance(done, _core.FileDone) and seen == size // chunk_bytes
    assert waits > 0
    assert peak - baseline < cap + 64 * MiB, f"RSS grew {(peak - baseline) / MiB:.0f} MiB"


def test_released_buffer_survives_while_a_memoryview_is_alive(tmp_path):
    data = pattern(3 * CHUNK)
    path = tmp_path / "f"
    path.write_bytes(data)
    with _core.Pipeline(1, CHUNK) as pipe:  # room for exactly one buffer
        pipe.submit(1, str(path), size_bytes=len(data), chunk_bytes=CHUNK)
        assert pipe.wait(10)
        (first,) = [e for e in pipe.poll() if isinstance(e, _core.Chunk)]
        view = first.data
        assert view.readonly
        first.release()
        with pytest.raises(ValueError, match="released"):
            _ = first.data
        assert not pipe.wait(0.1)  # the view still pins the buffer: the reader waits
        assert bytes(view) == data[:CHUNK]
        view.release()  # now the buffer goes back and the file completes
        events = []
        while not any(isinstance(e, _core.FileDone) for e in events):
            assert pipe.wait(10)
            for e in pipe.poll():
                if isinstance(e, _core.Chunk):
                    e.release()
                events.append(e)


def test_completions_wake_an_asyncio_loop_through_the_event_fd(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(i * 1000 + 1))
        paths.append(p)

    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        finished = []
        with _core.Pipeline(2, 16 * MiB) as pipe:

            def on_ready():
                for ev in pipe.poll():
                    if isinstance(ev, _core.Chunk):
                        ev.release()
                    else:
                        finished.append(ev)
                if len(finished) == len(paths):
                    done.set()

            loop.add_reader(pipe.fileno(), on_ready)
            for i, p in enumerate(paths):
                pipe.submit(i, str(p), size_bytes=p.stat().st_size, chunk_bytes=CHUNK)
            await asyncio.wait_for(done.wait(), 30)
            loop.remove_reader(pipe.fileno())
        return finished

    finished = asyncio.run(main())
    assert sorted(f.file_id for f in finished) == list(range(20))
    assert all(isinstance(f, _core.FileDone) for f in finished)


# --- Errors -----------------------------------------------------------------------------------


def first_failure(path, size_bytes=0):
    _, ev = run_file(path, size_bytes, CHUNK)
    assert isinstance(ev, _core.FileFailed)
    return ev


def test_missing_file_is_reported_with_its_path(tmp_path):
    ev = first_failure(tmp_path / "nope.dcm")
    assert (
        ev.kind == "missing" and ev.message == f"{tmp_path / 'nope.dcm'}: no such file or directory"
    )
    assert isinstance(ev.error, SourceError) and str(ev.error) == ev.message


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    ev = first_failure(fifo)
    assert ev.kind == "not_regular" and "FIFO" in ev.message


def test_directory_is_refused(tmp_path):
    ev = first_failure(tmp_path)
    assert ev.kind == "not_regular" and ev.message.endswith("not a regular file (a directory)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_reports_permission(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    p.chmod(0)
    ev = first_failure(p, 1)
    assert ev.kind == "permission" and ev.message.endswith("permission denied")


def test_size_changed_since_scan_is_reported(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"12345")
    ev = first_failure(p, 3)
    assert ev.kind == "changed" and "changed since it was scanned (size 3 -> 5 bytes)" in ev.message
    assert isinstance(ev.error, FileChangedError)


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_while_read_is_reported_not_completed(tmp_path, change):
    p = tmp_path / "f"
    data = pattern(4 * CHUNK)
    p.write_bytes(data)
    with _core.Pipeline(1, CHUNK) as pipe:  # one buffer: the reader stops after chunk 0
        pipe.submit(7, str(p), size_bytes=len(data), chunk_bytes=CHUNK)
        assert pipe.wait(10)
        (chunk0,) = pipe.poll()
        if change == "grow":
            with open(p, "ab") as f:
                f.write(b"more")
        else:
            os.truncate(p, CHUNK + 10)
        chunk0.release()
        events = []
        while not events or isinstance(events[-1], _core.Chunk):
            assert pipe.wait(10)
            for e in pipe.poll():
                if isinstance(e, _core.Chunk):
                    e.release()
                events.append(e)
    failed = events[-1]
    assert isinstance(failed, _core.FileFailed) and failed.kind == "changed"
    assert ("grew" if change == "grow" else "shrank") in failed.message
    assert not any(isinstance(e, _core.FileDone) for e in events)


def rewrite_in_place_keeping_mtime(path) -> None:
    """Other bytes of the same length written over path, its mtime then restored (archivers and
    some PACS exports do this). Only ctime still shows the write; the kernel's timestamp clock is
    coarse (a few ms), so wait until it moved: the outcome must not depend on timing."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        other = bytes(b ^ 0xFF for b in f.read())
        f.seek(0)
        f.write(other)
    while True:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        now = os.stat(path)
        if now.st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.002)
    assert (now.st_size, now.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_rewrite_in_place_with_mtime_restored_is_reported_changed(tmp_path):
    p = tmp_path / "f"
    data = pattern(8 * CHUNK)
    p.write_bytes(data)
    with _core.Pipeline(1, CHUNK) as pipe:  # one buffer: the reader stops after chunk 0
        pipe.submit(7, str(p), size_bytes=len(data), chunk_bytes=CHUNK)
        assert pipe.wait(10)
        (chunk0,) = pipe.poll()  # the identity was taken at open, before this first read
        writer = threading.Thread(target=rewrite_in_place_keeping_mtime, args=(p,))
        writer.start()
        writer.join()
        chunk0.release()
        events = []
        while not events or isinstance(events[-1], _core.Chunk):
            assert pipe.wait(10)
            for e in pipe.poll():
                if isinstance(e, _core.Chunk):
                    e.release()
                events.append(e)
    failed = events[-1]
    assert isinstance(failed, _core.FileFailed)
    assert failed.kind == "changed" and failed.changed
    assert failed.reason == "changed while being read (ctime)"
    assert isinstance(failed.error, FileChangedError)
    assert not any(isinstance(e, _core.FileDone) for e in events)


def test_file_done_reports_the_identity_fstat_saw_before_the_first_read(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(pattern(3 * CHUNK + 1))
    st = os.stat(p)
    _, done = run_file(p, st.st_size, CHUNK)
    assert isinstance(done, _core.FileDone)
    assert (done.file_size_bytes, done.mtime_ns, done.ctime_ns, done.inode, done.device) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
    )


def test_one_failing_file_does_not_stop_the_others(tmp_path):
    good = tmp_path / "good"
    good.write_bytes(pattern(5 * CHUNK))
    results = {}
    with _core.Pipeline(2, 8 * MiB) as pipe:
        pipe.submit(1, str(tmp_path / "missing"), size_bytes=1, chunk_bytes=CHUNK)
        pipe.submit(2, str(good), size_bytes=5 * CHUNK, chunk_bytes=CHUNK)
        while len(results) < 2:
            assert pipe.wait(10)
            for e in pipe.poll():
                if isinstance(e, _core.Chunk):
                    e.release()
                else:
                    results[e.file_id] = e
    assert isinstance(results[1], _core.FileFailed)
    assert (
        isinstance(results[2], _core.FileDone)
        and results[2].blake3 == blake3.blake3(good.read_bytes()).digest()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_bytes": 100_000}, "power of two"),
        ({"chunk_bytes": 1 * MiB, "content_key": b"k" * 32}, "multiple of 4 MiB"),
        ({"chunk_bytes": CHUNK, "content_key": b"short"}, "32 bytes"),
        ({"chunk_bytes": CHUNK, "offset_bytes": 1000}, "multiple of chunk_bytes"),
        ({"chunk_bytes": 512 * MiB}, "memory_cap_bytes"),
    ],
)
def test_bad_submissions_raise_value_errors(kwargs, message):
    with _core.Pipeline(1, 64 * MiB) as pipe, pytest.raises(ValueError, match=message):
        pipe.submit(1, "/x", size_bytes=10 * MiB, **kwargs)


def test_mode_bits_do_not_matter_for_regular_files(tmp_path):
    p = tmp_path / "ro"
    p.write_bytes(b"abc")
    p.chmod(stat.S_IRUSR)
    _, done = run_file(p, 3, CHUNK)
    assert done.blake3 == blake3.blake3(b"abc").digest()
