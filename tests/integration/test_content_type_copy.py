"""Content-Type of copied blobs (issue 16 item 5), read back with the official SDK from the real
Azurite: DICOM Part 10 files (written by pydicom) are application/dicom, other files get their
extension's type, and ``--content-type`` sets one type for all; single-Put and block-list commits
alike, plain and encrypted (the plaintext's type)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

import pyengine
from pyengine import CopyOptions, LocalKeyWrapper
from pyengine.options import MiB

pytestmark = pytest.mark.integration
pydicom = pytest.importorskip("pydicom")

#: rel path -> expected Content-Type; a file over 1 MiB takes the block path (options below)
EXPECTED = {
    "study/IM0001": "application/dicom",  # Part 10, no extension (PACS exports)
    "study/IM0002.dcm": "application/dicom",  # Part 10 over 1 MiB: Put Block List
    "raw.dcm": "application/octet-stream",  # no preamble: not Part 10
    "report.json": "application/json",
    "big.json": "application/json",  # over 1 MiB: Put Block List
    "notes.txt": "text/plain",
    "empty.txt": "text/plain",
    "blob": "application/octet-stream",
}


def write_part10(path: Path, pixel_bytes: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixel_bytes // 1024, 1024  # US: at most 65535 each
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(i % 251 for i in range(pixel_bytes))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_tree(root: Path) -> None:
    write_part10(root / "study/IM0001", 4096)
    write_part10(root / "study/IM0002.dcm", 5 * MiB // 2)
    (root / "raw.dcm").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + bytes(300))
    (root / "report.json").write_text('{"findings": []}')
    (root / "big.json").write_text('{"x": "' + "a" * (3 * MiB // 2) + '"}')
    (root / "notes.txt").write_text("hello\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "blob").write_bytes(os.urandom(2048))


def copy(src: Path, dest: str, azurite: Any, tmp_path: Path, **kw: Any) -> pyengine.CopyReport:
    opts = CopyOptions(
        threads=2,
        memory_cap_bytes=32 * MiB,
        # a file over 1 MiB takes the block path; encrypted blocks are whole 4 MiB regions
        block_bytes=4 * MiB if kw.get("encrypt") else 1 * MiB,
        single_put_max_bytes=1 * MiB,
        connection_string=azurite.connection_string,
        journal_path=str(tmp_path / "journal.sqlite"),
        **kw,
    )
    report = asyncio.run(pyengine.copy(src, dest, opts))
    assert (report.files_copied, report.files_failed) == (len(EXPECTED), 0), report
    return report


def content_types(azurite: Any, container: str, prefix: str = "") -> dict[str, str]:
    name = container.rstrip("/").rsplit("/", 1)[1]
    with ContainerClient.from_connection_string(azurite.connection_string, name) as cc:
        return {
            b.name[len(prefix) :]: cc.get_blob_client(b.name)
            .get_blob_properties()
            .content_settings.content_type
            for b in cc.list_blobs(name_starts_with=prefix)
        }


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_blobs_get_dicom_or_their_extensions_content_type(
    tmp_path: Path, azurite: Any, container: str, encrypt: bool
) -> None:
    make_tree(tmp_path / "src")
    kek = LocalKeyWrapper(os.urandom(32)) if encrypt else None
    copy(tmp_path / "src", container, azurite, tmp_path, encrypt=encrypt, kek=kek)
    assert content_types(azurite, container) == EXPECTED


def test_content_type_option_sets_one_type_for_every_blob(
    tmp_path: Path, azurite: Any, container: str
) -> None:
    make_tree(tmp_path / "src")
    copy(tmp_path / "src", container, azurite, tmp_path, content_type="application/x-archive")
    assert content_types(azurite, container) == dict.fromkeys(EXPECTED, "application/x-archive")


def test_content_type_flag_of_the_cli(tmp_path: Path, azurite: Any, container: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.json").write_text("{}")
    cli = [sys.executable, "-c", "import sys; from pyengine.cli import main; sys.exit(main())"]
    args = ["copy", str(tmp_path / "src"), f"{container}/p", "--threads", "2", "--json"]
    args += ["--journal", str(tmp_path / "j.sqlite"), "--content-type", "text/plain; charset=utf-8"]
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    done = subprocess.run(cli + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert content_types(azurite, container, "p/") == {"a.json": "text/plain; charset=utf-8"}


def test_without_a_policy_the_core_hands_back_only_the_bytes_the_sniff_reads(
    tmp_path: Path, azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 KiB of head copied into bytes per small file cost the event loop ~18 us a file; only a
    policy's placement reads past the Part 10 magic."""
    from pyengine.engine.content_type import SNIFF_BYTES
    from pyengine.engine.send import Sender

    asked: list[int] = []
    real_read = Sender._read

    async def spy(self: Sender, file_id: int, task: Any, path: str, **submit: Any) -> None:
        asked.append(submit["head_bytes"])
        await real_read(self, file_id, task, path, **submit)

    monkeypatch.setattr(Sender, "_read", spy)
    make_tree(tmp_path / "src")
    copy(tmp_path / "src", container, azurite, tmp_path)
    assert asked and set(asked) == {SNIFF_BYTES}
    assert content_types(azurite, container) == EXPECTED  # the sniff still finds Part 10
