"""The worker loop alone, with fake backends: no network, no run, no output directory."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image as PILImage

from pipeline.backends.base import Probe, Reply
from pipeline.errors import BadResponseError, HTTPStatusError
from pipeline.job.schema import RetrySpec
from pipeline.model import Failed, Generated, Image, Variant
from pipeline.run.channel import Channel
from pipeline.run.worker import Worker
from pipeline.schedule.dispatch import Dispatcher
from pipeline.schedule.health import BackendHealth
from pipeline.schedule.retry import RetryPolicy


def _png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


def _variants(n: int) -> list[Variant]:
    return [Variant(id=f"{i:016x}", ordinal=i, prompt="p", negative_prompt="", seed=i,
                    payload={"seed": i}) for i in range(n)]


class FakeBackend:
    """Answers from a script: an exception to raise, or image bytes to return."""

    def __init__(self, label: str, script: list[object] | None = None, default: object = PNG):
        self.label = label
        self.script = list(script or [])
        self.default = default
        self.calls: list[str] = []

    async def probe(self) -> Probe:
        return Probe(None)

    async def generate(self, variant: Variant) -> Reply:
        self.calls.append(variant.id)
        await asyncio.sleep(0)
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, BaseException):
            raise step
        image = Image(0, step, "png", seed=variant.seed)  # type: ignore[arg-type]
        return Reply((image,), {}, None, variant.payload, 0.01)

    async def interrupt(self) -> None:
        pass


async def _run(backends: list[FakeBackend], variants: list[Variant], retry: RetrySpec
               ) -> tuple[list[Generated], list[Failed]]:
    dispatcher = Dispatcher({None: iter(variants)}, backends=[b.label for b in backends])
    outbox: Channel = Channel(4)
    policy = RetryPolicy(retry, zero_waits=True)
    events: list[object] = []
    workers = [Worker(b.label, b, BackendHealth(b.label, cooldown_s=0.01), dispatcher, policy,
                      outbox, events.append) for b in backends]
    written: list[Generated] = []
    failed: list[Failed] = []

    async def drain() -> None:
        async for item in outbox:
            (written if isinstance(item, Generated) else failed).append(item)

    async with asyncio.TaskGroup() as tg:
        sink = tg.create_task(drain())
        async with asyncio.TaskGroup() as pool:
            for w in workers:
                pool.create_task(w.run())
        await outbox.close()
        await sink
    return written, failed


async def test_every_variant_once_on_a_healthy_backend() -> None:
    backend = FakeBackend("a")
    written, failed = await _run([backend], _variants(5), RetrySpec())
    assert sorted(g.variant.id for g in written) == [v.id for v in _variants(5)]
    assert failed == [] and len(backend.calls) == 5


async def test_a_broken_backend_never_costs_a_variant_a_healthy_one_can_make() -> None:
    # 404 to every generation (its GETs work): a broken backend, not a bad variant.
    broken = FakeBackend("broken", default=HTTPStatusError("404", status=404))
    healthy = FakeBackend("healthy")
    written, failed = await _run([broken, healthy], _variants(20),
                                 RetrySpec(cooldown_s=0, max_attempts=2))
    assert failed == [] and len(written) == 20
    assert {g.backend for g in written} == {"healthy"}


async def test_half_a_png_is_a_failed_attempt_never_an_image() -> None:
    backend = FakeBackend("a", script=[PNG[:8], PNG[: len(PNG) // 2]])
    written, failed = await _run([backend], _variants(1), RetrySpec(max_attempts=3))
    assert len(written) == 1 and written[0].images[0].data == PNG
    assert written[0].attempts == 3


async def test_retry_prefers_a_backend_that_has_not_failed_it() -> None:
    flaky = FakeBackend("flaky", script=[BadResponseError("bad")], default=PNG)
    other = FakeBackend("other")
    variant = _variants(1)
    written, failed = await _run([flaky, other], variant, RetrySpec(max_attempts=3))
    assert len(written) == 1
    assert written[0].backend == "other" or flaky.calls.count(variant[0].id) == 1


async def test_variant_fault_fails_after_every_backend_tried() -> None:
    bad = HTTPStatusError("422 width", status=422)
    a, b = FakeBackend("a", default=bad), FakeBackend("b", default=bad)
    written, failed = await _run([a, b], _variants(1), RetrySpec(max_attempts=1))
    assert written == [] and len(failed) == 1
    assert set(a.calls + b.calls) == {_variants(1)[0].id} and len(a.calls + b.calls) == 2


async def test_rate_limit_is_not_an_attempt() -> None:
    limited = HTTPStatusError("429", status=429, retry_after_s=0.01)
    backend = FakeBackend("a", script=[limited, limited, limited])
    written, failed = await _run([backend], _variants(1), RetrySpec(max_attempts=1))
    assert len(written) == 1 and failed == [] and written[0].attempts == 1


@pytest.mark.parametrize("capacity", [1, 3])
async def test_channel_drains_then_ends(capacity: int) -> None:
    channel: Channel[int] = Channel(capacity)
    got: list[int] = []

    async def consume() -> None:
        async for item in channel:
            got.append(item)

    task = asyncio.create_task(consume())
    for i in range(10):
        await channel.send(i)
    await channel.close()
    await asyncio.wait_for(task, 2)
    assert got == list(range(10))
