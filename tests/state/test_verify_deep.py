"""`pyengine verify --deep` and encrypted blobs against a real Azurite: bit rot found by a streamed
read-back (plain and encrypted), keyed digests checked with the KEK, the memory bound of --deep,
and the range and region arithmetic it rests on. Damage is done with the official SDK."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from peak_rss import run_cli_measured
from verify_helpers import (
    BIG,
    REGION,
    STORED_REGION,
    MiB,
    container_client,
    copy_tree,
    findings_of,
    flip_byte,
    json_report,
    make_tree,
    pattern,
    verify_cli,
)

from pyengine import _core
from pyengine.crypto import KEYED_DIGEST_METADATA
from pyengine.state.journal import Journal
from pyengine.state.verify_deep import decrypt_regions, read_ranges
from pyengine.state.verify_report import BadBlob

# --- bit rot ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_deep_verify_finds_one_flipped_byte_in_a_plain_blob(copied, azurite, container) -> None:
    _job_id, journal, files, client, _ = copied
    flip_byte(client, BIG, 9 * MiB + 3)  # in the third ranged read

    shallow = verify_cli(container, journal, azurite.connection_string, "--json")
    assert shallow.returncode == 0, shallow.stdout  # same size, same metadata
    deep = verify_cli(container, journal, azurite.connection_string, "--json", "--deep")
    assert deep.returncode == 1, deep.stderr
    out = json_report(deep)
    want = blake3.blake3(files[BIG]).hexdigest()
    rotten = bytearray(files[BIG])
    rotten[9 * MiB + 3] ^= 1
    got = blake3.blake3(rotten).hexdigest()
    assert findings_of(out) == [
        ("damaged", BIG, f"content BLAKE3 {got[:16]}... != journal {want[:16]}...")
    ]
    assert out["files_ok"] == len(files) - 1


@pytest.fixture
def encrypted(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    files = make_tree(src)
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    journal = tmp_path / "jobs.sqlite"
    job_id = copy_tree(
        src, container, journal, azurite.connection_string, "--encrypt", "--kek-file",
        str(kek_file),
    )  # fmt: skip
    with container_client(azurite, container) as client:
        yield job_id, journal, files, kek_file, client


@pytest.mark.integration
def test_deep_verify_finds_flipped_bytes_in_encrypted_blobs(encrypted, azurite, container) -> None:
    _job_id, journal, files, kek_file, client = encrypted
    flip_byte(client, BIG, STORED_REGION + 100)  # ciphertext of region 1
    flip_byte(client, "study/series1/img0002.dcm", 11)  # last byte of region 0's nonce
    kek = ("--kek-file", str(kek_file))

    shallow = verify_cli(container, journal, azurite.connection_string, "--json", *kek)
    assert shallow.returncode == 0, shallow.stdout  # same size, same metadata
    deep = verify_cli(container, journal, azurite.connection_string, "--json", "--deep", *kek)
    assert deep.returncode == 1, deep.stderr
    out = json_report(deep)
    assert findings_of(out) == [
        ("damaged", BIG, "region 1: AES-GCM tag does not match (altered bytes)"),
        ("damaged", "study/series1/img0002.dcm", "region 0: its nonce is not its index "
         "(altered bytes)"),
    ]  # fmt: skip
    assert out["files_ok"] == len(files) - 2


@pytest.mark.integration
def test_encrypted_blobs_carry_a_keyed_digest_that_verify_checks_with_the_kek(
    encrypted, azurite, container
) -> None:
    _job_id, journal, files, kek_file, client = encrypted
    for name in files:
        metadata = client.get_blob_client(name).get_blob_properties().metadata
        assert "pyengineblake3" not in metadata
        assert len(metadata[KEYED_DIGEST_METADATA]) == 64
    # the keyed digest of another blob: a valid-looking value, wrong for this one
    notes = client.get_blob_client("study/notes.txt")
    metadata = notes.get_blob_properties().metadata
    other = client.get_blob_client("empty.dcm").get_blob_properties().metadata
    metadata[KEYED_DIGEST_METADATA] = other[KEYED_DIGEST_METADATA]
    notes.set_blob_metadata(metadata)

    without_kek = json_report(verify_cli(container, journal, azurite.connection_string, "--json"))
    assert without_kek["ok"] is True  # existence and size only
    assert without_kek["files_digest_unchecked"] == len(files)
    plain = verify_cli(container, journal, azurite.connection_string)
    assert f"{len(files)} encrypted blobs: existence and size checked, digest not checked" in (
        plain.stdout
    )
    kek = ("--kek-file", str(kek_file))
    proc = verify_cli(container, journal, azurite.connection_string, "--json", *kek)
    assert proc.returncode == 1
    out = json_report(proc)
    assert out["files_digest_unchecked"] == 0
    assert findings_of(out) == [
        ("damaged", "study/notes.txt", "keyed BLAKE3 in metadata does not match the journal's")
    ]


@pytest.mark.integration
def test_encrypted_blobs_written_before_keyed_digests_still_verify(
    encrypted, azurite, container
) -> None:
    job_id, journal, files, kek_file, client = encrypted
    with Journal.open(journal) as j:
        digests = {r.blob_name: r.blake3_hex for r in j.iter_files(job_id)}
    for name in files:  # the old writer: the plaintext BLAKE3 in clear, no keyed digest
        blob = client.get_blob_client(name)
        metadata = blob.get_blob_properties().metadata
        del metadata[KEYED_DIGEST_METADATA]
        metadata["pyengine_blake3"] = digests[name]
        blob.set_blob_metadata(metadata)

    out = json_report(verify_cli(container, journal, azurite.connection_string, "--json"))
    assert (out["ok"], out["files_ok"], out["files_digest_unchecked"]) == (True, len(files), 0)
    deep = verify_cli(
        container, journal, azurite.connection_string, "--json", "--deep", "--kek-file",
        str(kek_file),
    )  # fmt: skip
    assert deep.returncode == 0, deep.stdout
    assert json_report(deep)["files_ok"] == len(files)


@pytest.mark.integration
def test_encrypted_deep_verify_with_another_kek_names_every_blob(
    encrypted, azurite, tmp_path, container
) -> None:
    _job_id, journal, files, _, _ = encrypted
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(32))
    proc = verify_cli(
        container, journal, azurite.connection_string, "--deep", "--json", "--kek-file", str(other)
    )
    assert proc.returncode == 1
    out = json_report(proc)
    reason = "cannot decrypt: this KEK does not unwrap the blob's content key"
    assert findings_of(out) == sorted(("damaged", name, reason) for name in files)


@pytest.mark.integration
def test_encrypted_deep_verify_without_kek_is_a_usage_error(encrypted, azurite) -> None:
    job_id, journal, _, _, _ = encrypted
    proc = verify_cli(job_id, journal, azurite.connection_string, "--deep")
    assert proc.returncode == 2
    assert proc.stderr == f"error: {job_id}: encrypted blobs: --deep needs --kek-file\n"


# --- memory -----------------------------------------------------------------------------------


def _peak_rss(args: list[str]) -> tuple[int, str, int]:
    """(exit code, stdout, peak RSS bytes) of `pyengine ARGS`: the child's own VmHWM."""
    rc, out, _, peak_bytes = run_cli_measured(args, merge_stderr=True)
    return rc, out, peak_bytes


#: --deep's peak RSS may exceed a metadata-only run's by the cap plus this much: the blake3 and
#: thread-pool stacks, aiohttp's socket buffers, allocator slack. Measured: +17 MiB at a 16 MiB
#: cap over a 64 MiB blob (80 MiB peak vs 63 MiB); holding the blob whole would be +64 MiB or more
DEEP_RSS_MARGIN_BYTES = 24 * MiB


@pytest.mark.integration
def test_deep_verify_of_a_blob_four_times_the_memory_cap_stays_within_the_cap(
    tmp_path, azurite, container
) -> None:
    cap_mib = 16
    blob_bytes = 4 * cap_mib * MiB
    src = tmp_path / "src"
    src.mkdir()
    (src / "series.bin").write_bytes(os.urandom(blob_bytes))
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    journal = tmp_path / "jobs.sqlite"
    cs = azurite.connection_string
    copy_tree(src, container, journal, cs, "--encrypt", "--kek-file", str(kek_file))
    common = [
        "verify", container, "--journal", str(journal), "--connection-string",
        azurite.connection_string, "--kek-file", str(kek_file), "--memory-cap", str(cap_mib),
    ]  # fmt: skip
    rc, out, base_bytes = _peak_rss(common)  # the same imports, no byte of content
    assert rc == 0, out
    rc, out, deep_bytes = _peak_rss([*common, "--deep", "--json"])
    assert rc == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["bytes_read"] == blob_bytes + (blob_bytes // REGION) * 28
    print(
        f"\n--deep of {blob_bytes // MiB} MiB with a {cap_mib} MiB cap: peak RSS "
        f"{deep_bytes / MiB:.0f} MiB, metadata-only {base_bytes / MiB:.0f} MiB"
    )
    assert deep_bytes - base_bytes <= cap_mib * MiB + DEEP_RSS_MARGIN_BYTES


# --- pure logic -------------------------------------------------------------------------------


def test_ranges_hold_whole_encrypted_regions_and_cover_the_blob() -> None:
    plain = 3 * REGION + 5
    got = list(read_ranges(plain, True, 2))
    assert got == [
        (0, 2 * STORED_REGION, 0, [REGION, REGION]),
        (2 * STORED_REGION, STORED_REGION + 5 + 28, 2, [REGION, 5]),
    ]
    assert list(read_ranges(plain, False, 2))[-1] == (2 * REGION, REGION + 5, 2, [REGION, 5])
    assert list(read_ranges(0, True, 2)) == []


def test_decrypt_regions_reads_the_native_encryptor_and_refuses_regions_out_of_place() -> None:
    key = os.urandom(32)
    plain = pattern(2 * REGION + 10, 3)
    stored = _core.encrypt_regions(plain, key)  # what the uploader sends
    aes = AESGCM(key)
    assert b"".join(decrypt_regions(aes, stored, 0, [REGION, REGION, 10])) == plain
    # the stored bytes of region 1 returned for region 0: its nonce betrays it
    with pytest.raises(BadBlob, match="region 0: its nonce is not its index"):
        decrypt_regions(aes, stored[STORED_REGION : 2 * STORED_REGION], 0, [REGION])
