"""The prompt template language: parsing, counting, lazy expansion, sampling, wildcards, importers.

Pure: no event loop, no network; wildcard folders are written to ``tmp_path``.
"""

from __future__ import annotations

import collections
import itertools
import random
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline.errors import JobError, TemplateError
from pipeline.prompts import (Alternatives, Literal, Option, Sequence, Wildcard, WildcardStore,
                              count, expand, parse, sample, wildcard_names)
from pipeline.prompts.importers import parse_kohya_line, parse_prompts_file_line


def run(text: str, store: WildcardStore | None = None) -> list[str]:
    return list(expand(parse(text), store))


# -- expansion ------------------------------------------------------------------------------------

EXPANSIONS: list[tuple[str, list[str]]] = [
    # literal passthrough: LoRA, embeddings, WebUI attention / scheduling / alternation syntax
    ("a cat", ["a cat"]),
    ("<lora:detail:0.6> a cat", ["<lora:detail:0.6> a cat"]),
    ("(masterpiece:1.2), [cat:dog:10], [cow|horse]", ["(masterpiece:1.2), [cat:dog:10], [cow|horse]"]),
    (r"\(artist\) name", [r"\(artist\) name"]),
    ("price $$ 5 :: ok", ["price $$ 5 :: ok"]),
    ("a|b", ["a|b"]),
    ("score_9, score_8_up", ["score_9, score_8_up"]),
    ("^__^ a __ b", ["^__^ a __ b"]),
    ("", [""]),
    # alternatives, order: first group varies slowest
    ("{a|b|c}", ["a", "b", "c"]),
    ("{a|b} {x|y}", ["a x", "a y", "b x", "b y"]),
    ("a {red|blue} car", ["a red car", "a blue car"]),
    # nesting
    ("{a {x|y}|b}", ["a x", "a y", "b"]),
    ("{{a|b}|{c|{d|e}}}", ["a", "b", "c", "d", "e"]),
    # empty options; spaces collapsed, ends stripped
    ("{a|} cat", ["a cat", "cat"]),
    ("a {big|} {red|} car", ["a big red car", "a big car", "a red car", "a car"]),
    ("{|}", ["", ""]),
    # choose-k
    ("{2$$a|b|c}", ["a, b", "a, c", "b, c"]),
    ("{2$$ and $$a|b|c}", ["a and b", "a and c", "b and c"]),
    ("{3$$-$$a|b|c}", ["a-b-c"]),
    ("{1-2$$a|b|c}", ["a", "b", "c", "a, b", "a, c", "b, c"]),
    ("{-2$$a|b}", ["a", "b", "a, b"]),
    ("{2-$$a|b|c}", ["a, b", "a, c", "b, c", "a, b, c"]),
    ("{ 1 - 2 $$a|b}", ["a", "b", "a, b"]),
    ("{0-1$$a|b}", ["", "a", "b"]),
    ("{2$$a|{x|y}}", ["a, x", "a, y"]),
    # weights are ignored combinatorially
    ("{0.5::a|2::b|c}", ["a", "b", "c"]),
    ("{2$$ + $$1::a|3::b|0.1::c}", ["a + b", "a + c", "b + c"]),
    ("{1e-1::a|0::b}", ["a", "b"]),
    # escapes
    (r"\{a\|b\}", ["{a|b}"]),
    (r"{a\|b|c}", ["a|b", "c"]),
    (r"back\\slash", ["back\\slash"]),
    (r"\_\_color\_\_", ["__color__"]),
    (r"{\$$|b}", ["$$", "b"]),
    (r"{x\::y|b}", ["x::y", "b"]),
    (r"{<lora:a:1>|(b:1.2)}", ["<lora:a:1>", "(b:1.2)"]),
    ("trailing \\", ["trailing \\"]),
]


@pytest.mark.parametrize(("template", "expected"), EXPANSIONS)
def test_expand(template: str, expected: list[str]) -> None:
    assert run(template) == expected
    assert count(parse(template)) == len(expected)


COUNTS = [
    "{a|b}" * 5,
    "{a|{b|c|{d|e}}} {x|y|}",
    "{2$$a|{b|c}|{d|e|f}|g}",
    "{1-3$$ / $$a|{b|c}|d|{e|f|g}}",
    "{2-$${a|b}|{c|d}|e}",
    "{-2$${a|b} {c|d}|e|{f|}}",
    "{0-2$$a|b|c}",
    "x {2$$a|b|{c|d}} y {e|f}",
]


@pytest.mark.parametrize("template", COUNTS)
def test_count_matches_expansion(template: str) -> None:
    node = parse(template)
    assert count(node) == len(list(expand(node)))


def test_choose_k_expansions_are_the_combinations_in_list_order() -> None:
    options = "abcdef"
    template = "{2-4$$" + "|".join(options) + "}"
    expected = [", ".join(c) for k in range(2, 5) for c in itertools.combinations(options, k)]
    assert run(template) == expected


def test_huge_template_counts_exactly_and_streams() -> None:
    node = parse("".join("{0|1|2|3|4|5|6|7|8|9}" for _ in range(12)))
    assert count(node) == 10 ** 12
    started = time.perf_counter()
    stream = expand(node)
    assert next(stream) == "0" * 12
    assert next(stream) == "0" * 11 + "1"
    assert time.perf_counter() - started < 0.5
    big = parse(("{" + "|".join(f"w{i}" for i in range(1000)) + "} ") * 40)
    assert count(big) == 1000 ** 40  # exact, far beyond a float


def test_expansion_runs_in_constant_memory() -> None:
    # 10^6 expansions of groups too big to be cached as tuples (> 256 each)
    group = "{" + "|".join(f"w{i}" for i in range(1000)) + "}"
    node = parse(f"{group} {group}")
    assert count(node) == 10 ** 6
    tracemalloc.start()
    try:
        last = ""
        for last in itertools.islice(expand(node), 300_000):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last == "w299 w999"
    assert peak < 2_000_000, peak


def test_parse_structure() -> None:
    node = parse("a {1-2$$ + $$0.5::x|__col__}")
    assert node == Sequence((
        Literal("a "),
        Alternatives((Option(Literal("x"), 0.5), Option(Wildcard("col", 20), 1.0)), 1, 2, " + "),
    ))
    assert wildcard_names(node) == {"col"}
    assert wildcard_names(parse("__a__ {__b/c__|__d/*__}")) == {"a", "b/c", "d/*"}
    with pytest.raises(AttributeError):
        node.parts = ()  # type: ignore[misc]


# -- errors ---------------------------------------------------------------------------------------

# (template, 0-based position, substrings of the message, substring of the hint)
ERRORS: list[tuple[str, int, list[str], str]] = [
    ("a {red|blue car", 2, ["never closed"], "\\{"),
    ("{a|{b}", 0, ["never closed"], "close it"),
    ("a red} car", 5, ["without a matching"], "\\}"),
    ("{a}}", 3, ["without a matching"], "\\}"),
    ("x {}", 2, ["empty '{}'"], "{a|}"),
    ("{3$$a|b}", 1, ["choose 3 of 2"], "at most"),
    ("{2-$$a}", 1, ["of 1 option"], "at most"),
    ("{3-2$$a|b|c}", 1, ["runs backwards"], "smaller number first"),
    ("{0$$a|b}", 1, ["choose 0"], "at least 1"),
    ("{two$$a|b}", 1, ["bad choose-k spec 'two'"], "{2$$a|b|c}"),
    ("{1-2-3$$a|b}", 1, ["bad choose-k spec"], "range"),
    ("{-$$a|b}", 1, ["bad choose-k spec"], "range"),
    ("{a|b $$c}", -1, [], ""),  # $$ after the first option is literal: no error (checked below)
    ("{abc::a|b}", 1, ["bad weight 'abc'"], "number >= 0"),
    ("{a|-1::b}", 3, ["bad weight '-1'"], "number >= 0"),
    ("{a|nan::b}", 3, ["bad weight"], "number >= 0"),
    ("{::a}", 1, ["bad weight ''"], "0.5::a"),
    ("{0::a|0::b}", 0, ["every option has weight 0"], "above 0"),
    ("{2$$1::a|0::b|0::c}", 0, ["only 1 options"], "above 0"),
    ("a __color", 2, ["not closed"], "\\_\\_"),
    ("__a/../b__", 0, ["bad wildcard name"], "'..'"),
    ("__/abs__", 0, ["bad wildcard name"], "'..'"),
    # Dynamic Prompts syntax sdbatch does not implement: refused by name, never sent mangled
    ("a {~red|blue}", 2, ["Dynamic Prompts", "cyclical", "'{~'"], "remove the prefix"),
    ("{@a|b}", 0, ["Dynamic Prompts", "combinatorial", "'{@'"], "remove the prefix"),
    ("{~2$$a|b|c}", 0, ["cyclical"], "remove the prefix"),
    ("x ${season=summer} ${season}", 2, ["Dynamic Prompts variables"], "\\$\\{"),
    ("a ${season}", 2, ["Dynamic Prompts variables"], "\\$\\{"),
    ("a __~colour__", 2, ["cyclical wildcard prefix '__~'"], "__name__"),
    ("a __@colour__", 2, ["combinatorial wildcard prefix '__@'"], "__name__"),
    ("__colour(shade=dark)__", 0, ["wildcard parameters"], "__name__"),
    ("{% if x %}a{% endif %}", 0, ["Jinja2"], "{a|b}"),
]


@pytest.mark.parametrize(("template", "position", "message", "hint"), ERRORS)
def test_template_errors(template: str, position: int, message: list[str], hint: str) -> None:
    if position < 0:
        parse(template)
        return
    with pytest.raises(TemplateError) as caught:
        parse(template)
    err = caught.value
    assert err.position == position
    assert f"at character {position + 1}" in str(err)
    for part in message:
        assert part in str(err)
    assert err.hint and hint in err.hint
    assert isinstance(err, JobError)  # the job layer catches one type


def test_error_message_shows_a_caret_under_the_problem() -> None:
    with pytest.raises(TemplateError) as caught:
        parse("a {red|blue car")
    lines = str(caught.value).splitlines()
    assert lines[1].strip() == "a {red|blue car"
    assert lines[2].index("^") == lines[1].index("{")


# -- sampling -------------------------------------------------------------------------------------

def test_sample_is_reproducible_with_a_seeded_random() -> None:
    node = parse("{a|b|c} {1-3$$x|y|z|w} {0.2::p|q}")
    first = [sample(node, random.Random(42)) for _ in range(3)]
    again = [sample(node, random.Random(42)) for _ in range(3)]
    assert first == again and len(set(first)) == 1
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert [sample(node, rng_a) for _ in range(50)] == [sample(node, rng_b) for _ in range(50)]


@pytest.mark.parametrize(("template", "expected_share"), [
    ("{3::a|1::b}", {"a": 0.75, "b": 0.25}),
    ("{a|b|c|d}", {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}),
    ("{0.1::a|0.9::b}", {"a": 0.1, "b": 0.9}),
    ("{a|0::b}", {"a": 1.0}),
])
def test_sample_honours_weights(template: str, expected_share: dict[str, float]) -> None:
    rng = random.Random(1234)
    draws = 8000
    seen = collections.Counter(sample(parse(template), rng) for _ in range(draws))
    assert set(seen) == set(expected_share)
    for text, share in expected_share.items():
        assert abs(seen[text] / draws - share) < 0.03, (text, seen)


def test_sample_choose_k_draws_distinct_options_in_list_order() -> None:
    node = parse("{2-3$$ $$a|b|c|d}")
    rng = random.Random(5)
    possible = set(run("{2-3$$ $$a|b|c|d}"))
    seen = {sample(node, rng) for _ in range(500)}
    assert seen == possible  # every combination drawn, nothing else
    weighted = parse("{2$$100::a|100::b|1::c}")
    pairs = collections.Counter(sample(weighted, rng) for _ in range(2000))
    assert pairs.most_common(1)[0][0] == "a, b"


# -- wildcards ------------------------------------------------------------------------------------

@pytest.fixture
def wildcards(tmp_path: Path) -> Path:
    root = tmp_path / "wildcards"
    (root / "people").mkdir(parents=True)
    (root / "color.txt").write_text("# colours\nred\n\n  blue  \n{light|dark} green\n")
    (root / "people" / "hair.txt").write_text("long hair\nshort hair\n")
    (root / "people" / "eyes.txt").write_text("__color__ eyes\n")
    (root / "styles.yaml").write_text("- oil painting\n- yes\n- '0.5'\n")
    (root / "scene.yml").write_text(
        "time: [day, night]\nplace:\n  indoor: [kitchen]\n  outdoor:\n    - beach\n    - forest\n"
        "weather: rainy\n")
    return root


WILDCARD_CASES: list[tuple[str, list[str]]] = [
    ("__color__", ["red", "blue", "light green", "dark green"]),
    ("a __people/hair__ girl", ["a long hair girl", "a short hair girl"]),
    ("__styles__", ["oil painting", "yes", "0.5"]),
    ("__scene/time__", ["day", "night"]),
    ("__scene/place/outdoor__", ["beach", "forest"]),
    ("__scene/weather__", ["rainy"]),
    ("__people/eyes__", ["red eyes", "blue eyes", "light green eyes", "dark green eyes"]),
    ("{__people/hair__|bald}", ["long hair", "short hair", "bald"]),
    ("__people/*__", ["red eyes", "blue eyes", "light green eyes", "dark green eyes",
                      "long hair", "short hair"]),
    ("__scene/place/*__", ["kitchen", "beach", "forest"]),
    ("__scene/*__", ["kitchen", "beach", "forest", "day", "night", "rainy"]),
]


@pytest.mark.parametrize(("template", "expected"), WILDCARD_CASES)
def test_wildcards(wildcards: Path, template: str, expected: list[str]) -> None:
    store = WildcardStore(wildcards)
    assert run(template, store) == expected
    assert count(parse(template), store) == len(expected)
    assert sample(parse(template), random.Random(3), store) in expected


def test_wildcard_store_names_and_options(wildcards: Path) -> None:
    store = WildcardStore(wildcards)
    assert store.names() == ["color", "people/eyes", "people/hair", "scene/place/indoor",
                             "scene/place/outdoor", "scene/time", "scene/weather", "styles"]
    assert store.options("people/hair") == (Literal("long hair"), Literal("short hair"))
    assert store.options("people/hair") is store.options("people/hair")  # cached


def test_wildcard_counts_multiply(wildcards: Path) -> None:
    store = WildcardStore(wildcards)
    node = parse("__color__ __people/*__ {2$$__scene/time__|__styles__|x}")
    assert count(node, store) == len(list(expand(node, store))) == 4 * 6 * (2 * 3 + 2 + 3)


@pytest.mark.parametrize(("files", "template", "expected"), [
    ({"a.txt": "__b__\n", "b.txt": "__a__\n"}, "__a__", ["cycle", "__a__ -> __b__ -> __a__"]),
    ({"a.txt": "x {__a__|y}\n"}, "__a__", ["cycle", "__a__ -> __a__"]),
    ({"d/a.txt": "__d/*__\n"}, "__d/a__", ["cycle"]),
])
def test_wildcard_cycle_is_an_error(tmp_path: Path, files: dict[str, str], template: str,
                                    expected: list[str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    store = WildcardStore(tmp_path)
    for call in (lambda: store.options(template.strip("_")),
                 lambda: count(parse(template), store),
                 lambda: next(expand(parse(template), store)),
                 lambda: sample(parse(template), random.Random(), store)):
        with pytest.raises(JobError) as caught:
            call()
        for part in expected:
            assert part in str(caught.value)
        assert caught.value.path and caught.value.path.endswith(".txt")


@pytest.mark.parametrize(("name", "expected", "hint"), [
    ("colour", ["__colour__", "not found"], "did you mean __color__?"),
    ("people/hare", ["__people/hare__"], "__people/hair__"),
    ("scene/tim", ["__scene/tim__"], "__scene/time__"),
    ("zzzzzz", ["__zzzzzz__"], "zzzzzz.txt"),
    ("nope/*", ["__nope/*__"], "pattern"),
    ("scene/place", ["is a group"], "__scene/place/*__"),
])
def test_missing_wildcard_names_the_folder_and_suggests(wildcards: Path, name: str,
                                                         expected: list[str], hint: str) -> None:
    store = WildcardStore(wildcards)
    with pytest.raises(JobError) as caught:
        store.options(name)
    for part in expected:
        assert part in str(caught.value)
    if "group" not in expected[0]:
        assert str(wildcards) in str(caught.value)
    assert caught.value.hint and hint in caught.value.hint


def test_missing_nested_wildcard_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "outer.txt").write_text("# header\nplain\n__inner__ thing\n")
    (tmp_path / "innr.txt").write_text("x\n")
    with pytest.raises(JobError) as caught:
        WildcardStore(tmp_path).options("outer")
    err = caught.value
    assert err.path == str(tmp_path / "outer.txt") and err.where == "line 3"
    assert "__inner__" in str(err) and err.hint and "__innr__" in err.hint


@pytest.mark.parametrize("root", [None, "does-not-exist"])
def test_wildcard_without_a_folder_is_an_error(tmp_path: Path, root: str | None) -> None:
    store = WildcardStore(None if root is None else tmp_path / root)
    assert store.names() == []
    with pytest.raises(JobError, match="__color__ is used, but"):
        count(parse("a __color__"), store)
    with pytest.raises(JobError, match="__color__ is used, but"):
        list(expand(parse("a __color__")))
    assert run("no wildcards here", store) == ["no wildcards here"]


@pytest.mark.parametrize(("files", "name", "expected", "where"), [
    ({"bad.txt": "ok\n{broken\n"}, "bad", "never closed at character 1", "line 2"),
    ({"empty.txt": "# only a comment\n\n"}, "empty", "no options", None),
    ({"bad.yaml": "a: [x\n"}, "bad/a", "not valid YAML", "line 2"),
    ({"nested.yaml": "- [a, b]\n"}, "nested", "item 1", "top level"),
    ({"latin.txt": b"caf\xe9\n"}, "latin", "not UTF-8", None),
])
def test_bad_wildcard_files_name_the_file(tmp_path: Path, files: dict[str, str | bytes],
                                          name: str, expected: str, where: str | None) -> None:
    for fname, text in files.items():
        path = tmp_path / fname
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(JobError) as caught:
        WildcardStore(tmp_path).options(name)
    assert expected in str(caught.value)
    assert caught.value.path == str(tmp_path / next(iter(files)))
    if where:
        assert caught.value.where == where


# -- importers ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ("", None),
    ("   # a comment", None),
    ("a cat on a mat", {"prompt": "a cat on a mat"}),
    ('--prompt "a cat" --negative_prompt "x" --steps 20 --seed 5 --cfg_scale 7 '
     '--sampler_name "Euler a" --width 512 --height 768 --batch_size 2',
     {"prompt": "a cat", "negative_prompt": "x", "steps": 20, "seed": 5, "cfg_scale": 7.0,
      "sampler_name": "Euler a", "width": 512, "height": 768, "batch_size": 2}),
    ("--prompt a cat in a hat --seed -1", {"prompt": "a cat in a hat", "seed": -1}),
    ('--prompt "(cat:1.2), <lora:x:0.5>" --tiling true --restore_faces FALSE',
     {"prompt": "(cat:1.2), <lora:x:0.5>", "tiling": True, "restore_faces": False}),
    ('--prompt x --sd_model "sd15.safetensors" --styles Cinematic --outpath_samples /tmp/o',
     {"prompt": "x", "override_settings": {"sd_model_checkpoint": "sd15.safetensors"},
      "styles": ["Cinematic"]}),
])
def test_prompts_file_lines(line: str, expected: dict | None) -> None:
    assert parse_prompts_file_line(line, 3, "list.txt") == expected


@pytest.mark.parametrize(("line", "message", "hint"), [
    ('--prompt "a cat', "cannot split", "quote"),
    ("--prompt x --stpes 20", "unknown option '--stpes'", "--steps"),
    ("--prompt x --steps", "needs a value", "--steps VALUE"),
    ("--prompt x --steps many", "not a whole number", "whole number"),
    ("--prompt x --cfg_scale high", "not a number", "number"),
    ("--prompt x --tiling yes", "not true or false", "true or false"),
    ("--steps 20", "no --prompt", "--prompt"),
    ("--seed 1 2", "'2' is not an option", "quote"),
])
def test_prompts_file_bad_lines(line: str, message: str, hint: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_prompts_file_line(line, 7, "list.txt")
    err = caught.value
    assert message in str(err) and err.hint and hint in err.hint
    assert err.path == "list.txt" and err.where == "line 7"


@pytest.mark.parametrize(("line", "expected"), [
    ("# comment", None),
    ("  ", None),
    ("a cat", {"prompt": "a cat"}),
    ("a cat's hat --n bad hands --w 512 --h 768 --d 42 --s 28 --l 7.5",
     {"prompt": "a cat's hat", "negative_prompt": "bad hands", "width": 512, "height": 768,
      "seed": 42, "steps": 28, "cfg_scale": 7.5}),
    ("x --ss euler_a", {"prompt": "x", "sampler_name": "Euler a"}),
    ("x --ss k_dpm_2_a --g 3.5", {"prompt": "x", "sampler_name": "DPM2 a",
                                   "distilled_cfg_scale": 3.5}),
    ("x --ss my_sampler", {"prompt": "x", "sampler_name": "my_sampler"}),
    ("x --W 640 --N  blurry ", {"prompt": "x", "width": 640, "negative_prompt": "blurry"}),
])
def test_kohya_lines(line: str, expected: dict | None) -> None:
    assert parse_kohya_line(line, 1, "sample.txt") == expected


@pytest.mark.parametrize(("line", "message", "hint"), [
    ("x --q 3", "unknown option --q", "--n, --w"),
    ("x --ww 3", "unknown option --ww", "did you mean --w?"),
    ("x --w", "needs a value", "width"),
    ("x --w wide", "not a valid width", "--w 512"),
    ("x --l 7,5", "not a valid cfg_scale", "number"),
])
def test_kohya_bad_lines(line: str, message: str, hint: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_kohya_line(line, 4, "sample.txt")
    err = caught.value
    assert message in str(err) and err.hint and hint in err.hint
    assert err.path == "sample.txt" and err.where == "line 4"


def test_choose_k_spreads_over_a_wildcard(tmp_path):
    (tmp_path / "style.txt").write_text("grain\nbokeh\nmuted\n")
    store = WildcardStore(tmp_path)
    node = parse("{2$$ and $$__style__}")
    assert count(node, store) == 3
    assert list(expand(node, store)) == ["grain and bokeh", "grain and muted", "bokeh and muted"]
    assert count(parse("{2-$$__style__}"), store) == 4
    drawn = sample(node, random.Random(1), store)
    assert drawn.count(" and ") == 1
    with pytest.raises(JobError, match="only 3 option"):
        count(parse("{4$$__style__}"), store)


def test_literal_dollar_and_tilde_still_pass() -> None:
    assert run("$5 ~ approx {a|b}") == ["$5 ~ approx a", "$5 ~ approx b"]
    assert run("\\$\\{x\\} {a\\|~b}") == ["${x} a|~b"]
    assert run("{a|~b}") == ["a", "~b"]  # only a leading ~ or @ is a sampler prefix


def test_nesting_and_length_are_measured_without_expanding(tmp_path: Path) -> None:
    from pipeline.prompts import max_chars, nesting

    (tmp_path / "d0.txt").write_text("__d1__ __d1__\n")
    (tmp_path / "d1.txt").write_text("{ab|abc}\n")
    store = WildcardStore(tmp_path)
    node = parse("x {__d0__|y}")
    assert max_chars(node, store) == len("x ") + 3 + 1 + 3
    assert nesting(node, store.depth) == 4  # group, wildcard d0, wildcard d1, group
    assert max_chars(parse("{2$$ and $$aa|b|cccc}")) == len("aa and cccc")
