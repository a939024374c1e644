"""Keep the grid sheets and the gallery current while a run goes, cheaply.

    live = LiveOutputs(out_dir, spec, plan=plan, every_s=30)
    ... periodically:  await asyncio.to_thread(live.maybe_refresh, status="running", counts=c)
    ... at the end:    await asyncio.to_thread(live.final, status="complete", counts=c)
    ... then:          output_files(out_dir)   # the gallery and every sheet, for the summary

``status`` and ``counts`` are what the gallery's header shows (counts as in run.json: total,
done, images, failed, skipped, unfinished). The run passes the values it has *now*; without
them the gallery falls back to ``run.json``, which a run writes only at its start and its end
(so a page written in between, or just before the final run.json, would say "running, 0 of N").

Every view is refreshed: the job's sheets and each named view beside them (``views.Views``).
Rendering is synchronous CPU and disk work, so callers in the event loop run it in a thread.
Refreshes never overlap (a refresh that finds another in progress is skipped) and never raise:
a run must not fail because a preview could not be drawn; problems are logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SdbatchError
from pipeline.grid.views import OutputFiles, Views, output_files

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)


class LiveOutputs:
    """Re-renders OUT/grids/* and OUT/index.html at most every ``every_s`` seconds.

    A refresh of a large directory takes real CPU (and the GIL) away from the run, so the
    interval also grows to ``BUSY_FACTOR`` times the last refresh's duration: previews never
    take more than about 1/BUSY_FACTOR of the time. ``plan`` is the run's plan: the grid derives
    the cells it expects from it instead of expanding the job again.
    """

    BUSY_FACTOR = 20.0

    def __init__(self, out_dir: Path, spec: JobSpec | None = None, *, plan: Plan | None = None,
                 every_s: float = 30.0, gallery: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from pipeline.gallery import GalleryWriter

        self.out_dir = Path(out_dir)
        self.every_s = every_s
        self._clock = clock
        self._views = Views(self.out_dir, spec, plan=plan, on_error=self._report_view)
        self._gallery = GalleryWriter(self.out_dir, spec=spec, plan=plan) if gallery else None
        self._last_s: float | None = None
        self._last_took_s = 0.0
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.refreshes = 0

    def due(self) -> bool:
        """True when the last refresh is at least ``every_s`` old (or there was none)."""
        interval_s = max(self.every_s, self.BUSY_FACTOR * self._last_took_s)
        return self._last_s is None or self._clock() - self._last_s >= interval_s

    def maybe_refresh(self, *, status: str | None = None,
                      counts: Mapping[str, Any] | None = None) -> bool:
        """Refresh if due and no other refresh is running; True when it refreshed."""
        if not self.due() or not self._lock.acquire(blocking=False):
            return False
        try:
            self._refresh(status, counts)
        finally:
            self._lock.release()
        return True

    def final(self, *, status: str | None = None,
              counts: Mapping[str, Any] | None = None) -> list[Path]:
        """Refresh now (waiting for a running refresh to end), with the run's final ``status``
        and ``counts``; the paths of every view's sheets (``output_files`` has the gallery)."""
        with self._lock:
            return self._refresh(status, counts)

    def files(self) -> OutputFiles:
        """The gallery and the sheets of every view, as on disk now."""
        return output_files(self.out_dir)

    def _refresh(self, status: str | None, counts: Mapping[str, Any] | None) -> list[Path]:
        self._last_s = self._clock()
        started = time.perf_counter()
        try:
            return self._render(status, counts)
        finally:
            self._last_took_s = time.perf_counter() - started

    def _render(self, status: str | None, counts: Mapping[str, Any] | None) -> list[Path]:
        self.refreshes += 1
        sheets: list[Path] = []
        try:
            sheets = self._views.render()
        except Exception as exc:  # noqa: BLE001 - a preview must never break the run
            self._report("grid", exc)
        if self._gallery is not None:
            try:
                self._gallery.write(status=status, counts=counts)
            except Exception as exc:  # noqa: BLE001
                self._report("gallery", exc)
        return sheets

    def _report_view(self, view: str, exc: Exception) -> None:
        self._report("grid" if view == "job" else f"grid view {view!r}", exc)

    def _report(self, what: str, exc: Exception) -> None:
        key = f"{what}:{type(exc).__name__}:{exc}"
        if key in self._reported:
            return
        self._reported.add(key)
        if isinstance(exc, (SdbatchError, OSError)):
            log.warning("could not update the %s: %s", what, exc)
        else:
            log.exception("could not update the %s", what)
