"""Progress and the end-of-run summary: the only module (besides the CLI) that writes to the terminal.

On a terminal: a live bar (done/total, images/s, ETA) over a per-backend table (state, loaded
checkpoint, in flight, done, failures, images/s). Not a terminal (CI, nohup, a log file): one plain
line every ``interval_s`` with the same figures. ``quiet``: nothing but errors.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn)
from rich.table import Table

from pipeline.events import (BackendChanged, Event, RunFinished, RunStarted, Stopping,
                             VariantFailed, VariantRetrying, VariantSkipped, VariantWritten)

if TYPE_CHECKING:
    from pipeline.run.runner import Run

RATE_WINDOW_S = 60.0


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


class Reporter:
    """Listens to a run's events and draws progress; call ``await render()`` as a task."""

    def __init__(self, run: Run, *, stream: TextIO | None = None, quiet: bool = False,
                 interval_s: float = 10.0, live: bool | None = None) -> None:
        self.run = run
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval_s = interval_s
        self.live = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self._done_times: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()
        self._total = 0
        self._already = 0
        self._skipped = 0

    # --- events -------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, RunStarted):
            self._total = event.total
            self._already = event.already_done
            where = " (built-in simulated backend)" if event.simulated else ""
            self._say(f"sdbatch: {event.total} variants -> {event.output}; "
                      f"{event.already_done} already done there; backends: "
                      f"{', '.join(event.backends)}{where}")
        elif isinstance(event, VariantWritten):
            images = sum(1 for r in event.records if r["kind"] == "generation")
            self._done_times.append((now, images))
            while self._done_times and now - self._done_times[0][0] > RATE_WINDOW_S:
                self._done_times.popleft()
        elif isinstance(event, VariantSkipped):
            self._skipped = event.count
        elif isinstance(event, VariantFailed):
            f = event.failed
            self._say(f"failed for good after {f.attempts} attempt(s): variant {f.variant.id} "
                      f"({_short(f.variant.prompt)}): {f.error}", style="red")
        elif isinstance(event, VariantRetrying) and not self.live:
            self._say(f"retry {event.attempt} of {event.variant.id} in {event.delay_s:.1f}s: "
                      f"{event.error}", style="yellow", verbose=True)
        elif isinstance(event, BackendChanged):
            if event.state != "ok" or event.detail == "back":
                self._say(f"backend {event.backend}: {event.state}"
                          f"{': ' + event.detail if event.detail else ''}", style="yellow")
        elif isinstance(event, Stopping):
            self._say(f"stopping ({event.reason}): no new work; waiting up to "
                      f"{event.grace_s:g} s for {event.in_flight} request(s) in flight. "
                      "Press Ctrl-C again to stop at once.", style="yellow", force=True)
        elif isinstance(event, RunFinished):
            pass

    def _say(self, text: str, *, style: str | None = None, force: bool = False,
             verbose: bool = False) -> None:
        if self.quiet and not force and style != "red":
            return
        if verbose:
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

    def remaining(self) -> int:
        s = self.run.summary
        skipped = self.run.dispatcher.skipped if self.run.dispatcher else self._skipped
        # Resumed variants are skipped as the stream reaches them; until then, count them anyway.
        return max(0, self._total - s.done - s.failed - max(skipped, self._already))

    def eta_s(self) -> float | None:
        """Remaining variants at the recent rate, plus the checkpoint loads still to come."""
        rate = self.variants_per_s()
        if rate <= 0:
            return None
        eta = self.remaining() / rate
        loads = sum(h.checkpoint_loads for h in self.run.health.values())
        if loads and self.run.dispatcher is not None:
            per_load_s = sum(h.switch_s for h in self.run.health.values()) / loads
            backends = max(1, sum(h.state == "ok" for h in self.run.health.values()))
            eta += self.run.dispatcher.checkpoints_waiting() * per_load_s / backends
        return eta

    def status_line(self) -> str:
        s = self.run.summary
        skipped = self.run.dispatcher.skipped if self.run.dispatcher else 0
        finished = s.done + s.failed + skipped
        pct = 100.0 * finished / self._total if self._total else 100.0
        parts = [f"{finished}/{self._total} variants ({pct:.1f}%)",
                 f"{s.images} images", f"{self.images_per_s():.2f} img/s",
                 f"ETA {format_duration(self.eta_s())}", f"failed {s.failed}"]
        for h in self.run.health.values():
            parts.append(f"[{h.label} {h.state} model={h.model_label or '-'} "
                         f"in-flight {h.in_flight} done {h.done} fail {h.failures} "
                         f"{h.images_per_s():.2f} img/s]")
        return ", ".join(parts[:5]) + " " + " ".join(parts[5:])

    def backend_table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("backend", "state", "checkpoint", "in flight", "done", "failures", "img/s"):
            table.add_column(col, justify="right" if col in ("in flight", "done", "failures",
                                                             "img/s") else "left")
        for h in self.run.health.values():
            style = {"ok": "green", "benched": "yellow", "probing": "yellow"}.get(h.state, "red")
            table.add_row(h.label, f"[{style}]{h.state}[/]",
                          h.model_label or h.loaded_checkpoint or "-",
                          str(h.in_flight), str(h.done), str(h.failures),
                          f"{h.images_per_s():.2f}")
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
                            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
                            console=self.console)
        task = progress.add_task("run", total=self._total or None, rate="", eta="?")
        with Live(Group(progress, self.backend_table()), console=self.console,
                  refresh_per_second=4, transient=False) as live:
            try:
                while True:
                    s = self.run.summary
                    skipped = self.run.dispatcher.skipped if self.run.dispatcher else 0
                    progress.update(task, total=self._total or None,
                                    completed=s.done + s.failed + skipped,
                                    rate=f"{self.images_per_s():.2f} img/s",
                                    eta=format_duration(self.eta_s()))
                    live.update(Group(progress, self.backend_table()))
                    await asyncio.sleep(0.25)
            finally:
                s = self.run.summary
                progress.update(task, completed=s.done + s.failed + s.skipped)
                live.update(Group(progress, self.backend_table()))

    def summary(self, command_hint: str) -> None:
        s = self.run.summary
        if self.quiet and s.status == "complete":
            return
        style = {"complete": "green", "interrupted": "yellow"}.get(s.status, "red")
        self.console.print(
            f"{s.status}: {s.done} variants ({s.images} images) written, {s.failed} failed, "
            f"{s.skipped} already done, {s.unfinished} unfinished, in "
            f"{format_duration(s.elapsed_s)} -> {self.run.options.out_dir}",
            style=style, markup=False)
        if s.message:
            self.console.print(s.message, style=style, markup=False)
        if not self.quiet and len(self.run.health) > 1:
            self.console.print(self.backend_table())
        if s.failed:
            self.console.print(f"failures are listed in {self.run.options.out_dir}/failures.jsonl;"
                               " rerun the same command to try them again", markup=False)
        if s.status in ("interrupted", "stalled", "error") or s.unfinished:
            self.console.print(f"to finish the rest, run the same command again:\n  {command_hint}",
                               markup=False)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
