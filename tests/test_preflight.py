"""Preflight refusals, capability routing, substitution detection and checkpoint affinity,
against several simulated backends with different model lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.job.load import load_job
import aiohttp

from pipeline.backends.factory import make_client
from pipeline.expand import build_plan
from pipeline.run.runner import Run, RunOptions
from tests.conftest import read_manifest

MODELS_AB = "v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors"


def test_check_reports_typos_with_suggestions(sim, write_job,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{sampler_name: "DPM++ 2M"}}
prompts: ["a cat <lora:detial_tweaker:0.5>"]
matrix: {{checkpoint: [dreamshaper_9]}}
""")
    assert main(["check", str(job)]) == 2
    out = capsys.readouterr().out
    assert "dreamshaper_9" in out and "dreamshaper_8" in out
    assert "detial_tweaker" in out and "detail_tweaker" in out


def test_check_json_ok(sim, write_job, capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{sampler_name: "Euler a", scheduler: Karras}}
prompts: ["a cat <lora:detail_tweaker:0.5>"]
matrix: {{checkpoint: ["dreamshaper_8", "v1-5-pruned-emaonly.safetensors"]}}
""")
    assert main(["check", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["backends"][0]["reachable"] is True
    kinds = {(n["kind"], n["name"]) for n in report["names"]}
    assert ("lora", "detail_tweaker") in kinds and ("checkpoint", "dreamshaper_8") in kinds
    assert ("sampler", "Euler a") in kinds and ("scheduler", "Karras") in kinds


def test_run_refuses_names_no_backend_has(sim, write_job, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
prompts: ["a cat"]
defaults: {{sampler_name: "Eular a"}}
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'Eular a' is on no backend" in err and "Euler a" in err
    assert backend.stats()["requests"] == 0
    assert not (out / "manifest.jsonl").exists()


def test_capability_routing(sim, write_job, tmp_path: Path) -> None:
    both = sim(models=MODELS_AB)
    only_v15 = sim(models=MODELS_AB[:1])
    job = write_job(f"""
backends: [{{url: "{both.url}"}}, {{url: "{only_v15.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{cat|dog|owl}}"]
matrix: {{checkpoint: [v1-5-pruned-emaonly, dreamshaper_8]}}
seeds: [1, 2]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 12
    dreamshaper = [r for r in records if r["params"]["override_settings"]["sd_model_checkpoint"]
                   == "dreamshaper_8"]
    assert len(dreamshaper) == 6 and {r["backend"] for r in dreamshaper} == {both.url}
    assert all(r["model"] == "dreamshaper_8" for r in dreamshaper)


async def test_silent_substitution_is_a_failure_not_an_image(sim, write_job, tmp_path: Path
                                                            ) -> None:
    backend = sim(flavor="a1111")  # v1.10: an unknown sampler silently becomes the first one
    job = load_job(write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64, sampler_name: "Eular a"}}
prompts: ["a cat"]
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
"""))
    out = tmp_path / "out"
    # the library without preflight: the per-response check alone must catch it
    async with aiohttp.ClientSession() as session:
        clients = {b.label: make_client(session, b) for b in job.backends}
        run = Run(job, build_plan(job), RunOptions(out_dir=out, backends=tuple(job.backends),
                                                   fsync=False), clients)
        summary = await run.execute()
    assert summary.status == "failed" and summary.failed == 1
    failure = json.loads((out / "failures.jsonl").read_text())
    assert "asked for sampler 'Eular a'" in failure["error"]
    assert read_manifest(out) == []


def test_dynamic_prompts_switched_off_for_our_requests(sim, write_job, tmp_path: Path) -> None:
    backend = sim(dynamic_prompts=True)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts:
  - {{prompt: "keep {{red|blue}} as sent", raw: true}}
seeds: [1, 2, 3, 4]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert {r["prompt"] for r in read_manifest(out)} == {"keep {red|blue} as sent"}


def test_dynamic_prompts_refused_on_request(sim, write_job, capsys) -> None:
    backend = sim(dynamic_prompts=True)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
prompts: ["a cat"]
dynamic_prompts: refuse
""")
    assert main(["check", str(job)]) == 2
    assert "Dynamic Prompts" in capsys.readouterr().out


def test_checkpoint_affinity_keeps_loads_near_m_plus_b(sim, write_job, tmp_path: Path) -> None:
    backends = [sim(models=MODELS_AB + ("sdxl_base_1.0.safetensors",), latency_s=0.005,
                    switch_cost_s=0.05) for _ in range(2)]
    listing = ", ".join(f'{{url: "{b.url}"}}' for b in backends)
    job = write_job(f"""
backends: [{listing}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{cat|dog|owl|fox}}"]
matrix: {{checkpoint: [v1-5-pruned-emaonly, dreamshaper_8, sdxl_base_1.0], cfg_scale: [5, 7]}}
seeds: [1, 2]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert len(read_manifest(out)) == 48
    loads = sum(b.stats()["checkpoint_loads"] for b in backends)
    assert loads <= 3 + 2, loads


def test_legacy_sampler_names_and_aliases_pass_preflight_and_the_check(sim, write_job,
                                                                        tmp_path: Path) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a cat"]
matrix: {{sampler_name: ["DPM++ 2M Karras", "k_euler_a"]}}
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert sorted(r["sampler"] for r in read_manifest(out)) == ["DPM++ 2M", "Euler a"]
