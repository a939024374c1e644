"""Keep the grid sheets and the gallery current while a run goes, cheaply.

    live = LiveOutputs(out_dir, spec, every_s=30)
    ... on each written variant:   if live.due(): await asyncio.to_thread(live.maybe_refresh)
    ... at the end of the run:     await asyncio.to_thread(live.final)

Rendering is synchronous CPU and disk work, so callers in the event loop run it in a thread.
Refreshes never overlap (a refresh that finds another in progress is skipped) and never raise:
a run must not fail because a preview could not be drawn; problems are logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import SdbatchError
from pipeline.grid.render import GridRenderer

if TYPE_CHECKING:
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)


class LiveOutputs:
    """Re-renders OUT/grids/* and OUT/index.html at most every ``every_s`` seconds.

    A refresh of a large directory takes real CPU (and the GIL) away from the run, so the
    interval also grows to ``BUSY_FACTOR`` times the last refresh's duration: previews never
    take more than about 1/BUSY_FACTOR of the time.
    """

    BUSY_FACTOR = 20.0

    def __init__(self, out_dir: Path, spec: JobSpec | None = None, *, every_s: float = 30.0,
                 gallery: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        from pipeline.gallery import GalleryWriter

        self.out_dir = Path(out_dir)
        self.every_s = every_s
        self._clock = clock
        self._renderer = GridRenderer(self.out_dir, spec)
        self._gallery = GalleryWriter(self.out_dir) if gallery else None
        self._last_s: float | None = None
        self._last_took_s = 0.0
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.refreshes = 0

    def due(self) -> bool:
        """True when the last refresh is at least ``every_s`` old (or there was none)."""
        interval_s = max(self.every_s, self.BUSY_FACTOR * self._last_took_s)
        return self._last_s is None or self._clock() - self._last_s >= interval_s

    def maybe_refresh(self) -> bool:
        """Refresh if due and no other refresh is running; True when it refreshed."""
        if not self.due() or not self._lock.acquire(blocking=False):
            return False
        try:
            self._refresh()
        finally:
            self._lock.release()
        return True

    def final(self) -> list[Path]:
        """Refresh now (waiting for a running refresh to end); the sheets' paths."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[Path]:
        self._last_s = self._clock()
        started = time.perf_counter()
        try:
            return self._render()
        finally:
            self._last_took_s = time.perf_counter() - started

    def _render(self) -> list[Path]:
        self.refreshes += 1
        sheets: list[Path] = []
        try:
            sheets = self._renderer.render()
        except Exception as exc:  # noqa: BLE001 - a preview must never break the run
            self._report("grid", exc)
        if self._gallery is not None:
            try:
                self._gallery.write()
            except Exception as exc:  # noqa: BLE001
                self._report("gallery", exc)
        return sheets

    def _report(self, what: str, exc: Exception) -> None:
        key = f"{what}:{type(exc).__name__}:{exc}"
        if key in self._reported:
            return
        self._reported.add(key)
        if isinstance(exc, (SdbatchError, OSError)):
            log.warning("could not update the %s: %s", what, exc)
        else:
            log.exception("could not update the %s", what)
