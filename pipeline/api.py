"""The Python API, for notebooks and other asyncio programs.

    import asyncio
    from pipeline import api

    async def main():
        job = api.load_job("jobs/example.yaml")            # or api.job_from_dict({...})
        async for item in api.generate(job, out_dir="out/nb"):
            if item.ok:
                print(item.records[0]["file"], item.records[0]["seed"])
            else:
                print("failed:", item.error)

    asyncio.run(main())

``generate`` runs the same stages as ``sdbatch run`` (preflight, resume, retries, writer; the one
wiring in ``pipeline.run.start``) and yields one ``Result`` per variant as it lands; ``run`` just
returns the summary. With no backends (in the job or the call) the built-in simulated backend is
started for the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline import expand
from pipeline.events import Listener, VariantFailed, VariantWritten
from pipeline.job.load import load_job, parse_job
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.run.channel import Channel
from pipeline.run.runner import RunOptions, RunSummary
from pipeline.run.start import RunRequest, backends_or_sim, default_out_dir, open_run

__all__ = ["Result", "load_job", "job_from_dict", "generate", "run", "backends_or_sim"]

RESULT_QUEUE_SIZE = 64


@dataclass(frozen=True, slots=True)
class Result:
    """One variant's outcome: its manifest records when ``ok``, else the error."""

    variant_id: str
    prompt: str
    ok: bool
    records: tuple[dict[str, Any], ...] = ()
    error: str = ""


def job_from_dict(data: dict[str, Any], *, base_dir: str | Path = ".") -> JobSpec:
    """Build a job in code; validated exactly like a job file."""
    return parse_job(orjson.dumps(data), path="<dict>", base_dir=str(base_dir))


def _as_backends(items: Sequence[str | BackendSpec] | None, spec: JobSpec) -> list[BackendSpec]:
    if not items:
        return list(spec.backends)
    return [b if isinstance(b, BackendSpec) else BackendSpec.model_validate({"url": b})
            for b in items]


async def run(job: JobSpec | str | Path, *, out_dir: str | Path | None = None,
              backends: Sequence[str | BackendSpec] | None = None,
              listeners: tuple[Listener, ...] = (), **options: Any) -> RunSummary:
    """Run a job to the end and return its summary (same stages as ``sdbatch run``)."""
    spec = job if isinstance(job, JobSpec) else load_job(job)
    plan = expand.build_plan(spec)
    opts = RunOptions(out_dir=Path(out_dir) if out_dir else default_out_dir(spec),
                      backends=tuple(_as_backends(backends, spec)), **options)
    async with open_run(RunRequest(spec, plan, opts), listeners=listeners) as runner:
        return await runner.execute()


async def generate(job: JobSpec | str | Path, *, out_dir: str | Path | None = None,
                   backends: Sequence[str | BackendSpec] | None = None,
                   **options: Any) -> AsyncIterator[Result]:
    """Run a job and yield each variant's ``Result`` as it is written (or fails for good).

    Results pass through a small bounded channel: a consumer that stops reading holds the writer
    (and so the run) back instead of filling memory.
    """
    spec = job if isinstance(job, JobSpec) else load_job(job)
    plan = expand.build_plan(spec)
    opts = RunOptions(out_dir=Path(out_dir) if out_dir else default_out_dir(spec),
                      backends=tuple(_as_backends(backends, spec)), **options)
    results: Channel[VariantWritten | VariantFailed] = Channel(RESULT_QUEUE_SIZE)

    async def execute() -> RunSummary:
        try:
            async with open_run(RunRequest(spec, plan, opts), results=results) as runner:
                return await runner.execute()
        finally:
            await results.close()

    task = asyncio.create_task(execute())
    try:
        async for event in results:
            if isinstance(event, VariantWritten):
                v = event.result.variant
                yield Result(v.id, v.prompt, True, event.records)
            else:
                v = event.failed.variant
                yield Result(v.id, v.prompt, False, (), event.failed.error)
        await task  # re-raise a run error
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
