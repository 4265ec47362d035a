"""Routing by DICOM attributes (``[[tenants.NAME.match]]`` rules on header values) for a policy
copy: the file's tenant is known only once its header has been read.

The rule that keeps it sound: whether a file is encrypted, and under which key, is fixed when it
is submitted to the native pipeline, before its header is read. So:
- a file that some tenant's path rule takes is routed by path, as always, and its placement at
  commit checks that no attribute rule makes it a second tenant's (policy_job.py);
- a file no path rule takes is read once, in clear, as a single chunk held in memory (a Put
  Blob file: at most ``single_put_max_bytes``), its header decides the tenant, and the held
  chunk is committed by that tenant's lane. Hence the tenants such a file can reach (those with
  attribute rules, and the fallback) must not encrypt: checked when the copy starts
  (:func:`check_attribute_routing`), one line otherwise. A larger file fails with one line
  naming the limit (give it a path rule). Nothing is opened twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyengine.engine.context import FileTask
from pyengine.engine.plan import blob_name, read_plan
from pyengine.engine.scan import SourceFile
from pyengine.engine.send import HEAD_BYTES
from pyengine.errors import ConfigError, PyEngineError, SourceError
from pyengine.options import MiB
from pyengine.policy import Policy, PolicyError

if TYPE_CHECKING:
    from pyengine.engine.policy_job import PolicyJob

ATTRIBUTE_ROUTING = "routing that needs the tenant before encryption must use path rules"


def check_attribute_routing(policy: Policy) -> None:
    """Refuse (exit 2) a policy whose header-routed files could reach an encrypting tenant."""
    if not policy.needs_dicom_for_tenant:
        return
    for t in policy.tenants:
        if t.uses_dicom and t.encrypt:
            raise ConfigError(f"tenants.{t.name}.match", ATTRIBUTE_ROUTING)
    if policy.fallback is not None and policy.tenant(policy.fallback).encrypt:
        raise ConfigError(
            "policy.fallback", f"{ATTRIBUTE_ROUTING} (the fallback takes header-routed files)"
        )


def routed_by_path(policy: Policy, rel_path: str) -> str | None:
    """The tenant a path rule gives (None: the header decides). Raises PolicyError for a file
    of no tenant at all in a policy without attribute rules, or of two tenants by path."""
    if not policy.needs_dicom_for_tenant:
        return policy.tenant_for(rel_path, None).name
    matched = [t for t in policy.tenants if t.matches(rel_path, None)]
    if len(matched) > 1:
        return policy.tenant_for(rel_path, None).name  # raises, naming both
    return matched[0].name if matched else None


async def route_by_head(job: PolicyJob, src: SourceFile) -> None:
    """Reads ``src`` once (one chunk, in clear), routes it by its header and commits it through
    its tenant's lane; every outcome counted once."""
    ctx, opts = job.ctx, job.ctx.options

    async def fail(reason: str, lane_ctx=None, **kw) -> None:
        await (lane_ctx or ctx).outcome(
            src.rel_path, "failed", size_bytes=src.size_bytes, reason=reason, **kw
        )

    try:
        chunk_bytes, single_put = read_plan(
            src.size_bytes,
            single_put_max_bytes=opts.single_put_max_bytes,
            block_bytes=opts.block_bytes,
            encrypt=False,
            path=src.rel_path,
            # the destination's limits, as the lanes plan (one_file.py)
            max_block_bytes=job.profile.max_block_bytes,
            max_blob_bytes=job.profile.max_blob_bytes,
        )
    except SourceError as e:
        await fail(e.reason)
        return
    if not single_put:
        limit_mib = opts.single_put_max_bytes // MiB
        await fail(f"routed by DICOM attributes: at most {limit_mib} MiB (give it a path rule)")
        return
    task = FileTask(
        src=src, record=None, chunk_bytes=chunk_bytes, single_put=True,  # type: ignore[arg-type]
        content_key=None, encryptiondata=None,
    )  # fmt: skip
    try:
        await job.sender.read_aside(
            task, size_bytes=src.size_bytes, chunk_bytes=chunk_bytes, head_bytes=HEAD_BYTES
        )
        await _commit_routed(job, src, task, fail)
    finally:
        if task.held is not None:
            task.held.release()
            task.held = None


async def _commit_routed(job: PolicyJob, src: SourceFile, task: FileTask, fail) -> None:
    if task.failure is not None:
        await fail(task.failure)
        return
    try:
        info = job.policy.read_dicom_head(task.done.head or b"")
        tenant = job.policy.tenant_for(src.rel_path, info)
    except PolicyError as e:
        await fail(e.reason)
        return
    lane = job.lanes[tenant.name]
    lctx = lane.ctx
    assert lctx.journal is not None and not lctx.options.encrypt  # check_attribute_routing
    done = task.done
    read = (done.file_size_bytes, done.mtime_ns, done.ctime_ns, done.inode, done.device)
    if read != (src.size_bytes, src.mtime_ns, src.ctime_ns, src.inode, src.device):
        # changed since the scan: its lane reads it as it is now (the header routed it there)
        if task.held is not None:
            task.held.release()
            task.held = None
        await lane.copy_file(src)
        return
    name = blob_name(lctx.dest.prefix, src.rel_path)
    record = lctx.journal.begin_file(
        lctx.report.job_id, src.rel_path, size_bytes=src.size_bytes, mtime_ns=src.mtime_ns,
        ctime_ns=src.ctime_ns, inode=src.inode, device=src.device, blob_name=name,
        block_bytes=task.chunk_bytes, encrypted=False,
    )  # fmt: skip
    common = {"size_bytes": src.size_bytes, "mtime_ns": src.mtime_ns, "blob": name}
    if record.state in ("committed", "skipped"):  # done by an earlier run of this job
        status = "copied" if record.state == "committed" else "skipped"
        await lctx.outcome(
            src.rel_path, status, etag=record.etag, blake3_hex=record.blake3_hex,
            reason=record.error, record=record, **common,
        )  # fmt: skip
        return
    try:
        verdict = await lane.decide.already_there(src, record)
        if verdict is not None:
            status, why, props, plain_hex = verdict
            await lctx.outcome(
                src.rel_path, status, reason=why if status == "skipped" else None,
                etag=props.etag, blake3_hex=plain_hex, record=record, **common,
            )  # fmt: skip
            return
        task.record = record
        lctx.journal.mark_uploading(record.file_id)
        lctx.emit("file_started", path=src.rel_path, blob=name, bytes=src.size_bytes)
        etag = await lane.sender.commit(task)
    except PyEngineError as e:
        await fail(e.reason, lctx, record=record, **common)
        return
    await lctx.outcome(
        src.rel_path, "copied", etag=etag, blake3_hex=done.blake3.hex(), record=record, **common
    )
