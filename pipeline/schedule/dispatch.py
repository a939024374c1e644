"""Which variant a free worker takes next: pull-based, checkpoint-aware, lazily fed.

The dispatcher is the one owner of what is in flight (per backend and in all) and of which
checkpoint each backend is on (affinity). Nobody else writes either; workers tell it what happened
(``take``, ``finished``, ``retry_later``) and it answers.

The pending work is one lazy stream of variants per checkpoint, plus a small set of variants
waiting to be retried. A worker asks for work for its backend:

1. a retry that is due and that this backend may serve, preferring the loaded checkpoint and
   preferring backends other than the ones that already failed it;
2. the next variant of the stream for the checkpoint its backend has loaded;
3. the next variant that asks for no checkpoint (any loaded model serves it);
4. otherwise it switches: the stream with the most remaining work, divided by one plus the number
   of other backends already on it, so backends spread over checkpoints and each checkpoint is
   loaded about once (a sweep over M checkpoints on B backends makes at most about M + B loads).

Before 2, a backend whose checkpoint has other backends on it takes a checkpoint nobody is on
when that one holds at least an even share of the work left: covering it early loads it once,
where waiting until the loaded checkpoint runs dry makes every backend switch at that moment.

Nothing is buffered beyond retries and the few variants a backend could not serve; the streams
are generators, so a million-variant job is never a list. The decision (``pick``) is synchronous
and testable without a network; ``take`` waits on a condition when nothing is available yet.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.model import Variant
from pipeline.schedule.retry import Attempts

CanServe = Callable[[str, Variant], bool]
# A backend's measured pace: (images per second, seconds per checkpoint load or None), or None
Pace = Callable[[str], "tuple[float, float | None] | None"]
PARK_LIMIT = 64
HELP_LOAD_FACTOR = 2.0  # help a checkpoint only while its work outlasts this many of our loads


@dataclass(slots=True)
class _Stream:
    checkpoint: str | None
    source: Iterator[Variant]
    remaining_hint: int
    exhausted: bool = False
    parked: deque[Variant] = field(default_factory=deque)


@dataclass(slots=True)
class Lane:
    """One backend as the dispatcher sees it."""

    label: str
    loaded: str | None = None  # checkpoint (as the job names it) the backend last ran
    target: str | None = None  # checkpoint of the last variant dispatched to it
    in_flight: int = 0
    loads: int = 0  # checkpoint switches it made in this run

    @property
    def current(self) -> str | None:
        """The checkpoint the backend will have loaded once the requests sent to it have run.

        The WebUI runs requests in arrival order, so with more than one in flight the checkpoint
        of the last one dispatched, not of the last one answered, is what the next one meets.
        """
        return self.target if self.target is not None else self.loaded


def measured_pace(health: Any) -> tuple[float, float | None] | None:
    """A ``BackendHealth``'s pace: images per second (whatever the concurrency) and seconds per
    checkpoint load (None until it has loaded one); None before its first image."""
    rate = health.images_per_s()
    if rate <= 0:
        return None
    return rate, (health.load_s / health.loads if health.loads else None)


class Dispatcher:
    """Hands variants to workers; owns in-flight counts, affinity, retries and completion."""

    def __init__(self, streams: dict[str | None, Iterator[Variant]], *,
                 backends: Iterable[str] = (),
                 counts: dict[str | None, int] | None = None,
                 can_serve: CanServe | None = None,
                 usable: Callable[[str], bool] = lambda label: True,
                 clock: Callable[[], float] = time.monotonic,
                 help_min_variants: int = 4, pace: Pace | None = None) -> None:
        counts = counts or {}
        self._streams = {c: _Stream(c, s, counts.get(c, 1)) for c, s in streams.items()}
        self._can_serve = can_serve or (lambda backend, variant: True)
        self._usable = usable
        self._clock = clock
        self._retries: list[tuple[float, int, Variant]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._closed = False
        self._changed = asyncio.Condition()
        self.lanes: dict[str, Lane] = {label: Lane(label) for label in backends}
        self.attempts: dict[str, Attempts] = {}
        self.help_min_variants = help_min_variants
        if pace is None and isinstance(backends, Mapping):  # the run's BackendHealth by label
            health = dict(backends)

            def pace(label: str) -> tuple[float, float | None] | None:
                return measured_pace(health[label]) if label in health else None
        self._pace = pace

    def lane(self, label: str) -> Lane:
        lane = self.lanes.get(label)
        if lane is None:
            lane = self.lanes[label] = Lane(label)
        return lane

    # --- the decision -------------------------------------------------------------------------

    def pick(self, label: str) -> Variant | None:
        """The variant backend ``label`` should run next, or None when none is available now."""
        if self._closed:
            return None
        lane = self.lane(label)
        now = self._clock()
        variant = self._due_retry(lane, now)
        if variant is None:
            cover = self._to_cover(lane)
            if cover is not None:
                variant = self._from_stream(lane, cover)
        if variant is None:
            variant = self._from_stream(lane, lane.current)
        if variant is None and lane.current is not None:
            variant = self._from_stream(lane, None)
        if variant is None:
            for checkpoint in self._switch_order(lane):
                variant = self._from_stream(lane, checkpoint)
                if variant is not None:
                    break
        if variant is not None:
            self._in_flight += 1
            lane.in_flight += 1
            if variant.checkpoint is not None:
                lane.target = variant.checkpoint
            attempts = self.attempts.setdefault(variant.id, Attempts(first_at=now))
            attempts.count += 1
        return variant

    def _due_retry(self, lane: Lane, now: float) -> Variant | None:
        best: int | None = None
        best_rank = 99
        for i, (ready_at, _, variant) in enumerate(self._retries):
            if ready_at > now or not self._allowed(lane.label, variant):
                continue
            # Prefer a backend that has not failed this variant yet, then the loaded checkpoint.
            rank = (2 if self._others_untried(lane.label, variant) else 0) + \
                (0 if variant.checkpoint in (lane.current, None) else 1)
            if rank < best_rank:
                best, best_rank = i, rank
                if rank == 0:
                    break
        if best is None or best_rank >= 2:
            return None  # leave it for a backend that has not tried it
        _, _, variant = self._retries.pop(best)
        heapq.heapify(self._retries)
        return variant

    def _others_untried(self, label: str, variant: Variant) -> bool:
        """Has this backend failed ``variant`` while a usable one that has not tried it exists?"""
        attempts = self.attempts.get(variant.id)
        if attempts is None or label not in attempts.failed_on:
            return False
        return self.untried_elsewhere(label, variant)

    def untried_elsewhere(self, label: str, variant: Variant) -> bool:
        """A usable backend other than ``label`` may serve ``variant`` and has not failed it."""
        attempts = self.attempts.get(variant.id)
        tried = (attempts.failed_on | attempts.excluded) if attempts else set()
        return any(other != label and other not in tried and self._usable(other)
                   and self._can_serve(other, variant) for other in self.lanes)

    def anyone_may_take(self, variant: Variant) -> bool:
        """Some backend is neither excluded for ``variant`` nor unable to serve it."""
        return any(self._allowed(label, variant) for label in self.lanes)

    def _allowed(self, label: str, variant: Variant) -> bool:
        attempts = self.attempts.get(variant.id)
        if attempts is not None and label in attempts.excluded:
            return False
        return self._can_serve(label, variant)

    def _from_stream(self, lane: Lane, checkpoint: str | None) -> Variant | None:
        stream = self._streams.get(checkpoint)
        if stream is None:
            return None
        for _ in range(len(stream.parked)):
            variant = stream.parked.popleft()
            if self._allowed(lane.label, variant):
                return variant
            stream.parked.append(variant)
        while not stream.exhausted:
            try:
                variant = next(stream.source)
            except StopIteration:
                stream.exhausted = True
                break
            stream.remaining_hint = max(0, stream.remaining_hint - 1)
            if variant.id in self.attempts:
                continue  # the same variant twice in the job (e.g. {a|a}): it is already running
            if self._allowed(lane.label, variant):
                return variant
            if not any(self._can_serve(other, variant) for other in self.lanes
                       if other != lane.label):
                return variant  # nobody else can either: let it fail here with a clear error
            stream.parked.append(variant)
            if len(stream.parked) >= PARK_LIMIT:
                return None  # this backend cannot serve what this stream holds now
        return None

    def _to_cover(self, lane: Lane) -> str | None:
        """A checkpoint no backend is on that is worth a backend of its own now, while this
        backend's checkpoint has others on it: load it early, once, rather than after the loaded
        checkpoint's work is gone (when every backend would switch at the same moment and some
        would have to switch twice). Worth it: at least an even share of the work left."""
        if lane.current is None:
            return None
        on_it: dict[str | None, int] = {}
        usable = 0
        for other in self.lanes.values():
            if self._usable(other.label):
                usable += 1
                if other is not lane:
                    on_it[other.current] = on_it.get(other.current, 0) + 1
        if not on_it.get(lane.current):
            return None
        live = [s for s in self._streams.values() if not s.exhausted or s.parked]
        total = sum(max(s.remaining_hint, 1) + len(s.parked) for s in live)
        fair = total / max(1, usable)
        best: _Stream | None = None
        for s in live:
            if s.checkpoint is None or s.checkpoint == lane.current or on_it.get(s.checkpoint):
                continue
            work = max(s.remaining_hint, 1) + len(s.parked)
            if work >= fair and (best is None or work > max(best.remaining_hint, 1)
                                 + len(best.parked)):
                best = s
        return best.checkpoint if best is not None else None

    def _switch_order(self, lane: Lane) -> list[str | None]:
        """Checkpoints worth switching to: uncovered ones first (most work first), then ones other
        backends are on, only while each helper would still get ``help_min_variants``."""
        on_it: dict[str | None, int] = {}
        for other in self.lanes.values():
            if other is not lane and self._usable(other.label):
                on_it[other.current] = on_it.get(other.current, 0) + 1
        live = [s for s in self._streams.values()
                if (not s.exhausted or s.parked) and s.checkpoint != lane.current]

        def work(s: _Stream) -> int:
            return max(s.remaining_hint, 1) + len(s.parked)

        uncovered = sorted((s for s in live if not on_it.get(s.checkpoint)), key=lambda s: -work(s))
        covered = sorted((s for s in live if on_it.get(s.checkpoint)),
                         key=lambda s: -work(s) / (1 + on_it[s.checkpoint]))
        helpful = [s for s in covered if self._worth_helping(lane, s.checkpoint, work(s),
                                                             on_it[s.checkpoint])]
        return [s.checkpoint for s in uncovered + helpful]

    def _worth_helping(self, lane: Lane, checkpoint: str | None, work: int, helpers: int) -> bool:
        """Join the backends on ``checkpoint``? With measured paces: when they would need longer
        than ``HELP_LOAD_FACTOR`` times this backend's load plus one of its images to finish the
        work without it (joining shortens the work's end only when the load takes less than that
        time, and a slow helper's last image must not end after the others'); else while each
        helper would still get ``help_min_variants``."""
        if self._pace is not None:
            paces = {o.label: self._pace(o.label) for o in self.lanes.values()}
            load_s = (paces[lane.label] or (0.0, None))[1]
            if load_s is None:  # not loaded one yet: assume the slowest load seen
                load_s = max((p[1] for p in paces.values() if p and p[1] is not None),
                             default=None)
            rates = [paces[o.label] for o in self.lanes.values()
                     if o is not lane and o.current == checkpoint and self._usable(o.label)]
            mine = paces[lane.label]
            if load_s is not None and mine is not None and rates \
                    and all(r is not None for r in rates):
                finish_s = work / sum(r[0] for r in rates)  # type: ignore[index]
                return finish_s >= HELP_LOAD_FACTOR * (load_s + 1 / mine[0])
        return work / (1 + helpers) >= self.help_min_variants

    # --- what workers tell it -----------------------------------------------------------------

    def note_loaded(self, label: str, checkpoint: str | None) -> None:
        """What a probe found loaded on the backend (as the job names it, or None)."""
        lane = self.lane(label)
        lane.loaded = checkpoint
        if lane.in_flight == 0:
            lane.target = None

    async def finished(self, label: str, variant: Variant) -> bool:
        """The variant is done on ``label`` (written or failed for good). True when running it
        switched the backend's checkpoint."""
        async with self._changed:
            switched = self._release(label, variant)
            self.attempts.pop(variant.id, None)
            self._changed.notify_all()
            return switched

    async def retry_later(self, label: str, variant: Variant, delay_s: float) -> None:
        async with self._changed:
            self._release(label, variant, ran=False)
            heapq.heappush(self._retries, (self._clock() + delay_s, next(self._seq), variant))
            self._changed.notify_all()

    def _release(self, label: str, variant: Variant, *, ran: bool = True) -> bool:
        lane = self.lane(label)
        self._in_flight -= 1
        lane.in_flight -= 1
        if lane.in_flight == 0 and not ran:
            lane.target = None  # nothing queued on it: it keeps what it really ran last
        switched = False
        if ran and variant.checkpoint is not None and variant.checkpoint != lane.loaded:
            switched = True
            lane.loaded = variant.checkpoint
            lane.loads += 1
        return switched

    # --- waiting and bookkeeping --------------------------------------------------------------

    @property
    def drained(self) -> bool:
        """No work left anywhere: every stream exhausted, nothing parked, retried or in flight."""
        return (self._in_flight == 0 and not self._retries
                and all(s.exhausted and not s.parked for s in self._streams.values()))

    def checkpoints_waiting(self) -> int:
        """Checkpoints with work left that no backend has loaded: loads still to come."""
        loaded = {lane.current for lane in self.lanes.values()}
        return sum(1 for s in self._streams.values()
                   if s.checkpoint is not None and s.checkpoint not in loaded
                   and (not s.exhausted or s.parked))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def in_flight_on(self, label: str) -> int:
        return self.lane(label).in_flight

    async def take(self, label: str) -> Variant | None:
        """Wait for the next variant for ``label``; None when the run has no more work for it."""
        async with self._changed:
            while True:
                if self._closed:
                    return None
                variant = self.pick(label)
                if variant is not None:
                    return variant
                if self.drained:
                    self._changed.notify_all()
                    return None
                timeout = None
                if self._retries:
                    timeout = max(0.0, min(r[0] for r in self._retries) - self._clock()) + 0.001
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except asyncio.TimeoutError:
                    pass

    async def close(self) -> None:
        """Stop handing out work (graceful stop): ``take`` returns None from now on."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def poke(self) -> None:
        """Something outside changed (a backend came back): let waiting workers look again."""
        async with self._changed:
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
