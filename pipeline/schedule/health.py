"""Per-backend health: a pure state machine, no I/O, no event loop.

A backend is ``ok`` until ``bench_after_failures`` consecutive backend-level failures; then it is
``benched`` for a cool-down that doubles each time (up to ``cooldown_max_s``), after which one
worker probes it with a cheap GET before it takes work again. Failures that belong to the variant
rather than the backend (out of memory, NaNs, a 400/422) do not count against its health, and
neither does a 429 (the server asks us to slow down: ``paused_until`` does that).

What is in flight and which checkpoint a backend is on belong to the dispatcher, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import HTTPStatusError, InputError, SubstitutionError

State = Literal["ok", "benched", "probing"]

MIN_PROBE_GAP_S = 0.2
_VARIANT_FAULTS = ("OutOfMemoryError", "out of memory", "NansException", "NaN")


def is_variant_fault(exc: BaseException) -> bool:
    """A failure caused by what the variant asks (too large, NaNs, bad field), not the backend."""
    if isinstance(exc, (SubstitutionError, InputError)):
        return True
    if isinstance(exc, HTTPStatusError):
        if exc.backend_fault or exc.rate_limited:
            return False
        if 400 <= (exc.status or 0) < 500 and exc.status != 408:
            return True
        return any(marker in str(exc) for marker in _VARIANT_FAULTS)
    return False


@dataclass(slots=True)
class BackendHealth:
    """Mutable health of one backend; methods take ``now`` for testability."""

    label: str
    bench_after_failures: int = 3
    cooldown_s: float = 5.0
    cooldown_max_s: float = 300.0
    state: State = "ok"
    consecutive_failures: int = 0
    times_benched: int = 0
    benched_until: float = 0.0
    paused_until: float = 0.0  # a 429's Retry-After: no new work before then
    done: int = 0
    images: int = 0
    failures: int = 0
    busy_s: float = 0.0
    load_s: float = 0.0  # time spent loading checkpoints, estimated
    loads: int = 0
    last_error: str = ""
    first_done_at: float | None = None
    last_done_at: float | None = None

    def on_success(self, now: float, images: int, elapsed_s: float, *,
                   switched: bool = False) -> None:
        self.state = "ok"
        self.consecutive_failures = 0
        self.times_benched = 0
        if switched:  # a request that loaded another checkpoint: learn what a load costs
            typical_s = self.busy_s / self.done if self.done else 0.0
            self.load_s += max(0.0, elapsed_s - typical_s)
            self.loads += 1
        self.done += 1
        self.images += images
        self.busy_s += elapsed_s
        if self.first_done_at is None:
            self.first_done_at = now - elapsed_s
        self.last_done_at = now

    def on_failure(self, now: float, exc: BaseException) -> bool:
        """Record a failure; True when it benched the backend just now."""
        self.failures += 1
        self.last_error = str(exc)
        if isinstance(exc, HTTPStatusError) and exc.rate_limited:
            self.failures -= 1  # being told to slow down is not a failure
            self.paused_until = max(self.paused_until, now + (exc.retry_after_s or 1.0))
            return False
        if is_variant_fault(exc):
            return False
        self.consecutive_failures += 1
        if self.state == "ok" and self.consecutive_failures >= self.bench_after_failures:
            self.bench(now)
            return True
        return False

    def bench(self, now: float) -> None:
        self.state = "benched"
        cooldown = min(self.cooldown_s * 2.0 ** min(self.times_benched, 64), self.cooldown_max_s)
        self.times_benched += 1
        self.benched_until = now + cooldown

    def on_probe(self, now: float, ok: bool) -> None:
        if ok:
            self.state = "ok"
            self.consecutive_failures = 0
        else:
            self.bench(now)
            # never re-probe in a busy loop (cooldown_s: 0): a failed probe waits a little
            self.benched_until = max(self.benched_until, now + MIN_PROBE_GAP_S)

    def images_per_s(self) -> float:
        if self.first_done_at is None or self.last_done_at is None:
            return 0.0
        span = self.last_done_at - self.first_done_at
        return self.images / span if span > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "done": self.done, "images": self.images,
                "failures": self.failures, "checkpoint_loads": self.loads,
                "images_per_s": round(self.images_per_s(), 3)}
