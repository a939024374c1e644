"""Which stream an agent's backend reads next: checkpoint affinity across machines. Pure.

Each job has one stream per checkpoint, so keeping a loaded model busy is a matter of which
stream a free backend reads first. The rule is the local dispatcher's, with streams for its
per-checkpoint variant streams and the other agents' heartbeats for its other backends:

1. streams of the checkpoint the backend has loaded (or was last sent), every job;
2. streams that ask for no checkpoint (any loaded model serves them);
3. a switch: streams no backend is on, most waiting work first; then streams other backends
   are on, by waiting work per backend, only while each helper would still get
   ``help_min_variants`` (so a sweep over M checkpoints on B backends makes about M + B loads).

Reclaiming a dead agent's leases comes before all of these, in the same order but over every
stream with leased entries: that work blocks the job's end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pipeline.fleet.redisq import StreamLoad

HELP_MIN_VARIANTS = 4


def read_order(current: str | None, loads: Iterable[StreamLoad], *,
               on_it: dict[str | None, int], servable: Callable[[StreamLoad], bool],
               help_min_variants: int = HELP_MIN_VARIANTS) -> list[StreamLoad]:
    """The streams to try for new work, best first (an empty stream of the loaded checkpoint is
    still tried: the counts may be a moment old)."""
    candidates = [s for s in loads if servable(s)]
    same = [s for s in candidates if s.checkpoint == current]
    free = [s for s in candidates if s.checkpoint is None and current is not None]
    others = [s for s in candidates if s.checkpoint not in (current, None) and s.waiting > 0]
    uncovered = sorted((s for s in others if not on_it.get(s.checkpoint)),
                       key=lambda s: -s.waiting)
    covered = sorted((s for s in others if on_it.get(s.checkpoint)),
                     key=lambda s: -s.waiting / (1 + on_it[s.checkpoint]))
    helpful = [s for s in covered
               if s.waiting / (1 + on_it[s.checkpoint]) >= help_min_variants]
    return same + free + uncovered + helpful


def claim_order(current: str | None, loads: Iterable[StreamLoad], *,
                servable: Callable[[StreamLoad], bool]) -> list[StreamLoad]:
    """Streams whose leases may be claimed: those with leased entries, the loaded checkpoint's
    first, then checkpoint-free ones, then the rest (most leased first)."""
    leased = [s for s in loads if s.leased > 0 and servable(s)]
    return sorted(leased, key=lambda s: (s.checkpoint != current, s.checkpoint is not None,
                                         -s.leased))


def others_on(beats: Iterable[dict[str, object]], *, now_s: float, fresh_s: float,
              skip_agent: str) -> dict[str | None, int]:
    """How many backends of *other* live agents are on each checkpoint (from heartbeats)."""
    counts: dict[str | None, int] = {}
    for beat in beats:
        if beat.get("id") == skip_agent or beat.get("state") not in ("running",):
            continue
        seen = beat.get("seen")
        if not isinstance(seen, (int, float)) or now_s - seen > fresh_s:
            continue
        for backend in beat.get("backends") or ():  # type: ignore[union-attr]
            if isinstance(backend, dict) and backend.get("state") == "ok":
                key = backend.get("checkpoint")
                counts[key if isinstance(key, str) else None] = \
                    counts.get(key if isinstance(key, str) else None, 0) + 1
    return counts
