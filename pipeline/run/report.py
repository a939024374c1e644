"""Progress and the end-of-run summary, from events only: the one module (besides the CLI) that
writes to the terminal.

On a terminal: a live bar (done/total, images/s, ETA) over a per-backend table (state, model,
in flight, done, failures, images/s). Not a terminal (CI, nohup, a log file): one plain line every
``interval_s`` with the same figures. ``quiet``: nothing but errors. ``JsonEvents`` writes one
JSON object per event instead (``run --json``).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, TextIO

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn)
from rich.table import Table
from rich.text import Text  # names from servers and jobs are never markup

from pipeline.events import (AllBackendsDown, BackendChanged, CheckpointSwitched, Event,
                             RunFinished, RunStarted, Stopping, VariantFailed, VariantRetrying,
                             VariantSkipped, VariantStarted, VariantWritten)

RATE_WINDOW_S = 60.0
_VARIABLE = re.compile(r"\b[0-9a-f]{16}\b|\b\d+(\.\d+)?\b")


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass(slots=True)
class _Backend:
    label: str
    state: str = "starting"
    model: str | None = None
    in_flight: int = 0
    done: int = 0
    images: int = 0
    failures: int = 0
    first_at: float | None = None
    last_at: float | None = None
    detail: str = ""

    def images_per_s(self) -> float:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.images / (self.last_at - self.first_at)


class Reporter:
    """Listens to a run's events and draws progress; call ``await render()`` as a task."""

    def __init__(self, *, stream: TextIO | None = None, quiet: bool = False,
                 interval_s: float = 10.0, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval_s = interval_s
        self.live = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self._done_times: deque[tuple[float, int]] = deque()
        self._total = 0
        self._already = 0
        self._skipped = 0
        self._done = self._failed = self._images = self._retries = 0
        self._output = ""
        self._backends: dict[str, _Backend] = {}
        self._load_s = 0.0
        self._loads = 0
        self._loads_waiting = 0
        self._give_up_at: float | None = None
        self._failure_kinds: dict[str, list[Any]] = {}
        self.finished: RunFinished | None = None

    # --- events -------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, RunStarted):
            self._total, self._already, self._output = event.total, event.already_done, event.output
            self._backends = {label: _Backend(label) for label in event.backends}
            where = " (built-in simulated backend)" if event.simulated else ""
            self._say(f"sdbatch: {event.total} variants -> {event.output}; "
                      f"{event.already_done} already done there; backends: "
                      f"{', '.join(event.backends)}{where}")
            for notice in event.notices:
                self._say(f"sdbatch: {notice}", style="yellow")
        elif isinstance(event, VariantStarted):
            self._backend(event.backend).in_flight += 1
        elif isinstance(event, VariantWritten):
            images = event.images
            self._done += 1
            self._images += images
            b = self._backend(event.result.backend)
            b.in_flight = max(0, b.in_flight - 1)
            b.done += 1
            b.images += images
            b.model = event.result.model or b.model
            if b.first_at is None:
                b.first_at = now - event.result.elapsed_s
            b.last_at = now
            self._done_times.append((now, images))
            while self._done_times and now - self._done_times[0][0] > RATE_WINDOW_S:
                self._done_times.popleft()
        elif isinstance(event, VariantSkipped):
            self._skipped = event.count
        elif isinstance(event, VariantFailed):
            self._on_failed(event)
        elif isinstance(event, VariantRetrying):
            self._retries += 1
            b = self._backend(event.backend)
            b.in_flight = max(0, b.in_flight - 1)
            b.failures += 1
            if not self.live:
                self._say(f"retry {event.attempt} of {event.variant.id} in {event.delay_s:.1f}s "
                          f"({event.backend}): {event.error}", style="yellow")
        elif isinstance(event, BackendChanged):
            self._on_backend(event, now)
        elif isinstance(event, AllBackendsDown):
            self._give_up_at = now + event.give_up_in_s
            self._say(f"all backends down; giving up in {format_duration(event.give_up_in_s)} "
                      "(patience_s) unless one comes back", style="red", force=True)
        elif isinstance(event, CheckpointSwitched):
            self._loads += 1
            self._load_s += event.load_s
            self._loads_waiting = event.loads_waiting
        elif isinstance(event, Stopping):
            self._say(f"stopping ({event.reason}): no new work; waiting up to "
                      f"{event.grace_s:g} s for {event.in_flight} request(s) in flight. "
                      "Press Ctrl-C again to stop at once.", style="yellow", force=True)
        elif isinstance(event, RunFinished):
            self.finished = event

    def _backend(self, label: str) -> _Backend:
        if label not in self._backends:
            self._backends[label] = _Backend(label)
        return self._backends[label]

    def _on_backend(self, event: BackendChanged, now: float) -> None:
        b = self._backend(event.backend)
        first = b.state == "starting"
        b.state, b.detail = event.state, event.detail
        b.model = event.model or b.model
        if event.state == "ok":
            self._give_up_at = None
            if event.detail == "back":
                self._say(f"backend {event.backend}: back", style="green")
            return
        when = f"; next try in {format_duration(event.retry_in_s)}" if event.retry_in_s else ""
        what = "down at start" if first else event.state
        self._say(f"backend {event.backend}: {what}{when}: {event.detail}", style="yellow",
                  force=first)

    def _on_failed(self, event: VariantFailed) -> None:
        f = event.failed
        self._failed += 1
        if f.backend:
            b = self._backend(f.backend)
            b.in_flight = max(0, b.in_flight - 1)
            b.failures += 1
        kind = _VARIABLE.sub("#", f.error)
        seen = self._failure_kinds.setdefault(kind, [0, f])
        seen[0] += 1
        if seen[0] == 1:
            self._say(f"failed for good after {f.attempts} attempt(s): variant {f.variant.id} "
                      f"({_short(f.variant.prompt)}): {f.error}", style="red")
        elif seen[0] in (2, 10, 100, 1000):
            self._say(f"{seen[0]} variants failed the same way so far ({_short(f.error, 80)}); "
                      "details in failures.jsonl", style="red")

    def _say(self, text: str, *, style: str | None = None, force: bool = False) -> None:
        if self.quiet and not force and style != "red":
            return
        self.console.print(text, style=style, markup=False)

    # --- figures ------------------------------------------------------------------------------

    def images_per_s(self) -> float:
        if len(self._done_times) < 2:
            return 0.0
        span = self._done_times[-1][0] - self._done_times[0][0]
        images = sum(n for _, n in list(self._done_times)[1:])
        return images / span if span > 0 else 0.0

    def variants_per_s(self) -> float:
        if len(self._done_times) < 2:
            return 0.0
        span = self._done_times[-1][0] - self._done_times[0][0]
        return (len(self._done_times) - 1) / span if span > 0 else 0.0

    def finished_count(self) -> int:
        return self._done + self._failed + self._skipped

    def remaining(self) -> int:
        # Resumed variants are skipped as the stream reaches them; until then, count them anyway.
        return max(0, self._total - self._done - self._failed - max(self._skipped, self._already))

    def eta_s(self) -> float | None:
        """Remaining variants at the recent rate, plus the checkpoint loads still to come."""
        rate = self.variants_per_s()
        if rate <= 0:
            return None
        eta = self.remaining() / rate
        if self._loads:
            usable = max(1, sum(b.state == "ok" for b in self._backends.values()))
            eta += self._loads_waiting * (self._load_s / self._loads) / usable
        return eta

    def eta_text(self) -> str:
        if self._give_up_at is not None:
            left = max(0.0, self._give_up_at - time.monotonic())
            return f"all backends down; giving up in {format_duration(left)} (patience_s)"
        if self._done == 0 and any(b.state == "starting" for b in self._backends.values()):
            return "waiting for the first image"
        return f"ETA {format_duration(self.eta_s())}"

    def status_line(self) -> str:
        finished = self.finished_count()
        pct = 100.0 * finished / self._total if self._total else 100.0
        parts = [f"{finished}/{self._total} variants ({pct:.1f}%)", f"{self._images} images",
                 f"{self.images_per_s():.2f} img/s", self.eta_text(), f"failed {self._failed}",
                 f"retries {self._retries}"]
        for b in self._backends.values():
            parts.append(f"[{b.label} {b.state} model={b.model or '-'} in-flight {b.in_flight} "
                         f"done {b.done} fail {b.failures} {b.images_per_s():.2f} img/s]")
        return ", ".join(parts[:6]) + " " + " ".join(parts[6:])

    def backend_table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("backend", "state", "model", "in flight", "done", "failures", "img/s"):
            table.add_column(col, justify="right" if col in ("in flight", "done", "failures",
                                                             "img/s") else "left",
                             overflow="fold")
        for b in self._backends.values():
            style = {"ok": "green", "benched": "yellow", "probing": "yellow"}.get(b.state, "red")
            table.add_row(Text(b.label), Text(b.state, style=style), Text(b.model or "-"),
                          str(b.in_flight),
                          str(b.done), str(b.failures), f"{b.images_per_s():.2f}")
        return table

    # --- drawing ------------------------------------------------------------------------------

    async def render(self) -> None:
        """Draw until cancelled."""
        if self.quiet:
            await asyncio.Event().wait()
        if not self.live:
            while True:
                await asyncio.sleep(self.interval_s)
                self.console.print(f"[{time.strftime('%H:%M:%S')}] {self.status_line()}",
                                   markup=False)
        progress = Progress(TextColumn("[bold]variants"), BarColumn(), MofNCompleteColumn(),
                            TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                            TextColumn("{task.fields[eta]}"), TextColumn("retries {task.fields[retries]}"),
                            TimeElapsedColumn(), console=self.console)
        task = progress.add_task("run", total=self._total or None, rate="", eta="?", retries=0)
        with Live(Group(progress, self.backend_table()), console=self.console,
                  refresh_per_second=4, transient=False) as live:
            try:
                while True:
                    progress.update(task, total=self._total or None,
                                    completed=self.finished_count(),
                                    rate=f"{self.images_per_s():.2f} img/s",
                                    eta=self.eta_text(), retries=self._retries)
                    live.update(Group(progress, self.backend_table()))
                    await asyncio.sleep(0.25)
            finally:
                progress.update(task, completed=self.finished_count())
                live.update(Group(progress, self.backend_table()))

    def summary(self, command_hint: str) -> None:
        s = self.finished
        if s is None or (self.quiet and s.status == "complete"):
            return
        style = {"complete": "green", "interrupted": "yellow"}.get(s.status, "red")
        self.console.print(
            f"{s.status}: {s.done} variants ({s.images} images) written, {s.failed} failed, "
            f"{s.skipped} already done, {s.unfinished} unfinished, in "
            f"{format_duration(s.elapsed_s)} -> {s.output}", style=style, markup=False)
        if s.message:
            self.console.print(s.message, style=style, markup=False)
        if not self.quiet and len(self._backends) > 1:
            self.console.print(self.backend_table())
        for kind, (count, first) in self._failure_kinds.items():
            if count > 1:
                self.console.print(f"{count} variants failed: {_short(first.error, 160)} "
                                   f"(first: {first.variant.id})", style="red", markup=False)
        if s.failed:
            self.console.print(f"failures are listed in {s.output}/failures.jsonl; rerun the same "
                               "command to try them again", markup=False)
        if s.views and not self.quiet:
            gallery = [v for v in s.views if v.endswith("index.html")]
            sheets = [v for v in s.views if not v.endswith("index.html")]
            if gallery:
                self.console.print(f"gallery: {s.output}/{gallery[0]} (open it in a browser)",
                                   markup=False)
            if sheets:
                shown = ", ".join(sheets[:4]) + (f" and {len(sheets) - 4} more"
                                                 if len(sheets) > 4 else "")
                self.console.print(f"grid sheets: {shown}", markup=False)
        if s.status in ("interrupted", "stalled", "error") or s.unfinished:
            self.console.print(f"to finish the rest, run the same command again:\n  {command_hint}",
                               markup=False)


class JsonEvents:
    """``run --json``: one JSON object per event on ``stream`` (stdout), for scripts."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(orjson.dumps(event_dict(event), default=str).decode() + "\n")
        self.stream.flush()


def event_dict(event: Event) -> dict[str, Any]:
    """An event as plain data: variants by id, images by their manifest records, no bytes."""
    name = type(event).__name__
    if isinstance(event, VariantWritten):
        return {"event": name, "id": event.result.variant.id, "backend": event.result.backend,
                "records": list(event.records)}
    if isinstance(event, VariantFailed):
        f = event.failed
        return {"event": name, "id": f.variant.id, "error": f.error, "status": f.status,
                "attempts": f.attempts, "backend": f.backend}
    if isinstance(event, VariantRetrying):
        return {"event": name, "id": event.variant.id, "backend": event.backend,
                "error": event.error, "attempt": event.attempt, "delay_s": event.delay_s}
    data = asdict(event) if is_dataclass(event) else {}
    return {"event": name, **data}


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
