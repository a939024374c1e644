"""Preflight: what the backends have, checked against what the job asks, before anything runs.

``prepare_run`` is called by ``sdbatch run`` after loading the job: it expands the plan and
returns the routing predicate the dispatcher uses (which backend may serve which variant).
"""

from __future__ import annotations

from typing import Any

from pipeline import expand
from pipeline.dispatch import CanServe
from pipeline.jobspec import JobSpec


async def prepare_run(spec: JobSpec, plan: expand.Plan, options: Any) -> CanServe | None:
    return None
