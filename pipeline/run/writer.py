"""The writer stage: the one owner of the output directory during a run.

Workers send ``Generated`` / ``Failed`` values into a small bounded channel; the writer converts
(when the job asks), writes the files and manifest lines through the ``OutputStore``, feeds the
dataset exporters, and emits ``VariantWritten`` / ``VariantFailed``. Only after the manifest line
is a variant done. Grid sheets and the gallery are refreshed from here too (throttled), so nothing
else writes into the output directory while a run goes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from pipeline.errors import OutputError
from pipeline.events import Event, VariantFailed, VariantWritten
from pipeline.grid import LiveOutputs, output_files
from pipeline.job.schema import ConvertSpec, JobSpec
from pipeline.model import Failed, Generated, Outcome
from pipeline.output.resume import ResumeState
from pipeline.output.runfiles import write_run_files
from pipeline.output.store import OutputStore
from pipeline.outputs import build_exporters
from pipeline.outputs.convert import convert_for_write
from pipeline.run.channel import Channel

log = logging.getLogger(__name__)

WRITE_QUEUE_SIZE = 8


@dataclasses.dataclass(slots=True)
class WriteCounts:
    done: int = 0
    images: int = 0
    failed: int = 0


class Writer:
    """Create, ``prepare()`` (resume facts), run ``drain()`` as a task, ``close()`` the channel."""

    def __init__(self, spec: JobSpec, store: OutputStore, *, emit: Callable[[Event], None],
                 plan: Any = None, refresh_every_s: float = 30.0,
                 results: Channel[VariantWritten | VariantFailed] | None = None) -> None:
        self.spec = spec
        self.store = store
        self.emit = emit
        # Dataset formats (outputs:); a bad caption or column raises JobError here, before the run.
        self.exporters = build_exporters(spec, store.root, plan=plan, fsync=store.fsync)
        # Grid sheets and the gallery, re-rendered at most every `every_s` while the run goes.
        self.live = LiveOutputs(store.root, spec, plan=plan, every_s=refresh_every_s)
        self.channel: Channel[Outcome] = Channel(WRITE_QUEUE_SIZE)
        self.counts = WriteCounts()
        self.results = results  # the Python API's bounded stream of outcomes (backpressure)

    def prepare(self, *, verify: bool = False, lock_wait_s: float = 0.0) -> ResumeState:
        """Blocking (run it in a thread): lay out the directory, learn what is done."""
        resume = self.store.prepare(verify=verify, lock_wait_s=lock_wait_s)
        for exporter in self.exporters:  # after the manifest repair, so they match it exactly
            exporter.rebuild()
        self.live.maybe_refresh()  # resumed images show at once
        return resume

    def write_run_files(self, status: str, *, total: int, skipped: int, unfinished: int,
                        backends: list[str], shard: tuple[int, int] | None,
                        per_backend: dict[str, Any] | None = None) -> None:
        counts = {"total": total, "done": self.counts.done, "images": self.counts.images,
                  "failed": self.counts.failed, "skipped": skipped, "unfinished": unfinished}
        write_run_files(self.store, self.spec, status=status, counts=counts, backends=backends,
                        shard=shard, per_backend=per_backend)

    async def drain(self) -> None:
        """Write everything sent until the channel is closed and empty."""
        async for item in self.channel:
            if isinstance(item, Generated):
                await self._write(item)
            else:
                await self._fail(item)

    async def _write(self, item: Generated) -> None:
        if self.spec.convert is not None:
            item = await asyncio.to_thread(_converted, item, self.spec.convert)
        records = await self.store.write(item)
        for exporter in self.exporters:
            await exporter.on_variant(records)
        self.counts.done += 1
        event = VariantWritten(item, tuple(records))
        self.counts.images += event.images
        self.emit(event)
        if self.results is not None:
            await self.results.send(event)

    async def _fail(self, item: Failed) -> None:
        await self.store.record_failure(item)
        self.counts.failed += 1
        event = VariantFailed(item)
        self.emit(event)
        if self.results is not None:
            await self.results.send(event)

    async def refresh_loop(self, counts: Callable[[], dict[str, int]]) -> None:
        """Keep the grid sheets and the gallery current while the run goes (throttled)."""
        while True:
            await asyncio.sleep(self.live.every_s)
            await asyncio.to_thread(self.live.maybe_refresh, status="running", counts=counts())

    async def finish(self, status: str, counts: dict[str, int]) -> list[str]:
        """Publish the exporters' last shards and render the final views with the run's final
        status; returns the gallery and the sheets written, relative to the output directory."""
        for exporter in self.exporters:
            try:
                await asyncio.shield(exporter.close())
            except OutputError as exc:
                log.error("%s", exc)
        try:
            await asyncio.shield(asyncio.to_thread(self.live.final, status=status, counts=counts))
            files = output_files(self.store.root)
        except OutputError as exc:
            log.error("%s", exc)
            return []
        shown = ([files.gallery] if files.gallery else []) + [
            sheet for view in files.views for sheet in view.sheets]
        return [str(p.relative_to(self.store.root)) for p in shown]

    def counts_now(self, *, total: int, skipped: int) -> dict[str, int]:
        c = self.counts
        return {"total": total, "done": c.done, "images": c.images, "failed": c.failed,
                "skipped": skipped, "unfinished": max(0, total - c.done - c.failed - skipped)}


def _converted(result: Generated, spec: ConvertSpec) -> Generated:
    """``result`` with every image re-encoded as ``spec`` asks (CPU work: run in a thread)."""
    return dataclasses.replace(
        result, images=tuple(convert_for_write(image, spec) for image in result.images))
