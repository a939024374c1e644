"""What the fleet takes from the single-machine run, in one place, so both stay the same.

An agent generates with the same client (``make_client``, set up by the same preflight against
the names the job uses), the same retry policy and health rules; the collector writes through the
same ``OutputStore``, exporters, grid and gallery code. The job travels as ``public_job(spec)``
(what a local run writes to ``job.json``) and becomes a ``JobSpec`` again here, validated as a
local run's ``job.json`` is when grids are drawn.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from pipeline.backends import preflight
from pipeline.backends.base import Backend
from pipeline.backends.factory import make_client
from pipeline.backends.requirements import Requirements, job_requirements, variant_needs
from pipeline.expand import Plan
from pipeline.fleet.wire import JobMeta
from pipeline.job.load import parse_job
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.output.runfiles import public_job
from pipeline.run.runner import match_checkpoint

__all__ = ["Requirements", "client_for", "inspect", "job_spec", "match_checkpoint",
           "public_job", "requirements_from", "requirements_json", "variant_needs", "verdict_for"]


def requirements_json(plan: Plan) -> dict[str, Any]:
    """The names and override keys the job uses (the submitter knows them; agents check them)."""
    req = job_requirements(plan)
    return {"names": {k: sorted(v) for k, v in req.names.items()}, "exact": req.exact,
            "override_keys": sorted(req.override_keys)}


def requirements_from(data: dict[str, Any]) -> Requirements:
    names = data.get("names") or {}
    return Requirements({k: frozenset(v) for k, v in names.items()}, bool(data.get("exact", True)),
                        frozenset(data.get("override_keys") or ()))


def job_spec(meta: JobMeta) -> JobSpec:
    """The submitted job, validated again (as a local run's ``job.json`` is read back)."""
    spec = parse_job(orjson.dumps(meta.job), path=meta.source_path or f"<job {meta.id}>",
                     base_dir=meta.base_dir or ".")
    return spec.model_copy(update={"content_sha256": meta.content_sha256})


async def inspect(session: aiohttp.ClientSession, backends: list[BackendSpec]) -> list[Any]:
    """What each backend has (the local preflight's questions, asked once per agent)."""
    return await preflight.inspect_all(session, backends)


def verdict_for(meta: JobMeta, spec: JobSpec, infos: list[Any]) -> Any:
    """The local preflight's verdict on this agent's backends for one job (never raises)."""
    return preflight.judge(requirements_from(meta.requirements), infos, spec)


def client_for(session: aiohttp.ClientSession, backend: BackendSpec, verdict: Any,
               spec: JobSpec) -> Backend:
    """The client a local run would use for ``backend`` on this job."""
    return make_client(session, backend, preflight.setup_for(verdict, backend.label), job=spec)
