"""A copy under a migration policy: each file goes to its tenant's destination, under that
tenant's credential and key-encryption key, with the tier, index tags and immutability its
DICOM header and the policy give it (`pyengine copy SRC --policy FILE`, README "Library").

How it is built on the plain job (job.py):
- one *lane* per tenant: a JobContext, Sender and Decider of its own, whose options carry the
  tenant's KEK and encryption mode. So a tenant's key only ever wraps content keys of its own
  files, and two tenants may not share a key (refused before anything starts);
- the lanes share the one native pipeline (completions are routed by file id: send.Routing),
  the journal, the task owner and the audit manifest. Each tenant has its own journal job row
  (dest = its redacted URL), so `jobs`, `verify JOB` and resume work per tenant; the rows of
  one policy copy carry the same ``policy_run`` (the first row's id) in their options, which
  `pyengine studies JOB` follows to gather the run;
- routing is by path rules, before a byte is read: the tenant decides the key that encrypts
  the bytes. A file no path rule takes is routed by its header (policy_route.py: read once in
  clear, one chunk, for tenants without a key only);
- placement (retention, tier, tags, immutability) is decided at commit from the file's first
  HEAD_BYTES that the pipeline read anyway (``task.done.head``): never a second open. A
  malformed DICOM file fails with the policy's one-line reason (no patient data);
- each placed file gets a study-manifest row (state/studies.py) in the same journal batch as
  its commit. A file found already committed or up to date without a row (a kill between the
  commit request and the journal's group commit, or a re-run that skips it) has its head read
  again through the pipeline (a one-chunk read), so the study counts stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from email.utils import format_datetime
from typing import Any

from pyengine.engine.context import EventCallback, FileTask, JobContext
from pyengine.engine.decide import check_same_encryption
from pyengine.engine.job import _Job
from pyengine.engine.policy_route import check_attribute_routing, route_by_head, routed_by_path
from pyengine.engine.report import CopyReport
from pyengine.engine.scan import SourceFile, display_path
from pyengine.engine.send import HEAD_BYTES, Routing
from pyengine.errors import ConfigError, PyEngineError, SourceError
from pyengine.options import CopyOptions
from pyengine.policy import Placement, Policy, PolicyError, Tenant
from pyengine.state import studies
from pyengine.state.joblock import JobLock, job_lock_path
from pyengine.state.journal import FileRecord, Journal, default_journal_path
from pyengine.state.manifest import ManifestWriter, default_manifest_path
from pyengine.targets.azure_blob import BlobStore, parse_destination, redact, resolve_credential

log = logging.getLogger("pyengine")


def immutability_headers(p: Placement) -> dict[str, str]:
    """Version-level immutability on the commit request (Put Blob / Put Block List)."""
    headers: dict[str, str] = {}
    if p.immutable_until is not None:
        # RFC 1123, as every x-ms date header; "Unlocked" so the policy can still be shortened
        # or removed by an administrator (a locked one never can)
        headers["x-ms-immutability-policy-until-date"] = format_datetime(
            p.immutable_until, usegmt=True
        )
        headers["x-ms-immutability-policy-mode"] = "Unlocked"
    if p.legal_hold:
        headers["x-ms-legal-hold"] = "true"
    return headers


def lane_options(options: CopyOptions, tenant: Tenant) -> CopyOptions:
    """A tenant's options: its key and mode; tier and tags come from the placement."""
    kek = None
    if tenant.kek_id is not None:
        raise ConfigError(
            f"tenants.{tenant.name}.kek_id", "a key resolved by id is not supported by copy yet"
        )
    if tenant.kek_file is not None:
        from pyengine.crypto import load_kek_file

        kek = load_kek_file(tenant.kek_file)
    cs = options.connection_string
    if tenant.connection_string_env is not None:
        cs = os.environ.get(tenant.connection_string_env)
        if not cs:  # the name only: the value is a secret
            raise ConfigError(
                f"tenants.{tenant.name}.connection_string_env",
                f"environment variable {tenant.connection_string_env} is not set",
            )
    return dataclasses.replace(
        options, kek=kek, encrypt=tenant.encrypt, tier=None, tags=(), connection_string=cs
    )


def check_policy_options(policy: Policy, options: CopyOptions) -> None:
    """What a policy copy refuses before it starts (exit 2, one line naming the conflict)."""
    check_attribute_routing(policy)
    for flag, given in (
        ("--encrypt", options.encrypt),
        ("--kek-file", options.kek is not None),
        ("--tier", options.tier is not None),
        ("--tag", bool(options.tags)),
        ("--delete-destination", options.delete_destination),
        ("--dry-run", options.dry_run),
        ("--manifest", options.manifest_path is not None),
    ):
        if given:
            raise ConfigError(flag, "not with --policy (the policy decides it per tenant)")


class _PolicyContext(JobContext):
    """A tenant lane's context: its manifest lines name the tenant and study, and a file
    counted done without a study row gets one (see the module doc)."""

    def __init__(self, *args: Any, tenant: str, run: PolicyJob, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tenant = tenant
        self.run = run
        #: study UID (None: not DICOM) of each file placed in this run, by path
        self.placed: dict[str, str | None] = {}

    def manifest_extra(self, rel_path: str) -> dict[str, Any]:
        return {"tenant": self.tenant, "study_uid": self.placed.get(rel_path)}

    async def outcome(self, rel_path: str, status: str, **kw: Any) -> None:
        record: FileRecord | None = kw.get("record")
        if status in ("copied", "skipped") and record is not None and rel_path not in self.placed:
            try:
                await self.run.recover_study(self, record)
            except (PyEngineError, OSError) as e:
                # the file itself is done; only its study row is missing (counted as not found)
                why = e.reason if isinstance(e, PyEngineError) else e.strerror or type(e).__name__
                log.warning("%s: study not recorded: %s", display_path(rel_path), why)
        await super().outcome(rel_path, status, **kw)


class PolicyJob(_Job):
    """The scan, the window of files and the pipeline of a plain job; each file handed to its
    tenant's lane."""

    def __init__(
        self, source: str, policy: Policy, options: CopyOptions, on_event: EventCallback | None
    ) -> None:
        check_policy_options(policy, options)
        self.policy = policy
        self.routing = Routing()
        self.today = datetime.date.today()  # one copy date for the whole run
        self.lanes: dict[str, _Job] = {}
        #: every job of this policy run, earlier runs' included (set when the jobs are open)
        self.run_job_ids: list[str] = []
        kids: dict[str, str] = {}
        dests: dict[str, str] = {}
        for tenant in policy.tenants:
            opts = lane_options(options, tenant)
            dest = parse_destination(tenant.dest)
            if opts.kek is not None:
                other = kids.setdefault(opts.kek.get_kid(), tenant.name)
                if other != tenant.name:
                    raise ConfigError(
                        f"tenants.{tenant.name}.kek_file",
                        f"the same key as tenant {other}: no tenant's key may wrap another's",
                    )
            other = dests.setdefault(dest.redacted(), tenant.name)
            if other != tenant.name:
                raise ConfigError(f"tenants.{tenant.name}.dest", f"the same as tenant {other}")
            ctx = _PolicyContext(
                source=source, dest=dest, options=opts, on_event=on_event,
                tenant=tenant.name, run=self,
            )  # fmt: skip
            lane = _Job(source, dest, opts, on_event, ctx=ctx, routing=self.routing)
            lane.sender.place = lambda task, ctx=ctx: self.place(ctx, task)
            self.lanes[tenant.name] = lane
        first = next(iter(self.lanes.values())).ctx.dest
        # the run's own context counts what no lane takes: scan problems, unrouted files
        super().__init__(source, first, options, on_event, routing=self.routing)

    @property
    def contexts(self) -> list[JobContext]:
        return [self.ctx, *(lane.ctx for lane in self.lanes.values())]

    def attach(self, pipeline: Any, owner: Any) -> None:
        super().attach(pipeline, owner)
        for lane in self.lanes.values():
            lane.attach(pipeline, owner)

    # --- placement ---------------------------------------------------------------------------

    def _placement(
        self, ctx: _PolicyContext, rel_path: str, head: bytes
    ) -> tuple[Placement, studies.StudyFile]:
        """The file's placement and its study row; PolicyError (naming the file) when the
        policy cannot place it (a malformed DICOM header)."""
        try:
            info = self.policy.read_dicom_head(head)
        except PolicyError as e:  # its subject is "DICOM header": name the file
            raise PolicyError(rel_path, e.reason) from None
        p = self.policy.place(rel_path, info, today=self.today)
        if p.tenant.name != ctx.tenant:  # path rules only: cannot happen, but never misfile
            raise PolicyError(rel_path, f"routed to {ctx.tenant} but placed in {p.tenant.name}")
        row = studies.StudyFile(
            tenant=ctx.tenant,
            study_uid=p.study_uid,
            series_uid=info.series_uid if info else None,
            sop_uid=info.sop_uid if info else None,
            modality=p.modality,
            retain_until=p.retain_until,
            tier=p.tier,
            flag=p.retention_flag,
        )
        return p, row

    def place(
        self, ctx: _PolicyContext, task: FileTask
    ) -> tuple[str | None, dict[str, str] | None, dict[str, str]]:
        """Sender.place: the file's tier, tags and commit headers; its study row joins the
        journal batch that its commit state goes in."""
        rel_path = task.src.rel_path
        p, row = self._placement(ctx, rel_path, task.done.head or b"")
        assert ctx.journal is not None
        studies.record(ctx.journal, ctx.report.job_id, rel_path, task.record.file_id, row)
        ctx.placed[rel_path] = p.study_uid
        return p.tier, dict(p.tags) or None, immutability_headers(p)

    async def recover_study(self, ctx: _PolicyContext, record: FileRecord) -> None:
        """A file counted done with no study row in this job: read its head (one chunk)."""
        journal = ctx.journal
        assert journal is not None
        if studies.has_row(journal, self.run_job_ids, ctx.tenant, record.rel_path):
            return
        src = SourceFile(
            path=os.path.join(ctx.source, record.rel_path) if record.rel_path else ctx.source,
            rel_path=record.rel_path,
            size_bytes=record.size_bytes,
            mtime_ns=record.mtime_ns,
            inode=record.inode,
            device=record.device,
            ctime_ns=record.ctime_ns or 0,
        )
        task = FileTask(
            src=src, record=record, chunk_bytes=0, single_put=False,
            content_key=None, encryptiondata=None, hash_only=True,
        )  # fmt: skip
        from pyengine import _core

        sender = self.lanes[ctx.tenant].sender
        await sender.read_aside(
            task,
            size_bytes=src.size_bytes,
            chunk_bytes=HEAD_BYTES,
            length_bytes=HEAD_BYTES if src.size_bytes > HEAD_BYTES else -1,
            stages=_core.STAGE_READ,
            head_bytes=HEAD_BYTES,
        )
        if task.failure is not None:
            raise SourceError(record.rel_path, task.failure)
        try:
            p, row = self._placement(ctx, record.rel_path, task.done.head or b"")
        except PolicyError:
            return  # it was committed, so it was placed then: nothing to count now
        studies.record(journal, record.job_id, record.rel_path, record.file_id, row)
        ctx.placed[record.rel_path] = p.study_uid

    # --- the job -----------------------------------------------------------------------------

    async def copy_file(self, src: SourceFile) -> None:
        try:
            tenant = routed_by_path(self.policy, src.rel_path)
            if tenant is None:  # no path rule takes it: its header decides (policy_route.py)
                await route_by_head(self, src)
                return
        except PolicyError as e:
            await self.ctx.outcome(
                src.rel_path, "failed", size_bytes=src.size_bytes, reason=e.reason
            )
            return
        await self.lanes[tenant].copy_file(src)

    async def run(self) -> CopyReport:
        try:
            return await self._run_policy()
        finally:
            self.mirror.close()
            for lane in self.lanes.values():
                lane.mirror.close()

    async def _run_policy(self) -> CopyReport:
        ctx, opts = self.ctx, self.ctx.options
        start = time.monotonic()
        if not os.path.exists(ctx.source):
            raise ConfigError(ctx.source, "no such file or directory")
        credentials = {
            name: resolve_credential(lane.ctx.dest, lane.ctx.options.connection_string)
            for name, lane in self.lanes.items()
        }
        journal_path = opts.journal_path or default_journal_path()
        with contextlib.ExitStack() as locks:
            for lane in self.lanes.values():
                d = lane.ctx.dest.redacted()
                locks.enter_context(
                    JobLock(
                        job_lock_path(journal_path, ctx.source, d),
                        subject=f"{display_path(ctx.source)} -> {d}",
                    )
                )
            async with contextlib.AsyncExitStack() as stores:
                for name, lane in self.lanes.items():
                    lo = lane.ctx.options
                    store = await stores.enter_async_context(
                        BlobStore(
                            lane.ctx.dest,
                            credentials[name],
                            retry=lo.retry,
                            max_connections=lo.max_concurrency,
                            max_requests_per_s=lo.max_requests_per_s,
                            cap_bytes_per_s=lo.cap_mbps * 1e6 / 8 if lo.cap_mbps else None,
                        )
                    )
                    lane.ctx.store = store
                    await store.ensure_container(create=opts.create_container)
                with Journal.open(opts.journal_path) as journal:
                    await self._run_journaled_policy(journal)
                for lane in self.lanes.values():
                    s, r = lane.ctx.store.stats, lane.ctx.report  # type: ignore[union-attr]
                    r.retries, r.throttled_s, r.stalls = s.retries, s.throttled_s, s.stalls
                    r.concurrency_min, r.concurrency_max = s.concurrency_min, s.concurrency_max
        report = merge_reports(ctx.report, [lane.ctx.report for lane in self.lanes.values()])
        report.elapsed_s = time.monotonic() - start
        ctx.report = report
        ctx.emit("job_finished", extra=report.to_json())
        return report

    async def _open_jobs(self, journal: Journal) -> str:
        """Resume each tenant's unfinished job or start one; returns the run id."""
        ctx = self.ctx
        studies.ensure_table(journal)
        found = {
            name: journal.find_unfinished_job(ctx.source, lane.ctx.dest.redacted())
            for name, lane in self.lanes.items()
        }
        jobs = {j.job_id: j for j in journal.list_jobs()}
        run_id: str | None = None
        for job_id in found.values():
            if job_id is not None and run_id is None:
                run_id = studies.run_of(jobs[job_id])
        if run_id is None:  # a re-run continues the run of the last copy (studies follow)
            dests = [lane.ctx.dest.redacted() for lane in self.lanes.values()]
            run_id = studies.latest_run(journal, ctx.source, dests)
        for name, lane in self.lanes.items():
            lctx, job_id = lane.ctx, found[name]
            lctx.journal = journal
            lctx.resumed = job_id is not None
            if job_id is not None:
                check_same_encryption(journal.get_job(job_id), lctx.options)
            elif lctx.options.check != "none":
                listing = lctx.store.list_blobs(lctx.dest.prefix, metadata=False, page_size=1)  # type: ignore[union-attr]
                try:
                    lctx.dest_was_empty = await anext(listing, None) is None
                finally:
                    await listing.aclose()
            if job_id is None:
                options = {
                    **lane._job_options(),
                    "tenant": name,
                    "policy_run": run_id,
                    "policy": os.path.abspath(self.policy.path) if self.policy.path else None,
                }
                job_id = await asyncio.to_thread(
                    journal.create_job, ctx.source, lctx.dest.redacted(), options
                )
                run_id = run_id or job_id
            lctx.report.job_id = job_id
        assert run_id is not None
        self.run_job_ids = [j.job_id for j in studies.run_jobs(journal, run_id)]
        return run_id

    async def _run_journaled_policy(self, journal: Journal) -> None:
        ctx = self.ctx
        ctx.journal = journal
        run_id = await self._open_jobs(journal)
        ctx.report.job_id = run_id
        manifest_path = default_manifest_path(run_id, journal.path)
        ctx.report.manifest_path = str(manifest_path)
        ctx.emit(
            "job_started",
            extra={
                "job_id": run_id,
                "resumed": any(lane.ctx.resumed for lane in self.lanes.values()),
                "manifest": str(manifest_path),
                "tenants": {n: lane.ctx.report.job_id for n, lane in self.lanes.items()},
            },
        )
        journal.start_writer()
        # one audit manifest for the run, appended to by a resume or a re-run of the same run
        async with ManifestWriter(manifest_path, redact=redact) as manifest:
            for c in self.contexts:
                c.manifest = manifest
            await self.copy_all()
        await asyncio.to_thread(journal.stop_writer)
        failed = {n: lane.ctx.report.files_failed > 0 for n, lane in self.lanes.items()}
        for name, lane in self.lanes.items():
            status = "failed" if failed[name] else "completed"
            await asyncio.to_thread(journal.finish_job, lane.ctx.report.job_id, status)


def merge_reports(run: CopyReport, lanes: list[CopyReport]) -> CopyReport:
    """One report for the run: counts summed, lists joined, the run's id."""
    out = dataclasses.replace(run, failures=list(run.failures))
    for r in lanes:
        for f in dataclasses.fields(CopyReport):
            a, b = getattr(out, f.name), getattr(r, f.name)
            if f.name in ("job_id", "manifest_path", "dry_run", "elapsed_s", "deletion_refused"):
                continue
            if f.name == "concurrency_min":
                setattr(out, f.name, min(a, b) if a else b)
            elif f.name == "concurrency_max":
                setattr(out, f.name, max(a, b))
            elif isinstance(a, list):
                a.extend(b)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                setattr(out, f.name, a + b)
    return out


async def copy_with_policy(
    source: str, policy: Policy, options: CopyOptions, on_event: EventCallback | None = None
) -> CopyReport:
    """pyengine.copy(source, policy=...): see the module doc."""
    return await PolicyJob(source, policy, options, on_event).run()
