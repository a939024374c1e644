"""Options the fleet commands share (``submit``, ``agent``, ``status``, ``collect``)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.fleet.urls import QUEUE_ENV, REDIS_PASSWORD_ENV


def add_queue_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", metavar="URL", default=None,
                   help=f"the Redis queue, e.g. redis://HOST:6379/0 (default: ${QUEUE_ENV}); a "
                        f"password may come from ${REDIS_PASSWORD_ENV} instead of the URL")
    p.add_argument("--patience-s", type=float, default=600.0, metavar="S",
                   help="how long Redis (and the store) may be unreachable before the command "
                        "gives up (default 600)")


def open_queue(args: Any) -> Any:
    from pipeline.fleet.redisq import Queue
    from pipeline.fleet.urls import parse_queue_url

    return Queue(parse_queue_url(args.queue), patience_s=args.patience_s)


async def select_job(queue: Any, wanted: str | None) -> Any:
    """The job ``wanted`` names (id, name or store URL), or the only one; else FleetUsageError."""
    from pipeline.fleet.errors import FleetUsageError

    jobs = await queue.jobs()
    if not jobs:
        raise FleetUsageError(f"the queue at {queue.shown} holds no job\n  fix: sdbatch submit "
                              "JOB --queue ... --out ... first")
    if wanted is None:
        if len(jobs) == 1:
            return jobs[0]
        listed = ", ".join(f"{j.name} ({j.id})" for j in jobs)
        raise FleetUsageError(f"the queue holds {len(jobs)} jobs: {listed}\n  fix: name one "
                              "with --job ID")
    for job in jobs:
        if wanted in (job.id, job.name, job.store):
            return job
    raise FleetUsageError(f"no job {wanted!r} in the queue at {queue.shown}\n  fix: "
                          "'sdbatch status --queue ...' lists them")
