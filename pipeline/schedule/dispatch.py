"""Which variant a free worker takes next: pull-based, checkpoint-aware, lazily fed.

The pending work is one lazy stream of variants per checkpoint (``expand.variants(checkpoint=c)``),
plus a small set of variants waiting to be retried. A worker asks for work for its backend:

1. a retry that is due and that this backend may serve, preferring the loaded checkpoint;
2. the next variant of the stream for the checkpoint its backend has loaded;
3. the next variant that asks for no checkpoint (any loaded model serves it);
4. otherwise it switches: the stream with the most remaining work, divided by one plus the number
   of other backends already on it, so backends spread over checkpoints and each checkpoint is
   loaded about once (a sweep over M checkpoints on B backends makes at most about M + B loads).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import Attempts
from pipeline.model import Variant

CanServe = Callable[[str, Variant], bool]


@dataclass(slots=True)
class _Stream:
    checkpoint: str | None
    source: Iterator[Variant]
    remaining_hint: int
    exhausted: bool = False
    parked: deque[Variant] = field(default_factory=deque)


class Dispatcher:
    """Hands variants to workers; tracks in-flight work, retries and completion."""

    def __init__(self, streams: dict[str | None, Iterator[Variant]], *,
                 counts: dict[str | None, int] | None = None,
                 skip: Callable[[Variant], bool] = lambda v: False,
                 can_serve: CanServe | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 help_min_variants: int = 4) -> None:
        counts = counts or {}
        self._streams = {c: _Stream(c, s, counts.get(c, 1)) for c, s in streams.items()}
        self._skip = skip
        self._can_serve = can_serve or (lambda backend, variant: True)
        self._clock = clock
        self._retries: list[tuple[float, int, Variant]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._closed = False
        self._changed = asyncio.Condition()
        self.attempts: dict[str, Attempts] = {}
        self.skipped = 0
        self.taken = 0
        self.backends: dict[str, BackendHealth] = {}
        self.help_min_variants = help_min_variants

    # --- the decision -------------------------------------------------------------------------

    def pick(self, backend: BackendHealth) -> Variant | None:
        """The variant ``backend`` should run next, or None when none is available now."""
        if self._closed:
            return None
        now = self._clock()
        variant = self._due_retry(backend, now)
        if variant is None:
            variant = self._from_stream(backend, _current(backend))
        if variant is None and _current(backend) is not None:
            variant = self._from_stream(backend, None)
        if variant is None:
            for checkpoint in self._switch_order(backend):
                variant = self._from_stream(backend, checkpoint)
                if variant is not None:
                    break
        if variant is not None:
            self._in_flight += 1
            self.taken += 1
            if variant.checkpoint is not None:
                backend.target_checkpoint = variant.checkpoint
            attempts = self.attempts.setdefault(variant.id, Attempts(first_at=now))
            attempts.count += 1
        return variant

    def _due_retry(self, backend: BackendHealth, now: float) -> Variant | None:
        best: int | None = None
        for i, (ready_at, _, variant) in enumerate(self._retries):
            if ready_at > now or not self._allowed(backend, variant):
                continue
            if variant.checkpoint in (_current(backend), None):
                best = i
                break
            if best is None:
                best = i
        if best is None:
            return None
        _, _, variant = self._retries.pop(best)
        heapq.heapify(self._retries)
        return variant

    def _allowed(self, backend: BackendHealth, variant: Variant) -> bool:
        attempts = self.attempts.get(variant.id)
        if attempts is not None and backend.label in attempts.excluded:
            return False
        return self._can_serve(backend.label, variant)

    def _from_stream(self, backend: BackendHealth, checkpoint: str | None) -> Variant | None:
        stream = self._streams.get(checkpoint)
        if stream is None:
            return None
        for _ in range(len(stream.parked)):
            variant = stream.parked.popleft()
            if self._allowed(backend, variant):
                return variant
            stream.parked.append(variant)
        while not stream.exhausted:
            try:
                variant = next(stream.source)
            except StopIteration:
                stream.exhausted = True
                break
            stream.remaining_hint = max(0, stream.remaining_hint - 1)
            if self._skip(variant):
                self.skipped += 1
                continue
            if self._allowed(backend, variant):
                return variant
            if not any(self._can_serve(other, variant) for other in self.backends
                       if other != backend.label):
                return variant  # nobody else can either: let it fail here with a clear error
            stream.parked.append(variant)
            if len(stream.parked) >= 64:
                return None  # this backend cannot serve what this stream holds now
        return None

    def _switch_order(self, backend: BackendHealth) -> list[str | None]:
        """Checkpoints worth switching to: uncovered ones first (most work first), then ones other
        backends are on, only while each helper would still get ``help_min_variants``."""
        on_it: dict[str | None, int] = {}
        for other in self.backends.values():
            if other is not backend and other.state == "ok":
                key = _current(other)
                on_it[key] = on_it.get(key, 0) + 1
        live = [s for s in self._streams.values()
                if (not s.exhausted or s.parked) and s.checkpoint != _current(backend)]

        def work(s: _Stream) -> int:
            return max(s.remaining_hint, 1) + len(s.parked)

        uncovered = sorted((s for s in live if not on_it.get(s.checkpoint)), key=lambda s: -work(s))
        covered = sorted((s for s in live if on_it.get(s.checkpoint)),
                         key=lambda s: -work(s) / (1 + on_it[s.checkpoint]))
        helpful = [s for s in covered
                   if work(s) / (1 + on_it[s.checkpoint]) >= self.help_min_variants]
        return [s.checkpoint for s in uncovered + helpful]

    # --- waiting and bookkeeping --------------------------------------------------------------

    @property
    def drained(self) -> bool:
        """No work left anywhere: every stream exhausted, nothing parked, retried or in flight."""
        return (self._in_flight == 0 and not self._retries
                and all(s.exhausted and not s.parked for s in self._streams.values()))

    def checkpoints_waiting(self) -> int:
        """Checkpoints with work left that no backend has loaded: loads still to come."""
        loaded = {_current(b) for b in self.backends.values()}
        return sum(1 for s in self._streams.values()
                   if s.checkpoint is not None and s.checkpoint not in loaded
                   and (not s.exhausted or s.parked))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def take(self, backend: BackendHealth) -> Variant | None:
        """Wait for the next variant for ``backend``; None when the run has no more work for it."""
        async with self._changed:
            while True:
                if self._closed:
                    return None
                variant = self.pick(backend)
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

    async def retry_later(self, variant: Variant, delay_s: float) -> None:
        async with self._changed:
            heapq.heappush(self._retries, (self._clock() + delay_s, next(self._seq), variant))
            self._in_flight -= 1
            self._changed.notify_all()

    async def finished(self, variant: Variant) -> None:
        async with self._changed:
            self._in_flight -= 1
            self.attempts.pop(variant.id, None)
            self._changed.notify_all()

    async def close(self) -> None:
        """Stop handing out work (graceful stop): ``take`` returns None from now on."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def poke(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def _current(backend: BackendHealth) -> str | None:
    """The checkpoint the backend will have loaded once the requests sent to it have run.

    The WebUI runs requests in arrival order, so with more than one in flight the checkpoint
    of the last one dispatched, not of the last one answered, is what the next one meets.
    """
    return backend.target_checkpoint if backend.target_checkpoint is not None \
        else backend.loaded_checkpoint
