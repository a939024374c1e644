"""Repeats dropped where they arise (``variants(..., on_repeat=)``): exactly the variants a set of
every id would drop, with memory per prompt text where the job's shape allows."""

from __future__ import annotations

import tracemalloc

import pytest

from pipeline import expand
from pipeline.expand.variants import _Repeats, _settings_groups
from pipeline.job.load import parse_job


def _plan(text: str) -> expand.Plan:
    return expand.build_plan(parse_job(text.encode(), path="job.yaml", base_dir="."))


def _by_id_set(stream):  # the reference: keep the first of every id
    seen: set[str] = set()
    kept, dropped = [], 0
    for v in stream:
        if v.id in seen:
            dropped += 1
            continue
        seen.add(v.id)
        kept.append(v)
    return kept, dropped


def _by_rule(plan, **kwargs):
    dropped: list[str] = []
    kept = list(expand.variants(plan, on_repeat=lambda v: dropped.append(v.id), **kwargs))
    return kept, dropped


JOBS = {
    "template repeats a text": "prompts: ['a {cat|cat|dog}']\nseeds: [1, 2]",
    "nested repeats": "prompts: ['{a|}{|a} x']\nseeds: {count: 3}",
    "two prompts alike": "prompts: [a cat, a cat, a dog]\nmatrix: {cfg_scale: [5, 7]}",
    "alike but for steps": ("prompts: [{prompt: a, steps: 3}, {prompt: a, steps: 3}, "
                            "{prompt: a, steps: 4}]\nmatrix: {cfg_scale: [5, 7]}\n"
                            "seeds: {count: 2}"),
    "alike but for a fixed seed": "prompts: [{prompt: a, seed: 5}, a]\nseeds: [5, 6]",
    "replace leaves a text as it is": "prompts: ['a {cat|dog}']\nreplace: [[cat, dog]]\nseeds: [1]",
    "lora tag already in a text": ("prompts: ['x', 'x <lora:y:1>']\n"
                                   "loras: {names: [y], weights: [0, 1]}\nseeds: [1]"),
    "server seeds": "prompts: ['{a|a}']\nseeds: 3",
    "random mode": "prompts: ['{a|b}']\nmode: random\nrandom: {count: 6}\nseeds: [1, 2]",
    "checkpoint axis": "prompts: ['{a|a|b}']\nmatrix: {checkpoint: [m1, m2]}\nseeds: {count: 2}",
    "prompt checkpoints": ("prompts: [{prompt: a, checkpoint: m1}, {prompt: a, checkpoint: m2}, "
                           "{prompt: a, checkpoint: m1}]\nseeds: [1]"),
    "plain sweep": ("prompts: ['{a|b|c}']\nmatrix: {cfg_scale: [5, 7], steps: [10, 20]}\n"
                    "seeds: {count: 5}"),
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_drops_exactly_what_an_id_set_drops(name: str) -> None:
    plan = _plan(JOBS[name])
    expected, dropped = _by_id_set(expand.variants(plan))
    kept, repeats = _by_rule(plan)
    assert [v.id for v in kept] == [v.id for v in expected]
    assert [v.ordinal for v in kept] == [v.ordinal for v in expected]
    assert len(repeats) == dropped
    assert len(kept) + len(repeats) == expand.count(plan)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_per_checkpoint_streams_and_shards_agree(name: str) -> None:
    plan = _plan(JOBS[name])
    for checkpoint in expand.checkpoints(plan):
        for shard in (None, (1, 2), (2, 2)):
            expected, dropped = _by_id_set(expand.variants(plan, checkpoint=checkpoint,
                                                           shard=shard))
            kept, repeats = _by_rule(plan, checkpoint=checkpoint, shard=shard)
            assert [v.id for v in kept] == [v.id for v in expected]
            assert len(repeats) == dropped


def test_coinciding_derived_seeds_repeat_in_every_combination() -> None:
    plan = _plan("prompts: [a]\nmatrix: {cfg_scale: [5, 7]}\nseeds: {count: 3}")
    template = plan.templates[0]
    repeats = _Repeats(plan)
    assert set(repeats.of_text(template, "a", [9, 4, 9], random_mode=False)) == {2}
    assert set(repeats.of_text(template, "a", [9, 4, 9], random_mode=False)) == {0, 1, 2}


@pytest.mark.parametrize("job,structural", [
    ("prompts: ['{a|b}']\nmatrix: {cfg_scale: [5, 7]}\nseeds: {count: 2}", True),
    ("prompts: [a cat]\nreplace: [[cat, dog]]", False),
    ("prompts: [a]\nloras: {names: [x], weights: [0, 1]}", True),
    ("prompts: ['a <lora:x:1>']\nloras: {names: [x], weights: [0, 1]}", False),
    ("prompts: [{prompt: a, seed: 3}, a]", False),
])
def test_what_needs_every_id(job: str, structural: bool) -> None:
    assert (_settings_groups(_plan(job)) is not None) is structural


def test_a_long_sweep_keeps_nothing_per_variant() -> None:
    plan = _plan("prompts: ['{a|b|c|d}']\nmatrix: {cfg_scale: [5, 7]}\nseeds: {count: 20000}")
    stream = expand.variants(plan, on_repeat=lambda v: None)
    for _ in range(1000):  # past the first text's seed list: what stays is per text
        next(stream)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(60000):
        next(stream)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 2_000_000  # a set of 60,000 ids alone would be ~5 MB
