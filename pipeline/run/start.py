"""The one wiring of a run, shared by ``sdbatch run`` and the Python API.

    async with open_run(request, listeners=(...,)) as run:   # preflight, clients, simulator
        summary = await run.execute()

``open_run`` starts the built-in simulator when no backend is configured, opens the run's one
``aiohttp.ClientSession``, asks every backend what it has (preflight; a job that cannot run
raises ``PreflightError`` before anything is written), builds one client per backend by its kind,
and hands back a ``Run`` ready to execute.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from pipeline import expand
from pipeline.backends import preflight
from pipeline.backends.base import Backend
from pipeline.backends.factory import make_client
from pipeline.events import Listener
from pipeline.job.naming import slugify
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.run.runner import Run, RunOptions

log = logging.getLogger(__name__)

DEFAULT_SIM_LATENCY_S = 0.02


def default_out_dir(spec: JobSpec) -> Path:
    """The job's ``output``, else ``out/<job name or file stem>``: the CLI and the API agree."""
    if spec.output:
        return Path(spec.output)
    stem = spec.name or (Path(spec.source_path).stem if spec.source_path
                         and not spec.source_path.startswith("<") else "job")
    return Path("out") / slugify(stem)


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything a run needs from its caller; ``options.backends`` empty = the simulator."""

    spec: JobSpec
    plan: expand.Plan
    options: RunOptions
    sim_latency_s: float = DEFAULT_SIM_LATENCY_S
    sim_kind: str = "webui"
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def backends_or_sim(backends: Sequence[BackendSpec], *,
                          sim_latency_s: float = DEFAULT_SIM_LATENCY_S
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


def _warn_tls(backends: Sequence[BackendSpec]) -> None:
    for backend in backends:
        if not backend.verify_tls and backend.url.startswith("https:"):
            log.warning("TLS certificate checks are OFF for %s (verify_tls: false): anyone "
                        "between you and it can read and change the traffic", backend.label)


def routing_notices(verdict: preflight.Verdict) -> tuple[str, ...]:
    return tuple(f"{f.kind} {f.name!r} is only on {', '.join(f.available_on)}: its variants go "
                 "there only" for f in verdict.findings if f.missing_on and f.available_on
                 ) + verdict.notes


@contextlib.asynccontextmanager
async def open_run(request: RunRequest, *, listeners: tuple[Listener, ...] = (),
                   results: Any = None) -> AsyncIterator[Run]:
    """A ``Run`` wired to its backends; ``results``: a ``Channel`` the writer sends every
    ``VariantWritten``/``VariantFailed`` into, waiting when it is full."""
    options = request.options
    async with backends_or_sim(options.backends, sim_latency_s=request.sim_latency_s) as (
            backends, sim_url):
        _warn_tls(backends)
        options = replace(options, backends=tuple(backends), simulated=sim_url is not None)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector) as session:
            verdict = await preflight.check_backends(session, request.spec, request.plan,
                                                     backends)
            clients: dict[str, Backend] = {
                b.label: make_client(session, b, preflight.setup_for(verdict, b.label),
                                     job=request.spec)
                for b in backends}
            can_serve = await _with_adoption(clients, preflight.router(verdict))
            yield Run(request.spec, request.plan, options, clients, listeners=listeners,
                      can_serve=can_serve, notices=routing_notices(verdict), results=results)


async def _with_adoption(clients: dict[str, Backend], can_serve: Any) -> Any:
    """After a kill, a ComfyUI server may still hold (or have finished) prompts the killed run
    sent: route each such variant back to that server, which adopts the result instead of
    generating it again."""
    from pipeline.backends.comfy.client import ComfyClient, prompt_id_for
    from pipeline.errors import BackendError

    held: dict[str, frozenset[str]] = {}
    for label, client in clients.items():
        if isinstance(client, ComfyClient):
            try:
                held[label] = await client.submitted_prompts()
            except BackendError:
                continue
    held = {label: ids for label, ids in held.items() if ids}
    if not held:
        return can_serve

    def serve(label: str, variant: Any) -> bool:
        first = prompt_id_for(variant.id, 1)
        for owner, ids in held.items():
            if first in ids:
                return label == owner
        return can_serve(label, variant) if can_serve is not None else True

    return serve
