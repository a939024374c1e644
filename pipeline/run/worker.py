"""One worker: a loop that takes a variant for its backend, generates it, and hands the outcome on.

A run starts exactly ``concurrency`` workers per backend (the number of workers *is* the per-host
limit). Each loops: wait until its backend is usable (probing it when a bench ends) -> take ->
generate -> send the ``Generated`` to the writer, or decide what a failure means:

- a retryable error goes back to the dispatcher with a tenacity-computed delay, so any backend may
  take it (one that has not failed it first);
- a failure of the *backend* (401/403/404/413 to a generation, a substitution) excludes that
  backend for this variant; the variant fails for good only when no usable backend that has not
  tried it is left, or the retry policy's attempts and time are spent;
- a 429 pauses the backend for ``Retry-After`` and is not counted as an attempt.

Testable with a fake ``Backend``: nothing here opens a socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.backends.base import Backend
from pipeline.errors import (BackendError, BadResponseError, HTTPStatusError, InputError,
                             RequestTimeout, SubstitutionError, TransportError)
from pipeline.imagebytes import structure_problem
from pipeline.events import (BackendChanged, CheckpointSwitched, Event, VariantRetrying,
                             VariantStarted)
from pipeline.model import Failed, Generated, Outcome, Variant
from pipeline.run.channel import Channel
from pipeline.schedule.dispatch import Dispatcher
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import RetryPolicy

POLL_S = 0.05


@dataclass(slots=True)
class Worker:
    label: str
    client: Backend
    health: BackendHealth
    dispatcher: Dispatcher
    policy: RetryPolicy
    outbox: Channel[Outcome]
    emit: Callable[[Event], None]
    on_ok: Callable[[float], None] = lambda now: None  # the run's patience clock
    match_checkpoint: Callable[[str | None], str | None] = lambda loaded: None
    url: str = ""  # the backend's URL without credentials, for the records

    async def run(self) -> None:
        while True:
            if not await self._wait_usable():
                return
            variant = await self.dispatcher.take(self.label)
            if variant is None:
                return
            self.emit(VariantStarted(variant.id, self.label))
            try:
                reply = await self.client.generate(variant)
            except BackendError as exc:
                await self._on_error(variant, exc)
                continue
            except BaseException:
                await self.dispatcher.retry_later(self.label, variant, 0.0)
                raise
            problem = _image_problem(reply)
            if problem:
                await self._on_error(variant, BadResponseError(f"{self.label}: {problem}",
                                                               backend=self.label))
                continue
            now = time.monotonic()
            self.on_ok(now)
            attempts = self.dispatcher.attempts.get(variant.id)
            result = Generated(
                variant=variant, images=reply.images, info=reply.info, backend=self.label,
                model=reply.model, attempts=attempts.count if attempts else 1,
                elapsed_s=reply.elapsed_s, params=reply.params, backend_url=self.url)
            await self.outbox.send(result)
            switched = await self.dispatcher.finished(self.label, variant)
            before_s = self.health.load_s
            generations = sum(1 for i in reply.images if i.kind == "generation")
            self.health.on_success(now, generations, reply.elapsed_s, switched=switched)
            if switched and variant.checkpoint is not None:
                self.emit(CheckpointSwitched(self.label, variant.checkpoint,
                                             self.health.load_s - before_s,
                                             self.dispatcher.checkpoints_waiting()))

    async def _wait_usable(self) -> bool:
        """Wait out a bench or a pause (probing when a bench ends); False when no work is left."""
        health = self.health
        while True:
            if self.dispatcher.closed or self.dispatcher.drained:
                return False
            now = time.monotonic()
            if health.state == "ok":
                if now < health.paused_until:
                    await asyncio.sleep(min(health.paused_until - now, 0.5))
                    continue
                return True
            if now < health.benched_until:
                await asyncio.sleep(min(health.benched_until - now, 0.5))
                continue
            if health.state == "probing" or self.dispatcher.in_flight_on(self.label):
                # one probe at a time, and never beside a generation: the probe is a request too
                await asyncio.sleep(POLL_S)
                continue
            health.state = "probing"
            try:
                probe = await self._probe()
                if probe is None:  # the run has no work left: nothing to wait for
                    health.state = "benched"
                    return False
            except BackendError as exc:
                health.last_error = str(exc)
                health.on_probe(time.monotonic(), False)
                self.emit(BackendChanged(self.label, health.state, str(exc),
                                         retry_in_s=health.benched_until - time.monotonic()))
            else:
                health.on_probe(time.monotonic(), True)
                self.on_ok(time.monotonic())
                self.dispatcher.note_loaded(self.label, self.match_checkpoint(probe.loaded_model))
                self.emit(BackendChanged(self.label, "ok", "back", model=probe.loaded_model))
            await self.dispatcher.poke()

    async def _probe(self) -> Any:
        """The client's probe; abandoned (None) as soon as the run has no work left or stops,
        so a backend that never answers holds up no ending."""
        task = asyncio.ensure_future(self.client.probe())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=POLL_S)
                if done:
                    return task.result()
                if self.dispatcher.closed or self.dispatcher.drained:
                    return None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _on_error(self, variant: Variant, exc: BackendError) -> None:
        now = time.monotonic()
        attempts = self.dispatcher.attempts[variant.id]
        attempts.last_error = exc
        if isinstance(exc, HTTPStatusError) and exc.rate_limited:
            attempts.count -= 1  # the server asked us to wait: not an attempt
            self.health.on_failure(now, exc)
            self.emit(VariantRetrying(variant, self.label, str(exc), attempts.count,
                                      exc.retry_after_s or 1.0))
            await self.dispatcher.retry_later(self.label, variant, exc.retry_after_s or 1.0)
            return
        if not isinstance(exc, (TransportError, RequestTimeout)):
            attempts.failed_on.add(self.label)
        if isinstance(exc, SubstitutionError) or (isinstance(exc, HTTPStatusError)
                                                  and exc.backend_fault):
            attempts.excluded.add(self.label)
        if self.health.on_failure(now, exc):
            self.emit(BackendChanged(self.label, "benched", str(exc),
                                     retry_in_s=self.health.benched_until - now))
        delay_s = self.policy.next_delay_s(attempts, exc, now)
        if isinstance(exc, InputError):
            delay_s = None  # the input file changed or vanished: no backend can do better
        elif delay_s is None \
                and len(attempts.failed_on) < self.policy.spec.max_backends_per_variant \
                and self.dispatcher.untried_elsewhere(self.label, variant):
            delay_s = 0.0  # never fail a variant for good while a backend that has not tried it can
        if delay_s is None or not self.dispatcher.anyone_may_take(variant):
            await self.outbox.send(Failed(variant, str(exc), exc.status, attempts.count,
                                          self.label))
            await self.dispatcher.finished(self.label, variant)
            return
        self.emit(VariantRetrying(variant, self.label, str(exc), attempts.count, delay_s))
        await self.dispatcher.retry_later(self.label, variant, delay_s)


def _image_problem(reply: Any) -> str | None:
    """Why a reply's images must not be saved (a bare signature, half a PNG), or None."""
    for image in reply.images:
        if image.kind != "generation":
            continue
        problem = structure_problem(image.data, image.format)
        if problem:
            return f"image {image.index}: {problem}"
    return None
