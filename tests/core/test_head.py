"""The leading plaintext bytes the pipeline hands back (content sniffing, DICOM headers): taken from
the one read, in clear even when the chunk is encrypted, and only where the file starts."""

from __future__ import annotations

import os

import pytest

from pyengine import _core
from tests.core.test_core import CHUNK, MiB, pattern, run_file


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize(
    ("size", "head_bytes"),
    [(0, 1024), (1, 1024), (300, 132), (5000, 64 * 1024), (9 * MiB, 300 * 1024), (9 * MiB, 0)],
)
def test_head_is_the_files_leading_plaintext(tmp_path, encrypt, size, head_bytes):
    data = pattern(size, seed=7)
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    key = os.urandom(32) if encrypt else None
    chunk_bytes = 4 * MiB
    chunks, done = run_file(path, size, chunk_bytes, key=key, head_bytes=head_bytes)
    assert isinstance(done, _core.FileDone), done
    expected = data[: min(head_bytes, size, chunk_bytes)]
    assert done.head == expected
    for index, (chunk, payload) in chunks.items():
        assert chunk.head == (expected if index == 0 else b"")
        if encrypt and len(expected) >= 16:
            # the payload itself stays ciphertext: the head is a copy taken before encryption
            # (16 bytes and more: a shorter plaintext can turn up in random ciphertext by chance)
            assert expected[:64] not in payload


def test_range_not_starting_at_zero_has_no_head(tmp_path):
    size = 3 * CHUNK
    path = tmp_path / "f.bin"
    path.write_bytes(pattern(size))
    chunks, done = run_file(path, size, CHUNK, offset_bytes=CHUNK, head_bytes=4096)
    assert isinstance(done, _core.FileDone), done
    assert done.head == b""
    assert sorted(chunks) == [0, 1] and all(c.head == b"" for c, _ in chunks.values())
