"""sdbatch against a server that behaves like a real Forge (the simulator's ``forge`` profile,
built from ``shared/real-forge``), and the recorded real answers replayed through the checks.

What must hold on a real server (and is checked again from outside against one):
- a sweep records the exact seed, model and LoRA of every image;
- every silent substitution is a failure on that backend, never a saved image;
- no setting leaks from one variant into the next;
- an answer to a request sdbatch interrupted is never returned as images;
- SD.Next's 429 carries ``retry_after_s`` and slows the client down.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline import expand, infotext
from pipeline.backends import preflight
from pipeline.backends.probe import name_combinations, probe_cost, probe_names, probe_variant
from pipeline.backends.webui.client import WebUIClient
from pipeline.backends.webui.response import split_images
from pipeline.backends.webui.substitution import find_substitutions
from pipeline.cli.main import main
from pipeline.errors import BadResponseError, HTTPStatusError, SubstitutionError
from pipeline.job.load import load_job
from pipeline.job.schema import BackendSpec
from pipeline.model import Variant
from tests.conftest import read_manifest

RECORDINGS = Path(__file__).parent / "recordings" / "forge-client"
MODELS = ("v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors")


def _variant(payload: dict[str, Any], ident: str = "v") -> Variant:
    base = {"width": 64, "height": 64, "steps": 2, "seed": 7, "prompt": "a red cube", **payload}
    return Variant(id=ident, ordinal=0, prompt=base["prompt"], negative_prompt="",
                   seed=base["seed"], payload=base)


async def _verdict(session: aiohttp.ClientSession, job: Path) -> tuple[Any, Any]:
    spec = load_job(job)
    plan = expand.build_plan(spec)
    verdict = preflight.judge(preflight.job_requirements(plan),
                              await preflight.inspect_all(session, spec.backends), spec)
    return spec, verdict


# --- the sweep --------------------------------------------------------------------------------

def test_sweep_records_the_exact_seed_model_and_lora_of_every_image(sim, write_job,
                                                                    tmp_path: Path) -> None:
    backend = sim(profile="forge", models=MODELS)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64, steps: 2, sampler_name: Euler}}
prompts: ["a red cube"]
matrix: {{checkpoint: [v1-5-pruned-emaonly, dreamshaper_8]}}
loras: {{names: [detail_tweaker], weights: [0.5, 1.0], baseline: true}}
seeds: [11, 12]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 2 * 3 * 2
    for record in records:
        axes = record["axes"]
        text = infotext.parse(record["infotext"])
        assert record["seed"] == record["requested_seed"] == axes["seed"]
        assert text.get("Seed") == str(record["seed"])
        assert record["model"] == text.get("Model") == axes["checkpoint"]
        hashes = infotext.parse_pairs(text.get("Lora hashes"))
        assert ("detail_tweaker" in hashes) is (axes["lora_weight"] != 0)
        assert (f"<lora:detail_tweaker:{axes['lora_weight']}>" in record["prompt"]) is (
            axes["lora_weight"] != 0)
    # the LoRA really reached the pixels: every (checkpoint, seed) cell has 3 distinct images
    cells: dict[tuple[str, int], set[str]] = {}
    for record in records:
        cells.setdefault((record["model"], record["seed"]), set()).add(record["sha256"])
    assert all(len(shas) == 3 for shas in cells.values()), cells


# --- silent substitutions ----------------------------------------------------------------------

@pytest.mark.parametrize("payload,what", [
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, "checkpoint"),
    ({"prompt": "a house <lora:no-such-lora:0.8>"}, "LoRA"),
    ({"sampler_name": "k_euler_a"}, "sampler"),  # an alias /samplers lists: substituted
    ({"sampler_name": "No Such Sampler"}, "sampler"),
    ({"sampler_name": "Euler", "scheduler": "No Such Scheduler"}, "scheduler"),
    ({"override_settings": {"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}}, "VAE"),
])
async def test_every_silent_substitution_is_caught(sim, payload: dict, what: str) -> None:
    backend = sim(profile="forge", models=MODELS)
    async with aiohttp.ClientSession() as session:
        client = WebUIClient(session, BackendSpec(url=backend.url))  # no preflight: sent as is
        with pytest.raises(SubstitutionError, match=f"asked for {what}"):
            await client.generate(_variant(payload))
        assert (await client.generate(_variant({}))).images  # the backend itself is fine


async def test_preflight_sends_canonical_names_so_nothing_is_substituted(sim, write_job) -> None:
    backend = sim(profile="forge", models=MODELS)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
prompts: ["a cat"]
matrix: {{sampler_name: ["k_euler_a", "DPM++ 2M Karras", "euler"], scheduler: [karras]}}
""")
    async with aiohttp.ClientSession() as session:
        spec, verdict = await _verdict(session, job)
        assert verdict.ok and verdict.infos[0].kind == "forge"
        client = WebUIClient(session, spec.backends[0], verdict.setup_for(backend.url))
        used = []
        for variant in expand.variants(expand.build_plan(spec)):
            reply = await client.generate(_variant(variant.payload))
            used.append((reply.params["sampler_name"], reply.params["scheduler"]))
    assert sorted(used) == [("DPM++ 2M", "Karras"), ("Euler", "Karras"), ("Euler a", "Karras")]


def test_a_vae_job_is_refused_on_api_only_forge_and_routed_where_it_applies(
        sim, write_job, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vae = "vae-ft-mse-840000-ema-pruned.safetensors"
    forge = sim(profile="forge", models=MODELS)
    job = write_job(f"""
backends: [{{url: "{forge.url}"}}]
defaults: {{width: 64, height: 64, steps: 2}}
prompts: ["a cat"]
matrix: {{vae: ["{vae}", Automatic]}}
""")
    assert main(["check", str(job)]) == 2
    out = capsys.readouterr().out
    assert "forge_additional_modules" in out and "--nowebui" in out
    a1111 = sim(profile="a1111", models=MODELS)
    job = write_job(f"""
backends: [{{url: "{forge.url}"}}, {{url: "{a1111.url}"}}]
defaults: {{width: 64, height: 64, steps: 2}}
prompts: ["a cat"]
matrix: {{vae: ["{vae}", Automatic]}}
seeds: [1, 2]
""", name="routed.yaml")
    assert main(["run", str(job), "--out", str(tmp_path / "o"), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(tmp_path / "o")
    with_vae = [r for r in records if r["axes"]["vae"] == vae]
    assert len(records) == 4 and {r["backend"] for r in with_vae} == {a1111.url}
    assert all(infotext.parse(r["infotext"]).get("VAE") for r in with_vae)


async def test_forge_with_its_ui_applies_the_vae_as_a_module_and_it_does_not_leak(
        sim, write_job) -> None:
    vae = "vae-ft-mse-840000-ema-pruned.safetensors"
    backend = sim(profile="forge", models=MODELS, forge_ui=True)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
prompts: ["a cat"]
matrix: {{vae: ["{vae}", Automatic]}}
""")
    async with aiohttp.ClientSession() as session:
        spec, verdict = await _verdict(session, job)
        assert verdict.ok
        client = WebUIClient(session, spec.backends[0], verdict.setup_for(backend.url))
        modules = []
        for variant in expand.variants(expand.build_plan(spec)):  # the VAE first, then none
            reply = await client.generate(_variant(variant.payload))
            assert "sd_vae" not in reply.params["override_settings"]
            modules.append(reply.params["override_settings"]["forge_additional_modules"])
            text = infotext.parse(reply.images[0].infotext or "")
            assert bool(text.get("Module 1")) is bool(modules[-1])
    assert modules == [[vae], []]


# --- leaks -------------------------------------------------------------------------------------

LEAKY_JOB = """
backends: [{{url: "{url}"}}]
defaults: {{width: 64, height: 64, steps: 2, sampler_name: Euler}}
prompts:
  - {{prompt: "jpeg please", override_settings: {{samples_format: jpg}}}}
  - {{prompt: "clip skip two", clip_skip: 2}}
  - "plain one"
  - "plain two"
seeds: [5]
"""


@pytest.mark.parametrize("profile", ["forge", "a1111"])
def test_no_setting_leaks_between_variants(sim, write_job, tmp_path: Path, profile: str) -> None:
    backend = sim(profile=profile, models=MODELS)
    job = write_job(LEAKY_JOB.format(url=backend.url))
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = {r["prompt"]: r for r in read_manifest(out)}
    assert len(records) == 4
    for prompt, record in records.items():
        clip = infotext.parse(record["infotext"]).get("Clip skip")
        assert clip == ("2" if prompt == "clip skip two" else None), prompt
        assert record["format"] == ("jpeg" if prompt == "jpeg please" else "png"), prompt


async def test_the_forge_profile_does_leak_without_pins(sim) -> None:
    """The control for the test above: unpinned, the second request inherits clip skip 2;
    pinned (as every request of a job that sets it is), it does not."""
    backend = sim(profile="forge", models=MODELS)
    async with aiohttp.ClientSession() as session:
        client = WebUIClient(session, BackendSpec(url=backend.url))
        await client.generate(_variant({"override_settings": {"CLIP_stop_at_last_layers": 2}}))
        reply = await client.generate(_variant({}))
        assert infotext.parse(reply.images[0].infotext or "").get("Clip skip") == "2"
        pinned = await client.generate(_variant({"override_settings":
                                                 {"CLIP_stop_at_last_layers": 1}}))
        assert infotext.parse(pinned.images[0].infotext or "").get("Clip skip") is None


# --- interrupts and rate limits ----------------------------------------------------------------

async def test_an_answer_to_a_request_we_interrupted_is_never_images(sim) -> None:
    backend = sim(profile="forge", models=MODELS, latency_s=2.0)
    async with aiohttp.ClientSession() as session:
        client = WebUIClient(session, BackendSpec(url=backend.url))
        task = asyncio.create_task(client.generate(_variant({"steps": 20})))
        while not backend.stats()["busy"] and not task.done():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await client.interrupt()
        with pytest.raises(BadResponseError, match="interrupted this backend"):
            await task
        backend.configure(latency_s=0.0)
        assert (await client.generate(_variant({}))).images  # later requests are fine
        client.mark_interrupted()  # an interrupt made by other means, between requests
        assert (await client.generate(_variant({}))).images


async def test_interrupt_is_best_effort(sim) -> None:
    backend = sim(profile="forge", models=MODELS)
    url = backend.url
    backend.stop()
    async with aiohttp.ClientSession() as session:
        client = WebUIClient(session, BackendSpec(url=url))
        await client.interrupt()  # the server is gone: logged, never raised
        assert client.interrupted_during(0.0, float("inf"))


async def test_sdnext_429_carries_retry_after_and_slows_the_client(sim) -> None:
    backend = sim(profile="sdnext", models=MODELS, rate_limit_per_min=10, rate_window_s=1.0)
    async with aiohttp.ClientSession() as session:
        info = (await preflight.inspect_all(session, [BackendSpec(url=backend.url)]))[0]
        assert info.kind == "sdnext"
        client = WebUIClient(session, BackendSpec(url=backend.url),
                             preflight.client_setup(info, preflight.Requirements({}), None))
        limited = None
        for n in range(6):
            try:
                await client.generate(_variant({"seed": n}))
            except HTTPStatusError as exc:
                limited = exc
                break
        assert limited is not None and limited.status == 429 and limited.rate_limited
        assert limited.retry_after_s is not None and limited.retry_after_s > 0
        assert client.pace_s >= 1.0  # SD.Next's profile: one generation a second at most
        assert (await client.generate(_variant({"seed": 99}))).images  # waited, then served


# --- check --probe -----------------------------------------------------------------------------

async def test_probe_tries_each_combination_and_reports_what_would_be_substituted(
        sim, write_job) -> None:
    backend = sim(profile="forge", models=MODELS)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{sampler_name: "Euler a"}}
prompts: ["a red cube"]
matrix: {{checkpoint: [v1-5-pruned-emaonly, dreamshaper_8]}}
loras: {{names: [detail_tweaker], weights: [1.0], baseline: true}}
seeds: [1, 2, 3]
""")
    async with aiohttp.ClientSession() as session:
        spec, verdict = await _verdict(session, job)
        combos = name_combinations(expand.build_plan(spec))
        assert len(combos) == 4  # 2 checkpoints x (baseline, LoRA); seeds do not matter
        cost = probe_cost(combos, verdict)
        assert cost.requests == 4 and cost.checkpoint_loads == 2 and "4 tiny" in cost.describe()
        before = backend.stats()["requests"]
        findings = await probe_names(session, spec.backends, verdict, combos)
        assert all(f.ok for f in findings[backend.url]), findings
        assert backend.stats()["requests"] - before == 4
        # the LoRA goes away after preflight listed it: the probe sees it stripped
        backend.configure(loras=["add_brightness"])
        findings = await probe_names(session, spec.backends, verdict, combos)
    bad = [f for f in findings[backend.url] if not f.ok]
    assert len(bad) == 2 and all("LoRA 'detail_tweaker'" in s for f in bad
                                 for s in f.substituted)
    assert all(f.combo.loras == ("detail_tweaker",) for f in bad)
    assert probe_variant(bad[0].combo).payload["steps"] == 1


# --- the recorded real server, replayed --------------------------------------------------------

def _generations() -> list[Path]:
    out = []
    for path in sorted(RECORDINGS.rglob("*.json")):
        rec = json.loads(path.read_text())
        images = rec.get("response", {}).get("images") if rec.get("http_status") == 200 \
            and isinstance(rec.get("response"), dict) else None
        if images and not images[0].startswith("<"):  # some recordings elide the base64
            out.append(path)
    return out


@pytest.mark.parametrize("path", _generations(), ids=lambda p: p.stem)
def test_every_recorded_generation_reads_consistently(path: Path) -> None:
    rec = json.loads(path.read_text())
    images, info = split_images(rec["response"], _variant(rec["request"]))
    gens = [i for i in images if i.kind == "generation"]
    assert gens and len(gens) == len(info["all_seeds"])
    for image in gens:
        text = infotext.parse(image.infotext or "")
        assert text.get("Seed") == str(image.seed)
        assert text.get("Model") == info["sd_model_name"]
        assert text.get("Model hash") == info["sd_model_hash"]
        assert text.get("Sampler") == info["sampler_name"]
        assert text.get("Version", "").startswith("f2")  # Forge, as kinds.detect_kind reads it
    # whatever the check reports, it never reports something the infotext does not show
    for mismatch in find_substitutions(rec["request"], info, images):
        assert mismatch.what in ("checkpoint", "sampler", "scheduler", "LoRA", "clip skip",
                                 "VAE", "VAE/modules")
