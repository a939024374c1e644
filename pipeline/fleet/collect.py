"""Collect a fleet job into a local output directory, the same as ``sdbatch run`` makes it.

The store's records are read (``records/`` listed page by page, ``concurrency`` records and their
images fetched at once, each image checked against its SHA-256 key) and written through the local
run's own ``OutputStore`` (same names, sidecars, manifest fields), ``convert:`` and dataset
exporters; variants given up on (the dead letter) become ``failures.jsonl`` lines; then
``run.json``/``job.json``, the grid sheets and the gallery are written by the local run's code.
Resumable: what the directory already holds complete is skipped (the local resume rules), so a
collect may run while agents still work, and again later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline import expand
from pipeline.errors import JobError
from pipeline.fleet import local
from pipeline.fleet.objstore import ObjectStore, open_store
from pipeline.fleet.redisq import Queue
from pipeline.fleet.urls import StoreURL, parse_store_url
from pipeline.fleet.wire import (RECORDS_PREFIX, JobMeta, failed_from, generated_from, record_id,
                                 record_key, sha256_matches, variant_from)
from pipeline.job.naming import Namer
from pipeline.job.schema import JobSpec
from pipeline.model import Generated
from pipeline.output.layout import MANIFEST
from pipeline.output.resume import read_records
from pipeline.output.store import OutputStore

log = logging.getLogger(__name__)

CONCURRENCY = 8
_END = object()


@dataclass(slots=True)
class CollectSummary:
    out_dir: Path
    status: str = "running"  # "complete" | "failed" | "running" (agents still have work)
    total: int = 0
    collected: int = 0  # variants written by this collect
    images: int = 0  # generation images written by this collect
    already: int = 0  # complete in the directory before (resume)
    failed: int = 0
    broken: int = 0  # records whose images are missing or do not match their hash
    queued: int = 0  # still waiting or leased in the queue
    messages: list[str] = dataclasses.field(default_factory=list)


async def collect(queue: Queue, meta: JobMeta, out_dir: Path, *, store: StoreURL | None = None,
                  fsync: bool = True, concurrency: int = CONCURRENCY,
                  on_progress: Callable[[int], None] | None = None) -> CollectSummary:
    spec = local.job_spec(meta)
    summary = CollectSummary(Path(out_dir), total=meta.total)
    plan: expand.Plan | None = None
    try:
        plan = expand.build_plan(spec)
    except JobError as exc:  # wildcard or input files that live on the submitter's machine
        summary.messages.append(f"dataset files need the job's own files ({exc.detail}); "
                                f"collect where {spec.base_dir or 'the job'} is readable to get them")
    from pipeline.outputs import build_exporters

    exporters = (build_exporters(spec, Path(out_dir), plan=plan, fsync=fsync)
                 if plan is not None else [])
    output = OutputStore(Path(out_dir), namer=Namer(spec.naming), fsync=fsync)
    resume = await asyncio.to_thread(output.prepare)
    for exporter in exporters:  # after the manifest repair, so they match it exactly
        await asyncio.to_thread(exporter.rebuild)
    summary.already = len(resume.complete)
    _write_run(output, spec, summary, "running")
    source = open_store(store or parse_store_url(meta.store))
    try:
        await source.check()
        await output.open()
        try:
            await _copy(source, output, spec, resume.complete, exporters, summary, concurrency,
                        on_progress)
            await _failures(queue, meta, output, resume.complete, summary)
        finally:
            for exporter in exporters:  # publish what is in progress (a last, partial shard)
                await asyncio.shield(exporter.close())
            await asyncio.shield(output.close())
    finally:
        await source.close()
    counts = await queue.counts(meta)
    summary.queued = counts.queued
    summary.status = "running" if counts.queued else ("failed" if summary.failed else "complete")
    _write_run(output, spec, summary, summary.status)
    from pipeline.grid import LiveOutputs

    await asyncio.to_thread(LiveOutputs(Path(out_dir), spec).final)
    return summary


async def _copy(source: ObjectStore, output: OutputStore, spec: JobSpec, complete: set[str],
                exporters: list[Any], summary: CollectSummary, concurrency: int,
                on_progress: Callable[[int], None] | None) -> None:
    ids: asyncio.Queue[Any] = asyncio.Queue(concurrency * 4)
    ready: asyncio.Queue[Any] = asyncio.Queue(concurrency)

    async def list_ids() -> None:
        async for key in source.keys(RECORDS_PREFIX):
            ident = record_id(key)
            if ident is not None and ident not in complete:
                await ids.put(ident)
        for _ in range(concurrency):
            await ids.put(_END)

    async def fetch() -> None:
        while (ident := await ids.get()) is not _END:
            result = await _fetch(source, ident, summary)
            if result is not None:
                await ready.put(result)
        await ready.put(_END)

    async def write() -> None:
        ended = 0
        while ended < concurrency:
            item = await ready.get()
            if item is _END:
                ended += 1
                continue
            if spec.convert is not None:
                item = await asyncio.to_thread(_converted, item, spec)
            records = await output.write(item)
            for exporter in exporters:
                await exporter.on_variant(records)
            complete.add(item.variant.id)
            summary.collected += 1
            summary.images += sum(1 for r in records if r["kind"] == "generation")
            if on_progress is not None and summary.collected % 100 == 0:
                on_progress(summary.collected)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(list_ids())
        for _ in range(concurrency):
            tg.create_task(fetch())
        tg.create_task(write())


async def _fetch(source: ObjectStore, ident: str, summary: CollectSummary) -> Generated | None:
    raw = await source.get(record_key(ident))
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
        keys = [i["key"] for i in doc["images"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        summary.broken += 1
        log.warning("record %s in the store is not readable; skipped", ident)
        return None
    blobs = await asyncio.gather(*(source.get(k) for k in keys))
    data: dict[str, bytes] = {}
    for key, blob in zip(keys, blobs):
        if blob is None or not sha256_matches(key, blob):
            summary.broken += 1
            log.warning("variant %s: image %s is %s in the store; skipped (submit the job again "
                        "after deleting %s to regenerate it)", ident, key,
                        "missing" if blob is None else "damaged", record_key(ident))
            return None
        data[key] = blob
    try:
        return generated_from(doc, data)
    except (KeyError, TypeError, ValueError) as exc:
        summary.broken += 1
        log.warning("record %s in the store is malformed (%s); skipped", ident, exc)
        return None


async def _failures(queue: Queue, meta: JobMeta, output: OutputStore, complete: set[str],
                    summary: CollectSummary) -> None:
    """The dead letter -> ``failures.jsonl`` (the latest entry per variant not done since)."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in await queue.dead_entries(meta):
        latest[entry["id"]] = entry
    dead_now = await queue.dead_ids(meta)
    for ident, entry in latest.items():
        if ident in complete or ident not in dead_now:
            continue
        try:
            errors = orjson.loads(entry.get("errors") or "[]")
            history = orjson.loads(entry.get("h") or "{}")
            variant = variant_from(orjson.loads(entry["v"]))
        except (orjson.JSONDecodeError, KeyError):
            continue
        failed = failed_from(variant, errors if isinstance(errors, list) else [],
                             entry.get("reason", ""), int(history.get("a", 0)))
        await output.record_failure(failed)
        summary.failed += 1


def _converted(result: Generated, spec: JobSpec) -> Generated:
    from pipeline.outputs.convert import convert_for_write

    assert spec.convert is not None
    return dataclasses.replace(result, images=tuple(convert_for_write(image, spec.convert)
                                                    for image in result.images))


def _write_run(output: OutputStore, spec: JobSpec, summary: CollectSummary, status: str) -> None:
    from pipeline.output.runfiles import write_run_files

    per_backend: dict[str, dict[str, Any]] = {}
    for record in read_records(output.root / MANIFEST):
        if record.get("kind") != "generation":
            continue
        entry = per_backend.setdefault(str(record.get("backend")), {"done": set(), "images": 0})
        entry["done"].add(record.get("id"))
        entry["images"] += 1
    backends = {label: {"done": len(v["done"]), "images": v["images"]}
                for label, v in sorted(per_backend.items())}
    skipped = summary.already
    counts = {"total": summary.total, "done": summary.collected, "images": summary.images,
              "failed": summary.failed, "skipped": skipped,
              "unfinished": 0 if status == "complete" else max(
                  0, summary.total - summary.collected - summary.failed - skipped)}
    write_run_files(output, spec, status=status, counts=counts, backends=sorted(backends),
                    shard=None, per_backend=backends)
