"""`make demo`: a bulk copy of a generated DICOM tree into a local Azurite, then proof.

1. starts Azurite (npm) on a free loopback port;
2. writes a DICOM-like tree (pyengine.bench.dicom_tree: patients / studies / series, a few
   hundred MB);
3. runs `pyengine copy --encrypt` into it, with its progress bar;
4. downloads every blob with the official azure-storage-blob client (client-side encryption v2),
   decrypts it and compares its BLAKE3 with the source file's;
5. `pyengine verify --deep`, then `pyengine restore` of the whole tree into a new directory,
   compared file by file (BLAKE3 and mtime) with the source; prints a verdict;
6. copies a two-tenant DICOM tree under a migration policy and prints its study table
   (scripts/demo_policy.py); stops Azurite.

Environment: PYENGINE_DEMO_MB (tree size, default 300), PYENGINE_DEMO_DIR (work dir, default .demo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from pyengine import _core
from pyengine.bench.dicom_tree import make_tree
from pyengine.crypto import (
    KEYED_DIGEST_METADATA,
    LocalKeyWrapper,
    content_key_from_metadata,
    keyed_digest_hex,
)
from pyengine.targets.azurite import Azurite

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package
from demo_policy import run_policy_demo

REPO = Path(__file__).resolve().parent.parent
CONTAINER = "pacs-archive"
PREFIX = "site-a/2026"


def file_blake3(path: Path) -> bytes:
    return _core.blake3(path.read_bytes())


def main() -> int:
    work = Path(os.environ.get("PYENGINE_DEMO_DIR", REPO / ".demo")).resolve()
    total_mb = int(os.environ.get("PYENGINE_DEMO_MB", "300"))
    shutil.rmtree(work, ignore_errors=True)
    src = work / "archive"
    work.mkdir(parents=True)

    print(f"== generating a DICOM tree of ~{total_mb} MB in {src}")
    t0 = time.monotonic()
    totals = make_tree(str(src), total_mb * 1_000_000, 1)
    print(
        f"   {totals.files} files, {totals.size_bytes / 1e6:.0f} MB, {totals.patients} patients, "
        f"{totals.studies} studies, {totals.series} series ({time.monotonic() - t0:.1f} s)"
    )

    kek_path = work / "kek.bin"
    kek_bytes = os.urandom(32)
    kek_path.write_bytes(kek_bytes)
    kek_path.chmod(0o600)

    with Azurite(work / "azurite") as azurite:
        dest = f"{azurite.account_url}/{CONTAINER}/{PREFIX}"
        print(f"== Azurite on 127.0.0.1:{azurite.port}; copying to {dest} (encrypted, CSE v2)")
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
        cmd = [
            str(Path(sys.executable).parent / "pyengine"), "copy", str(src), dest,
            "--encrypt", "--kek-file", str(kek_path), "--create-container",
            "--journal", str(work / "jobs.sqlite"), "--tag", "project=demo",
        ]  # fmt: skip
        rc = subprocess.call(cmd, env=env)
        if rc != 0:
            print(f"verdict: FAILED (pyengine copy exited {rc})")
            return 1

        print("== verifying: download with the official SDK, decrypt (CSE v2), compare BLAKE3")
        kek = LocalKeyWrapper(kek_bytes)
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        container = service.get_container_client(CONTAINER)
        sources = {p.relative_to(src).as_posix(): p for p in src.rglob("*") if p.is_file()}
        ok = mismatched = 0
        missing = set(sources)
        for props in container.list_blobs(name_starts_with=PREFIX + "/", include=["metadata"]):
            rel = props.name[len(PREFIX) + 1 :]
            blob = container.get_blob_client(props.name)
            blob.require_encryption = True
            blob.key_encryption_key = kek
            blob.encryption_version = "2.0"
            plain = blob.download_blob().readall()
            digest = _core.blake3(plain)
            path = sources.get(rel)
            # an encrypted blob stores its digest keyed by its content key, never in clear
            cek = content_key_from_metadata(props.metadata["encryptiondata"], kek)
            recorded = props.metadata.get(KEYED_DIGEST_METADATA)
            keyed = keyed_digest_hex(cek, digest.hex()) if cek is not None else None
            if path is not None and digest == file_blake3(path) and recorded == keyed:
                ok += 1
            else:
                mismatched += 1
                print(f"   mismatch: {rel}")
            missing.discard(rel)
        for rel in sorted(missing)[:10]:
            print(f"   missing: {rel}")
        print("== pyengine verify --deep: the journal against the destination, re-hashed")
        journal = str(work / "jobs.sqlite")
        verify = [cmd[0], "verify", dest, "--deep", "--kek-file", str(kek_path)]
        verify_rc = subprocess.call([*verify, "--journal", journal], env=env)
        print("== pyengine restore: the tree back from the container, compared with the source")
        restored = work / "restored"
        restore = [cmd[0], "restore", dest + "/", str(restored), "--kek-file", str(kek_path)]
        restore_rc = subprocess.call([*restore, "--journal", journal], env=env)
        same = [
            rel
            for rel, path in sources.items()
            if (restored / rel).is_file()
            and file_blake3(restored / rel) == file_blake3(path)
            and (restored / rel).stat().st_mtime_ns == path.stat().st_mtime_ns
        ]
        extra = [
            p for p in restored.rglob("*") if p.is_file() and p.relative_to(restored).as_posix()
            not in sources
        ]  # fmt: skip
        sound = ok == len(sources) and not mismatched and not missing and verify_rc == 0
        sound = sound and restore_rc == 0 and len(same) == len(sources) and not extra
        verdict = "PASS" if sound else "FAILED"
        print(
            f"verdict: {verdict}: {ok}/{len(sources)} files decrypted by the official SDK with "
            f"BLAKE3 equal to the source; {mismatched} mismatched, {len(missing)} missing; "
            f"restored {len(same)}/{len(sources)} identical (bytes and mtime), {len(extra)} extra"
        )
        policy_ok = run_policy_demo(azurite, work, cmd[0], journal)
        return 0 if verdict == "PASS" and policy_ok else 1


if __name__ == "__main__":
    sys.exit(main())
