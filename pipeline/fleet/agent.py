"""An agent: one per GPU machine. Pulls variants from the queue, generates, writes, acks.

Structure (all inside ``Agent.run``)::

    TaskGroup
    ├── workers      exactly ``concurrency`` per backend; each loops: wait until its backend is
    │                usable -> lease (affinity order, reclaiming dead agents' leases first)
    │                -> generate with the local client and retry policy -> write the images,
    │                then the record, to the store -> ack
    ├── renewer      keeps every held lease alive (XCLAIM JUSTID while this agent owns it)
    ├── heartbeat    this agent's backends, checkpoints and rates -> the agents hash
    ├── jobs         learns new jobs (and their stores, clients and verdicts) as they come
    └── supervisor   graceful stop: no new leases; in-flight work may finish within the grace
                     period, then what is left is handed back (its delivery not counted)

Exactly-once effect from at-least-once delivery: a variant is acked only after its record is in
the store, and a record names content-addressed images, so a variant delivered twice (an agent
died after writing, or stalled past its lease) rewrites the same keys. A variant whose record is
already there is acked without generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from pipeline.backends.base import Backend, Probe
from pipeline.errors import (BackendError, HTTPStatusError, RequestTimeout, SdbatchError,
                             SubstitutionError, TransportError)
from pipeline.fleet import affinity, local
from pipeline.fleet.redisq import Lease, Queue, StreamLoad
from pipeline.fleet.served import ServedJob, Slot, as_sent, clients_for, open_job, with_patience
from pipeline.fleet.urls import StoreURL
from pipeline.fleet.wire import (History, JobMeta, error_entry, record_document, record_key,
                                 restore_refs)
from pipeline.job.schema import BackendSpec, RetrySpec
from pipeline.model import Generated
from pipeline.output.layout import now_iso
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import Attempts

log = logging.getLogger(__name__)

T = TypeVar("T")

BOARD_EVERY_S = 0.5
POLL_MIN_S = 0.05


@dataclass(frozen=True, slots=True)
class AgentOptions:
    backends: tuple[BackendSpec, ...]
    agent_id: str | None = None
    store: StoreURL | None = None  # where this machine reaches the store (else the job's URL)
    grace_s: float = 30.0
    heartbeat_s: float = 5.0
    poll_s: float = 1.0  # longest wait between looks at an empty queue
    jobs_every_s: float = 5.0
    exit_when_done: bool = False  # leave once every known job has nothing queued
    interrupt_backends: bool = False
    fsync: bool = True
    zero_waits: bool = False
    patience_s: float = 600.0  # how long the store may fail before the agent gives up


@dataclass(slots=True)
class AgentStats:
    done: int = 0
    images: int = 0
    dead: int = 0
    handed_back: int = 0
    reclaimed: int = 0
    found_stored: int = 0
    retries: int = 0
    first_done_at: float | None = None
    last_done_at: float | None = None

    def images_per_s(self) -> float:
        if self.first_done_at is None or self.last_done_at is None:
            return 0.0
        span = self.last_done_at - self.first_done_at
        return self.images / span if span > 0 else 0.0


class _Stop(Exception):
    """Internal: the agent is stopping; hand the lease back without counting the delivery."""


class Agent:
    """Create with a ``Queue`` and options, then ``await run()`` once; ``request_stop()`` ends it."""

    def __init__(self, queue: Queue, options: AgentOptions) -> None:
        if not options.backends:
            raise SdbatchError("an agent needs at least one backend (--backend URL)")
        self.queue = queue
        self.options = options
        self.id = options.agent_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        defaults = RetrySpec()
        self.slots = [Slot(b, BackendHealth(
            label=b.label, bench_after_failures=defaults.bench_after_failures,
            cooldown_s=defaults.cooldown_s, cooldown_max_s=defaults.cooldown_max_s))
            for b in options.backends]
        self.stats = AgentStats()
        self.started = time.time()
        self.state = "starting"
        self.error: str = ""
        self._jobs: dict[str, ServedJob] = {}
        self._held: dict[str, Lease] = {}  # entry id -> lease
        self._switches: set[str] = set()  # entries whose request loads another checkpoint
        self._stop = asyncio.Event()
        self._hard = asyncio.Event()
        self._board: list[StreamLoad] = []
        self._board_at = 0.0
        self._board_lock = asyncio.Lock()
        self._claim_at = 0.0
        self._cursors: dict[str, str] = {}
        self._others: dict[str | None, int] = {}
        self._seen_jobs = False
        self._session: aiohttp.ClientSession | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="sdbatch-agent-")

    # --- control ------------------------------------------------------------------------------

    def request_stop(self, *, hard: bool = False) -> None:
        """First call: finish in-flight work within the grace period. ``hard``: hand back now."""
        if hard:
            self._hard.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._held)

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self._session = session
                await self._inspect()
                await self._refresh_jobs()
                self.state = "running"
                await self._beat()
                async with asyncio.TaskGroup() as tg:
                    workers = tg.create_task(self._workers(), name="workers")
                    helpers = [tg.create_task(c, name=n) for n, c in (
                        ("renewer", self._renewer()), ("heartbeat", self._heartbeats()),
                        ("jobs", self._watch_jobs()), ("supervisor", self._supervise(workers)))]
                    try:
                        await asyncio.wait({workers})
                    finally:
                        for helper in helpers:
                            helper.cancel()
        except* SdbatchError as group:
            self.error = str(_first(group))
            raise _first(group) from None
        finally:
            self.state = "stopped"
            await asyncio.shield(self._leave())

    async def _leave(self) -> None:
        self.queue.patience_s = min(self.queue.patience_s, 10.0)  # leaving: do not wait long
        with contextlib.suppress(SdbatchError):
            await self._beat()
            streams = [job.meta for job in self._jobs.values()]
            from pipeline.fleet.keys import JobKeys

            await self.queue.remove_consumer(
                [JobKeys(m.id).stream(i) for m in streams for i in range(len(m.checkpoints))],
                self.id)
        for job in self._jobs.values():
            with contextlib.suppress(Exception):
                await job.store.close()
        self._tmp.cleanup()

    async def _inspect(self) -> None:
        """The local preflight's questions, asked once: what each backend has and has loaded."""
        assert self._session is not None
        infos = await local.inspect(self._session, [s.spec for s in self.slots])
        for slot, info in zip(self.slots, infos):
            slot.info = info
            if getattr(info, "reachable", True):
                slot.loaded_title = getattr(info, "loaded_model", None)
            else:
                slot.health.bench(time.monotonic())
                slot.health.last_error = getattr(info, "error", "") or "unreachable"
                log.warning("backend %s is not reachable (%s); it will be probed again",
                            slot.label, slot.health.last_error)

    async def _workers(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in self.slots:
                    for n in range(slot.spec.concurrency):
                        tg.create_task(self._worker(slot), name=f"worker {slot.label} #{n + 1}")
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise

    async def _supervise(self, workers: asyncio.Task[None]) -> None:
        await self._stop.wait()
        self.state = "stopping"
        grace_s = 0.0 if self._hard.is_set() else self.options.grace_s
        log.info("agent %s stopping: %d variant(s) in flight, %g s to finish them", self.id,
                 len(self._held), grace_s)
        hard = asyncio.create_task(self._hard.wait())
        try:
            await asyncio.wait({workers, hard}, timeout=grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            hard.cancel()
        if not workers.done():
            if self.options.interrupt_backends:
                busy = [self._probe_client(s) for s in self.slots if s.in_flight]
                await asyncio.gather(*(c.interrupt() for c in busy), return_exceptions=True)
            workers.cancel()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the agent is asked to stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # --- one worker ---------------------------------------------------------------------------

    async def _worker(self, slot: Slot) -> None:
        idle_s = POLL_MIN_S
        while not self._stop.is_set():
            if not await self._wait_usable(slot):
                return
            lease = await self._take(slot)
            if lease is None:
                if self.options.exit_when_done and await self._all_done():
                    log.info("agent %s: every job is done; leaving", self.id)
                    self._stop.set()
                    return
                await self._sleep(idle_s)
                idle_s = min(idle_s * 2, self.options.poll_s)
                continue
            idle_s = POLL_MIN_S
            await self._process(slot, lease)

    async def _wait_usable(self, slot: Slot) -> bool:
        """Wait out a bench or a pause (probing when a bench ends); False when stopping."""
        health = slot.health
        while not self._stop.is_set():
            now = time.monotonic()
            if health.state == "ok":
                paused_until = getattr(health, "paused_until", 0.0)
                if now < paused_until:
                    await self._sleep(min(paused_until - now, 0.5))
                    continue
                return True
            if now < health.benched_until:
                await self._sleep(min(health.benched_until - now, 0.5))
                continue
            if health.state == "probing" or slot.in_flight:
                await self._sleep(POLL_MIN_S)
                continue
            health.state = "probing"
            try:
                probe = await self._probe_client(slot).probe()
            except BackendError as exc:
                health.last_error = str(exc)
                health.on_probe(time.monotonic(), False)
                log.warning("backend %s still down (%s)", slot.label, exc)
            else:
                health.on_probe(time.monotonic(), True)
                loaded = probe.loaded_model if isinstance(probe, Probe) else (
                    probe.get("sd_model_checkpoint") if isinstance(probe, dict) else None)
                slot.loaded_title = loaded if isinstance(loaded, str) else slot.loaded_title
                if slot.info is None or not getattr(slot.info, "reachable", True):
                    await self._inspect_again(slot)
                log.info("backend %s is back", slot.label)
        return False

    def _store_call(self, job: ServedJob, fn: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """A store operation with the agent's patience (leases are renewed meanwhile)."""
        return with_patience(job.store, fn, self.options.patience_s)

    def _current(self, slot: Slot, loads: list[StreamLoad]) -> str | None:
        return slot.current(list(dict.fromkeys(s.checkpoint for s in loads)))

    def _servable(self, slot: Slot, load: StreamLoad) -> bool:
        job = self._jobs.get(load.job)
        return job is not None and job.servable(slot, load)

    def _probe_client(self, slot: Slot) -> Backend:
        for job in self._jobs.values():
            return job.clients[slot.label]
        from pipeline.backends.factory import make_client

        assert self._session is not None
        return make_client(self._session, slot.spec, None)

    async def _inspect_again(self, slot: Slot) -> None:
        """A backend that was down at start: learn what it has, and rebuild its clients."""
        assert self._session is not None
        slot.info = (await local.inspect(self._session, [slot.spec]))[0]
        for job in self._jobs.values():
            job.clients = clients_for(self._session, job.meta, job.spec, self.slots)
            job.serves = {k: v for k, v in job.serves.items() if k[0] != slot.label}

    # --- taking work --------------------------------------------------------------------------

    async def _loads(self) -> list[StreamLoad]:
        async with self._board_lock:
            if time.monotonic() - self._board_at >= BOARD_EVERY_S:
                self._board = await self.queue.loads([j.meta for j in self._jobs.values()])
                self._board_at = time.monotonic()
            return self._board

    async def _take(self, slot: Slot) -> Lease | None:
        if not self._jobs:
            return None
        loads = await self._loads()
        current = self._current(slot, loads)

        def servable(load: StreamLoad) -> bool:
            return self._servable(slot, load)

        now = time.monotonic()
        lease_s = min(j.meta.lease_s for j in self._jobs.values())
        if now - self._claim_at >= max(0.1, lease_s / 4):
            self._claim_at = now
            for load in affinity.claim_order(current, loads, servable=servable):
                job = self._jobs[load.job]
                lease, self._cursors[load.key] = await self.queue.claim_idle(
                    load.job, load.key, self.id, job.meta.lease_s,
                    self._cursors.get(load.key, "0-0"))
                if lease is not None:
                    self.stats.reclaimed += 1
                    log.info("agent %s reclaimed variant %s (delivery %d) from a silent agent",
                             self.id, lease.variant.id, lease.deliveries)
                    return self._took(slot, lease)
        on_it = dict(self._others)
        for other in self.slots:
            if other is not slot and other.health.state == "ok":
                key = self._current(other, loads)
                on_it[key] = on_it.get(key, 0) + 1
        for load in affinity.read_order(current, loads, on_it=on_it, servable=servable):
            lease = await self.queue.read_new(load.job, load.key, self.id)
            if lease is not None:
                return self._took(slot, lease)
        return None

    def _took(self, slot: Slot, lease: Lease) -> Lease:
        self._held[lease.entry] = lease
        checkpoint = lease.variant.checkpoint
        if checkpoint is not None:
            if checkpoint != self._current(slot, self._board):
                self._switches.add(lease.entry)  # this request loads another checkpoint
            slot.target = checkpoint
        return lease

    async def _all_done(self) -> bool:
        await self._refresh_jobs()
        if not self._seen_jobs:
            return False
        queued = await self.queue.queued([j.meta for j in self._jobs.values()])
        return not any(queued.values())

    # --- one variant --------------------------------------------------------------------------

    async def _process(self, slot: Slot, lease: Lease) -> None:
        job = self._jobs.get(lease.job)
        slot.in_flight += 1
        try:
            if job is None:
                await self._hand_back(lease, counted=False)
                return
            # Delivered before (an agent died or stalled after writing?): is it done already?
            if lease.deliveries > 1 and await self._store_call(
                    job, lambda: job.store.exists(record_key(lease.variant.id))):
                if await self.queue.ack(lease, images=0, found_stored=True):
                    self.stats.found_stored += 1
                return
            if lease.deliveries > job.meta.max_deliveries:
                await self._dead(job, lease, lease.history, f"delivered {lease.deliveries} times "
                                 f"without being finished (max_deliveries "
                                 f"{job.meta.max_deliveries}): the agents that had it died or "
                                 "stalled")
                return
            await self._generate(slot, job, lease)
        except _Stop:
            await self._hand_back(lease, counted=False)
        except BaseException:  # cancelled (stop after the grace period), or the store/queue
            with contextlib.suppress(Exception):  # failed for good: let others have it now
                await asyncio.shield(self._hand_back(lease, counted=False))
            raise
        finally:
            slot.in_flight -= 1
            self._held.pop(lease.entry, None)
            self._switches.discard(lease.entry)

    async def _generate(self, slot: Slot, job: ServedJob, lease: Lease) -> None:
        variant = lease.variant
        history = lease.history
        attempts = Attempts(count=history.attempts, first_at=history.first_at or time.time(),
                            failed_on=set(history.failed_on), excluded=set(history.excluded))
        if slot.label in attempts.excluded:
            await self._pass_on(job, lease, attempts, f"{slot.label} cannot serve it")
            return
        sent = await as_sent(job, variant, Path(self._tmp.name), self.options.patience_s)
        if sent is None:
            await self._dead(job, lease, _history(lease, attempts, counted=True),
                             "an input image is missing from the store (submit uploads them to "
                             "inputs/): submit the job again")
            return
        client = job.clients[slot.label]
        while True:
            if self._stop.is_set() and self._hard.is_set():
                raise _Stop
            attempts.count += 1
            try:
                reply = await client.generate(sent)
            except BackendError as exc:
                if await self._on_error(slot, job, lease, attempts, exc):
                    continue
                return
            break
        now = time.monotonic()
        result = Generated(variant=variant, images=reply.images, info=reply.info,
                           backend=slot.label, model=reply.model, attempts=attempts.count,
                           elapsed_s=reply.elapsed_s, params=restore_refs(reply.params,
                                                                          variant.payload))
        await self._write(job, result, lease)
        generations = sum(1 for i in reply.images if i.kind == "generation")
        switched = lease.entry in self._switches
        slot.health.on_success(now, generations, reply.elapsed_s, switched=switched)
        if reply.model:
            slot.loaded_title = reply.model
        if await self.queue.ack(lease, images=generations):
            self.stats.done += 1
            self.stats.images += generations
            wall = time.monotonic()
            if self.stats.first_done_at is None:
                self.stats.first_done_at = wall - reply.elapsed_s
            self.stats.last_done_at = wall

    async def _on_error(self, slot: Slot, job: ServedJob, lease: Lease, attempts: Attempts,
                        exc: BackendError) -> bool:
        """Decide what a failure means, as a local worker does; True: try again here."""
        variant = lease.variant
        await self.queue.add_error(job.meta.id, variant.id,
                                   error_entry(str(exc), exc.status, slot.label, self.id))
        now = time.monotonic()
        attempts.last_error = exc
        if isinstance(exc, HTTPStatusError) and getattr(exc, "rate_limited", False):
            attempts.count -= 1  # the server asked us to wait: not an attempt
            slot.health.on_failure(now, exc)
            await self._sleep(getattr(exc, "retry_after_s", None) or 1.0)
            if self._stop.is_set():
                raise _Stop
            return True
        if not isinstance(exc, (TransportError, RequestTimeout)):
            attempts.failed_on.add(slot.label)
        if isinstance(exc, SubstitutionError) or getattr(exc, "backend_fault", False):
            attempts.excluded.add(slot.label)
        if slot.health.on_failure(now, exc):
            log.warning("backend %s benched after repeated failures: %s", slot.label, exc)
        delay_s = job.policy.next_delay_s(attempts, exc, time.time())
        spec = job.policy.spec
        if delay_s is None:
            if len(attempts.failed_on) < spec.max_backends_per_variant \
                    and lease.deliveries < job.meta.max_deliveries \
                    and attempts.count < spec.max_attempts:
                await self._pass_on(job, lease, attempts, str(exc))  # another backend may serve
            else:
                await self._dead(job, lease, _history(lease, attempts, counted=True), str(exc))
            return False
        if slot.label in attempts.excluded or slot.health.state != "ok":
            await self._pass_on(job, lease, attempts, str(exc))
            return False
        self.stats.retries += 1
        await self._sleep(delay_s)
        if self._stop.is_set():
            raise _Stop
        return True

    async def _pass_on(self, job: ServedJob, lease: Lease, attempts: Attempts, why: str) -> None:
        """Hand the variant to the other agents (this delivery counts), or give up on it."""
        if lease.deliveries >= job.meta.max_deliveries:
            await self._dead(job, lease, _history(lease, attempts, counted=True), why)
            return
        if await self.queue.hand_back(lease, self.id, _history(lease, attempts, counted=True)):
            self.stats.handed_back += 1
            log.info("agent %s handed variant %s to the others: %s", self.id, lease.variant.id,
                     why)

    async def _hand_back(self, lease: Lease, *, counted: bool) -> None:
        history = dataclasses.replace(lease.history, deliveries=lease.deliveries - (0 if counted
                                                                                    else 1))
        if await self.queue.hand_back(lease, self.id, history):
            self.stats.handed_back += 1

    async def _dead(self, job: ServedJob, lease: Lease, history: History, reason: str) -> None:
        if await self.queue.dead_letter(lease, self.id, history, reason, self.id, now_iso()):
            self.stats.dead += 1
            log.warning("variant %s of job %s failed for good: %s", lease.variant.id,
                        job.meta.name, reason)

    async def _write(self, job: ServedJob, result: Generated, lease: Lease) -> None:
        """Images first, then the record that names them: the record is the commit point."""
        doc, objects = record_document(result, job=job.meta.id, agent=self.id,
                                       deliveries=lease.deliveries)

        async def put_all() -> None:
            await asyncio.gather(*(job.store.put(key, data) for key, data in objects))
            await job.store.put(record_key(result.variant.id),
                                orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))

        await self._store_call(job, put_all)

    # --- background tasks ---------------------------------------------------------------------

    async def _renewer(self) -> None:
        while True:
            lease_s = min((j.meta.lease_s for j in self._jobs.values()), default=30.0)
            await asyncio.sleep(max(0.1, lease_s / 3))
            by_stream: dict[str, list[str]] = {}
            for lease in list(self._held.values()):
                by_stream.setdefault(lease.stream, []).append(lease.entry)
            for stream, entries in by_stream.items():
                lost = await self.queue.renew(stream, self.id, entries)
                for entry in lost:
                    if entry in self._held:
                        log.warning("agent %s lost its lease on variant %s (another agent took "
                                    "it after a stall); both results are harmless",
                                    self.id, self._held[entry].variant.id)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        await self.queue.heartbeat(self.id, orjson.dumps(self.heartbeat()))
        now = time.time()
        beats = []
        stale = []
        for agent_id, raw in (await self.queue.agents()).items():
            try:
                beat = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            beats.append(beat)
            if isinstance(beat.get("seen"), (int, float)) and now - beat["seen"] > 86_400:
                stale.append(agent_id)
        await self.queue.forget_agents(stale)
        self._others = affinity.others_on(beats, now_s=now, fresh_s=3 * self.options.heartbeat_s,
                                          skip_agent=self.id)

    def heartbeat(self) -> dict[str, Any]:
        """What ``sdbatch status`` shows about this agent."""
        return {
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "state": self.state, "started": self.started, "seen": time.time(),
            "in_flight": len(self._held), "done": self.stats.done, "images": self.stats.images,
            "dead": self.stats.dead, "handed_back": self.stats.handed_back,
            "reclaimed": self.stats.reclaimed, "found_stored": self.stats.found_stored,
            "images_per_s": round(self.stats.images_per_s(), 3), "error": self.error,
            "jobs": sorted(self._jobs),
            "backends": [{"label": s.label, "state": s.health.state, "loaded": s.loaded_title,
                          "checkpoint": s.target if s.target is not None else None,
                          "in_flight": s.in_flight, "images": s.health.images,
                          "images_per_s": round(s.health.images_per_s(), 3)}
                         for s in self.slots],
        }

    async def _watch_jobs(self) -> None:
        while True:
            await asyncio.sleep(self.options.jobs_every_s)
            await self._refresh_jobs()

    async def _refresh_jobs(self) -> None:
        metas = {m.id: m for m in await self.queue.jobs()}
        for job_id in list(self._jobs):
            if job_id not in metas:
                if not any(lease.job == job_id for lease in self._held.values()):
                    job = self._jobs.pop(job_id)
                    await job.store.close()
            elif metas[job_id] != self._jobs[job_id].meta:  # submitted again, changed
                self._jobs[job_id] = await self._open_job(metas[job_id]) or self._jobs[job_id]
        for job_id, meta in metas.items():
            if job_id not in self._jobs:
                opened = await self._open_job(meta)
                if opened is not None:
                    self._jobs[job_id] = opened
                    log.info("agent %s serves job %s (%s, %d variants) -> %s", self.id,
                             meta.name, meta.id, meta.total, opened.store.shown)
        self._seen_jobs = self._seen_jobs or bool(self._jobs)
        self._board_at = 0.0

    async def _open_job(self, meta: JobMeta) -> ServedJob | None:
        assert self._session is not None
        return await open_job(self._session, meta, self.slots, store=self.options.store,
                              fsync=self.options.fsync, zero_waits=self.options.zero_waits)


def _history(lease: Lease, attempts: Attempts, *, counted: bool) -> History:
    return History(deliveries=lease.deliveries - (0 if counted else 1), attempts=attempts.count,
                   failed_on=tuple(sorted(attempts.failed_on)),
                   excluded=tuple(sorted(attempts.excluded)), first_at=attempts.first_at)


def _first(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
