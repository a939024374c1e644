"""One run: expand -> resume filter -> dispatch -> generate -> write, inside one TaskGroup.

Structure (all inside ``Run.execute``)::

    TaskGroup
    ├── writer            drains a small bounded queue into the OutputStore (backpressure)
    ├── workers           exactly `concurrency` coroutines per backend, in their own TaskGroup;
    │                     each loops: wait until its backend is usable -> take -> generate
    └── supervisor        graceful stop (SIGINT/SIGTERM), grace period, hard stop, patience

The per-host limit *is* the number of workers; no semaphore shadows it. Retries go back to the
dispatcher with a tenacity-computed delay, so any healthy backend may take them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pipeline import __version__
from pipeline import expand
from pipeline.backends.webui.client import BackendClient
from pipeline.schedule.dispatch import CanServe, Dispatcher
from pipeline.errors import (BackendError, OutputError, RequestTimeout, SdbatchError,
                             SubstitutionError, TransportError)
from pipeline.events import (BackendChanged, Event, Listener, RunFinished, RunStarted,
                             Stopping, VariantFailed, VariantRetrying, VariantSkipped,
                             VariantWritten)
from pipeline.grid import LiveOutputs
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import RetryPolicy
from pipeline.job.schema import BackendSpec, ConvertSpec, JobSpec
from pipeline.model import Failed, Generated, Variant
from pipeline.job.naming import Namer
from pipeline.outputs import build_exporters
from pipeline.outputs.convert import convert_for_write
from pipeline.backends.webui.response import checkpoint_matches, title_parts
from pipeline.output.layout import JOB_COPY, RUN_FILE, now_iso
from pipeline.output.store import OutputStore

log = logging.getLogger(__name__)

WRITE_QUEUE_SIZE = 8
_STOP = object()


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

    @property
    def exit_code(self) -> int:
        return {"complete": 0, "interrupted": 130}.get(self.status, 1)


class Run:
    """Executes one job into one output directory. Create, then ``await execute()`` once."""

    def __init__(self, spec: JobSpec, options: RunOptions, *,
                 listeners: tuple[Listener, ...] = (), can_serve: CanServe | None = None,
                 plan: expand.Plan | None = None,
                 payload_extras: dict[str, dict[str, Any]] | None = None,
                 sampler_aliases: dict[str, dict[str, str]] | None = None) -> None:
        if not options.backends:
            raise SdbatchError("no backends to run on")
        self.spec = spec
        self.options = options
        self.plan = plan or expand.build_plan(spec)
        # Dataset formats (outputs:); a bad caption or column raises JobError here, before the run.
        self.exporters = build_exporters(spec, options.out_dir, plan=self.plan)
        # Grid sheets and the gallery, re-rendered at most every `every_s` while the run goes.
        self.live = LiveOutputs(options.out_dir, spec, every_s=options.refresh_every_s)
        self.store = OutputStore(options.out_dir, fsync=options.fsync,
                                 namer=Namer(spec.naming))
        self.policy = RetryPolicy(spec.retry, zero_waits=options.zero_waits)
        self.health = {b.label: BackendHealth(
            b.label, b.concurrency, bench_after_failures=spec.retry.bench_after_failures,
            cooldown_s=spec.retry.cooldown_s, cooldown_max_s=spec.retry.cooldown_max_s)
            for b in options.backends}
        self.summary = RunSummary()
        for backend in options.backends:
            if not backend.verify_tls and backend.url.startswith("https:"):
                log.warning("TLS certificate checks are OFF for %s (verify_tls: false): anyone "
                            "between you and it can read and change the traffic", backend.label)
        self._listeners = list(listeners)
        self._can_serve = can_serve
        self._payload_extras = payload_extras or {}
        self._sampler_aliases = sampler_aliases or {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue(WRITE_QUEUE_SIZE)
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._stop_reason = ""
        self._last_ok = time.monotonic()
        self.dispatcher: Dispatcher | None = None
        self.clients: dict[str, BackendClient] = {}

    # --- control ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "interrupted", *, hard: bool = False) -> None:
        """First call: finish in-flight work within the grace period. ``hard``: stop now."""
        self._stop_reason = self._stop_reason or reason
        if hard:
            self._hard_stop.set()
        self._stop.set()

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
        resume = await asyncio.to_thread(self.store.prepare)
        for exporter in self.exporters:  # after the manifest repair, so they match it exactly
            await asyncio.to_thread(exporter.rebuild)
        await asyncio.to_thread(self.live.maybe_refresh)  # resumed images show at once
        self.summary.total = expand.count(self.plan)
        if self.options.shard:
            index, n = self.options.shard
            self.summary.total = (self.summary.total + n - index) // n
        self._write_run_files("running")
        self.emit(RunStarted(self.summary.total, len(resume.complete),
                             tuple(self.health), str(self.options.out_dir),
                             self.options.simulated))
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self.clients = {b.label: BackendClient(session, b) for b in self.options.backends}
                for label, extras in self._payload_extras.items():
                    self.clients[label].payload_extras = extras
                for label, aliases in self._sampler_aliases.items():
                    self.clients[label].sampler_aliases = aliases
                await self.store.open()
                try:
                    await self._probe_all()
                    self.dispatcher = self._make_dispatcher(resume.complete)
                    await self._run_stages()
                finally:
                    await asyncio.shield(self.store.close())
                    await asyncio.shield(asyncio.to_thread(self.live.final))
        except* SdbatchError as group:
            error = group.exceptions[0]
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            self.summary.status = "error"
            self.summary.message = str(error)
            if not isinstance(error, OutputError):
                raise error from None
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            self._finish()
        return self.summary

    async def _probe_all(self) -> None:
        async def probe(label: str) -> None:
            health = self.health[label]
            try:
                options = await self.clients[label].probe()
            except BackendError as exc:
                health.bench(time.monotonic())
                health.last_error = str(exc)
                self.emit(BackendChanged(label, "down", str(exc)))
                return
            loaded = options.get("sd_model_checkpoint")
            health.loaded_checkpoint = _match_checkpoint(loaded, expand.checkpoints(self.plan))
            health.model_label = title_parts(loaded)[0] if isinstance(loaded, str) else None
            self.emit(BackendChanged(label, "ok", f"loaded {loaded}"))

        async with asyncio.TaskGroup() as tg:
            for label in self.health:
                tg.create_task(probe(label))

    def _make_dispatcher(self, complete: set[str]) -> Dispatcher:
        checkpoints = expand.checkpoints(self.plan)
        shard = self.options.shard
        if len(checkpoints) == 1:
            streams = {checkpoints[0]: expand.variants(self.plan, shard=shard)}
        else:
            streams = {c: expand.variants(self.plan, checkpoint=c, shard=shard)
                       for c in checkpoints}
        share = max(1, self.summary.total // max(1, len(checkpoints)))
        seen: set[int] = set()  # ids as ints: a template like {a|a} can repeat a variant

        def skip(variant: Variant) -> bool:
            key = int(variant.id, 16)
            if variant.id in complete or key in seen:
                return True
            seen.add(key)
            return False

        dispatcher = Dispatcher(streams, counts={c: share for c in checkpoints}, skip=skip,
                                can_serve=self._can_serve)
        dispatcher.backends = self.health
        return dispatcher

    async def _run_stages(self) -> None:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self._writer(), name="writer")
            workers = tg.create_task(self._workers(), name="workers")
            supervisor = tg.create_task(self._supervise(workers), name="supervisor")
            refresher = tg.create_task(self._refresh_outputs(), name="refresher")
            try:
                await asyncio.wait({workers})
            finally:
                supervisor.cancel()
                refresher.cancel()
                # Tell the writer to finish what is queued. If the run is failing the writer may
                # be cancelled and never drain the queue, so never block on a full one.
                while not writer.done():
                    try:
                        self._queue.put_nowait(_STOP)
                        break
                    except asyncio.QueueFull:
                        await asyncio.sleep(0.01)
            await writer

    async def _refresh_outputs(self) -> None:
        while True:
            await asyncio.sleep(self.live.every_s)
            await asyncio.to_thread(self.live.maybe_refresh)

    async def _workers(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for spec in self.options.backends:
                    for n in range(spec.concurrency):
                        tg.create_task(self._worker(self.health[spec.label],
                                                    self.clients[spec.label]),
                                       name=f"worker {spec.label} #{n + 1}")
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise

    async def _supervise(self, workers: asyncio.Task[None]) -> None:
        assert self.dispatcher is not None
        await self._stop.wait()
        await self.dispatcher.close()
        in_flight = self.dispatcher.in_flight
        grace_s = 0.0 if self._hard_stop.is_set() else self.options.grace_s
        self.emit(Stopping(self._stop_reason, grace_s, in_flight))
        hard = asyncio.create_task(self._hard_stop.wait())
        try:
            await asyncio.wait({workers, hard}, timeout=grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            hard.cancel()
        if not workers.done():
            if self.options.interrupt_backends:
                await self._interrupt_backends()
            workers.cancel()

    async def _interrupt_backends(self) -> None:
        async def interrupt(client: BackendClient) -> None:
            try:
                await client.post_json("/sdapi/v1/interrupt", {}, timeout_s=5)
            except BackendError as exc:
                log.warning("could not interrupt %s: %s", client.label, exc)

        busy = [self.clients[h.label] for h in self.health.values() if h.in_flight]
        await asyncio.gather(*(interrupt(c) for c in busy))

    # --- one worker ---------------------------------------------------------------------------

    async def _worker(self, health: BackendHealth, client: BackendClient) -> None:
        assert self.dispatcher is not None
        while True:
            if not await self._wait_usable(health, client):
                return
            variant = await self.dispatcher.take(health)
            if variant is None:
                return
            health.in_flight += 1
            try:
                reply = await client.generate(variant)
            except BackendError as exc:
                health.in_flight -= 1
                await self._on_error(health, variant, exc)
                continue
            except BaseException:
                health.in_flight -= 1
                raise
            health.in_flight -= 1
            now = time.monotonic()
            self._last_ok = now
            if variant.checkpoint is not None and variant.checkpoint != health.loaded_checkpoint:
                health.on_switch(variant.checkpoint, reply.elapsed_s)
            health.model_label = reply.model or health.model_label
            generations = sum(1 for i in reply.images if i.kind == "generation")
            health.on_success(now, generations, reply.elapsed_s)
            attempts = self.dispatcher.attempts.get(variant.id)
            await self._queue.put(Generated(
                variant=variant, images=reply.images, info=reply.info, backend=client.label,
                model=reply.model, attempts=attempts.count if attempts else 1,
                elapsed_s=reply.elapsed_s, params=reply.params))
            await self.dispatcher.finished(variant)

    async def _wait_usable(self, health: BackendHealth, client: BackendClient) -> bool:
        """Wait out a bench (probing when it ends); False when the run has no more work."""
        assert self.dispatcher is not None
        while health.state != "ok":
            if self.dispatcher.closed or self.dispatcher.drained:
                return False
            now = time.monotonic()
            self._check_patience(now)
            if now < health.benched_until:
                await asyncio.sleep(min(health.benched_until - now, 0.5))
                continue
            if health.state == "probing" or health.in_flight:
                # one probe at a time, and never beside a generation: the probe is a request too
                await asyncio.sleep(0.05)
                continue
            health.state = "probing"
            try:
                await client.probe()
                ok = True
            except BackendError as exc:
                ok = False
                health.last_error = str(exc)
            health.on_probe(time.monotonic(), ok)
            if ok:
                self._last_ok = time.monotonic()
            self.emit(BackendChanged(health.label, health.state,
                                     "back" if ok else health.last_error))
            await self.dispatcher.poke()
        return True

    def _check_patience(self, now: float) -> None:
        if all(h.state != "ok" for h in self.health.values()) and \
                now - self._last_ok > self.spec.retry.patience_s:
            self.request_stop("stalled")
            self._hard_stop.set()

    async def _on_error(self, health: BackendHealth, variant: Variant, exc: BackendError) -> None:
        assert self.dispatcher is not None
        now = time.monotonic()
        attempts = self.dispatcher.attempts[variant.id]
        attempts.last_error = exc
        if not isinstance(exc, (TransportError, RequestTimeout)):
            attempts.failed_on.add(health.label)
        if isinstance(exc, SubstitutionError):
            attempts.excluded.add(health.label)
        if health.on_failure(now, exc):
            self.emit(BackendChanged(health.label, "benched", str(exc)))
        everyone_excluded = attempts.excluded >= set(self.health)
        delay_s = None if everyone_excluded else self.policy.next_delay_s(attempts, exc, now)
        if delay_s is None:
            await self._queue.put(Failed(variant, str(exc), exc.status, attempts.count,
                                         health.label))
            await self.dispatcher.finished(variant)
            return
        self.emit(VariantRetrying(variant, health.label, str(exc), attempts.count, delay_s))
        await self.dispatcher.retry_later(variant, delay_s)

    # --- the writer stage ---------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, Generated):
                if self.spec.convert is not None:
                    item = await asyncio.to_thread(_converted, item, self.spec.convert)
                records = await self.store.write(item)
                for exporter in self.exporters:
                    await exporter.on_variant(records)
                self.summary.done += 1
                self.summary.images += sum(1 for r in records if r["kind"] == "generation")
                self.emit(VariantWritten(item, tuple(records)))
            else:
                await self.store.record_failure(item)
                self.summary.failed += 1
                self.emit(VariantFailed(item))

    # --- the end ------------------------------------------------------------------------------

    def _finish(self) -> None:
        s = self.summary
        if self.dispatcher is not None:
            s.skipped = self.dispatcher.skipped
            if self.dispatcher.skipped:
                self.emit(VariantSkipped(self.dispatcher.skipped))
        s.unfinished = max(0, s.total - s.done - s.failed - s.skipped)
        if s.status != "error":
            if self._stop_reason == "stalled":
                s.status = "stalled"
                s.message = (f"every backend has been down for over "
                             f"{self.spec.retry.patience_s:g} s (patience_s)")
            elif self._stop.is_set():
                s.status = "interrupted"
            elif s.failed:
                s.status = "failed"
            else:
                s.status = "complete"
                s.unfinished = 0
        s.backends = {h.label: {"state": h.state, "done": h.done, "images": h.images,
                                "failures": h.failures, "checkpoint_loads": h.checkpoint_loads,
                                "images_per_s": round(h.images_per_s(), 3)}
                      for h in self.health.values()}
        try:
            self._write_run_files(s.status)
        except OutputError as exc:
            log.error("%s", exc)
        self.emit(RunFinished(s.status, s.done, s.failed, s.skipped, s.unfinished, s.elapsed_s,
                              s.message))

    def _write_run_files(self, status: str) -> None:
        previous = self.store.read_run()
        run = {
            "sdbatch_version": __version__,
            "job": self.spec.source_path,
            "job_sha256": self.spec.content_sha256,
            "job_base_dir": self.spec.base_dir,
            "status": status,
            "started": previous.get("started") if status != "running" else now_iso(),
            "ended": None if status == "running" else now_iso(),
            "shard": list(self.options.shard) if self.options.shard else None,
            "backends": [b.label for b in self.options.backends],
            "counts": {"total": self.summary.total, "done": self.summary.done,
                       "images": self.summary.images, "failed": self.summary.failed,
                       "skipped": self.summary.skipped, "unfinished": self.summary.unfinished},
            "per_backend": self.summary.backends,
            "history": (previous.get("history") or [])[-50:],
        }
        if status != "running":
            run["history"].append({k: run[k] for k in ("started", "ended", "status",
                                                        "job_sha256", "counts")})
        self.store.write_json(RUN_FILE, run)
        if status == "running":
            self.store.write_json(JOB_COPY, public_job(self.spec))


def _converted(result: Generated, spec: ConvertSpec) -> Generated:
    """``result`` with every image re-encoded as ``spec`` asks (CPU work: run in a thread)."""
    return dataclasses.replace(
        result, images=tuple(convert_for_write(image, spec) for image in result.images))


def public_job(spec: JobSpec) -> dict[str, Any]:
    """The job as run, with no credentials: backends keep their URL and limits only."""
    data = spec.model_dump(mode="json", exclude={"source_path", "base_dir", "content_sha256"})
    data["backends"] = [{"url": b.url, "name": b.name, "concurrency": b.concurrency,
                         "timeout_s": b.timeout_s} for b in spec.backends]
    return data


def _match_checkpoint(loaded: Any, wanted: list[str | None]) -> str | None:
    """Which of the job's checkpoint names the backend's loaded title is, if any."""
    if not isinstance(loaded, str):
        return None
    stem, model_hash = title_parts(loaded)
    info = {"sd_model_name": stem, "sd_model_hash": model_hash}
    for name in wanted:
        if name is not None and checkpoint_matches(name, info):
            return name
    return None
