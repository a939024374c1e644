"""A corpus of malformed job files: each exits 2 with one readable message, never a traceback,
naming the file, the line or field, and the fix; nothing is written to the output directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main

# (name, job text or bytes, substrings the message must contain)
CASES: list[tuple[str, str | bytes, list[str]]] = [
    ("broken_yaml_indent", "prompts:\n  - a\n - b\n", ["line 3", "YAML"]),
    ("unclosed_quote", 'prompts:\n  - "a cat\n', ["line", "YAML"]),
    ("tab_indent", "prompts:\n\t- a\n", ["line 2"]),
    ("empty_file", "", ["is empty", "prompts"]),
    ("only_comment", "# nothing\n", ["is empty"]),
    ("top_level_list", "- a\n- b\n", ["not a mapping", "line 1"]),
    ("top_level_string", "hello\n", ["not a mapping"]),
    ("unknown_key_typo", "promts: [a]\n", ["unknown key 'promts'", "did you mean 'prompts'"]),
    ("unknown_key_txt2img_at_top", "prompts: [a]\nsteps: 20\n", ["unknown key 'steps'",
                                                                  "defaults"]),
    ("missing_prompts", "name: x\n", ["'prompts' is required"]),
    ("empty_prompts", "prompts: []\n", ["prompts", "at least 1"]),
    ("blank_prompt", "prompts: ['  ']\n", ["prompt 1 is empty"]),
    ("blank_prompt_object", "prompts:\n  - prompt: ''\n", ["line 2", "empty"]),
    ("unbalanced_open_brace", "prompts: ['a {red|blue car']\n", ["prompts[0]", "character"]),
    ("unbalanced_close_brace", "prompts: ['a red} car']\n", ["prompts[0]", "character"]),
    ("missing_wildcard", "prompts: ['a __colour__ car']\n", ["colour", "prompts[0]"]),
    ("bad_url_scheme", "prompts: [a]\nbackends:\n  - url: ftp://gpu1:7861\n",
     ["line 3", "backends[0].url", "http://"]),
    ("bad_url_no_host", "prompts: [a]\nbackends:\n  - url: 'http://'\n", ["backends[0].url"]),
    ("bad_port", "prompts: [a]\nbackends:\n  - url: 'http://gpu1:99999'\n", ["port"]),
    ("zero_concurrency", "prompts: [a]\nbackends:\n  - url: http://a:1\n    concurrency: 0\n",
     ["line 4", "concurrency", "greater than or equal to 1"]),
    ("negative_concurrency", "prompts: [a]\nbackends:\n  - url: http://a:1\n    concurrency: -3\n",
     ["concurrency"]),
    ("concurrency_text", "prompts: [a]\nbackends:\n  - url: http://a:1\n    concurrency: many\n",
     ["concurrency", "whole number"]),
    ("negative_timeout", "prompts: [a]\nbackends:\n  - url: http://a:1\n    timeout_s: -1\n",
     ["timeout_s"]),
    ("auth_without_colon", "prompts: [a]\nbackends:\n  - url: http://a:1\n    auth: secret\n",
     ["user:password"]),
    ("missing_env_var", "prompts: [a]\nbackends:\n  - url: http://a:1\n    auth: '${SDB_NO_SUCH_VAR}'\n",
     ["SDB_NO_SUCH_VAR", "export"]),
    ("unknown_backend_key", "prompts: [a]\nbackends:\n  - url: http://a:1\n    concurency: 2\n",
     ["concurency", "did you mean 'concurrency'"]),
    ("seeds_text", "prompts: [a]\nseeds: lots\n", ["seeds"]),
    ("seeds_zero", "prompts: [a]\nseeds: 0\n", ["seeds"]),
    ("seed_out_of_range", "prompts: [a]\nseeds: [5000000000]\n", ["outside"]),
    ("empty_matrix_axis", "prompts: [a]\nmatrix:\n  cfg_scale: []\n", ["cfg_scale", "no values"]),
    ("bad_range", "prompts: [a]\nmatrix:\n  steps: '30..10'\n", ["below the start"]),
    ("zip_unequal", "prompts: [a]\nzip:\n  - {width: [512, 768], height: [512]}\n",
     ["same length"]),
    ("replace_missing_text", "prompts: ['a cat']\nreplace:\n  - [dog, fox]\n",
     ["'dog'", "replace"]),
    ("duplicate_key", "prompts: [a]\nprompts: [b]\n", ["appears twice", "line 2"]),
    ("random_without_count", "prompts: [a]\nmode: random\n", ["random"]),
    ("bad_mode", "prompts: [a]\nmode: shuffled\n", ["mode"]),
    ("binary_junk", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ["NUL", "not a text file"]),
    ("latin1_bytes", b"prompts: ['caf\xe9']\n", ["not UTF-8"]),
    ("retry_typo", "prompts: [a]\nretry:\n  max_attemps: 3\n", ["did you mean 'max_attempts'"]),
    ("lora_weight_text", "prompts: [a]\nloras:\n  names: [x]\n  weights: [strong]\n",
     ["weight"]),
    ("yaml_python_object", "prompts: !!python/object/apply:os.system ['echo hi']\n",
     ["YAML"]),
    ("naming_escape", "prompts: [a]\nnaming: '../../{id}'\n", ["naming"]),
]


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "job.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name,content,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_job_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            name: str, content: str | bytes,
                                            expected: list[str]) -> None:
    job = _write(tmp_path, content)
    out = tmp_path / "out"
    code = main(["run", str(job), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert str(job) in err, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not out.exists(), "nothing may be written for a bad job file"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and "nope.yaml" in err


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _write(tmp_path, "prompts: [a]\n")
    job.chmod(0)
    assert main(["plan", str(job)]) == 2
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expected", [
    (["run"], "the following arguments are required: job"),
    (["frobnicate"], "unknown command"),
    (["run", "JOB", "--concurrency", "x"], "invalid int value"),
    (["run", "JOB", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["run", "JOB", "--shard", "5/4"], "--shard"),
    (["run", "JOB", "--shard", "half"], "is not I/N"),
    (["run", "JOB", "--backend", "gpu1:7861"], "--backend"),
])
def test_command_line_misuse(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             argv: list[str], expected: str) -> None:
    job = _write(tmp_path, "prompts: [a]\n")
    argv = [str(job) if a == "JOB" else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err


def test_real_cli_process_exit_code(tmp_path: Path) -> None:
    job = _write(tmp_path, "promts: [a]\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "did you mean 'prompts'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text,expected", [
    ("prompts: [a]\nmatrix: {cfg_scale: [5, 7, 5]}\n", "lists 5 twice"),
    ("prompts: [a]\nseeds: [1, 2, 1]\n", "seeds lists 1 twice"),
    ("prompts: [a cat]\nreplace: [[cat, dog, cat]]\n", "'cat' twice"),
    ("prompts: [a]\nloras: {names: [x, x]}\n", "'x' twice"),
    ("prompts: [a]\nzip: [{width: [512, 512], height: [768, 768]}]\n", "twice"),
])
def test_duplicate_axis_values_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          text: str, expected: str) -> None:
    assert main(["plan", str(_write(tmp_path, text))]) == 2
    assert expected in capsys.readouterr().err


def test_template_duplicates_run_once(sim, write_job, tmp_path: Path) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{cat|cat|dog}}"]
seeds: [1]
""")
    assert main(["run", str(job), "--out", str(tmp_path / "out"), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 2
