"""Retry decisions per variant, with tenacity's strategies: pure, no I/O, no event loop.

Stop after attempts *or* time, exponential backoff with jitter, retry only on retryable
``BackendError``; evaluated per variant, so a retried variant goes back to the shared pool and any
healthy backend may take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tenacity
from tenacity import RetryCallState

from pipeline.errors import BackendError
from pipeline.job.schema import RetrySpec


@dataclass(slots=True)
class Attempts:
    """A variant's history in this run."""

    count: int = 0
    first_at: float = 0.0
    failed_on: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    last_error: BackendError | None = None


class RetryPolicy:
    """Decides, with tenacity's strategies, whether and when a variant is tried again."""

    def __init__(self, spec: RetrySpec, *, zero_waits: bool = False) -> None:
        self.spec = spec
        wait: tenacity.wait.wait_base = tenacity.wait_exponential(
            multiplier=spec.backoff_initial_s, max=spec.backoff_max_s
        ) + tenacity.wait_random(0, spec.backoff_initial_s)
        if zero_waits or spec.backoff_max_s == 0:
            wait = tenacity.wait_none()
        self._retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(spec.max_attempts)
            | tenacity.stop_after_delay(spec.max_time_s),
            wait=wait,
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, BackendError) and e.retryable),
            reraise=True,
        )

    def next_delay_s(self, attempts: Attempts, exc: BackendError, now: float | None = None
                     ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up on the variant."""
        if len(attempts.failed_on) >= self.spec.max_backends_per_variant:
            return None
        state = RetryCallState(retry_object=self._retrying, fn=None, args=(), kwargs={})
        state.start_time = attempts.first_at
        state.attempt_number = attempts.count
        state.set_exception((type(exc), exc, exc.__traceback__))
        if now is not None:
            state.outcome_timestamp = now
        if not self._retrying.retry(state) or self._retrying.stop(state):
            return None
        return float(self._retrying.wait(state))
