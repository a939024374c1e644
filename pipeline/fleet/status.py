"""What the queue holds now: per job pending / leased / done / dead, and the agents seen."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.fleet.redisq import JobCounts, Queue
from pipeline.fleet.wire import JobMeta

LOST_AFTER_BEATS = 3


@dataclass(frozen=True, slots=True)
class JobStatus:
    meta: JobMeta
    counts: JobCounts

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"id": self.meta.id, "name": self.meta.name, "store": self.meta.store,
                "total": self.meta.total, "pending": c.waiting, "leased": c.leased,
                "done": c.done, "dead": c.dead, "images": c.images,
                "found_stored": c.found_stored, "submitted_at": self.meta.submitted_at,
                "checkpoints": list(self.meta.checkpoints)}


@dataclass(frozen=True, slots=True)
class AgentStatus:
    beat: dict[str, Any]
    age_s: float
    lost: bool  # no heartbeat for LOST_AFTER_BEATS intervals while it claimed to run

    def as_dict(self) -> dict[str, Any]:
        state = "lost" if self.lost else str(self.beat.get("state"))
        return {**self.beat, "state": state, "seen_s_ago": round(self.age_s, 1)}


async def gather(queue: Queue, *, heartbeat_s: float = 5.0) -> tuple[list[JobStatus],
                                                                      list[AgentStatus]]:
    jobs = [JobStatus(meta, await queue.counts(meta)) for meta in await queue.jobs()]
    now = time.time()
    agents: list[AgentStatus] = []
    for raw in (await queue.agents()).values():
        try:
            beat = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        seen = beat.get("seen") if isinstance(beat.get("seen"), (int, float)) else 0.0
        age = now - float(seen)
        lost = beat.get("state") in ("running", "starting", "stopping") and \
            age > LOST_AFTER_BEATS * heartbeat_s
        agents.append(AgentStatus(beat, age, lost))
    agents.sort(key=lambda a: (a.lost or a.beat.get("state") == "stopped", str(a.beat.get("id"))))
    return jobs, agents
