"""Scheduler decisions without a network: affinity, retries, routing, skipping, draining."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.model import Variant
from pipeline.output.resume import ResumeFilter
from pipeline.schedule.dispatch import Dispatcher


def _variants(checkpoint: str | None, n: int, start: int = 0) -> list[Variant]:
    payload = {"override_settings": {"sd_model_checkpoint": checkpoint}} if checkpoint else {}
    return [Variant(id=f"{checkpoint}-{i}", ordinal=start + i, prompt="p", negative_prompt="",
                    seed=i, payload=payload) for i in range(n)]


def _simulate(dispatcher: Dispatcher, backends: list[str]) -> tuple[int, int]:
    """Round-robin free backends until none gets work; count checkpoint loads and variants run."""
    loads = ran = 0
    while True:
        progressed = False
        for backend in backends:
            variant = dispatcher.pick(backend)
            if variant is None:
                continue
            progressed = True
            if dispatcher._release(backend, variant):  # the variant finished
                loads += 1
            dispatcher.attempts.pop(variant.id, None)
            ran += 1
        if not progressed:
            return loads, ran


@pytest.mark.parametrize("m,b", [(4, 3), (6, 2), (2, 5), (8, 8)])
def test_checkpoint_loads_at_most_m_plus_b(m: int, b: int) -> None:
    checkpoints = [f"ckpt{i}" for i in range(m)]
    streams = {c: iter(_variants(c, 30)) for c in checkpoints}
    backends = [f"b{i}" for i in range(b)]
    dispatcher = Dispatcher(streams, backends=backends, counts={c: 30 for c in checkpoints})
    loads, ran = _simulate(dispatcher, backends)
    assert ran == 30 * m
    assert loads <= m + b


def test_naive_order_would_switch_much_more() -> None:
    # The same sweep interleaved in one stream (what a plain FIFO sees) switches far more often.
    checkpoints = [f"ckpt{i}" for i in range(4)]
    interleaved = [v for group in zip(*(_variants(c, 30) for c in checkpoints)) for v in group]
    loads = 0
    loaded: dict[int, str | None] = {0: None, 1: None}
    for n, v in enumerate(interleaved):
        if loaded[n % 2] != v.checkpoint:
            loads += 1
            loaded[n % 2] = v.checkpoint
    assert loads > 10 * (4 + 2)


def test_prefers_loaded_checkpoint_and_takes_unpinned_work_before_switching() -> None:
    streams = {"a": iter(_variants("a", 2)), "b": iter(_variants("b", 2)),
               None: iter(_variants(None, 1))}
    dispatcher = Dispatcher(streams, backends=["x"])
    dispatcher.note_loaded("x", "b")
    got = [dispatcher.pick("x").checkpoint for _ in range(3)]
    assert got == ["b", "b", None]


def test_skip_counts_resumed_variants() -> None:
    variants = _variants(None, 5)
    resume = ResumeFilter({v.id for v in variants if v.seed % 2 == 0})
    dispatcher = Dispatcher({None: resume.wrap(iter(variants))}, backends=["x"])
    seeds = []
    while (v := dispatcher.pick("x")) is not None:
        seeds.append(v.seed)
    assert seeds == [1, 3] and resume.skipped == 3


def test_routing_by_capability_parks_work_for_others() -> None:
    dispatcher = Dispatcher({None: iter(_variants(None, 4))}, backends=["small", "big"],
                            can_serve=lambda backend, v: backend == "big" or v.seed < 2)
    small, big = "small", "big"
    taken_small = [dispatcher.pick(small) for _ in range(3)]
    assert [v.seed for v in taken_small if v] == [0, 1]
    assert sorted(v.seed for v in (dispatcher.pick(big), dispatcher.pick(big))) == [2, 3]


async def test_take_waits_for_retry_then_drains() -> None:
    dispatcher = Dispatcher({None: iter(_variants(None, 1))}, backends=["x"])
    backend = "x"
    first = await dispatcher.take(backend)
    assert first is not None
    await dispatcher.retry_later(backend, first, 0.05)
    again = await asyncio.wait_for(dispatcher.take(backend), 2)
    assert again is first and dispatcher.attempts[first.id].count == 2
    await dispatcher.finished(backend, again)
    assert await asyncio.wait_for(dispatcher.take(backend), 2) is None
    assert dispatcher.drained


async def test_close_releases_waiting_workers() -> None:
    dispatcher = Dispatcher({None: iter(_variants(None, 1))}, backends=["x"])
    backend = "x"
    held = await dispatcher.take(backend)
    assert held is not None
    waiter = asyncio.create_task(dispatcher.take(backend))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # one in flight: the other worker waits for a possible retry
    await dispatcher.close()
    assert await asyncio.wait_for(waiter, 2) is None


def test_affinity_holds_with_two_requests_in_flight_per_backend() -> None:
    # Two workers per backend: the second is dispatched before the first answers, so the
    # checkpoint it should follow is the one just sent, not the one last reported loaded.
    checkpoints = [f"ckpt{i}" for i in range(4)]
    backends = ["b0", "b1"]
    dispatcher = Dispatcher({c: iter(_variants(c, 20)) for c in checkpoints}, backends=backends,
                            counts={c: 20 for c in checkpoints})
    queues: dict[str, list[Variant]] = {b: [] for b in backends}
    ran_last: dict[str, str | None] = {b: None for b in backends}
    loads = ran = 0
    while True:
        for backend in backends:  # keep two in flight on every backend
            while len(queues[backend]) < 2 and (v := dispatcher.pick(backend)):
                queues[backend].append(v)
        if not any(queues.values()):
            break
        for backend in backends:  # each server finishes its oldest request, in order
            if queues[backend]:
                variant = queues[backend].pop(0)
                if variant.checkpoint != ran_last[backend]:
                    loads += 1
                    ran_last[backend] = variant.checkpoint
                dispatcher._release(backend, variant)
                dispatcher.attempts.pop(variant.id, None)
                ran += 1
    assert ran == 80
    assert loads <= 4 + 2, loads
