"""Expansion: counts without expanding, axes, seeds stable under edits, shards, laziness."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import pytest

from pipeline import expand
from pipeline.errors import JobError
from pipeline.job.load import parse_job
from pipeline.job.schema import parse_range


def _plan(text: str, base_dir: Path | str = ".") -> expand.Plan:
    return expand.build_plan(parse_job(text.encode(), path="job.yaml", base_dir=str(base_dir)))


@pytest.mark.parametrize("text,values", [
    ("5..9", [5, 6, 7, 8, 9]), ("0.2..1.0 step 0.2", [0.2, 0.4, 0.6, 0.8, 1.0]),
    ("10..30 step 10", [10, 20, 30]), ("3..3", [3]), ("a..b", None), ("5", None),
])
def test_ranges(text: str, values: list | None) -> None:
    assert parse_range(text) == values


@pytest.mark.parametrize("job,count", [
    ("prompts: [a]", 1),
    ("prompts: ['{a|b|c}', d]\nseeds: [1, 2]", 8),
    ("prompts: [a]\nmatrix: {cfg_scale: [5, 7], steps: '10..30 step 10'}\nseeds: 3", 18),
    ("prompts: [a]\nzip: [{width: [512, 768], height: [768, 512]}]\nmatrix: {cfg_scale: [1, 2]}", 4),
    ("prompts: [a cat]\nreplace: [[cat, dog, fox]]", 3),
    ("prompts: [a]\nloras: {names: [x, y], weights: [0, 0.5, 1]}", 5),
    ("prompts: [a]\nloras: {names: [x], weights: [0.5], baseline: true}", 2),
    ("prompts: ['{a|b}']\nmode: random\nrandom: {count: 7}\nseeds: [1, 2]", 14),
    ("prompts: [a]\nseeds: {count: 4}", 4),
])
def test_count_matches_expansion(job: str, count: int) -> None:
    plan = _plan(job)
    assert expand.count(plan) == count
    variants = list(expand.variants(plan))
    assert len(variants) == count
    assert len({v.id for v in variants}) == count, "ids must be unique"


def test_axes_applied_to_payload() -> None:
    plan = _plan("""
defaults: {steps: 20, override_settings: {CLIP_stop_at_last_layers: 2}}
prompts: ["a cat on a mat"]
replace: [[cat, dog]]
loras: {names: [detail], weights: [0, 0.6]}
zip: [{width: [512, 768], height: [768, 512]}]
matrix: {checkpoint: [m1], cfg_scale: [4]}
seeds: [9]
""")
    variants = list(expand.variants(plan))
    assert len(variants) == 8
    v = variants[-1]
    assert v.prompt == "a dog on a mat <lora:detail:0.6>"
    assert v.payload["width"] == 768 and v.payload["height"] == 512
    assert v.payload["override_settings"] == {"CLIP_stop_at_last_layers": 2,
                                              "sd_model_checkpoint": "m1"}
    assert v.payload["override_settings_restore_afterwards"] is False
    assert v.checkpoint == "m1" and v.seed == 9 and v.payload["seed"] == 9
    axes = dict(v.axes)
    assert axes["lora"] == "detail:0.6" and axes["replace:cat"] == "dog"
    baseline = variants[0]
    assert "<lora" not in baseline.prompt and dict(baseline.axes)["lora"] == "baseline"
    # shared defaults are never mutated by expansion
    assert plan.spec.defaults["override_settings"] == {"CLIP_stop_at_last_layers": 2}


def test_ids_stable_across_runs_and_edits() -> None:
    before = {v.payload["prompt"] + str(v.seed): v.id
              for v in expand.variants(_plan("prompts: ['{a|b}']\nseeds: [1, 2]"))}
    after = {v.payload["prompt"] + str(v.seed): v.id
             for v in expand.variants(_plan("prompts: ['{a|b|c}']\nseeds: [1, 2, 3]"))}
    for key, ident in before.items():
        assert after[key] == ident


def test_derived_seeds_stable_under_unrelated_edits() -> None:
    first = _plan("prompts: ['{a|b}']\nseeds: {count: 3}\nseed: 7")
    second = _plan("prompts: ['{a|b|c}']\nseeds: {count: 3}\nseed: 7")
    seeds_first: dict[str, list[int]] = {}
    for v in expand.variants(first):
        seeds_first.setdefault(v.prompt, []).append(v.seed)
    seeds_second: dict[str, list[int]] = {}
    for v in expand.variants(second):
        seeds_second.setdefault(v.prompt, []).append(v.seed)
    assert seeds_first["a"] == seeds_second["a"] and seeds_first["b"] == seeds_second["b"]
    assert len(set(seeds_first["a"])) == 3 and seeds_first["a"] != seeds_first["b"]
    other_job_seed = _plan("prompts: ['{a|b}']\nseeds: {count: 3}\nseed: 8")
    assert [v.seed for v in expand.variants(other_job_seed)][:3] != seeds_first["a"]


def test_server_picked_seeds_have_distinct_ids() -> None:
    variants = list(expand.variants(_plan("prompts: [a]\nseeds: 3")))
    assert [v.seed for v in variants] == [-1, -1, -1]
    assert len({v.id for v in variants}) == 3


@pytest.mark.parametrize("n", [2, 3, 7])
def test_shards_cover_everything_once(n: int) -> None:
    plan = _plan("prompts: ['{a|b|c|d|e}']\nmatrix: {cfg_scale: '1..10'}\nseeds: [1, 2]")
    everything = [v.id for v in expand.variants(plan)]
    shards = [[v.id for v in expand.variants(plan, shard=(i, n))] for i in range(1, n + 1)]
    union = list(itertools.chain.from_iterable(shards))
    assert sorted(union) == sorted(everything) and len(union) == len(set(union))
    assert all(shards), "every shard gets some work"


def test_checkpoint_streams_partition_the_job() -> None:
    plan = _plan("prompts: ['{a|b}']\nmatrix: {checkpoint: [m1, m2, m3], cfg_scale: [1, 2]}")
    assert expand.checkpoints(plan) == ["m1", "m2", "m3"]
    by_stream = {c: [v.id for v in expand.variants(plan, checkpoint=c)]
                 for c in expand.checkpoints(plan)}
    assert all(len(ids) == 4 for ids in by_stream.values())
    assert sorted(sum(by_stream.values(), [])) == sorted(v.id for v in expand.variants(plan))


def test_million_variants_stream_in_constant_memory() -> None:
    plan = _plan("prompts: ['{a|b|c|d|e|f|g|h|i|j} {k|l|m|n|o|p|q|r|s|t}']\n"
                 "matrix: {cfg_scale: '1..100', steps: '1..100'}\nseeds: [1]")
    assert expand.count(plan) == 1_000_000
    tracemalloc.start()
    stream = expand.variants(plan)
    for v in itertools.islice(stream, 20_000):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000, f"expansion held {peak} bytes"


def test_replace_text_must_be_in_every_prompt() -> None:
    with pytest.raises(JobError, match="does not contain"):
        _plan("prompts: ['a cat', 'a bird']\nreplace: [[cat, dog]]")


def test_wildcards_beside_the_job(tmp_path: Path) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "colour.txt").write_text("# colours\nred\ngreen\n\nblue\n")
    plan = _plan("prompts: ['a __colour__ car']", base_dir=tmp_path)
    assert [v.prompt for v in expand.variants(plan)] == ["a red car", "a green car",
                                                          "a blue car"]
    with pytest.raises(JobError, match="colour"):
        _plan("prompts: ['a __color__ car']", base_dir=tmp_path)


def test_raw_prompts_are_verbatim() -> None:
    plan = _plan("prompts:\n  - {prompt: 'keep {a|b} as is', raw: true}")
    assert [v.prompt for v in expand.variants(plan)] == ["keep {a|b} as is"]
