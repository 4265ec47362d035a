"""`make demo-databox`: the two-phase migration (README "Two-phase migration") against a local
Azurite, every step a `pyengine` command:

1. phase 1: `pyengine copy` of a generated DICOM tree onto a Data Box share (a temp directory laid
   out ``<account>_BlockBlob/<container>``, as the mounted device is), tagged;
2. "ship": each file of the share uploaded as a plain block blob with the official SDK, bytes
   only, as the Data Box service does in the datacenter;
3. `pyengine finalize JOB --dest URL`: every blob checked (and a 50 % sample re-hashed), its
   metadata, tags and content type stamped by control-plane calls;
4. phase 2: `pyengine copy` delta against the account sends 0 bytes; one file changed, the next
   delta sends exactly that file;
5. cutover: `pyengine finalize --deep` again (re-hashes the device's blobs, stamps nothing, the
   replaced one is superseded) and `pyengine verify URL --deep` of the whole destination (the
   device's blobs, known since finalize, and the delta's).

Prints a PASS or FAILED line per step; exit 0 when all pass. Environment: PYENGINE_DEMO_MB (tree
size, default 40), PYENGINE_DEMO_DIR (work dir, default .demo/databox).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from pyengine.bench.dicom_tree import make_tree
from pyengine.targets.azurite import Azurite

REPO = Path(__file__).resolve().parent.parent
CONTAINER = "pacs-archive"


def pyengine(*args: str, env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    """Run one command (shown first); (exit code, the JSON objects it printed)."""
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ pyengine {shown}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pyengine", *args], env=env, capture_output=True, text=True
    )
    objects = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            objects.append(json.loads(line))
    if done.returncode != 0:
        print(done.stderr.strip())
        print("\n".join(line for line in done.stdout.splitlines() if not line.startswith("{")))
    return done.returncode, objects


def summary(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return [o for o in objects if o.get("kind") == "summary" or "files_copied" in o][-1]


def main() -> int:
    work = Path(os.environ.get("PYENGINE_DEMO_DIR", REPO / ".demo" / "databox")).resolve()
    total_mb = int(os.environ.get("PYENGINE_DEMO_MB", "40"))
    shutil.rmtree(work, ignore_errors=True)
    src, journal = work / "archive", str(work / "jobs.sqlite")
    share = work / "databox" / "devstoreaccount1_BlockBlob" / CONTAINER
    share.mkdir(parents=True)
    totals = make_tree(str(src), total_mb * 1_000_000, 1)
    print(f"== source: {totals.files} DICOM files, {totals.size_bytes / 1e6:.0f} MB in {src}")
    results: list[tuple[str, bool]] = []

    def check(what: str, ok: bool) -> None:
        results.append((what, ok))
        print(f"{'PASS' if ok else 'FAILED'}: {what}", flush=True)

    with Azurite(work / "azurite") as azurite:
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
        dest = f"{azurite.account_url}/{CONTAINER}"
        print("== phase 1: copy onto the Data Box share (metadata and tags wait in the journal)")
        rc, out = pyengine(
            "copy", str(src), str(share), "--journal", journal, "--tag", "project=demo", "--json",
            env=env,
        )  # fmt: skip
        phase1 = summary(out) if out else {}
        job_id = phase1.get("job_id", "")
        check(f"phase 1 copied {phase1.get('files_copied')} files to the share", rc == 0)

        print("== ship: the Data Box service uploads each file as a block blob, bytes only")
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        container = service.create_container(CONTAINER)
        shipped = 0
        for path in sorted(p for p in share.rglob("*") if p.is_file()):
            with path.open("rb") as f:
                container.upload_blob(path.relative_to(share).as_posix(), f)
            shipped += 1
        check(f"{shipped} blobs in the account, with no metadata", shipped == totals.files)

        print("== finalize: check every blob, re-hash a 50 % sample, stamp metadata and tags")
        rc, out = pyengine(
            "finalize", job_id, "--dest", dest, "--sample", "50", "--journal", journal, "--json",
            env=env,
        )  # fmt: skip
        fin = out[-1] if out else {}
        check(
            f"finalize: {fin.get('files_checked')} checked, {fin.get('files_stamped')} stamped, "
            f"{fin.get('files_deep_checked')} re-hashed, {fin.get('files_missing')} missing",
            rc == 0 and fin.get("files_stamped") == totals.files,
        )
        first = next(iter(container.list_blobs(include=["metadata", "tags"])))
        check(
            f"{first.name}: tags {first.tags}, metadata pyengineblake3 present",
            first.tags == {"project": "demo"} and "pyengineblake3" in first.metadata,
        )

        print("== phase 2: the online delta while the archive is live")
        rc, out = pyengine("copy", str(src), dest, "--journal", journal, "--json", env=env)
        delta = summary(out) if out else {}
        check(
            f"delta sends {delta.get('bytes_copied')} bytes ({delta.get('files_skipped')} files "
            "up to date)",
            rc == 0 and delta.get("bytes_copied") == 0 and delta.get("files_copied") == 0,
        )
        changed = sorted(p for p in src.rglob("*") if p.is_file())[0]
        changed.write_bytes(changed.read_bytes() + b"\0" * 16)
        rc, out = pyengine("copy", str(src), dest, "--journal", journal, "--json", env=env)
        delta = summary(out) if out else {}
        check(
            f"after changing {changed.relative_to(src)}: the delta sends "
            f"{delta.get('files_copied')} file ({delta.get('bytes_copied')} bytes)",
            rc == 0 and delta.get("files_copied") == 1,
        )
        print("== cutover: re-hash what the device brought, verify what the deltas sent")
        rc, out = pyengine(
            "finalize", job_id, "--dest", dest, "--deep", "--journal", journal, "--json", env=env
        )
        fin = out[-1] if out else {}
        check(
            f"finalize --deep again: {fin.get('files_deep_checked')} re-hashed, "
            f"{fin.get('files_stamped')} stamped, {fin.get('files_superseded')} superseded by "
            "the delta",
            rc == 0 and fin.get("files_stamped") == 0 and fin.get("files_superseded") == 1,
        )
        rc, _ = pyengine("verify", dest, "--deep", "--journal", journal, env=env)
        check("verify --deep of the destination: the device's blobs and the delta's", rc == 0)
    passed = all(ok for _, ok in results)
    print(f"verdict: {'PASS' if passed else 'FAILED'}: two-phase migration demo")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
