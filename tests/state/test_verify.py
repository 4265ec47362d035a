"""`pyengine verify` against a real Azurite: every blob the journal knows under a destination,
unknown and missing blobs, bit rot found by a streamed --deep (plain and encrypted), keyed digests,
and a memory bound for --deep. Damage is done with the official SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest
from azure.storage.blob import ContainerClient
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyengine import _core
from pyengine.crypto import KEYED_DIGEST_METADATA
from pyengine.state.journal import Journal
from pyengine.state.verify_deep import decrypt_regions, read_ranges
from pyengine.state.verify_report import BadBlob

MiB = 1024 * 1024
REGION = 4 * MiB
STORED_REGION = REGION + 28
BIG = "study/series1/img0001.dcm"  # 12 MiB + 7: three regions and a bit


def _cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": "", "COLUMNS": "200"},
    )


def _pattern(n_bytes: int, seed: int) -> bytes:
    # i % 251 (BLAKE3's test-vector input) shifted by seed: swapped blocks change the hash
    return bytes((i + seed) % 251 for i in range(251)) * (n_bytes // 251) + bytes(n_bytes % 251)


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        BIG: _pattern(12 * MiB + 7, 1),  # 4 blocks of 4 MiB
        "study/series1/img0002.dcm": _pattern(70_000, 2),
        "study/notes.txt": b"report\n",
        "empty.dcm": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def _copy(src: Path, dest: str, journal: Path, cs: str, *extra: str) -> str:
    proc = _cli(
        "copy", str(src), dest, "--json", "--block-size", "4", "--journal", str(journal),
        "--connection-string", cs, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "summary"
    return summary["job_id"]


def _verify(target: str, journal: Path, cs: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("verify", target, "--journal", str(journal), "--connection-string", cs, *extra)


def _report(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout)


def _findings(report: dict) -> list[tuple[str, str, str]]:
    return sorted((f["kind"], f["blob"], f["reason"]) for f in report["findings"])


def _client(azurite, container: str) -> ContainerClient:
    cred = {"account_name": azurite.account_name, "account_key": azurite.account_key}
    return ContainerClient.from_container_url(container, credential=cred)


def _flip_byte(client: ContainerClient, name: str, offset: int) -> None:
    """Bit rot: one byte changed, same size, same metadata (the stored bytes, ciphertext when the
    blob is encrypted: this client holds no key, so it neither decrypts nor encrypts)."""
    blob = client.get_blob_client(name)
    metadata = blob.get_blob_properties().metadata
    data = bytearray(blob.download_blob().readall())
    data[offset] ^= 0x01
    blob.upload_blob(bytes(data), overwrite=True, metadata=metadata)


@pytest.fixture
def copied(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    files = _make_tree(src)
    journal = tmp_path / "jobs.sqlite"
    job_id = _copy(src, container, journal, azurite.connection_string)
    with _client(azurite, container) as client:
        yield job_id, journal, files, client, src


# --- a job, a destination ---------------------------------------------------------------------


@pytest.mark.integration
def test_verify_job_passes_after_copy(copied, azurite) -> None:
    job_id, journal, files, _, _ = copied
    proc = _verify(job_id, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stderr
    out = _report(proc)
    assert out["ok"] is True
    assert out["job_ids"] == [job_id]
    assert out["files_ok"] == out["files_checked"] == len(files)
    assert out["findings"] == []


@pytest.mark.integration
def test_deep_verify_of_a_destination_passes_after_copy(copied, azurite, container) -> None:
    _job_id, journal, files, _, _ = copied
    proc = _verify(container, journal, azurite.connection_string, "--json", "--deep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = _report(proc)
    assert out["files_ok"] == len(files)
    assert out["blobs_unknown"] == 0
    assert out["bytes_checked"] == sum(len(d) for d in files.values())
    assert out["bytes_read"] == sum(len(d) for d in files.values())


@pytest.mark.integration
def test_verify_destination_checks_every_job_not_only_the_latest_delta_run(
    copied, azurite, container, tmp_path
) -> None:
    job_id, journal, files, client, src = copied
    # a delta run that sends one file: a job of its own, which committed one file
    (src / "study/notes.txt").write_bytes(b"report, amended\n")
    delta_id = _copy(src, container, journal, azurite.connection_string)
    assert delta_id != job_id
    # a blob only the first job committed, truncated since (a different size)
    name = "study/series1/img0002.dcm"
    blob = client.get_blob_client(name)
    blob.upload_blob(files[name][:-1], overwrite=True, metadata=blob.get_blob_properties().metadata)

    proc = _verify(container, journal, azurite.connection_string, "--json")
    assert proc.returncode == 1, proc.stderr
    out = _report(proc)
    assert out["job_ids"] == [job_id, delta_id]
    assert out["files_checked"] == len(files)
    assert out["files_ok"] == len(files) - 1
    assert _findings(out) == [
        ("damaged", name, f"blob holds {len(files[name]) - 1} bytes, expected {len(files[name])}")
    ]
    # the amended file is checked against the delta run's version, not the first job's
    assert out["files_damaged"] == 1


@pytest.mark.integration
def test_verify_destination_reports_unknown_and_missing_blobs_one_line_each(
    copied, azurite, container
) -> None:
    job_id, journal, files, client, _ = copied
    client.delete_blob("study/notes.txt")
    client.upload_blob("study/stray.dcm", b"not ours")
    proc = _verify(container, journal, azurite.connection_string)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"missing: study/notes.txt: committed by job {job_id}, not at the destination" in lines
    assert "unknown: study/stray.dcm: not written by any job of this journal" in lines

    out = _report(_verify(container, journal, azurite.connection_string, "--json"))
    assert (out["files_ok"], out["files_missing"], out["blobs_unknown"]) == (len(files) - 1, 1, 1)
    assert out["ok"] is False


@pytest.mark.integration
def test_verify_of_a_prefix_checks_the_blobs_under_it_of_a_job_into_the_container_root(
    copied, azurite, container
) -> None:
    job_id, journal, _, client, _ = copied
    client.upload_blob("elsewhere/stray.dcm", b"outside the prefix")
    client.upload_blob("study/stray.dcm", b"inside the prefix")
    proc = _verify(f"{container}/study", journal, azurite.connection_string, "--json")
    assert proc.returncode == 1, proc.stderr
    out = _report(proc)
    assert out["job_ids"] == [job_id]
    assert out["files_ok"] == out["files_checked"] == 3  # the three files under study/
    assert _findings(out) == [
        ("unknown", "study/stray.dcm", "not written by any job of this journal")
    ]


@pytest.mark.integration
def test_verify_job_still_checks_only_that_jobs_files(copied, azurite) -> None:
    job_id, journal, _files, client, _ = copied
    client.upload_blob("study/stray.dcm", b"not ours")  # a job target lists nothing
    client.delete_blob("study/notes.txt")
    proc = _verify(job_id, journal, azurite.connection_string)
    assert proc.returncode == 1
    assert f"missing: study/notes.txt: committed by job {job_id}, not at the destination" in (
        proc.stdout.splitlines()
    )
    assert "stray" not in proc.stdout


@pytest.mark.integration
def test_blob_removed_by_a_later_delete_destination_run_is_not_missing(
    tmp_path, azurite, container
) -> None:
    src = tmp_path / "src"
    for i in range(12):  # one deletion in twelve blobs stays within a 10 % deletion limit
        (src / "s").mkdir(parents=True, exist_ok=True)
        (src / f"s/img{i:02d}.dcm").write_bytes(bytes([i]) * 100)
    journal = tmp_path / "jobs.sqlite"
    _copy(src, container, journal, azurite.connection_string)
    (src / "s/img05.dcm").unlink()
    _copy(src, container, journal, azurite.connection_string, "--delete-destination")
    with _client(azurite, container) as client:
        assert "s/img05.dcm" not in {b.name for b in client.list_blobs()}
    proc = _verify(container, journal, azurite.connection_string, "--json")
    assert proc.returncode == 0, proc.stdout
    out = _report(proc)
    assert (out["files_ok"], out["files_deleted_at_source"]) == (11, 1)


# --- bit rot ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_deep_verify_finds_one_flipped_byte_in_a_plain_blob(copied, azurite, container) -> None:
    _job_id, journal, files, client, _ = copied
    _flip_byte(client, BIG, 9 * MiB + 3)  # in the third ranged read

    shallow = _verify(container, journal, azurite.connection_string, "--json")
    assert shallow.returncode == 0, shallow.stdout  # same size, same metadata
    deep = _verify(container, journal, azurite.connection_string, "--json", "--deep")
    assert deep.returncode == 1, deep.stderr
    out = _report(deep)
    want = blake3.blake3(files[BIG]).hexdigest()
    rotten = bytearray(files[BIG])
    rotten[9 * MiB + 3] ^= 1
    got = blake3.blake3(rotten).hexdigest()
    assert _findings(out) == [
        ("damaged", BIG, f"content BLAKE3 {got[:16]}... != journal {want[:16]}...")
    ]
    assert out["files_ok"] == len(files) - 1


@pytest.fixture
def encrypted(tmp_path: Path, azurite, container: str):
    src = tmp_path / "src"
    files = _make_tree(src)
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    journal = tmp_path / "jobs.sqlite"
    job_id = _copy(
        src, container, journal, azurite.connection_string, "--encrypt", "--kek-file",
        str(kek_file),
    )  # fmt: skip
    with _client(azurite, container) as client:
        yield job_id, journal, files, kek_file, client


@pytest.mark.integration
def test_deep_verify_finds_flipped_bytes_in_encrypted_blobs(encrypted, azurite, container) -> None:
    _job_id, journal, files, kek_file, client = encrypted
    _flip_byte(client, BIG, STORED_REGION + 100)  # ciphertext of region 1
    _flip_byte(client, "study/series1/img0002.dcm", 11)  # last byte of region 0's nonce
    kek = ("--kek-file", str(kek_file))

    shallow = _verify(container, journal, azurite.connection_string, "--json", *kek)
    assert shallow.returncode == 0, shallow.stdout  # same size, same metadata
    deep = _verify(container, journal, azurite.connection_string, "--json", "--deep", *kek)
    assert deep.returncode == 1, deep.stderr
    out = _report(deep)
    assert _findings(out) == [
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
        assert "pyengine_blake3" not in metadata
        assert len(metadata[KEYED_DIGEST_METADATA]) == 64
    # the keyed digest of another blob: a valid-looking value, wrong for this one
    notes = client.get_blob_client("study/notes.txt")
    metadata = notes.get_blob_properties().metadata
    other = client.get_blob_client("empty.dcm").get_blob_properties().metadata
    metadata[KEYED_DIGEST_METADATA] = other[KEYED_DIGEST_METADATA]
    notes.set_blob_metadata(metadata)

    without_kek = _report(_verify(container, journal, azurite.connection_string, "--json"))
    assert without_kek["ok"] is True  # existence and size only
    assert without_kek["files_digest_unchecked"] == len(files)
    plain = _verify(container, journal, azurite.connection_string)
    assert f"{len(files)} encrypted blobs: existence and size checked, digest not checked" in (
        plain.stdout
    )
    kek = ("--kek-file", str(kek_file))
    proc = _verify(container, journal, azurite.connection_string, "--json", *kek)
    assert proc.returncode == 1
    out = _report(proc)
    assert out["files_digest_unchecked"] == 0
    assert _findings(out) == [
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

    out = _report(_verify(container, journal, azurite.connection_string, "--json"))
    assert (out["ok"], out["files_ok"], out["files_digest_unchecked"]) == (True, len(files), 0)
    deep = _verify(
        container, journal, azurite.connection_string, "--json", "--deep", "--kek-file",
        str(kek_file),
    )  # fmt: skip
    assert deep.returncode == 0, deep.stdout
    assert _report(deep)["files_ok"] == len(files)


@pytest.mark.integration
def test_encrypted_deep_verify_with_another_kek_names_every_blob(
    encrypted, azurite, tmp_path, container
) -> None:
    _job_id, journal, files, _, _ = encrypted
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(32))
    proc = _verify(
        container, journal, azurite.connection_string, "--deep", "--json", "--kek-file", str(other)
    )
    assert proc.returncode == 1
    out = _report(proc)
    reason = "cannot decrypt: this KEK does not unwrap the blob's content key"
    assert _findings(out) == sorted(("damaged", name, reason) for name in files)


@pytest.mark.integration
def test_encrypted_deep_verify_without_kek_is_a_usage_error(encrypted, azurite) -> None:
    job_id, journal, _, _, _ = encrypted
    proc = _verify(job_id, journal, azurite.connection_string, "--deep")
    assert proc.returncode == 2
    assert proc.stderr == f"error: {job_id}: encrypted blobs: --deep needs --kek-file\n"


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.integration
def test_verify_unknown_job_is_a_one_line_usage_error(copied, azurite) -> None:
    _, journal, _, _, _ = copied
    proc = _verify("20000101-0000-dead", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: 20000101-0000-dead: no such job in the journal"
    assert proc.stdout == ""


@pytest.mark.integration
def test_verify_without_journal_is_a_usage_error(tmp_path: Path, azurite) -> None:
    proc = _verify("x", tmp_path / "none.sqlite", azurite.connection_string)
    assert proc.returncode == 2
    assert "no journal here" in " ".join(proc.stderr.split())
    assert not (tmp_path / "none.sqlite").exists()


@pytest.mark.integration
def test_usage_error_naming_a_long_path_stays_on_one_line(tmp_path: Path, azurite) -> None:
    # rich wraps at 80 columns when stderr is not a terminal; an operator's log must not
    journal = tmp_path / ("deep" * 20) / "none.sqlite"
    proc = _verify("x", journal, azurite.connection_string)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {journal}: no journal here (--journal PATH)\n"


# --- memory -----------------------------------------------------------------------------------


def _peak_rss(args: list[str]) -> tuple[int, str, int]:
    """(exit code, stdout, peak RSS bytes) of `pyengine ARGS`: the child's own VmHWM (as in
    test_scale: not ru_maxrss, which counts the fork of this test process)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "pyengine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": ""},
    )
    assert child.stdout is not None
    peak_bytes = 0
    done = threading.Event()

    def poll_hwm() -> None:
        nonlocal peak_bytes
        while not done.is_set():
            try:
                with open(f"/proc/{child.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):  # monotonic: the last read is the peak
                            peak_bytes = max(peak_bytes, int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll_hwm, daemon=True)
    poller.start()
    out = child.stdout.read()
    done.set()
    child.wait()
    poller.join()
    return child.returncode, out, peak_bytes


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
    _copy(src, container, journal, cs, "--encrypt", "--kek-file", str(kek_file))
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
    plain = _pattern(2 * REGION + 10, 3)
    stored = _core.encrypt_regions(plain, key)  # what the uploader sends
    aes = AESGCM(key)
    assert b"".join(decrypt_regions(aes, stored, 0, [REGION, REGION, 10])) == plain
    # the stored bytes of region 1 returned for region 0: its nonce betrays it
    with pytest.raises(BadBlob, match="region 0: its nonce is not its index"):
        decrypt_regions(aes, stored[STORED_REGION : 2 * STORED_REGION], 0, [REGION])


def test_journal_gives_the_latest_committed_version_of_each_blob(tmp_path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as j:
        ids = []
        for digest in ("aa", "bb", "cc"):
            job = j.create_job("/src", "http://127.0.0.1:1/devstoreaccount1/c", {})
            ids.append(job)
            time.sleep(0.002)  # created_ns orders the jobs
            for rel in ("a.dcm", "b.dcm"):
                rec = j.begin_file(
                    job, rel, size_bytes=1, mtime_ns=1, inode=1, device=1, blob_name=rel,
                    block_bytes=4 * MiB, encrypted=False,
                )  # fmt: skip
                if digest == "cc" and rel == "a.dcm":
                    j.mark_skipped(rec.file_id, "unchanged")  # a later job skipping a file
                else:
                    j.mark_committed(rec.file_id, etag="e", blake3_hex=digest * 32)
        got = [(r.blob_name, r.job_id, r.blake3_hex) for r in j.iter_committed_by_blob(ids)]
        assert got == [("a.dcm", ids[1], "bb" * 32), ("b.dcm", ids[2], "cc" * 32)]
        assert [r.job_id for r in j.iter_committed_by_blob(ids[:1])] == [ids[0], ids[0]]
        assert [r.blob_name for r in j.iter_committed_by_blob(ids, name_prefix="b")] == ["b.dcm"]
        assert j.job_has_blob(ids[2], "a.dcm") and not j.job_has_blob(ids[2], "z.dcm")
