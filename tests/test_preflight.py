"""Preflight refusals, capability routing, substitution detection and checkpoint affinity,
against several simulated backends with different model lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline import expand
from pipeline.backends import preflight
from pipeline.backends.factory import make_client
from pipeline.backends.requirements import job_requirements, payload_needs
from pipeline.backends.webui.kinds import detect_kind
from pipeline.cli.main import main
from pipeline.expand import build_plan
from pipeline.job.load import load_job
from pipeline.job.schema import BackendSpec
from pipeline.run.runner import Run, RunOptions
from tests.conftest import read_manifest

RECORDINGS = Path(__file__).parent / "recordings" / "forge-client"

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


# --- static requirements ------------------------------------------------------------------------

def test_requirements_come_from_the_plan_without_expanding_it(write_job, tmp_path: Path) -> None:
    wildcards = tmp_path / "wildcards"
    wildcards.mkdir()
    (wildcards / "style.txt").write_text("oil <lora:oil_paint:0.7>\nsketch\n__deep__\n")
    (wildcards / "deep.txt").write_text("ink <lyco:ink_wash:1>\n")
    (wildcards / "names.txt").write_text("split_a\nsplit_b\n")
    job = load_job(write_job("""
defaults: {sampler_name: "Euler a", scheduler: Karras, hr_prompt: "x <lora:hires_only:1>"}
prompts:
  - "a {cat|dog <lora:dog_lora:1>} in __style__ style"
  - {prompt: "cat <lora:{left|right}:0.5>", sampler_name: "DPM++ 2M", vae: "kl-f8.safetensors"}
  - {prompt: "cat <lora:__names__:1>", raw: false}
  - {prompt: "raw cat <lora:raw_one:1> {not|parsed}", raw: true}
matrix: {checkpoint: [m1, m2], scheduler: [Exponential, Uniform], clip_skip: [1, 2]}
replace: [["cat", "lion <lora:lion:1>"]]
loras: {names: [axis_lora], weights: [0, 0.5]}
zip: [{cfg_scale: [5, 7], "override_settings.samples_format": [png, jpg]}]
"""))
    plan = expand.build_plan(job)
    req = job_requirements(plan)
    truth: dict[str, set[str]] = {}
    for variant in expand.variants(plan):
        for kind, names in payload_needs(variant.payload).items():
            truth.setdefault(kind, set()).update(names)
    assert {k: set(v) for k, v in req.names.items() if v} == {k: v for k, v in truth.items() if v}
    assert req.names["scheduler"] == {"Exponential", "Uniform"}  # the default Karras never runs
    assert {"left", "right", "split_a", "split_b", "oil_paint", "ink_wash", "lion",
            "hires_only", "axis_lora", "raw_one"} <= req.names["lora"]
    assert req.exact
    assert req.override_keys == {"sd_model_checkpoint", "CLIP_stop_at_last_layers",
                                 "sd_vae", "samples_format"}


def test_a_huge_job_is_not_expanded(write_job) -> None:
    job = load_job(write_job("""
prompts: ["{a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} <lora:big:1>"]
matrix: {steps: "1..200", cfg_scale: "1..50"}
seeds: {count: 1000}
"""))
    plan = expand.build_plan(job)
    assert expand.count(plan) > 10**8  # far too many to expand
    req = job_requirements(plan)  # returns at once: nothing is expanded
    assert req.names["lora"] == {"big"} and req.exact


# --- what backends report -------------------------------------------------------------------------

def _recorded(name: str) -> Any:
    rec = json.loads((RECORDINGS / f"{name}.json").read_text())
    return rec["response"] if rec["http_status"] == 200 else None


def _recorded_forge(*, fresh: bool = True, ui: bool = False) -> preflight.BackendInfo:
    answers = {name: _recorded(name) for name in ("options", "samplers", "schedulers", "loras",
                                                  "sd-vae", "scripts", "embeddings")}
    answers["sd-models"] = _recorded("sd-models-fresh-install" if fresh else "sd-models")
    answers["sd-modules"] = _recorded("ui-mode/sd-modules" if ui else "sd-modules")
    return preflight.describe_backend("forge", answers)


def test_recorded_forge_listings_judged() -> None:
    info = _recorded_forge()
    assert info.kind == "forge" and info.server.startswith("Forge")
    assert info.loaded_model == "tiny-a.safetensors"
    for spelling in ("tiny-b", "tiny-b.safetensors", "tiny-b.safetensors [9e2c431e4d]"):
        assert info.has("checkpoint", spelling), spelling  # hash-less titles until loaded
    assert not info.has("checkpoint", "tiny-c")
    assert info.has("sampler", "k_euler_a") and info.has("sampler", "DPM++ 2M Karras")
    assert not info.has("vae", "tiny-vae.safetensors") and "--nowebui" in info.vae_note
    assert _recorded_forge(ui=True).has("vae", "tiny-vae")


def test_setup_for_recorded_forge_names_pins_and_vae_refusal(write_job) -> None:
    job = load_job(write_job("""
defaults: {sampler_name: k_euler_a}
prompts: ["a <lora:tiny-lora:0.8>", {prompt: "b", clip_skip: 2, sampler_name: "DPM++ 2M Karras"}]
matrix: {checkpoint: ["tiny-b.safetensors [9e2c431e4d]", tiny-a], scheduler: [karras, Automatic]}
"""))
    verdict = preflight.judge(job_requirements(expand.build_plan(job)), [_recorded_forge()], job)
    assert verdict.ok, verdict.problems
    setup = preflight.setup_for(verdict, "forge")
    assert setup is not None and setup.kind == "forge"
    assert setup.samplers == {"k_euler_a": "Euler a", "DPM++ 2M Karras": "DPM++ 2M"}
    assert setup.implied_schedulers == {"DPM++ 2M Karras": "Karras"}
    assert setup.schedulers["karras"] == "Karras"
    assert setup.override_pins == {"CLIP_stop_at_last_layers": 1.0,
                                   "sd_model_checkpoint": "tiny-a.safetensors"}
    assert setup.checkpoints["tiny-b.safetensors [9e2c431e4d]"].model_name == "tiny-b"
    assert setup.loras["tiny-lora"] == {"tiny-lora"}
    vae_job = load_job(write_job('prompts: ["a"]\ndefaults: {vae: tiny-vae.safetensors}\n',
                                 name="vae.yaml"))
    refused = preflight.judge(job_requirements(expand.build_plan(vae_job)),
                              [_recorded_forge()], vae_job)
    assert not refused.ok and "cannot be applied by any backend" in refused.problems[0]
    applied = preflight.judge(job_requirements(expand.build_plan(vae_job)),
                              [_recorded_forge(ui=True)], vae_job)
    assert applied.ok and applied.setup_for("forge").override_pins == {
        "forge_additional_modules": []}


@pytest.mark.parametrize("profile,kind", [("classic", "a1111"), ("a1111", "a1111"),
                                          ("forge", "forge"), ("sdnext", "sdnext")])
async def test_server_kinds_told_apart(sim, profile: str, kind: str) -> None:
    backend = sim(profile=profile)
    async with aiohttp.ClientSession() as session:
        info, = await preflight.inspect_all(session, [BackendSpec(url=backend.url)])
    assert info.kind == kind and info.reachable


def test_kind_detection_rules() -> None:
    forge_options = {"forge_preset": "sd", "sd_model_checkpoint": "x"}
    assert detect_kind(forge_options, sd_vae_route=False) == "forge"
    assert detect_kind(forge_options, sd_vae_route=True) == "reforge"
    assert detect_kind({"sd_backend": "diffusers"}) == "sdnext"
    assert detect_kind({}, version_route={"app": "sd.next", "updated": "2025-06-30"}) == "sdnext"
    assert detect_kind({}, info_version="f2.0.1v1.10.1-previous-669") == "forge"
    assert detect_kind({"samples_format": "png"}, info_version="v1.10.1") == "a1111"
    assert detect_kind(None) == "unknown"
