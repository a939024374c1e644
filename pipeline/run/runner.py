"""One run: resume filter -> dispatch -> workers -> writer, inside one TaskGroup.

Structure (all inside ``Run.execute``)::

    TaskGroup
    ├── writer            drains a small bounded channel into the output directory (backpressure)
    ├── workers           exactly `concurrency` coroutines per backend (run/worker.py)
    ├── supervisor        graceful stop (SIGINT/SIGTERM), grace period, hard stop, patience
    │                     (run/supervisor.py)
    └── refresher         grid sheets and gallery, throttled

The per-host limit *is* the number of workers; no semaphore shadows it. The dispatcher owns what
is in flight and which checkpoint each backend is on; the writer owns the output directory; the
reporter (and every other listener) learns everything from events. Wiring (preflight, clients,
the simulator) is ``run/start.py``'s job, shared by the CLI and the Python API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import expand
from pipeline.backends.base import Backend
from pipeline.errors import BackendError, ExitStatus, OutputError, SdbatchError
from pipeline.events import (BackendChanged, Event, Listener, RunFinished, RunStarted,
                             VariantSkipped)
from pipeline.job.naming import Namer
from pipeline.names import same_checkpoint
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.output.prune import count_stale, job_ids
from pipeline.output.resume import ResumeFilter
from pipeline.output.runfiles import read_run
from pipeline.output.store import OutputStore
from pipeline.run.supervisor import Supervisor
from pipeline.run.worker import Worker
from pipeline.run.writer import Writer
from pipeline.schedule.dispatch import CanServe, Dispatcher
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import RetryPolicy

log = logging.getLogger(__name__)

STALE_COUNT_LIMIT = 200_000  # variants: above this, say the job changed without counting


@dataclass(frozen=True, slots=True)
class RunOptions:
    out_dir: Path
    backends: tuple[BackendSpec, ...]
    shard: tuple[int, int] | None = None
    grace_s: float = 30.0
    fsync: bool = True
    interrupt_backends: bool = False
    zero_waits: bool = False
    simulated: bool = False
    refresh_every_s: float = 30.0
    limit: int | None = None  # only the first N variants of the job
    only: tuple[str, ...] = ()  # only these variant ids
    verify: bool = False  # resume checks every recorded image's sha256, not only its size
    lock_wait_s: float = 0.0  # how long to wait for another run to release the directory


@dataclass(slots=True)
class RunSummary:
    status: str = "running"
    total: int = 0
    done: int = 0
    images: int = 0
    failed: int = 0
    skipped: int = 0
    unfinished: int = 0
    elapsed_s: float = 0.0
    message: str = ""
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    views: tuple[str, ...] = ()

    @property
    def exit_code(self) -> ExitStatus:
        return {"complete": ExitStatus.OK,
                "interrupted": ExitStatus.INTERRUPTED}.get(self.status, ExitStatus.FAILED)


class Run:
    """Executes one job into one output directory. Create, then ``await execute()`` once."""

    def __init__(self, spec: JobSpec, plan: expand.Plan, options: RunOptions,
                 clients: dict[str, Backend], *, listeners: tuple[Listener, ...] = (),
                 can_serve: CanServe | None = None, notices: tuple[str, ...] = (),
                 results: Any = None) -> None:
        if not options.backends:
            raise SdbatchError("no backends to run on")
        self.spec = spec
        self.plan = plan
        self.options = options
        self.clients = clients
        self.notices = notices
        self._listeners = list(listeners)
        self._can_serve = can_serve
        store = OutputStore(options.out_dir, fsync=options.fsync, namer=Namer(spec.naming))
        self.writer = Writer(spec, store, emit=self.emit, plan=plan,
                             refresh_every_s=options.refresh_every_s, results=results)
        self.policy = RetryPolicy(spec.retry, zero_waits=options.zero_waits)
        self.health = {b.label: BackendHealth(
            b.label, bench_after_failures=spec.retry.bench_after_failures,
            cooldown_s=spec.retry.cooldown_s, cooldown_max_s=spec.retry.cooldown_max_s)
            for b in options.backends}
        self.summary = RunSummary()
        self.supervisor = Supervisor(self.health, patience_s=spec.retry.patience_s,
                                     grace_s=options.grace_s, emit=self.emit)
        self._filter: ResumeFilter | None = None
        self._only = frozenset(options.only)
        self.dispatcher: Dispatcher | None = None

    # --- control ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "interrupted", *, hard: bool = False) -> None:
        """First call: finish in-flight work within the grace period. ``hard``: stop now."""
        self.supervisor.request_stop(reason, hard=hard)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break the run
                log.exception("event listener failed on %s", type(event).__name__)

    # --- the run ------------------------------------------------------------------------------

    async def execute(self) -> RunSummary:
        started = time.monotonic()
        previous = read_run(self.writer.store)
        resume = await asyncio.to_thread(self.writer.prepare, verify=self.options.verify,
                                         lock_wait_s=self.options.lock_wait_s)
        try:
            await self._start(previous, resume)
            await self.writer.store.open()
            await self._probe_all()
            self.dispatcher = self._make_dispatcher()
            await self._run_stages()
        except* SdbatchError as group:
            error = _first(group)
            self.summary.status = "error"
            self.summary.message = str(error)
            if not isinstance(error, OutputError):
                raise error from group
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            self._decide()
            self.summary.views = tuple(await self.writer.finish(self.summary.status,
                                                                self._counts()))
            self._report()
            await asyncio.shield(self.writer.store.close())  # releases the directory's lock
        return self.summary

    def _counts(self) -> dict[str, int]:
        return self.writer.counts_now(total=self.summary.total,
                                      skipped=self._filter.skipped if self._filter else 0)

    async def _start(self, previous: dict[str, Any], resume: Any) -> None:
        own: tuple[str, ...] = ()
        if previous.get("job_sha256") not in (None, self.spec.content_sha256) and resume.images:
            own += (await asyncio.to_thread(self._stale_notice),)
        self.summary.total = self._total()
        self._filter = ResumeFilter(resume.complete,
                                    on_skip=lambda n: self.emit(VariantSkipped(n)))
        self._write_run_files("running")
        self.emit(RunStarted(self.summary.total, len(resume.complete), tuple(self.health),
                             str(self.options.out_dir), self.options.simulated,
                             self.spec.retry.patience_s, own))

    def _stale_notice(self) -> str:
        """The job changed since the last run here: how many images it no longer makes."""
        out = self.options.out_dir
        fix = f"'sdbatch prune {out}' moves them aside"
        if expand.count(self.plan) > STALE_COUNT_LIMIT:
            return f"the job changed since the last run into {out}; {fix} if it no longer makes some"
        report = count_stale(out, job_ids(self.plan))
        if not report.stale_images:
            return f"the job changed since the last run into {out}; every image there still belongs"
        return (f"{out} holds {report.stale_images} images of {report.stale_variants} variants "
                f"the job no longer makes (it changed); {fix}")

    def _total(self) -> int:
        total = expand.count(self.plan)
        if self.options.shard:
            index, n = self.options.shard
            total = (total + n - index) // n
        if self.options.only:
            total = min(total, len(self.options.only))
        if self.options.limit is not None:
            total = min(total, self.options.limit)
        return total

    async def _probe_all(self) -> None:
        checkpoints = expand.checkpoints(self.plan)

        async def probe(label: str) -> None:
            health = self.health[label]
            try:
                found = await self.clients[label].probe()
            except BackendError as exc:
                health.bench(time.monotonic())
                health.last_error = str(exc)
                self.emit(BackendChanged(label, "down", str(exc),
                                         retry_in_s=health.benched_until - time.monotonic()))
                return
            self._loaded_at_start[label] = match_checkpoint(found.loaded_model, checkpoints)
            self.emit(BackendChanged(label, "ok", "", model=found.loaded_model))

        self._loaded_at_start: dict[str, str | None] = {}
        async with asyncio.TaskGroup() as tg:
            for label in self.health:
                tg.create_task(probe(label))

    def _make_dispatcher(self) -> Dispatcher:
        assert self._filter is not None
        checkpoints = expand.checkpoints(self.plan)
        shard = self.options.shard
        skipped = self._filter

        def repeat(variant: Any) -> None:  # counted only when --only/--limit would keep it
            if self._selected(variant):
                skipped.repeat(variant)

        if len(checkpoints) == 1:
            raw = {checkpoints[0]: expand.variants(self.plan, shard=shard, on_repeat=repeat)}
        else:
            raw = {c: expand.variants(self.plan, checkpoint=c, shard=shard, on_repeat=repeat)
                   for c in checkpoints}
        streams = {c: self._filter.wrap(self._select(s)) for c, s in raw.items()}
        share = max(1, self.summary.total // max(1, len(checkpoints)))
        dispatcher = Dispatcher(streams, backends=self.health,
                                counts={c: share for c in checkpoints}, can_serve=self._can_serve,
                                usable=lambda label: self.health[label].state == "ok")
        for label, loaded in self._loaded_at_start.items():
            dispatcher.note_loaded(label, loaded)
        return dispatcher

    def _select(self, stream: Any) -> Any:
        """``--only`` and ``--limit``: a subset of the job, chosen by id or by job order."""
        if not self.options.only and self.options.limit is None:
            return stream
        return (variant for variant in stream if self._selected(variant))

    def _selected(self, variant: Any) -> bool:
        only, limit = self._only, self.options.limit
        if only and variant.id not in only:
            return False
        return limit is None or variant.ordinal <= limit  # ordinals count from 1

    async def _run_stages(self) -> None:
        assert self.dispatcher is not None
        checkpoints = expand.checkpoints(self.plan)
        workers = [Worker(spec.label, self.clients[spec.label], self.health[spec.label],
                          self.dispatcher, self.policy, self.writer.channel, self.emit,
                          on_ok=self.supervisor.ok,
                          match_checkpoint=lambda loaded: match_checkpoint(loaded, checkpoints),
                          url=spec.url)
                   for spec in self.options.backends for _ in range(spec.concurrency)]
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self.writer.drain(), name="writer")
            pool = tg.create_task(self._workers(workers), name="workers")
            interrupt = self._interrupt_backends if self.options.interrupt_backends else None
            supervisor = tg.create_task(self.supervisor.watch(self.dispatcher, pool, interrupt),
                                        name="supervisor")
            refresher = tg.create_task(self.writer.refresh_loop(self._counts), name="refresher")
            try:
                await asyncio.wait({pool})
            finally:
                supervisor.cancel()
                refresher.cancel()
                await self.writer.channel.close()  # the writer finishes what is queued
            await writer

    async def _workers(self, workers: list[Worker]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for n, worker in enumerate(workers):
                    tg.create_task(worker.run(), name=f"worker {worker.label} #{n + 1}")
        except asyncio.CancelledError:
            if not self.supervisor.stopped:
                raise

    async def _interrupt_backends(self) -> None:
        assert self.dispatcher is not None
        busy = [self.clients[label] for label in self.health
                if self.dispatcher.in_flight_on(label)]
        await asyncio.gather(*(client.interrupt() for client in busy))

    # --- the end ------------------------------------------------------------------------------

    def _decide(self) -> None:
        """The run's outcome, from what was written and why it stopped."""
        s = self.summary
        s.done, s.images, s.failed = (self.writer.counts.done, self.writer.counts.images,
                                      self.writer.counts.failed)
        s.skipped = self._filter.skipped if self._filter else 0
        s.unfinished = max(0, s.total - s.done - s.failed - s.skipped)
        if s.status != "error":
            if self.supervisor.stalled:
                s.status = "stalled"
                s.message = (f"every backend has been down for over "
                             f"{self.spec.retry.patience_s:g} s (patience_s)")
            elif self.supervisor.stopped:
                s.status = "interrupted"
            elif s.failed:
                s.status = "failed"
            else:
                s.status = "complete"
                s.unfinished = 0
        s.backends = {h.label: h.as_dict() for h in self.health.values()}

    def _report(self) -> None:
        s = self.summary
        try:
            self._write_run_files(s.status)
        except OutputError as exc:
            log.error("%s", exc)
        self.emit(RunFinished(s.status, s.done, s.failed, s.skipped, s.unfinished, s.elapsed_s,
                              s.message, images=s.images, output=str(self.options.out_dir),
                              per_backend=s.backends, views=s.views))

    def _write_run_files(self, status: str) -> None:
        s = self.summary
        self.writer.write_run_files(status, total=s.total, skipped=s.skipped,
                                    unfinished=s.unfinished,
                                    backends=[b.label for b in self.options.backends],
                                    shard=self.options.shard, per_backend=s.backends)


def _first(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def match_checkpoint(loaded: Any, wanted: list[str | None]) -> str | None:
    """Which of the job's checkpoint names the backend's loaded model is, if any."""
    if not isinstance(loaded, str):
        return None
    for name in wanted:
        if name is not None and same_checkpoint(name, loaded):
            return name
    return None
