"""Redis key names, in one place. Pure.

Every key of one job carries the job id in a hash tag (``sdbatch:{<job>}:...``), so the scripts
that touch several of them stay on one slot of a Redis Cluster too. A job is where its outputs
go: its id is derived from the output store's public URL, as a local run's identity is its
output directory (submitting another job to the same store replaces the job, and keeps what is
done, as ``sdbatch run`` into the same directory does).

    sdbatch:jobs                  set    job ids
    sdbatch:agents                hash   agent id -> heartbeat JSON
    sdbatch:{J}:meta              string the job (JSON, no credentials): spec, store, streams...
    sdbatch:{J}:q:<n>             stream variants asking for checkpoint n of the job (group "agents")
    sdbatch:{J}:queued            set    variant ids enqueued and not finished (waiting or leased)
    sdbatch:{J}:done              set    variant ids whose record is in the store
    sdbatch:{J}:dead              set    variant ids given up on (their entries are in :deadletter)
    sdbatch:{J}:deadletter        stream one entry per given-up variant, with its errors
    sdbatch:{J}:err:<variant id>  list   the errors of a variant's attempts (gone when it is done)
    sdbatch:{J}:stats             hash   images written, variants skipped as already stored
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PREFIX = "sdbatch"
JOBS = f"{PREFIX}:jobs"
AGENTS = f"{PREFIX}:agents"
GROUP = "agents"


def job_id(store_public_url: str) -> str:
    """A job's id: 12 hex digits of the SHA-256 of its output store's public URL."""
    return hashlib.sha256(store_public_url.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class JobKeys:
    job: str

    def _key(self, name: str) -> str:
        return f"{PREFIX}:{{{self.job}}}:{name}"

    @property
    def meta(self) -> str:
        return self._key("meta")

    @property
    def queued(self) -> str:
        return self._key("queued")

    @property
    def done(self) -> str:
        return self._key("done")

    @property
    def dead(self) -> str:
        return self._key("dead")

    @property
    def deadletter(self) -> str:
        return self._key("deadletter")

    @property
    def stats(self) -> str:
        return self._key("stats")

    def stream(self, index: int) -> str:
        return self._key(f"q:{index}")

    def errors(self, variant_id: str) -> str:
        return self._key(f"err:{variant_id}")
