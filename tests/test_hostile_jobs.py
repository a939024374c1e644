"""Hostile job files: each class of bad input exits 2 with one message naming the file, the line
or field and the fix, never a traceback, never a password; nothing is written.

The cases are grouped by the promise they test (issue 13's "bad input exits 2" list): field types
wherever a field can be set, YAML/JSON limits, wildcard limits, range strings, Dynamic Prompts
syntax sdbatch does not implement, zip keys, naming templates, credentials in messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.main import main

BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))

# (name, job text or bytes, file name, substrings the message must contain)
CASES: list[tuple[str, str | bytes, list[str]]] = [
    # -- every known field type-checked wherever it can be set ---------------------------------
    ("defaults_steps_text", "prompts: [a]\ndefaults: {steps: many}\n",
     ["line 2", "defaults.steps", "'many' is not a whole number", "fix: write a whole number"]),
    ("defaults_batch_text", "prompts: [a]\ndefaults:\n  batch_size: two\n",
     ["line 3", "defaults.batch_size", "whole number"]),
    ("defaults_batch_negative", "prompts: [a]\ndefaults: {batch_size: -3}\n",
     ["defaults.batch_size", "outside 1..", "fix:"]),
    ("defaults_batch_list", "prompts: [a]\ndefaults: {batch_size: [1]}\n",
     ["defaults.batch_size", "[1] is not a whole number"]),
    ("defaults_bool_text", "prompts: [a]\ndefaults: {enable_hr: maybe}\n",
     ["defaults.enable_hr", "true or false"]),
    ("defaults_sampler_number", "prompts: [a]\ndefaults: {sampler_name: 5}\n",
     ["defaults.sampler_name", "quote it"]),
    ("defaults_clip_skip_alias", "prompts: [a]\ndefaults: {clip_skip: x}\n",
     ["defaults.clip_skip", "whole number"]),
    ("defaults_nested_override", "prompts: [a]\ndefaults:\n  override_settings:\n"
     "    CLIP_stop_at_last_layers: deep\n", ["CLIP_stop_at_last_layers", "whole number"]),
    ("defaults_range_not_axis", "prompts: [a]\ndefaults: {steps: '20..30'}\n",
     ["is a range", "matrix"]),
    ("defaults_prompt", "prompts: [a]\ndefaults: {prompt: b}\n", ["may not set 'prompt'",
                                                                  "prompts"]),
    ("defaults_seed", "prompts: [a]\ndefaults: {seed: 5}\n", ["may not set 'seed'", "seeds"]),
    ("matrix_value_text", "prompts: [a]\nmatrix:\n  steps: [10, many]\n",
     ["line 3", "matrix.steps[1]", "'many'"]),
    ("matrix_range_half_typed", "prompts: [a]\nmatrix: {steps: '5-9 (+2'}\n",
     ["matrix.steps", "'5-9 (+2' is not a whole number or a range"]),
    ("matrix_range_backwards", "prompts: [a]\nmatrix: {steps: '9-5'}\n",
     ["matrix.steps", "backwards"]),
    ("zip_value_text", "prompts: [a]\nzip:\n  - {steps: [10, x], cfg_scale: [1, 2]}\n",
     ["line 3", "zip[0].steps[1]", "'x' is not a whole number"]),
    ("prompt_seed_text", "prompts:\n  - {prompt: a, seed: abc}\n",
     ["line 2", "prompts[0].seed", "'abc' is not a whole number"]),
    ("prompt_seed_range", "prompts:\n  - {prompt: a, seed: 99999999999}\n",
     ["prompts[0].seed", "outside -1..4294967295"]),
    ("prompt_width_float", "prompts:\n  - {prompt: a, width: 512.5}\n",
     ["prompts[0].width", "not a whole number"]),
    ("int_over_64_bits_known", "prompts: [a]\ndefaults: {steps: 99999999999999999999999}\n",
     ["defaults.steps", "outside"]),
    ("int_over_64_bits_unknown", "prompts: [a]\ndefaults: {s_seed: 99999999999999999999999}\n",
     ["defaults.s_seed", "64 bits"]),
    ("int_over_64_bits_nested", "prompts: [a]\ndefaults:\n  alwayson_scripts:\n"
     "    x: {args: [1, 99999999999999999999999]}\n", ["alwayson_scripts.x.args[1]", "64 bits"]),
    ("float_inf_in_defaults", "prompts: [a]\ndefaults: {cfg_scale: .inf}\n",
     ["defaults.cfg_scale", "finite"]),
    ("float_nan_unknown_field", "prompts: [a]\ndefaults: {foo: .nan}\n", ["defaults.foo", "finite"]),
    ("timeout_inf", "prompts: [a]\nbackends:\n  - {url: 'http://127.0.0.1:9', timeout_s: .inf}\n",
     ["line 3", "backends[0].timeout_s", "finite"]),
    ("timeout_huge", "prompts: [a]\nbackends:\n  - {url: 'http://127.0.0.1:9', timeout_s: 1e300}\n",
     ["backends[0].timeout_s"]),
    ("retry_nan", "prompts: [a]\nretry: {cooldown_s: .nan}\n", ["retry.cooldown_s", "finite"]),
    ("header_crlf", "prompts: [a]\nbackends:\n  - url: http://127.0.0.1:9\n    headers: "
     "{X-A: \"a\\r\\nX-Evil: 1\"}\n", ["backends[0].headers.X-A", "line break", "one line"]),
    ("header_bad_name", "prompts: [a]\nbackends:\n  - url: http://127.0.0.1:9\n    headers: "
     "{\"X A\\n\": b}\n", ["header name", "fix:"]),
    ("auth_newline", "prompts: [a]\nbackends:\n  - {url: 'http://127.0.0.1:9', auth: \"u:p\\n\"}\n",
     ["backends[0].auth", "line break"]),
    ("url_with_space", "prompts: [a]\nbackends: ['http://127.0.0.1:9/ x']\n", ["spaces"]),
    ("seed_bool", "prompts: [a]\nseeds: [true, 2]\n", ["seeds", "true/false is not a seed"]),
    ("lora_name_breaks_tag", "prompts: [a]\nloras: {names: ['x:1><lora:y']}\n",
     ["loras.names[0]", "<, > or :"]),
    ("two_backends_one_label", "prompts: [a]\nbackends: ['http://127.0.0.1:9', "
     "'http://127.0.0.1:9/']\n", ["backends[1]", "both", "concurrency"]),
    ("non_text_key", "prompts: [a]\ndefaults:\n  comments: {1: x}\n", ["defaults.comments", "text"]),
    # -- YAML / JSON limits -------------------------------------------------------------------
    ("tag_binary", "prompts: [a]\nname: !!binary aGVsbG8=\n", ["line 2", "!!binary"]),
    ("tag_set", "prompts: !!set {a: null}\n", ["!!set"]),
    ("tag_timestamp", "prompts: [a]\nname: !!timestamp 2024-01-01\n", ["!!timestamp"]),
    ("tag_python", "prompts: !!python/object/apply:os.system ['echo hi']\n", ["!!python"]),
    ("tag_custom", "prompts: !include other.yaml\n", ["!include"]),
    ("tag_float_not_a_number", "prompts: [a]\ndefaults: {cfg_scale: !!float abc}\n",
     ["line 2", "'abc'"]),
    ("tag_bool_not_a_bool", "prompts: [a]\ndefaults: {tiling: !!bool maybe}\n", ["'maybe'"]),
    ("alias_bomb", f"a: &a [x, x, x, x, x, x, x, x, x]\n{BOMB}prompts: [a]\n",
     ["aliases", "2,000,000"]),
    ("alias_loop", "prompts: &p [a, *p]\n", ["inside its own anchor"]),
    ("deep_nesting", "prompts: [a]\ndefaults:\n  comments: " + "[" * 200 + "]" * 200 + "\n",
     ["nested deeper than 64"]),
    ("seeds_huge", "prompts: [a]\nseeds: 1000000000000\n", ["seeds", "1..1000000"]),
    ("seed_count_huge", "prompts: [a]\nseeds: {count: 1000000000000}\n", ["seeds.count"]),
    ("random_count_huge", "prompts: [a]\nmode: random\nrandom: {count: 100000000000000}\n",
     ["random.count"]),
    ("int_too_long_yaml", "prompts: [a]\nseed: " + "9" * 5000 + "\n", ["number"]),
    ("int_too_long_json", '{"prompts": ["a"], "seed": ' + "9" * 5000 + "}", ["number"]),
    ("json_lone_surrogate", '{"prompts": ["a \\ud83d cat"]}', ["prompts[0]", "lone surrogate"]),
    ("yaml_lone_surrogate", 'prompts: ["a \\ud83d cat"]\n', ["line 1, column"]),
    ("json_nan", '{"prompts": ["a"], "defaults": {"cfg_scale": NaN}}', ["NaN", "finite"]),
    ("json_duplicate_key", '{"prompts": ["a"], "prompts": ["b"]}', ["appears twice"]),
    ("json_deep", '{"prompts": ["a"], "defaults": {"comments": ' + "[" * 100_000
     + "]" * 100_000 + "}}", ["nested"]),
    ("json_tab_indented_bad", '{\n\t"prompts": ["a"],\n\t"defaults": {"steps": "x"}\n}',
     ["defaults.steps", "whole number"]),
    # -- range strings and Dynamic Prompts syntax ------------------------------------------------
    ("dp_cyclical", "prompts: ['a {~red|blue} car']\n", ["prompts[0]", "Dynamic Prompts",
                                                          "cyclical", "{~"]),
    ("dp_combinatorial", "prompts: ['{@a|b}']\n", ["Dynamic Prompts", "{@"]),
    ("dp_variables", "prompts: ['${animal={cat|dog}} a ${animal}']\n",
     ["Dynamic Prompts variables", "${"]),
    ("dp_wildcard_prefix", "prompts: ['a __~colours__ car']\n", ["Dynamic Prompts", "__~"]),
    ("dp_wildcard_params", "prompts: ['__animal(kind=cat)__']\n", ["wildcard parameters"]),
    ("dp_jinja", "prompts: ['{% for x in [1, 2] %}{{ x }}{% endfor %}']\n", ["Jinja2"]),
    # -- zip honours or refuses seed/prompt; one axis per field -------------------------------
    ("zip_seed", "prompts: [a]\nzip:\n  - {seed: [1, 2], steps: [3, 4]}\n",
     ["line 3", "zip", "may not set 'seed'", "seeds"]),
    ("zip_prompt", "prompts: [a]\nzip:\n  - {prompt: [x, y], steps: [3, 4]}\n",
     ["may not set 'prompt'", "replace"]),
    ("matrix_seed", "prompts: [a]\nmatrix: {seed: [1, 2]}\n", ["may not set 'seed'"]),
    ("two_axes_one_field", "prompts: [a]\nmatrix: {width: [512]}\nzip:\n"
     "  - {width: [512, 768], height: [768, 512]}\n", ["both set width"]),
    ("alias_and_key_on_two_axes", "prompts: [a]\nmatrix:\n  checkpoint: [m1]\n"
     "  override_settings.sd_model_checkpoint: [m2]\n", ["both set"]),
    ("prompt_override_vs_axis", "prompts:\n  - {prompt: a, cfg_scale: 4}\nmatrix: "
     "{cfg_scale: [5, 7]}\n", ["prompt 1 sets cfg_scale", "matrix.cfg_scale varies"]),
    ("random_mode_prompt_seed", "prompts:\n  - {prompt: a, seed: 1}\nmode: random\n"
     "random: {count: 2}\n", ["mode: random"]),
    # -- naming templates ---------------------------------------------------------------------
    ("naming_precision_on_id", "prompts: [a]\nnaming: '{id:.1}'\n",
     ["line 2", "naming", "{id:.1}", "cut the id"]),
    ("naming_huge_width", "prompts: [a]\nnaming: '{ordinal:0999999999d}'\n",
     ["naming", "width 999999999"]),
    ("naming_attribute", "prompts: [a]\nnaming: '{seed.__class__}'\n",
     ["naming", "not a plain name"]),
    ("naming_unknown_axis", "prompts: [a]\nmatrix: {override_settings.sd_vae: [v1]}\n"
     "naming: '{override_settings.sd_vea}'\n",
     ["naming", "did you mean {override_settings.sd_vae}"]),
    ("naming_conversion", "prompts: [a]\nnaming: '{slug!r}'\n", ["!r conversion"]),
    ("naming_char_spec", "prompts: [a]\nnaming: '{ordinal:c}'\n", ["not allowed for {ordinal}"]),
    ("naming_too_long", "prompts: [a]\nnaming: '" + "x" * 300 + "_{id}'\n",
     ["characters", "the most is 200"]),
]


def _write(tmp_path: Path, content: str | bytes, name: str) -> Path:
    suffix = ".json" if (content[:1] in ("{", b"{")) else ".yaml"
    path = tmp_path / f"{name}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _run_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], job: Path) -> str:
    """``sdbatch plan JOB`` (which loads and expands like ``run``, but never waits on a
    backend, so a case that wrongly passes fails fast)."""
    code = main(["plan", str(job)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert str(job) in err, err
    assert "fix:" in err, f"no fix in {err!r}"
    return err


@pytest.mark.parametrize("name,content,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_job_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          name: str, content: str | bytes,
                                          expected: list[str]) -> None:
    err = _run_bad(tmp_path, capsys, _write(tmp_path, content, name))
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"


# -- wildcards: chains, length bombs, YAML bombs ------------------------------------------------

def test_wildcard_chain_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wildcards").mkdir()
    for n in range(60):
        (tmp_path / "wildcards" / f"w{n}.txt").write_text(f"x __w{n + 1}__\n")
    (tmp_path / "wildcards" / "w60.txt").write_text("end\n")
    err = _run_bad(tmp_path, capsys, _write(tmp_path, "prompts: ['__w0__']\n", "chain"))
    assert "more than 32 deep" in err and "__w0__" in err


def test_wildcard_length_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    (tmp_path / "wildcards").mkdir()
    for n in range(30):  # each doubles the text: 2**30 characters
        (tmp_path / "wildcards" / f"d{n}.txt").write_text(f"__d{n + 1}__ __d{n + 1}__\n")
    (tmp_path / "wildcards" / "d30.txt").write_text("ab\n")
    err = _run_bad(tmp_path, capsys, _write(tmp_path, "prompts: ['__d0__']\n", "double"))
    assert "can expand to" in err and "characters" in err


def test_wildcard_yaml_alias_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "bomb.yaml").write_text(
        f"a: &a [x, x, x, x, x, x, x, x, x]\n{BOMB}")
    err = _run_bad(tmp_path, capsys, _write(tmp_path, "prompts: ['__bomb/h__']\n", "wbomb"))
    assert "bomb.yaml" in err and "aliases" in err


# -- credentials never echoed -------------------------------------------------------------------

@pytest.mark.parametrize("backend,secrets", [
    ("{url: 'http://admin:hunter2secret'}", ["hunter2secret"]),  # no host: the password looks
    ("{url: 'ftp://user:p%40ssw0rd@gpu1:7861'}", ["p%40ssw0rd", "p@ssw0rd"]),  # like a port
    ("{url: 'http://gpu1:7861', auth: \"user:s3cr3tpw\\n\"}", ["s3cr3tpw"]),
    ("{url: 'http://gpu1:7861', headers: {X-Token: \"t0ps3cret\\r\\n\"}}", ["t0ps3cret"]),
    ("{url: 'http://user:hunter2secret@gpu1:7861', concurrency: 0}", ["hunter2secret"]),
    ("{url: 'http://user:hunter2secret@gpu1:99999'}", ["hunter2secret"]),
])
def test_messages_never_echo_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        backend: str, secrets: list[str]) -> None:
    err = _run_bad(tmp_path, capsys,
                   _write(tmp_path, f"prompts: [a]\nbackends:\n  - {backend}\n", "secret"))
    for secret in secrets:
        assert secret not in err, err


def test_percent_encoded_password_is_decoded() -> None:
    from pipeline.job.schema import BackendSpec

    spec = BackendSpec.model_validate({"url": "http://us%65r:p%40ss@gpu1:7861/"})
    assert spec.url == "http://gpu1:7861"
    assert spec.auth is not None and spec.auth.get_secret_value() == "user:p@ss"


# -- hostile but valid: read as meant ------------------------------------------------------------

def _plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
               name: str = "ok") -> dict:
    job = _write(tmp_path, text, name)
    assert main(["plan", str(job), "--json", "--show", "50"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("value,expected", [
    ("5-9 (+2)", [5, 7, 9]), ("1-10 [5]", [1, 3, 5, 7, 10]), ("5, 7, 9", [5, 7, 9]),
    ("10-4 (-3)", [10, 7, 4]), ("20..40 step 10", [20, 30, 40]), ("1-3, 8", [1, 2, 3, 8]),
])
def test_xyz_range_strings_are_understood(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          value: str, expected: list[int]) -> None:
    plan = _plan_json(tmp_path, capsys, f"prompts: [a]\nmatrix: {{steps: '{value}'}}\n")
    assert [v["payload"]["steps"] for v in plan["first"]] == expected


def test_text_fields_are_never_read_as_ranges(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, "prompts: [a]\nmatrix:\n"
                      "  sampler_name: ['1-2', 'DPM++ 2M, Karras']\n")
    assert [v["payload"]["sampler_name"] for v in plan["first"]] == ["1-2", "DPM++ 2M, Karras"]


def test_json_escapes_read_as_the_character(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, '{"prompts": ["an \\ud83d\\udc19 octopus"]}')
    assert plan["first"][0]["payload"]["prompt"] == "an \U0001F419 octopus"


def test_tab_indented_json_with_exponents(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, '{\n\t"prompts": ["a"],\n\t"defaults": '
                      '{"cfg_scale": 7.5e0, "steps": "20"}\n}')
    payload = plan["first"][0]["payload"]
    assert payload["cfg_scale"] == 7.5 and payload["steps"] == 20


def test_raw_prompts_keep_dynamic_prompts_syntax(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, "prompts:\n  - {prompt: '{~a|b} ${x}', raw: true}\n")
    assert plan["first"][0]["payload"]["prompt"] == "{~a|b} ${x}"


def test_dates_stay_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, "prompts: [a]\ndefaults: {comments: {made: 2024-01-02}}\n")
    assert plan["first"][0]["payload"]["comments"] == {"made": "2024-01-02"}


def test_real_aliases_and_merge_keys_still_work(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(tmp_path, capsys, "defaults: &d {steps: 20, width: 64}\nprompts:\n"
                      "  - {prompt: a, <<: *d, height: 64}\n")
    payload = plan["first"][0]["payload"]
    assert payload["steps"] == 20 and payload["height"] == 64


def test_replace_cannot_blow_up_a_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    job = _write(tmp_path, "prompts: ['" + "a " * 500 + "']\nreplace:\n  - [a, '" + "x" * 5000
                 + "']\n", "replace_bomb")
    err = _run_bad(tmp_path, capsys, job)
    assert "replace" in err and "longer than" in err
