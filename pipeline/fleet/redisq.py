"""The queue: Redis Streams with one consumer group per stream, driven through redis-py.

A variant's life (keys in ``keys.py``)::

    submit --ENQUEUE--> stream entry, id in :queued
    agent  --XREADGROUP--> leased (in the group's pending entries, owned by the agent)
           --RENEW (XCLAIM JUSTID, only while it owns it)--> lease kept alive while it works
           --ACK--> outputs written first; then XACK + XDEL, id :queued -> :done   (one script)
           --HANDBACK--> XACK + XDEL + XADD of a new entry carrying the history     (one script)
           --DEADLETTER--> XACK + XDEL, id -> :dead, entry with its errors -> :deadletter
    dead agent's lease --XAUTOCLAIM after lease_s idle--> leased by another agent

Every state change of a variant is one Lua script, so it is atomic, and survives a Redis restart
with the append-only file as one unit. Scripts that act on a lease first check the agent still
owns it (another may have claimed it after a stall), so a late agent never undoes another's work.

``Queue.call`` is the one choke point for redis-py: connection errors (Redis restarting, a
network blip, AOF loading) are retried with backoff for up to ``patience_s``, then become
``QueueError``; nothing above sees a redis-py exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.fleet import keys as K
from pipeline.fleet.scripts import ACK, DEADLETTER, ENQUEUE, HANDBACK, MARK_STORED, RENEW
from pipeline.fleet.errors import FleetUsageError, QueueError
from pipeline.fleet.urls import QueueURL
from pipeline.fleet.wire import History, JobMeta, variant_from
from pipeline.model import Variant

log = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
ERRORS_KEPT = 20

@dataclass(frozen=True, slots=True)
class Lease:
    """One variant an agent holds: until it acks, hands back or dead-letters it, or dies."""

    job: str
    stream: str
    entry: str
    variant: Variant
    history: History
    delivered: int = 1  # times Redis delivered this entry (XAUTOCLAIM adds one each time)

    @property
    def deliveries(self) -> int:
        """Deliveries of the variant in all, this one included."""
        return self.history.deliveries + self.delivered


@dataclass(frozen=True, slots=True)
class StreamLoad:
    """One stream as the scheduler sees it: entries present and entries leased."""

    job: str
    index: int
    key: str
    checkpoint: str | None
    length: int
    leased: int

    @property
    def waiting(self) -> int:
        return max(0, self.length - self.leased)


@dataclass(frozen=True, slots=True)
class JobCounts:
    queued: int
    leased: int
    done: int
    dead: int
    images: int
    found_stored: int

    @property
    def waiting(self) -> int:
        return max(0, self.queued - self.leased)


class Queue:
    """One connection pool to the queue's Redis, and the scripts that change variant state."""

    def __init__(self, url: QueueURL, *, patience_s: float = 600.0) -> None:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ModuleNotFoundError:
            raise FleetUsageError("the fleet commands need the Redis client\n  fix: pip install "
                                  "'sdbatch[fleet]'") from None

        self.shown = url.shown
        self.patience_s = patience_s
        self.redis = Redis.from_url(url.secret_url.get_secret_value(),
                                    socket_timeout=SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=CONNECT_TIMEOUT_S,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=30)
        self._scripts = {name: self.redis.register_script(source) for name, source in
                         (("enqueue", ENQUEUE), ("mark_stored", MARK_STORED), ("ack", ACK),
                          ("handback", HANDBACK), ("deadletter", DEADLETTER),
                          ("renew", RENEW))}
        self.outage_s = 0.0  # time spent waiting for Redis to come back, in all

    async def close(self) -> None:
        await self.redis.aclose()

    # --- the choke point ------------------------------------------------------------------

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis exchange; retry connection failures for up to ``patience_s``."""
        from redis import exceptions as rx

        started: float | None = None
        delay_s = 0.05
        while True:
            try:
                result = await fn()
            except rx.AuthenticationError as exc:
                raise QueueError(f"{self.shown} refused the credentials ({exc})\n  fix: put the "
                                 "password in the URL or in SDBATCH_REDIS_PASSWORD") from None
            except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
                now = time.monotonic()
                if started is None:
                    started = now
                    log.warning("the queue at %s is unreachable (%s); retrying for up to %g s",
                                self.shown, exc, self.patience_s)
                if now - started >= self.patience_s:
                    raise QueueError(f"cannot {what}: the queue at {self.shown} has been "
                                     f"unreachable for {now - started:.0f} s ({exc})\n  fix: "
                                     "start Redis or check --queue; rerun the same command "
                                     "then") from None
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)
                continue
            except rx.ResponseError as exc:
                raise QueueError(f"cannot {what}: {self.shown} answered: {exc}") from None
            if started is not None:
                took = time.monotonic() - started
                self.outage_s += took
                log.warning("the queue at %s is back after %.1f s", self.shown, took)
            return result

    # --- jobs -------------------------------------------------------------------------------

    async def put_job(self, meta: JobMeta) -> None:
        from redis import exceptions as rx

        jk = K.JobKeys(meta.id)

        async def put() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(jk.meta, meta.to_json())
                pipe.sadd(K.JOBS, meta.id)
                await pipe.execute()
            for index in range(len(meta.checkpoints)):
                try:
                    await self.redis.xgroup_create(jk.stream(index), K.GROUP, id="0",
                                                   mkstream=True)
                except rx.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

        await self.call("store the job", put)

    async def job(self, job_id: str) -> JobMeta | None:
        raw = await self.call("read the job", lambda: self.redis.get(K.JobKeys(job_id).meta))
        return JobMeta.from_json(raw) if raw else None

    async def jobs(self) -> list[JobMeta]:
        ids = sorted(i.decode() for i in await self.call(
            "list the jobs", lambda: self.redis.smembers(K.JOBS)))
        if not ids:
            return []
        raws = await self.call("read the jobs", lambda: self.redis.mget(
            [K.JobKeys(i).meta for i in ids]))
        return [JobMeta.from_json(r) for r in raws if r]

    # --- submitting -------------------------------------------------------------------------

    async def enqueue(self, meta: JobMeta, chunks: Iterable[list[tuple[str, int, bytes, bytes]]]
                      ) -> tuple[int, int, int]:
        """Enqueue chunks of ``(id, stream index, v, h)`` in one pipelined round trip;
        returns (added, requeued after failing, skipped as queued or done)."""
        jk = K.JobKeys(meta.id)
        streams = [jk.stream(i) for i in range(len(meta.checkpoints))]
        script = self._scripts["enqueue"]
        batches = [c for c in chunks if c]
        if not batches:
            return 0, 0, 0

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch in batches:
                    args: list[Any] = [jk.errors("")]
                    for ident, stream, v, h in batch:
                        args += [ident, stream, v, h]
                    await script(keys=[jk.queued, jk.done, jk.dead, *streams], args=args,
                                 client=pipe)
                return await pipe.execute()

        results = await self.call("enqueue variants", run)
        return (sum(int(r[0]) for r in results), sum(int(r[1]) for r in results),
                sum(int(r[2]) for r in results))

    async def mark_stored(self, meta: JobMeta, ids: list[str]) -> int:
        """Mark ``ids`` (whose records the store already holds) done; returns how many."""
        if not ids:
            return 0
        jk = K.JobKeys(meta.id)
        return int(await self.call("mark stored variants", lambda: self._scripts["mark_stored"](
            keys=[jk.queued, jk.done, jk.dead], args=ids)))

    # --- leasing ----------------------------------------------------------------------------

    async def read_new(self, job: str, stream: str, consumer: str) -> Lease | None:
        """The next never-delivered entry of ``stream``, leased to ``consumer``."""
        from redis import exceptions as rx

        async def read() -> Any:
            try:
                return await self.redis.xreadgroup(K.GROUP, consumer, {stream: ">"}, count=1)
            except rx.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the job was removed (or Redis lost it): no work
                    return None
                raise

        reply = await self.call("read the queue", read)
        if not reply:
            return None
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        if not entries:
            return None
        entry, fields = entries[0]
        return _lease(job, stream, entry, fields, 1)

    async def claim_idle(self, job: str, stream: str, consumer: str, min_idle_s: float,
                         cursor: str = "0-0") -> tuple[Lease | None, str]:
        """Take over one entry idle for ``min_idle_s`` (its agent died or stalled);
        returns it (or None) and the cursor to continue from next time."""
        from redis import exceptions as rx

        async def claim() -> Any:
            try:
                return await self.redis.xautoclaim(stream, K.GROUP, consumer,
                                                   int(min_idle_s * 1000), cursor, count=1)
            except rx.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return None
                raise

        reply = await self.call("claim idle work", claim)
        if not reply:
            return None, "0-0"
        next_cursor = _text(reply[0])
        claimed = [c for c in reply[1] if c and c[1]]
        if not claimed:
            return None, next_cursor
        entry, fields = claimed[0]
        info = await self.call("read a lease", lambda: self.redis.xpending_range(
            stream, K.GROUP, min=entry, max=entry, count=1))
        delivered = int(info[0]["times_delivered"]) if info else 2
        return _lease(job, stream, entry, fields, delivered), next_cursor

    async def renew(self, stream: str, consumer: str, entries: list[str]) -> list[str]:
        """Keep ``consumer``'s leases alive; returns the entries it no longer owns."""
        if not entries:
            return []
        lost = await self.call("renew leases", lambda: self._scripts["renew"](
            keys=[stream], args=[K.GROUP, consumer, *entries]))
        return [_text(e) for e in lost or ()]

    async def ack(self, lease: Lease, *, images: int, found_stored: bool = False) -> bool:
        """The variant's outputs are in the store: mark it done (True when it was not already)."""
        jk = K.JobKeys(lease.job)
        new = await self.call("acknowledge a variant", lambda: self._scripts["ack"](
            keys=[lease.stream, jk.queued, jk.done, jk.dead, jk.errors(lease.variant.id),
                  jk.stats],
            args=[K.GROUP, lease.entry, lease.variant.id, images, 1 if found_stored else 0]))
        return bool(new)

    async def hand_back(self, lease: Lease, consumer: str, history: History) -> bool:
        """Put the variant back for any agent, carrying ``history``; False when not ours."""
        from pipeline.fleet.wire import entry_fields

        fields = entry_fields(lease.variant, history)
        done = await self.call("hand work back", lambda: self._scripts["handback"](
            keys=[lease.stream], args=[K.GROUP, lease.entry, consumer, fields["v"],
                                       fields["h"]]))
        return bool(done)

    async def dead_letter(self, lease: Lease, consumer: str, history: History, reason: str,
                          agent: str, at: str) -> bool:
        from pipeline.fleet.wire import entry_fields

        jk = K.JobKeys(lease.job)
        fields = entry_fields(lease.variant, history)
        done = await self.call("dead-letter a variant", lambda: self._scripts["deadletter"](
            keys=[lease.stream, jk.queued, jk.dead, jk.deadletter, jk.errors(lease.variant.id)],
            args=[K.GROUP, lease.entry, consumer, lease.variant.id, fields["v"], fields["h"],
                  reason, agent, at]))
        return bool(done)

    async def add_error(self, job: str, variant_id: str, entry: bytes) -> None:
        key = K.JobKeys(job).errors(variant_id)

        async def push() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, entry)
                pipe.ltrim(key, -ERRORS_KEPT, -1)
                await pipe.execute()

        await self.call("record an error", push)

    async def remove_consumer(self, streams: list[str], consumer: str) -> None:
        """Forget ``consumer`` in the groups where it holds nothing (a clean exit)."""
        from redis import exceptions as rx

        async def remove() -> None:
            for stream in streams:
                try:
                    pending = await self.redis.xpending_range(stream, K.GROUP, min="-", max="+",
                                                              count=1, consumername=consumer)
                    if not pending:
                        await self.redis.xgroup_delconsumer(stream, K.GROUP, consumer)
                except rx.ResponseError:
                    continue

        await self.call("leave the consumer groups", remove)

    # --- looking ----------------------------------------------------------------------------

    async def loads(self, metas: list[JobMeta]) -> list[StreamLoad]:
        """Length and leased count of every stream of ``metas``, in one round trip."""
        streams = [(m.id, i, K.JobKeys(m.id).stream(i), c)
                   for m in metas for i, c in enumerate(m.checkpoints)]
        if not streams:
            return []

        async def look() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, _, key, _ in streams:
                    pipe.xlen(key)
                    pipe.xpending(key, K.GROUP)
                return await pipe.execute(raise_on_error=False)

        replies = await self.call("look at the queue", look)
        out = []
        for n, (job, index, key, checkpoint) in enumerate(streams):
            length, pending = replies[2 * n], replies[2 * n + 1]
            leased = int(pending.get("pending", 0)) if isinstance(pending, dict) else 0
            out.append(StreamLoad(job, index, key, checkpoint,
                                  int(length) if isinstance(length, int) else 0, leased))
        return out

    async def counts(self, meta: JobMeta) -> JobCounts:
        jk = K.JobKeys(meta.id)

        async def look() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(jk.queued)
                pipe.scard(jk.done)
                pipe.scard(jk.dead)
                pipe.hgetall(jk.stats)
                return await pipe.execute()

        queued, done, dead, stats = await self.call("count a job", look)
        leased = sum(s.leased for s in await self.loads([meta]))
        stats = {_text(k): int(v) for k, v in (stats or {}).items()}
        return JobCounts(int(queued), leased, int(done), int(dead), stats.get("images", 0),
                         stats.get("found_stored", 0))

    async def queued(self, metas: list[JobMeta]) -> dict[str, int]:
        """Variants still queued (waiting or leased) per job, in one round trip."""
        if not metas:
            return {}

        async def look() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for meta in metas:
                    pipe.scard(K.JobKeys(meta.id).queued)
                return await pipe.execute()

        return {m.id: int(n) for m, n in zip(metas, await self.call("count queued work", look))}

    async def dead_entries(self, meta: JobMeta) -> list[dict[str, Any]]:
        """The job's dead-letter entries, oldest first, fields decoded."""
        raw = await self.call("read the dead letters", lambda: self.redis.xrange(
            K.JobKeys(meta.id).deadletter))
        return [{_text(k): _text(v) for k, v in fields.items()} | {"entry": _text(entry)}
                for entry, fields in raw or ()]

    async def done_ids(self, meta: JobMeta) -> set[str]:
        members = await self.call("read done variants", lambda: self.redis.smembers(
            K.JobKeys(meta.id).done))
        return {_text(m) for m in members}

    async def dead_ids(self, meta: JobMeta) -> set[str]:
        members = await self.call("read failed variants", lambda: self.redis.smembers(
            K.JobKeys(meta.id).dead))
        return {_text(m) for m in members}

    # --- agents -----------------------------------------------------------------------------

    async def heartbeat(self, agent_id: str, beat: bytes) -> None:
        await self.call("send a heartbeat", lambda: self.redis.hset(K.AGENTS, agent_id, beat))

    async def agents(self) -> dict[str, bytes]:
        raw = await self.call("list the agents", lambda: self.redis.hgetall(K.AGENTS))
        return {_text(k): v for k, v in (raw or {}).items()}

    async def forget_agents(self, agent_ids: list[str]) -> None:
        if agent_ids:
            await self.call("forget old agents", lambda: self.redis.hdel(K.AGENTS, *agent_ids))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lease(job: str, stream: str, entry: Any, fields: dict[Any, Any], delivered: int) -> Lease:
    import orjson

    data = {_text(k): v for k, v in fields.items()}
    return Lease(job, stream, _text(entry), variant_from(orjson.loads(data["v"])),
                 History.from_json(data.get("h")), delivered)
