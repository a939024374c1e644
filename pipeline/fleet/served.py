"""What one agent serves: its backends (``Slot``) and the jobs it has opened (``ServedJob``).

A job is opened once per agent: its spec validated again, its store reached (``--store`` when
this machine sees it elsewhere), the local preflight's verdict on this agent's backends against
the names the job uses, and one client per backend built from it. Which streams a backend may
read follows from that verdict (a checkpoint it does not have, Dynamic Prompts when the job
refuses it); img2img inputs are fetched from the store into a local cache before sending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from pipeline.backends.base import Backend
from pipeline.errors import SdbatchError
from pipeline.fleet import local
from pipeline.fleet.errors import StoreError
from pipeline.fleet.objstore import ObjectStore, open_store
from pipeline.fleet.redisq import StreamLoad
from pipeline.fleet.urls import StoreURL, parse_store_url
from pipeline.fleet.wire import JobMeta, input_key, input_refs, relocate_refs
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.model import Variant
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Slot:
    """One backend of this agent: its health, what it has loaded, its preflight answers."""

    spec: BackendSpec
    health: BackendHealth
    info: Any = None
    loaded_title: str | None = None  # what the server reports it has loaded
    target: str | None = None  # checkpoint (as a job names it) of the last variant sent
    in_flight: int = 0

    @property
    def label(self) -> str:
        return self.spec.label

    def current(self, checkpoints: list[str | None]) -> str | None:
        """The checkpoint the backend is on, as one of ``checkpoints`` names it."""
        if self.target is not None:
            return self.target
        return local.match_checkpoint(self.loaded_title, checkpoints)


@dataclass(slots=True)
class ServedJob:
    meta: JobMeta
    spec: JobSpec
    store: ObjectStore
    policy: RetryPolicy
    clients: dict[str, Backend]
    serves: dict[tuple[str, str | None], bool] = field(default_factory=dict)
    inputs_dir: Path | None = None

    def servable(self, slot: Slot, load: StreamLoad) -> bool:
        """May ``slot``'s backend read ``load``'s stream? (Cached per backend and checkpoint.)"""
        key = (slot.label, load.checkpoint)
        if key not in self.serves:
            info = slot.info
            ok = True
            if load.checkpoint is not None and info is not None and getattr(info, "reachable",
                                                                            False):
                ok = info.has("checkpoint", load.checkpoint)
            if ok and self.spec.dynamic_prompts == "refuse" and getattr(info, "dynamic_prompts",
                                                                        None):
                ok = False
            if not ok:
                log.info("backend %s cannot serve checkpoint %r of job %s: it takes none of "
                         "those variants", slot.label, load.checkpoint, self.meta.name)
            self.serves[key] = ok
        return self.serves[key]


async def open_job(session: aiohttp.ClientSession, meta: JobMeta, slots: list[Slot], *,
                   store: StoreURL | None, fsync: bool, zero_waits: bool) -> ServedJob | None:
    """The job ready to serve, or None (logged) when it cannot be served from here now."""
    try:
        spec = local.job_spec(meta)
    except SdbatchError as exc:
        log.error("job %s (%s) cannot be read, skipping it: %s", meta.name, meta.id, exc)
        return None
    objects = open_store(store or parse_store_url(meta.store), fsync=fsync)
    try:
        await objects.check()
    except StoreError as exc:
        log.error("job %s: cannot use its store (%s); skipping it for now (pass --store with "
                  "the path or URL this machine reaches it at)", meta.name, exc)
        await objects.close()
        return None
    for slot in slots:  # a backend's health follows the (latest) job's retry section
        slot.health.bench_after_failures = spec.retry.bench_after_failures
        slot.health.cooldown_s = spec.retry.cooldown_s
        slot.health.cooldown_max_s = spec.retry.cooldown_max_s
    clients = clients_for(session, meta, spec, slots)
    return ServedJob(meta, spec, objects, RetryPolicy(spec.retry, zero_waits=zero_waits),
                     clients)


def clients_for(session: aiohttp.ClientSession, meta: JobMeta, spec: JobSpec,
                slots: list[Slot]) -> dict[str, Backend]:
    """One client per backend, set up by the local preflight's verdict for this job."""
    verdict = local.verdict_for(meta, spec, [s.info for s in slots if s.info is not None])
    return {s.label: local.client_for(session, s.spec, verdict, spec) for s in slots}


async def with_patience(store: ObjectStore, fn: Callable[[], Awaitable[T]],
                        patience_s: float) -> T:
    """A store operation, retried with backoff for up to ``patience_s``, then its error."""
    started = time.monotonic()
    delay_s = 0.2
    while True:
        try:
            return await fn()
        except StoreError as exc:
            if time.monotonic() - started >= patience_s:
                raise
            log.warning("the store %s failed (%s); retrying in %.1f s", store.shown, exc,
                        delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)


async def as_sent(job: ServedJob, variant: Variant, cache: Path, patience_s: float
                  ) -> Variant | None:
    """The variant as this machine sends it: img2img inputs fetched from the store into
    ``cache`` (None when one is missing there)."""
    refs = input_refs(variant.payload)
    if not refs:
        return variant
    if job.inputs_dir is None:
        job.inputs_dir = cache / job.meta.id
        job.inputs_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for ref in refs:
        sha = str(ref["sha256"])
        path = job.inputs_dir / sha
        if not path.is_file():
            data = await with_patience(job.store, lambda s=sha: job.store.get(input_key(s)),
                                       patience_s)
            if data is None:
                return None
            await asyncio.to_thread(path.write_bytes, data)
        paths[sha] = str(path)
    return dataclasses.replace(variant, payload=relocate_refs(variant.payload, paths))
