"""The run's supervisor: the one owner of why and how a run stops.

It watches for a stop request (Ctrl-C/SIGTERM: finish in-flight work within the grace period;
a second one, or ``hard``: stop now) and for patience running out (every backend down for longer
than ``patience_s``), tells the dispatcher to hand out no more work, waits out the grace period,
interrupts busy backends when asked to, and cancels the workers that are left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.events import AllBackendsDown, Event, Stopping
from pipeline.schedule.dispatch import Dispatcher
from pipeline.schedule.health import BackendHealth

SUPERVISE_EVERY_S = 0.25


class Supervisor:
    def __init__(self, health: Mapping[str, BackendHealth], *, patience_s: float,
                 grace_s: float, emit: Callable[[Event], None]) -> None:
        self.health = health
        self.patience_s = patience_s
        self.grace_s = grace_s
        self.emit = emit
        self.reason = ""
        self._stop = asyncio.Event()
        self._hard = asyncio.Event()
        self._last_ok = time.monotonic()

    def request_stop(self, reason: str = "interrupted", *, hard: bool = False) -> None:
        self.reason = self.reason or reason
        if hard:
            self._hard.set()
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def stalled(self) -> bool:
        return self.reason == "stalled"

    def ok(self, now: float) -> None:
        """A backend answered: patience starts again."""
        self._last_ok = now

    async def watch(self, dispatcher: Dispatcher, workers: asyncio.Task[None],
                    interrupt: Callable[[], Any] | None = None) -> None:
        """Run until a stop is asked for (or patience runs out), then stop the workers."""
        stop = asyncio.create_task(self._stop.wait())
        all_down = False
        try:
            while not stop.done():
                await asyncio.wait({stop}, timeout=SUPERVISE_EVERY_S)
                now = time.monotonic()
                down = all(h.state != "ok" for h in self.health.values())
                if down and not all_down:
                    self.emit(AllBackendsDown(
                        max(0.0, self.patience_s - (now - self._last_ok)),
                        tuple((h.label, h.last_error) for h in self.health.values())))
                all_down = down
                if down and now - self._last_ok > self.patience_s:
                    self.request_stop("stalled", hard=True)
        finally:
            stop.cancel()
        await dispatcher.close()
        grace_s = 0.0 if self._hard.is_set() else self.grace_s
        self.emit(Stopping(self.reason, grace_s, dispatcher.in_flight))
        hard = asyncio.create_task(self._hard.wait())
        try:
            await asyncio.wait({workers, hard}, timeout=grace_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            hard.cancel()
        if not workers.done():
            if interrupt is not None:
                await interrupt()
            workers.cancel()
