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

``generate`` runs the same stages as ``sdbatch run`` (preflight, resume, retries, writer) and
yields one ``Result`` per variant as it lands; ``run`` just returns the summary. With no backends
(in the job or the call) the built-in simulated backend is started for the duration.
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
from pipeline.events import Event, Listener, VariantFailed, VariantWritten
from pipeline.job.load import load_job, parse_job
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.backends.preflight import payload_extras, prepare_run
from pipeline.run.runner import Run, RunOptions, RunSummary

__all__ = ["Result", "load_job", "job_from_dict", "generate", "run", "backends_or_sim"]


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


@contextlib.asynccontextmanager
async def backends_or_sim(backends: Sequence[BackendSpec], *, sim_latency_s: float = 0.02
                          ) -> AsyncIterator[tuple[list[BackendSpec], str | None]]:
    """The given backends, or a built-in simulated one (its URL is yielded) when none is given."""
    if backends:
        yield list(backends), None
        return
    from pipeline.sim import SimConfig, start_sim

    sim = await start_sim(SimConfig(latency_s=sim_latency_s))
    try:
        yield [BackendSpec(url=sim.url, name="simulated", concurrency=1)], sim.url
    finally:
        await sim.close()


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
    out = Path(out_dir or spec.output or Path("out") / (spec.name or "job"))
    async with backends_or_sim(_as_backends(backends, spec)) as (resolved, sim_url):
        opts = RunOptions(out_dir=out, backends=tuple(resolved), simulated=sim_url is not None,
                          **options)
        can_serve, verdict = await prepare_run(spec, plan, opts)
        runner = Run(spec, opts, plan=plan, can_serve=can_serve, listeners=listeners,
                     payload_extras={i.label: payload_extras(i) for i in verdict.infos},
                     sampler_aliases={i.label: i.sampler_aliases for i in verdict.infos})
        return await runner.execute()


async def generate(job: JobSpec | str | Path, *, out_dir: str | Path | None = None,
                   backends: Sequence[str | BackendSpec] | None = None,
                   **options: Any) -> AsyncIterator[Result]:
    """Run a job and yield each variant's ``Result`` as it is written (or fails for good)."""
    queue: asyncio.Queue[Result | None] = asyncio.Queue()

    def listen(event: Event) -> None:
        if isinstance(event, VariantWritten):
            v = event.result.variant
            queue.put_nowait(Result(v.id, v.prompt, True, event.records))
        elif isinstance(event, VariantFailed):
            v = event.failed.variant
            queue.put_nowait(Result(v.id, v.prompt, False, (), event.failed.error))

    task = asyncio.create_task(run(job, out_dir=out_dir, backends=backends,
                                   listeners=(listen,), **options))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (item := await queue.get()) is not None:
            yield item
        await task  # re-raise a run error
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
