"""Per-backend health and retry decisions: pure state machines, no I/O, no event loop.

A backend is ``ok`` until ``bench_after_failures`` consecutive backend-level failures; then it is
``benched`` for a cool-down that doubles each time (up to ``cooldown_max_s``), after which one
worker probes it with a cheap GET before it takes work again. Failures that belong to the
variant rather than the backend (out of memory, NaNs, a 4xx) do not count against its health.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import BackendError, HTTPStatusError, SubstitutionError

State = Literal["ok", "benched", "probing"]

_VARIANT_FAULTS = ("OutOfMemoryError", "out of memory", "NansException", "NaN")


def is_variant_fault(exc: BaseException) -> bool:
    """A failure caused by what the variant asks (too large, NaNs, bad field), not the backend."""
    if isinstance(exc, SubstitutionError):
        return True
    if isinstance(exc, HTTPStatusError):
        if 400 <= (exc.status or 0) < 500 and exc.status not in (408, 429):
            return True
        return any(marker in str(exc) for marker in _VARIANT_FAULTS)
    return False


@dataclass(slots=True)
class BackendHealth:
    """Mutable health of one backend, owned by the run; methods take ``now`` for testability."""

    label: str
    concurrency: int
    bench_after_failures: int = 3
    cooldown_s: float = 5.0
    cooldown_max_s: float = 300.0
    state: State = "ok"
    consecutive_failures: int = 0
    times_benched: int = 0
    benched_until: float = 0.0
    loaded_checkpoint: str | None = None  # as the job names it, for affinity
    model_label: str | None = None  # what the server reports it has loaded, for display
    target_checkpoint: str | None = None
    checkpoint_loads: int = 0
    switch_s: float = 0.0  # time spent loading checkpoints, estimated
    in_flight: int = 0
    done: int = 0
    images: int = 0
    failures: int = 0
    busy_s: float = 0.0
    last_error: str = ""
    first_done_at: float | None = None
    last_done_at: float | None = None

    def on_success(self, now: float, images: int, elapsed_s: float) -> None:
        self.state = "ok"
        self.consecutive_failures = 0
        self.times_benched = 0
        self.done += 1
        self.images += images
        self.busy_s += elapsed_s
        if self.first_done_at is None:
            self.first_done_at = now - elapsed_s
        self.last_done_at = now

    def on_switch(self, checkpoint: str, elapsed_s: float) -> None:
        """A request that loaded another checkpoint: learn what a load costs, for the ETA."""
        typical_s = self.busy_s / self.done if self.done else 0.0
        self.switch_s += max(0.0, elapsed_s - typical_s)
        self.checkpoint_loads += 1
        self.loaded_checkpoint = checkpoint

    def on_failure(self, now: float, exc: BaseException) -> bool:
        """Record a failure; True when it benched the backend just now."""
        self.failures += 1
        self.last_error = str(exc)
        if is_variant_fault(exc):
            return False
        self.consecutive_failures += 1
        if self.state == "ok" and self.consecutive_failures >= self.bench_after_failures:
            self.bench(now)
            return True
        return False

    def bench(self, now: float) -> None:
        self.state = "benched"
        cooldown = min(self.cooldown_s * (2 ** self.times_benched), self.cooldown_max_s)
        self.times_benched += 1
        self.benched_until = now + cooldown

    def on_probe(self, now: float, ok: bool) -> None:
        if ok:
            self.state = "ok"
            self.consecutive_failures = 0
        else:
            self.bench(now)

    def images_per_s(self) -> float:
        if self.first_done_at is None or self.last_done_at is None:
            return 0.0
        span = self.last_done_at - self.first_done_at
        return self.images / span if span > 0 else 0.0
