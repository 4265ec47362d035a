"""The native restore write path (_core.Writer): decrypt, check, hash and pwrite, checked against
`cryptography` (AES-GCM) and the `blake3` package."""

from __future__ import annotations

import os
import select

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyengine import _core

REGION = 4 * 1024 * 1024


def pattern(n: int) -> bytes:
    unit = bytes(range(251))
    return (unit * (n // 251 + 1))[:n]


def encrypt(plain: bytes, key: bytes, first_region: int = 0) -> bytes:
    out = []
    for r in range(0, len(plain), REGION):
        nonce = (first_region + r // REGION).to_bytes(12, "big")
        out.append(nonce + AESGCM(key).encrypt(nonce, plain[r : r + REGION], None))
    return b"".join(out)


def drain(writer: _core.Writer, count: int) -> list:
    events: list = []
    while len(events) < count:
        select.select([writer.fileno()], [], [], 10)
        events.extend(writer.poll())
    return events


def restore(tmp_path, plain: bytes, range_bytes: int, key: bytes | None, threads: int = 2):
    """Writes ``plain`` through the writer in ranges, last first; (file bytes, digest, events)."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = _core.Writer(threads)
    try:
        n = max(1, -(-len(plain) // range_bytes))
        for i in reversed(range(n)):
            piece = plain[i * range_bytes : (i + 1) * range_bytes]
            stored = piece if key is None else encrypt(piece, key, i * range_bytes // REGION)
            writer.submit(
                7,
                i,
                fd,
                offset_bytes=i * range_bytes,
                plain_bytes=len(piece),
                data=stored,
                content_key=key,
                last=i == n - 1,
            )
        events = sorted(drain(writer, n), key=lambda e: e.index)
        digest = None
        if all(e.ok for e in events):
            digest = writer.digest(7, [e.cv for e in events[:-1]])
    finally:
        writer.close()
        os.close(fd)
    return path.read_bytes(), digest, events


@pytest.mark.parametrize(
    "size_bytes", [1, 1023, 1024, 1025, REGION - 1, REGION, REGION + 1, 2 * REGION + 5]
)
@pytest.mark.parametrize("encrypted", [False, True])
def test_writer_output_and_blake3_equal_the_plaintext(tmp_path, size_bytes, encrypted):
    plain = pattern(size_bytes)
    key = os.urandom(32) if encrypted else None
    data, digest, _ = restore(tmp_path, plain, REGION, key)
    assert data == plain
    assert digest == blake3.blake3(plain).digest()


def test_writer_assembles_blake3_over_many_power_of_two_ranges(tmp_path):
    plain = pattern(9 * 65536 + 17)
    data, digest, events = restore(tmp_path, plain, 65536, None, threads=3)
    assert data == plain and digest == blake3.blake3(plain).digest()
    assert [e.cv is not None for e in events] == [True] * 9 + [False]


def test_writer_fails_a_range_with_a_tampered_region(tmp_path):
    key, plain = os.urandom(32), pattern(REGION + 100)
    stored = bytearray(encrypt(plain, key))
    stored[REGION + 40] ^= 1  # second region's ciphertext
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = _core.Writer(1)
    writer.submit(
        1, 0, fd, offset_bytes=0, plain_bytes=len(plain), data=stored, content_key=key, last=True
    )
    (event,) = drain(writer, 1)
    writer.close()
    os.close(fd)
    assert not event.ok and "region 1: AES-GCM tag does not match" in event.reason
    stored.append(0)  # the buffer export was released with the event: resizable again


def test_writer_fails_a_range_under_a_wrong_key(tmp_path):
    plain = pattern(1000)
    stored = encrypt(plain, os.urandom(32))
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = _core.Writer(1)
    writer.submit(
        1,
        0,
        fd,
        offset_bytes=0,
        plain_bytes=1000,
        data=stored,
        content_key=os.urandom(32),
        last=True,
    )
    (event,) = drain(writer, 1)
    writer.close()
    os.close(fd)
    assert not event.ok and "AES-GCM tag does not match" in event.reason


def test_writer_refuses_a_region_moved_to_another_position(tmp_path):
    key, plain = os.urandom(32), pattern(2 * REGION)
    stored = encrypt(plain, key)
    frame = REGION + 28
    swapped = stored[frame:] + stored[:frame]  # both regions keep valid tags
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = _core.Writer(1)
    writer.submit(
        1, 0, fd, offset_bytes=0, plain_bytes=len(plain), data=swapped, content_key=key, last=True
    )
    (event,) = drain(writer, 1)
    writer.close()
    os.close(fd)
    assert not event.ok and "nonce" in event.reason


def test_writer_fails_a_short_range_and_a_wrong_crc64(tmp_path):
    plain = pattern(5000)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = _core.Writer(2)
    writer.submit(1, 0, fd, offset_bytes=0, plain_bytes=5000, data=plain[:4999], last=True)
    writer.submit(
        2,
        0,
        fd,
        offset_bytes=0,
        plain_bytes=5000,
        data=plain,
        last=True,
        crc64=_core.crc64(plain) ^ 1,
    )
    writer.submit(
        3, 0, fd, offset_bytes=0, plain_bytes=5000, data=plain, last=True, crc64=_core.crc64(plain)
    )
    events = {e.file_id: e for e in drain(writer, 3)}
    writer.close()
    os.close(fd)
    assert "received 4999 of 5000 bytes" in events[1].reason
    assert "CRC64" in events[2].reason
    assert events[3].ok


def test_writer_refuses_a_misaligned_middle_range(tmp_path):
    writer = _core.Writer(1)
    with pytest.raises(ValueError, match="power of two"):
        writer.submit(1, 0, 1, offset_bytes=0, plain_bytes=3000, data=b"x" * 3000)
    writer.close()


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_writer_names_a_range_altered_in_transit_by_its_crc64_when_encrypted(tmp_path, where):
    # The CRC64 is folded into the decrypt pass: a byte changed after the service computed it
    # (nonce, ciphertext or tag of the second region) is a CRC64 failure, not a GCM one, and an
    # unaltered range with the service's CRC64 passes.
    key = os.urandom(32)
    plain = pattern(REGION + 5000)
    stored = encrypt(plain, key)
    at = {"nonce": REGION + 28 + 3, "ciphertext": REGION + 28 + 12 + 4000, "tag": len(stored) - 1}
    altered = bytearray(stored)
    altered[at[where]] ^= 0x40
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = _core.Writer(2)
    for file_id, data in ((1, bytes(altered)), (2, stored)):
        writer.submit(
            file_id,
            0,
            fd,
            offset_bytes=0,
            plain_bytes=len(plain),
            data=data,
            content_key=key,
            last=True,
            crc64=_core.crc64(stored),
        )
    events = {e.file_id: e for e in drain(writer, 2)}
    writer.close()
    os.close(fd)
    assert not events[1].ok and "CRC64 differs" in events[1].reason
    assert events[2].ok, events[2].reason
