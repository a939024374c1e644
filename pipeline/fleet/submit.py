"""Submit a job: expand it lazily into the queue, in pipelined chunks, idempotently.

The job's variants stream out of ``expand.variants`` (never a list) and go into the job's
per-checkpoint streams ``chunk`` at a time, ``depth`` chunks per round trip. Each chunk is one
script (``redisq.ENQUEUE``) that skips ids already queued or done and re-adds failed ones, so
submitting again adds only what is missing or failed, and two submitters racing cannot enqueue a
variant twice. Variants whose record the store already holds (a previous run, or a queue that
was lost) are marked done without being enqueued. img2img input files are uploaded once each
(``inputs/<sha256>``) so agents on other machines can send them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import expand
from pipeline.fleet import local
from pipeline.fleet.keys import job_id
from pipeline.fleet.objstore import ObjectStore, open_store
from pipeline.fleet.redisq import Queue
from pipeline.fleet.urls import StoreURL
from pipeline.fleet.wire import (JOB_OBJECT, RECORDS_PREFIX, JobMeta, entry_fields, input_key,
                                 input_refs, record_id)
from pipeline.job.schema import JobSpec
from pipeline.output.layout import now_iso

log = logging.getLogger(__name__)

CHUNK = 256
DEPTH = 8


@dataclass(frozen=True, slots=True)
class SubmitSummary:
    job: JobMeta
    added: int  # newly enqueued
    requeued: int  # had failed for good before; enqueued again
    already: int  # queued or done already: left alone
    found_stored: int  # their record is in the store already: marked done
    repeated: int  # the job expands to the same variant more than once ({a|a}): counted once
    inputs_uploaded: int
    note: str | None = None  # e.g. "created bucket ..."

    @property
    def enqueued(self) -> int:
        return self.added + self.requeued


async def submit(queue: Queue, spec: JobSpec, store_url: StoreURL, *,
                 lease_s: float = 300.0, max_deliveries: int = 5, plan: expand.Plan | None = None,
                 chunk: int = CHUNK, depth: int = DEPTH, skip_stored: bool = True,
                 on_progress: Callable[[int], None] | None = None) -> SubmitSummary:
    plan = plan or expand.build_plan(spec)
    store = open_store(store_url)
    try:
        note = await store.check(create=True)
        meta = await _meta(queue, spec, plan, store_url, lease_s, max_deliveries)
        await store.put(JOB_OBJECT, meta.to_json())
        await queue.put_job(meta)
        stored = await _stored_ids(store) if skip_stored else set()
        return await _enqueue_all(queue, store, meta, plan, stored, chunk, depth, note,
                                  on_progress)
    finally:
        await store.close()


async def _meta(queue: Queue, spec: JobSpec, plan: expand.Plan, store_url: StoreURL,
                lease_s: float, max_deliveries: int) -> JobMeta:
    public = store_url.public()
    ident = job_id(public)
    previous = await queue.job(ident)
    # Streams are numbered by checkpoint: keep the earlier submission's numbering, add new ones.
    checkpoints = list(previous.checkpoints) if previous else []
    for checkpoint in expand.checkpoints(plan):
        if checkpoint not in checkpoints:
            checkpoints.append(checkpoint)
    name = spec.name or (Path(spec.source_path).stem if spec.source_path
                         and not spec.source_path.startswith("<") else ident)
    return JobMeta(id=ident, name=name, store=public, job=local.public_job(spec),
                   source_path=spec.source_path, base_dir=spec.base_dir,
                   content_sha256=spec.content_sha256, checkpoints=tuple(checkpoints),
                   requirements=local.requirements_json(plan), total=expand.count(plan),
                   lease_s=lease_s, max_deliveries=max_deliveries, submitted_at=now_iso())


async def _stored_ids(store: ObjectStore) -> set[int]:
    found: set[int] = set()
    async for key in store.keys(RECORDS_PREFIX):
        ident = record_id(key)
        if ident is not None:
            found.add(int(ident, 16))
    return found


async def _enqueue_all(queue: Queue, store: ObjectStore, meta: JobMeta, plan: expand.Plan,
                       stored: set[int], chunk: int, depth: int, note: str | None,
                       on_progress: Callable[[int], None] | None) -> SubmitSummary:
    added = requeued = already = found = repeated = 0
    seen: set[int] = set()  # ids as ints: a template like {a|a} can repeat a variant
    uploaded: set[str] = set()
    batch: list[tuple[str, int, bytes, bytes]] = []
    batches: list[list[tuple[str, int, bytes, bytes]]] = []
    in_store: list[str] = []

    async def flush() -> None:
        nonlocal added, requeued, already, found
        if batch:
            batches.append(list(batch))
            batch.clear()
        if batches:
            a, r, s = await queue.enqueue(meta, batches)
            added, requeued, already = added + a, requeued + r, already + s
            batches.clear()
        if in_store:
            marked = await queue.mark_stored(meta, list(in_store))
            found += marked
            already += len(in_store) - marked  # queued or done in Redis already
            in_store.clear()
        if on_progress is not None:
            on_progress(added + requeued + already + found)

    for variant in expand.variants(plan):
        key = int(variant.id, 16)
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        if key in stored:
            in_store.append(variant.id)
            if len(in_store) >= chunk * depth:
                await flush()
            continue
        for ref in input_refs(variant.payload):
            if ref["sha256"] not in uploaded:
                await _upload_input(store, ref)
                uploaded.add(ref["sha256"])
        fields = entry_fields(variant)
        batch.append((variant.id, meta.stream_of(variant.checkpoint), fields["v"], fields["h"]))
        if len(batch) >= chunk:
            batches.append(list(batch))
            batch.clear()
            if len(batches) >= depth:
                await flush()
    await flush()
    return SubmitSummary(meta, added, requeued, already, found, repeated, len(uploaded), note)


async def _upload_input(store: ObjectStore, ref: dict[str, object]) -> None:
    import asyncio
    import hashlib

    from pipeline.errors import JobError

    path = Path(str(ref["$file"]))
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise JobError(f"cannot read input image {path} ({exc.strerror})",
                       hint="it was there when the job was planned; put it back") from None
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise JobError(f"input image {path} changed while the job was being submitted",
                       hint="submit again")
    await store.put(input_key(str(ref["sha256"])), data)
