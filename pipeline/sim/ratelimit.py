"""SD.Next's API rate budget: per client and route, ``limit`` cost units per window.

SD.Next (``modules/api/validate.py``) charges each request to the bucket of its client address
and route: txt2img/img2img/control cost 5, most others 1, a few 0; the default budget is 300
per minute, so about 60 generations a minute. It checks *after* the handler ran (in its HTTP
middleware), so a generation over budget is computed and then answered 429 instead. This is a
sliding window of the charges accepted; a refused charge is not recorded. Memory is bounded:
a bucket never holds more than ``limit`` entries.
"""

from __future__ import annotations

import math
import time
from collections import deque

COSTS = {"/sdapi/v1/txt2img": 5, "/sdapi/v1/img2img": 5, "/sdapi/v1/control": 5,
         "/internal/progress": 0, "/file": 0}


def cost_of(path: str) -> int:
    return COSTS.get(path, 1)


class RateBudget:
    """Buckets of accepted charges, ``(time, cost)`` per ``(client, route)``."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], deque[tuple[float, int]]] = {}

    def charge(self, client: str, path: str, *, limit: int, window_s: float,
               now: float | None = None) -> float | None:
        """Charge one request; None when within budget, else the seconds until it would fit
        (what ``Retry-After`` says). ``limit`` 0 turns the budget off."""
        cost = cost_of(path)
        if limit <= 0 or cost == 0:
            return None
        now = time.monotonic() if now is None else now
        bucket = self._buckets.setdefault((client, path), deque())
        while bucket and bucket[0][0] <= now - window_s:
            bucket.popleft()
        used = sum(c for _, c in bucket)
        if used + cost <= limit:
            bucket.append((now, cost))
            return None
        if cost > limit:
            return window_s
        freed, wait_s = 0, window_s
        for at, c in bucket:  # oldest first: when enough has expired for this charge
            freed += c
            if used - freed + cost <= limit:
                wait_s = at + window_s - now
                break
        return max(wait_s, 0.001)


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
