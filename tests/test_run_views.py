"""What a finished run leaves for a person: a gallery that says how the run ended, sheets named in
the completion line, events on stdout with --json."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli.main import main


def test_finished_run_gallery_and_completion_line(sim, write_job, tmp_path: Path, capsys) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a cube", "a ball"]
matrix: {{cfg_scale: [5, 7]}}
seeds: [1]
grid: {{x: cfg_scale, y: prompt}}
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"gallery: {out}/index.html" in err
    assert "grid sheets: grids/" in err
    page = (out / "index.html").read_text()
    assert "running" not in json.dumps(_embedded_status(page))
    assert _embedded_status(page) == "complete"


def _embedded_status(page: str) -> str:
    import re

    match = re.search(r'"status":\s*"([a-z]+)"', page)
    assert match, "the gallery embeds the run's status"
    return match.group(1)


def test_run_json_events_on_stdout(sim, write_job, tmp_path: Path, capsys) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a cube"]
seeds: [1, 2, 3]
""")
    assert main(["run", str(job), "--out", str(tmp_path / "o"), "--json", "--limit", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    written = [e for e in lines if e["event"] == "VariantWritten"]
    assert len(written) == 2, "--limit 2 runs the first two variants"
    assert all(e["records"][0]["seed"] in (1, 2) for e in written)
    assert lines[-1]["status"] == "complete"


def test_only_runs_the_named_variant(sim, write_job, tmp_path: Path, capsys) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a cube"]
seeds: [1, 2, 3]
""")
    out = tmp_path / "o"
    assert main(["run", str(job), "--out", str(out), "--json", "--limit", "1"]) == 0
    first = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["plan", str(job), "--json", "--show", "3"]) == 0
    ids = [v["id"] for v in json.loads(capsys.readouterr().out)["first"]]
    assert main(["run", str(job), "--out", str(out), "--quiet", "--only", ids[2]]) == 0
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted([ids[0], ids[2]])
    assert first[-1]["status"] == "complete"


def test_check_with_every_backend_down_exits_2(write_job, capsys) -> None:
    job = write_job('backends: [{url: "http://127.0.0.1:9"}]\nprompts: ["a"]\n')
    assert main(["check", str(job)]) == 2
    out = capsys.readouterr().out
    assert "nothing could be checked" in out and "ok: the job can run" not in out
    assert "http://127.0.0.1:9" in out, "URLs are printed whole when piped"


def test_check_probe_reports_a_substitution(sim, write_job, capsys) -> None:
    from pipeline.sim.config import SimConfig  # noqa: F401  (the profile knob)

    backend = sim(profile="forge")
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64, sampler_name: "Euler a"}}
prompts: ["a cube"]
""")
    assert main(["check", str(job), "--probe", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "probe: the probe makes 1 tiny generation" in out and "honoured" in out


def test_dead_backend_at_start_is_said_at_once_with_the_patience_left(write_job, tmp_path: Path,
                                                                      capsys) -> None:
    job = write_job("""
backends: [{url: "http://127.0.0.1:9", name: dead}]
prompts: ["a cube"]
retry: {patience_s: 2, cooldown_s: 0.2}
""")
    code = main(["run", str(job), "--out", str(tmp_path / "o"), "--progress-interval-s", "0.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert "backend dead: down at start" in err
    assert "all backends down; giving up in" in err and "(patience_s)" in err
    assert "stalled" in err and "run the same command again" in err
