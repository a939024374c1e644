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


# -- derived seeds: the rule is prompt text, job seed and k only ---------------------------------

def _seeds_by_prompt(plan: expand.Plan) -> dict[str, set[tuple[int, ...]]]:
    """prompt text -> the distinct tuples of seeds its variants got, one tuple per combination."""
    groups: dict[tuple[str, str], list[int]] = {}
    for v in expand.variants(plan):
        axes = dict(v.axes)
        rest = tuple((k, str(x)) for k, x in v.axes if k not in ("seed",))
        groups.setdefault((axes["prompt"], repr(rest)), []).append(v.seed)
    out: dict[str, set[tuple[int, ...]]] = {}
    for (prompt, _), seeds in groups.items():
        out.setdefault(prompt, set()).add(tuple(seeds))
    return out


def test_derived_seeds_ignore_every_other_parameter() -> None:
    base = "prompts: ['a {red|blue} car']\nseeds: {count: 3}\nseed: 7\n"
    reference = _seeds_by_prompt(_plan(base + "defaults: {steps: 20}"))
    assert set(reference) == {"a red car", "a blue car"}
    assert all(len(s) == 1 for s in reference.values())
    edits = [
        "defaults: {steps: 30}",
        "defaults: {steps: 30, width: 768, negative_prompt: ugly, sampler_name: Euler}",
        "matrix: {cfg_scale: [5, 7], checkpoint: [m1, m2]}",
        "zip: [{width: [512, 768], height: [768, 512]}]",
        "replace: [[car, truck]]\nloras: {names: [x], weights: [0, 0.5]}",
    ]
    for edit in edits:
        got = _seeds_by_prompt(_plan(base + edit))
        for prompt, seeds in reference.items():
            assert got[prompt] == seeds, f"seeds of {prompt!r} changed with {edit!r}"
    red, blue = reference["a red car"], reference["a blue car"]
    assert red != blue and len(set(next(iter(red)))) == 3
    other = _seeds_by_prompt(_plan(base.replace("seed: 7", "seed: 8")))
    assert other["a red car"] != red


# -- ordinals: the position in the whole job, in every stream ------------------------------------

ORDINAL_JOBS = [
    "prompts: ['{a|b}']\nmatrix: {checkpoint: [m1, m2, m3], cfg_scale: [1, 2]}\nseeds: [1, 2]",
    "prompts: ['{a|b}', c]\nzip: [{checkpoint: [m1, m2, m1], vae: [v1, v2, v3]}]\n"
    "matrix: {steps: [1, 2]}\nseeds: 2",
    "defaults: {checkpoint: m0}\nprompts:\n  - {prompt: '{a|b|c}', checkpoint: m1}\n  - d\n"
    "  - {prompt: '{e|f}', model: m2}\nmatrix: {cfg_scale: [1, 2]}\nseeds: {count: 2}",
    "prompts:\n  - {prompt: '{a|b}', checkpoint: m1}\n  - {prompt: c, seed: 5}\n"
    "matrix: {steps: [1, 2]}\nseeds: [1, 2, 3]",
    "prompts:\n  - {prompt: '{a|b}', checkpoint: m1}\n  - c\nmode: random\nrandom: {count: 9}\n"
    "matrix: {steps: [1, 2]}",
]


@pytest.mark.parametrize("job", ORDINAL_JOBS)
def test_ordinals_are_positions_in_the_whole_job(job: str) -> None:
    plan = _plan(job)
    everything = list(expand.variants(plan))
    assert [v.ordinal for v in everything] == list(range(1, expand.count(plan) + 1))
    by_id = {v.id: v.ordinal for v in everything}
    streamed = [v for c in expand.checkpoints(plan) for v in expand.variants(plan, checkpoint=c)]
    assert sorted(v.ordinal for v in streamed) == list(range(1, len(everything) + 1))
    assert all(by_id[v.id] == v.ordinal for v in streamed)
    for c in expand.checkpoints(plan):
        assert all(v.checkpoint == c for v in expand.variants(plan, checkpoint=c))
    sharded = [v for i in (1, 2, 3) for v in expand.variants(plan, shard=(i, 3))]
    assert sorted(v.ordinal for v in sharded) == list(range(1, len(everything) + 1))


@pytest.mark.parametrize("job,streams,text_passes", [
    ("prompts: ['{a|b|c|d}']\nmatrix: {checkpoint: [m1, m2, m3], steps: '1..20'}", 3, 3),
    ("prompts: ['{a|b|c|d}']\nzip: [{checkpoint: [m1, m2, m3, m4, m5, m6], vae: [a, b, c, d, e, f]}]"
     "\nmatrix: {steps: '1..20'}", 6, 6),
    ("prompts:\n" + "".join(f"  - {{prompt: '{{a|b|c}} {n}', checkpoint: m{n % 4}}}\n"
                            for n in range(12)) + "matrix: {steps: '1..20'}", 4, 1),
])
def test_checkpoint_streams_together_cost_one_pass(monkeypatch: pytest.MonkeyPatch, job: str,
                                                   streams: int, text_passes: int) -> None:
    """Payloads are built once over all streams (the checkpoint axis is pinned, prompts of other
    checkpoints are skipped unexpanded); only the prompt texts, a small part, are walked again
    per stream when the checkpoint is an axis."""
    import importlib

    module = importlib.import_module("pipeline.expand.variants")

    plan = _plan(job)
    builds = 0
    texts = 0
    real_apply, real_expand = module._apply, module.templates.expand

    def counting_apply(*args: object, **kwargs: object) -> object:
        nonlocal builds
        builds += 1
        return real_apply(*args, **kwargs)  # type: ignore[arg-type]

    def counting_expand(*args: object, **kwargs: object) -> object:
        for text in real_expand(*args, **kwargs):  # type: ignore[arg-type]
            nonlocal texts
            texts += 1
            yield text

    monkeypatch.setattr(module, "_apply", counting_apply)
    monkeypatch.setattr(module.templates, "expand", counting_expand)
    total = sum(1 for _ in expand.variants(plan))
    one_pass = (builds, texts)
    builds = texts = 0
    checkpoints = expand.checkpoints(plan)
    assert len(checkpoints) == streams
    streamed = sum(1 for c in checkpoints for _ in expand.variants(plan, checkpoint=c))
    assert streamed == total
    assert builds == one_pass[0], "each payload is built once over all streams"
    assert texts == one_pass[1] * text_passes


def test_axes_may_vary_the_negative_prompt_and_defaults_take_aliases() -> None:
    plan = _plan("defaults: {negative_prompt: base, checkpoint: m0, vae: v.pt}\n"
                 "prompts: [a]\nmatrix: {negative_prompt: [ugly, blurry]}")
    got = [(v.negative_prompt, v.checkpoint, v.payload["override_settings"]["sd_vae"])
           for v in expand.variants(plan)]
    assert got == [("ugly", "m0", "v.pt"), ("blurry", "m0", "v.pt")]
    assert expand.checkpoints(plan) == ["m0"]


def test_server_picked_seeds_stream_lazily() -> None:
    plan = _plan("prompts: [a]\nseeds: 1000000")
    assert expand.count(plan) == 1_000_000
    tracemalloc.start()
    first = list(itertools.islice(expand.variants(plan), 10))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [v.seed for v in first] == [-1] * 10 and len({v.id for v in first}) == 10
    assert peak < 2_000_000


@pytest.mark.parametrize("text,values", [
    ("5-9 (+2)", [5, 7, 9]), ("1-10 [5]", [1, 3, 5, 7, 10]), ("0-10 [4]", [0, 3, 6, 10]),
    ("10-4 (-3)", [10, 7, 4]), ("0.5-1.5 [3]", [0.5, 1.0, 1.5]), ("1-2 (+0.5)", [1.0, 1.5, 2.0]),
])
def test_xyz_ranges(text: str, values: list) -> None:
    assert parse_range(text) == values


@pytest.mark.parametrize("text", ["9-5", "1..5 step 0", "5-9 (0)", "1..2000000"])
def test_ranges_that_cannot_be_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse_range(text)
