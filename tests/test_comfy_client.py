"""The ComfyUI backend: workflow templates and LoRA chaining, A1111 -> ComfyUI names, what the
server's answers mean (checked against what a real ComfyUI 0.3.64 answered, in
shared/real-comfy), and the client against a simulated ComfyUI server on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.backends.comfy.names import Catalog, NameRefused, Names, spellings
from pipeline.backends.comfy.protocol import (WorkflowRejected, read_entry, rejection_text)
from pipeline.backends.comfy.reply import infotext
from pipeline.backends.comfy.payload import check_job, requested_values, split_lora_tags
from pipeline.backends.comfy.workflow import SD15_TXT2IMG, LoraUse, fill, load_workflow
from pipeline.errors import HTTPStatusError, JobError

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "jobs" / "flows" / "sd15.json"
REAL = Path("/work/shared/real-comfy")
needs_recordings = pytest.mark.skipif(not REAL.is_dir(), reason="no shared/real-comfy recordings")


def recorded(probe: str) -> dict[str, Any]:
    return json.loads((REAL / f"{probe}.json").read_text())


def posted(probe: str, index: int = 0) -> dict[str, Any]:
    """The body of the index-th POST /prompt of a probe, and the server's answer."""
    posts = [e for e in recorded(probe)["exchanges"]
             if e["request"]["method"] == "POST" and e["request"]["url"].endswith("/prompt")]
    return posts[index]


def history_entry(probe: str, index: int = -1) -> dict[str, Any]:
    entries = [e["response"] for e in recorded(probe)["exchanges"]
               if "/history/" in e["request"]["url"] and e.get("response")]
    (value,) = entries[index].values()
    return value


REAL_CATALOG = Catalog(checkpoint=("tiny-a.safetensors", "tiny-b.safetensors"),
                       lora=("tiny-lora.safetensors",),
                       sampler=("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim"),
                       scheduler=("simple", "sgm_uniform", "karras", "exponential",
                                  "ddim_uniform", "beta", "normal", "linear_quadratic",
                                  "kl_optimal"),
                       version="0.3.64")


# --- workflow templates -------------------------------------------------------------------------

def test_shipped_flow_names_the_slots_auto_detection_finds() -> None:
    explicit = load_workflow(FLOW)
    detected = load_workflow({k: v for k, v in json.loads(FLOW.read_text()).items()
                              if k != "sdbatch_slots"})
    assert explicit.places == detected.places
    assert explicit.lora_anchor == detected.lora_anchor == "4"
    assert explicit.outputs == detected.outputs == ("9",)
    assert "sdbatch_slots" not in explicit.graph
    assert explicit.sha256 != detected.sha256  # the file's bytes, not the graph


def test_fill_makes_a_new_graph_and_leaves_the_template_alone() -> None:
    template = load_workflow(FLOW)
    before = json.dumps(template.graph, sort_keys=True)
    filled = fill(template, {"prompt": "a red cube", "negative_prompt": "blurry", "seed": 42,
                             "steps": 4, "cfg": 7.0, "sampler": "euler", "scheduler": "normal",
                             "width": 64, "height": 64, "checkpoint": "tiny-a.safetensors"},
                  prefix_suffix="abc")
    assert json.dumps(template.graph, sort_keys=True) == before
    g = filled.graph
    assert g["6"]["inputs"]["text"] == "a red cube" and g["7"]["inputs"]["text"] == "blurry"
    assert g["3"]["inputs"]["seed"] == 42 and g["5"]["inputs"]["width"] == 64
    assert g["9"]["inputs"]["filename_prefix"] == "sdbatch_abc"
    assert filled.values["seed"] == 42 and filled.values["batch_size"] == 1  # template's value


@needs_recordings
def test_lora_chain_matches_the_graph_a_real_server_ran() -> None:
    sent = posted("lora")["request"]["json"]["prompt"]
    template = load_workflow({k: v for k, v in sent.items() if k != "10"} | {
        "6": {**sent["6"], "inputs": {**sent["6"]["inputs"], "clip": ["4", 1]}},
        "7": {**sent["7"], "inputs": {**sent["7"]["inputs"], "clip": ["4", 1]}},
        "3": {**sent["3"], "inputs": {**sent["3"]["inputs"], "model": ["4", 0]}}})
    filled = fill(template, {}, [LoraUse("tiny-lora.safetensors", 0.8, 0.8)])
    assert filled.lora_nodes == ("10",)
    bare = {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
            for k, v in filled.graph.items()}
    assert bare == sent


def test_loras_chain_in_order_and_every_consumer_is_rewired() -> None:
    template = load_workflow(SD15_TXT2IMG)
    filled = fill(template, {}, [LoraUse("a.safetensors", 0.5, 0.25),
                                 LoraUse("b.safetensors", 1.0, 1.0)])
    g = filled.graph
    first, second = filled.lora_nodes
    assert g[first]["inputs"]["model"] == ["4", 0] and g[first]["inputs"]["clip"] == ["4", 1]
    assert g[first]["inputs"]["strength_model"] == 0.5
    assert g[first]["inputs"]["strength_clip"] == 0.25
    assert g[second]["inputs"]["model"] == [first, 0] and g[second]["inputs"]["clip"] == [first, 1]
    assert g["3"]["inputs"]["model"] == [second, 0]
    assert g["6"]["inputs"]["clip"] == g["7"]["inputs"]["clip"] == [second, 1]
    assert g["8"]["inputs"]["vae"] == ["4", 2]  # the VAE output is not the LoRA's business
    assert "10" not in template.graph and len(template.graph) == 7


def test_lora_tags_are_cut_from_the_prompt() -> None:
    text, tags = split_lora_tags("a cat, <lora:detail:0.5> in a hat <lora:grain> <LORA:x:0.2:0.9>")
    assert "<" not in text and text.startswith("a cat") and "in a hat" in text
    assert tags == [("detail", 0.5, 0.5), ("grain", 1.0, 1.0), ("x", 0.2, 0.9)]
    assert split_lora_tags("<lora:n:te=0.3:unet=0.7>")[1] == [("n", 0.3, 0.7)]
    with pytest.raises(JobError, match="lbw"):
        split_lora_tags("<lora:n:0.5:lbw=ALL>")


def test_a_workflow_without_a_node_the_job_needs_is_a_job_error_naming_it(tmp_path: Path) -> None:
    graph = {k: v for k, v in SD15_TXT2IMG.items() if k != "5"}  # no EmptyLatentImage
    graph["3"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "latent_image": ["3", 0]}}
    template = load_workflow(graph, name="flows/img2img.json")
    with pytest.raises(JobError, match=r"flows/img2img.json.*width") as info:
        fill(template, {"width": 512})
    assert "sdbatch_slots" in str(info.value)
    no_lora = load_workflow({**SD15_TXT2IMG, "sdbatch_slots": {"lora": None}})
    with pytest.raises(JobError, match="LoRA"):
        fill(no_lora, {}, [LoraUse("x.safetensors", 1, 1)])


def test_check_job_refuses_at_load(write_job) -> None:
    template = load_workflow(FLOW)
    job = write_job("""
prompts: ["a cat"]
defaults: {enable_hr: true, hr_scale: 2}
""")
    from pipeline.job.load import load_job
    with pytest.raises(JobError, match="enable_hr"):
        check_job(template, load_job(job))
    bare = load_workflow({**SD15_TXT2IMG, "sdbatch_slots": {"lora": None}})
    lora_job = load_job(write_job("""
prompts: ["a cat"]
loras: {names: [detail_tweaker], weights: [0.5]}
"""))
    with pytest.raises(JobError, match="LoRA"):
        check_job(bare, lora_job)
    check_job(template, lora_job)


def test_bad_workflow_files_are_job_errors(tmp_path: Path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(JobError, match="Export \\(API\\)"):
        load_workflow(ui)
    broken = {**SD15_TXT2IMG, "8": {"class_type": "VAEDecode",
                                    "inputs": {"samples": ["99", 0], "vae": ["4", 2]}}}
    with pytest.raises(JobError, match="'99'"):
        load_workflow(broken)
    with pytest.raises(JobError, match="titles in this workflow"):
        load_workflow({**SD15_TXT2IMG, "sdbatch_slots": {"prompt": "Positiv"}})
    with pytest.raises(JobError, match="no input 'sed'"):
        load_workflow({**SD15_TXT2IMG, "sdbatch_slots": {"seed": "3.inputs.sed"}})
    with pytest.raises(JobError, match="cannot read"):
        load_workflow(tmp_path / "missing.json")


def test_two_samplers_need_a_slot_map() -> None:
    graph = dict(SD15_TXT2IMG)
    graph["12"] = {"class_type": "KSampler", "inputs": dict(SD15_TXT2IMG["3"]["inputs"])}
    template = load_workflow(graph)
    with pytest.raises(JobError, match="2 sampler nodes"):
        template.require(["seed"])
    mapped = load_workflow({**graph, "sdbatch_slots": {"seed": ["3.inputs.seed", "12.inputs.seed"],
                                                       "prompt": "Positive"}})
    filled = fill(mapped, {"seed": 7, "prompt": "x"})
    assert filled.graph["3"]["inputs"]["seed"] == filled.graph["12"]["inputs"]["seed"] == 7


def test_payload_fields_without_a_place_are_refused_not_dropped() -> None:
    template = load_workflow(FLOW)
    values, loras = requested_values({"prompt": "a <lora:x:0.5>", "negative_prompt": "",
                                      "seed": 1, "cfg_scale": 5, "sampler_name": "Euler a",
                                      "override_settings": {"sd_model_checkpoint": "tiny-a",
                                                            "CLIP_stop_at_last_layers": 1},
                                      "override_settings_restore_afterwards": False,
                                      "denoising_strength": 0.7}, template)
    assert values["prompt"] == "a" and loras == [("x", 0.5, 0.5)]
    assert values["cfg"] == 5 and values["sampler"] == "Euler a"
    assert values["checkpoint"] == "tiny-a"
    for bad in ({"enable_hr": True}, {"n_iter": 2}, {"init_images": ["x"]},
                {"override_settings": {"sd_vae": "kl-f8.safetensors"}},
                {"subseed_strength": 0.3}):
        with pytest.raises(JobError):
            requested_values({"prompt": "a", **bad}, template)


# --- names --------------------------------------------------------------------------------------

def test_a1111_names_map_to_comfy_names() -> None:
    names = Names(REAL_CATALOG)
    assert names.sampler("Euler a") == ("euler_ancestral", None)
    assert names.sampler("DPM++ 2M") == ("dpmpp_2m", None)
    assert names.sampler("DPM++ 2M Karras") == ("dpmpp_2m", "karras")
    assert names.sampler("DPM++ 2M Karras", "Exponential") == ("dpmpp_2m", "exponential")
    assert names.sampler("euler", "Automatic") == ("euler", "normal")
    assert names.scheduler("Karras") == "karras" and names.scheduler("karras") == "karras"
    assert names.file("checkpoint", "tiny-a") == "tiny-a.safetensors"
    assert names.file("checkpoint", "tiny-b.safetensors [0123abcd]") == "tiny-b.safetensors"
    assert names.file("lora", "tiny-lora") == "tiny-lora.safetensors"


def test_unmappable_names_are_refused_with_suggestions() -> None:
    names = Names(REAL_CATALOG, label="gpu1")
    with pytest.raises(NameRefused, match="tiny-c.*did you mean.*tiny-a") as info:
        names.file("checkpoint", "tiny-c")
    assert isinstance(info.value, HTTPStatusError) and not info.value.retryable
    with pytest.raises(NameRefused, match="no ComfyUI equivalent"):
        names.sampler("Restart")
    with pytest.raises(NameRefused, match="this server lacks"):
        names.sampler("DPM++ 3M SDE")  # in the table, but not in this (short) catalog
    with pytest.raises(NameRefused, match="Eular a.*'Euler a'"):
        names.sampler("Eular a")
    ambiguous = Names(Catalog(checkpoint=("x.ckpt", "x.safetensors")))
    with pytest.raises(NameRefused, match="ambiguous"):
        ambiguous.file("checkpoint", "x")
    # without the server's lists the table still maps, and anything else passes to the server
    unknown = Names(Catalog())
    assert unknown.sampler("Euler a") == ("euler_ancestral", None)
    assert unknown.sampler("my_custom_sampler") == ("my_custom_sampler", None)
    assert unknown.file("checkpoint", "tiny-a") == "tiny-a"


def test_preflight_spellings_accept_what_the_client_maps() -> None:
    from pipeline.backends.comfy.inspect import backend_info

    info = backend_info("comfy", REAL_CATALOG)
    assert info.reachable and info.server == "ComfyUI 0.3.64"
    for kind, name in (("checkpoint", "tiny-a"), ("checkpoint", "tiny-a.safetensors"),
                       ("lora", "tiny-lora"), ("sampler", "Euler a"), ("sampler", "euler"),
                       ("sampler", "DPM++ 2M Karras"), ("scheduler", "Karras")):
        assert info.has(kind, name), (kind, name)
        assert Names(REAL_CATALOG).accepts(kind, name)
    for kind, name in (("checkpoint", "tiny-c"), ("sampler", "Euler b"), ("lora", "detail")):
        assert not info.has(kind, name), (kind, name)
        assert not Names(REAL_CATALOG).accepts(kind, name)
    accepted, shown = spellings("checkpoint", ["a/x.ckpt", "b/x.safetensors", "y.safetensors"])
    assert "y" in accepted and "x" not in accepted  # two files share the stem x


# --- what the real server's answers mean ----------------------------------------------------------

@needs_recordings
@pytest.mark.parametrize("probe, words", [
    ("err_a1111_sampler_name", ["node 3 (KSampler)", "sampler_name", "value_not_in_list",
                                "Euler a"]),
    ("err_ckpt_without_extension", ["node 4", "ckpt_name", "tiny-a"]),
    ("err_unknown_lora", ["node 10 (LoraLoader)", "lora_name"]),
    ("err_missing_seed", ["required_input_missing", "seed"]),
    ("err_unknown_class", ["NoSuchNode"]),
    ("err_no_output_node", ["no outputs"]),
])
def test_refusals_name_node_input_and_reason(probe: str, words: list[str]) -> None:
    text = rejection_text(posted(probe)["response"])
    for word in words:
        assert word in text, (word, text)


@needs_recordings
def test_history_entries_read_as_the_server_meant_them() -> None:
    basic = read_entry(history_entry("basic"))
    assert basic.status == "success" and basic.cached_nodes == frozenset()
    assert basic.number == 0 and basic.server_time_s and basic.server_time_s > 1
    second = read_entry(history_entry("cache", 1))
    assert second.status == "success"
    assert set(second.graph or {}) <= second.cached_nodes  # fully cached: nothing ran
    interrupted = read_entry(history_entry("interrupt"))
    assert interrupted.status == "interrupted" and interrupted.outputs == {}
    failed = read_entry(history_entry("exec_error"))
    assert failed.status == "error" and failed.error and failed.error["node_type"] == "SaveImage"


def test_infotext_is_a1111_style() -> None:
    text = infotext("a cat <lora:x:0.5>", "blurry", {
        "steps": 4, "sampler": "euler_ancestral", "scheduler": "karras", "cfg": 7.0,
        "width": 64, "height": 64, "checkpoint": "sd/tiny-a.safetensors"},
        seed=42, batch_size=2, batch_pos=1, version="0.3.64")
    first, negative, pairs = text.split("\n")
    assert first == "a cat <lora:x:0.5>" and negative == "Negative prompt: blurry"
    for part in ("Steps: 4", "Sampler: Euler a", "Schedule type: Karras", "CFG scale: 7.0",
                 "Seed: 42", "Size: 64x64", "Model: tiny-a", "Batch size: 2", "Batch pos: 1",
                 "Version: ComfyUI 0.3.64"):
        assert part in pairs


def test_rejections_are_not_retried() -> None:
    exc = WorkflowRejected("refused", http_status=200)
    assert exc.status == 400 and not exc.retryable and exc.http_status == 200


# --- the client against the simulated ComfyUI server -----------------------------------------------

import asyncio  # noqa: E402
import io  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from dataclasses import replace  # noqa: E402

import aiohttp  # noqa: E402
import pytest_asyncio  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from pipeline.backends.comfy.client import ComfyClient, ComfySetup, prompt_id_for  # noqa: E402
from pipeline.backends.comfy.protocol import (ExecutionFailed, Interrupted,  # noqa: E402
                                              PromptLost)
from pipeline.errors import BackendError, RequestTimeout  # noqa: E402
from pipeline.job.schema import BackendSpec  # noqa: E402
from pipeline.model import Variant  # noqa: E402
from pipeline.sim.comfy import ComfySimConfig, start_comfy_sim  # noqa: E402

FAST = ComfySimConfig(step_latency_s=0.002)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest_asyncio.fixture
async def sims() -> AsyncIterator[Any]:
    started: list[Any] = []

    async def start(config: ComfySimConfig = FAST) -> Any:
        sim = await start_comfy_sim(config)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


def variant(vid: str = "v0001", *, seed: int = 42, prompt: str = "a red cube", **fields: Any
            ) -> Variant:
    payload = {"prompt": prompt, "negative_prompt": "blurry", "seed": seed, "steps": 4,
               "cfg_scale": 7, "width": 64, "height": 64, **fields}
    return Variant(id=vid, ordinal=0, prompt=prompt, negative_prompt="blurry", seed=seed,
                   payload=payload)


def client(session: aiohttp.ClientSession, sim: Any, setup: ComfySetup | None = None,
           **spec: Any) -> ComfyClient:
    return ComfyClient(session, BackendSpec(url=sim.url, kind="comfyui", **spec), setup)


def png_graph(data: bytes) -> dict[str, Any]:
    with PILImage.open(io.BytesIO(data)) as image:
        return json.loads(image.info["prompt"])


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    """Poll (no fixed sleeps) until ``condition()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_happy_path_maps_names_chains_loras_and_labels_images(session, sims) -> None:
    sim = await sims()
    c = client(session, sim)
    v = variant(prompt="a red cube <lora:detail_tweaker:0.6>", sampler_name="Euler a",
                scheduler="Karras", override_settings={"sd_model_checkpoint": "dreamshaper_8"})
    reply = await c.generate(v)
    (image,) = reply.images
    assert image.format == "png" and image.kind == "generation" and image.seed == 42
    graph = png_graph(image.data)  # ComfyUI's own chunk, bytes kept as /view sent them
    nodes = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert nodes["KSampler"]["sampler_name"] == "euler_ancestral"
    assert nodes["KSampler"]["scheduler"] == "karras" and nodes["KSampler"]["seed"] == 42
    assert nodes["CheckpointLoaderSimple"]["ckpt_name"] == "dreamshaper_8.safetensors"
    assert nodes["LoraLoader"]["lora_name"] == "detail_tweaker.safetensors"
    assert nodes["LoraLoader"]["strength_model"] == 0.6
    assert all("<lora" not in n["inputs"].get("text", "") for n in graph.values())
    assert reply.model == "dreamshaper_8" and reply.info["sd_model_name"] == "dreamshaper_8"
    assert reply.info["sampler_name"] == "Euler a" and reply.info["all_seeds"] == [42]
    assert reply.info["cached"] == [False]
    assert "Sampler: Euler a" in image.infotext and "Seed: 42" in image.infotext
    assert image.prompt == v.prompt  # as the job wrote it, tags and all (like A1111)
    comfy = reply.params["comfyui"]
    assert comfy["version"] == "0.3.64" and len(comfy["workflow_sha256"]) == 64
    assert comfy["filled"]["prompt"] == "a red cube" and comfy["filled"]["seed"] == 42
    assert comfy["prompt_id"] == prompt_id_for(v.id, 1)
    assert sim.stats.posts_per_id[comfy["prompt_id"]] == 1


async def test_polling_without_a_websocket(session, sims) -> None:
    sim = await sims()
    reply = await client(session, sim, ComfySetup(use_websocket=False)).generate(variant())
    assert len(reply.images) == 1 and reply.info["comfyui"]["server_time_s"] is not None


async def test_random_seed_is_chosen_by_the_client_and_a_batch_shares_it(session, sims) -> None:
    sim = await sims()
    reply = await client(session, sim).generate(variant(seed=-1, batch_size=3))
    seeds = {i.seed for i in reply.images}
    (seed,) = seeds
    assert 0 <= seed < 2**32 and reply.info["all_seeds"] == [seed] * 3
    assert [i.index for i in reply.images] == [0, 1, 2] == reply.info["batch_indices"]
    for i, image in enumerate(reply.images):
        assert png_graph(image.data)["3"]["inputs"]["seed"] == seed
        assert f"Batch pos: {i}" in image.infotext and "Batch size: 3" in image.infotext
    again = await client(session, sim, ComfySetup(adopt=False)).generate(
        variant("v0002", seed=-1, batch_size=3))
    assert again.images[0].seed != seed  # derived from the variant id


async def test_server_refusal_names_node_input_and_reason_and_is_not_retried(session, sims
                                                                             ) -> None:
    sim = await sims()
    blind = client(session, sim, ComfySetup(catalog=Catalog()))  # the server's names unknown
    with pytest.raises(WorkflowRejected) as info:
        await blind.generate(variant(sampler_name="No Such Sampler"))
    text = str(info.value)
    assert "node 3 (KSampler)" in text and "sampler_name" in text and "value_not_in_list" in text
    assert not info.value.retryable and info.value.http_status == 400
    # with the server's names known, a name nothing maps is refused before anything is sent
    posted_before = sim.stats.prompts_posted
    with pytest.raises(NameRefused, match="did you mean 'Euler a'"):
        await client(session, sim).generate(variant(sampler_name="Eular a"))
    assert sim.stats.prompts_posted == posted_before


async def test_partly_refused_workflow_is_refused(session, sims) -> None:
    sim = await sims()
    graph = dict(SD15_TXT2IMG)
    graph["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}}  # no vae
    graph["11"] = {"class_type": "SaveImage",
                   "inputs": {"filename_prefix": "broken", "images": ["12", 0]}}
    c = client(session, sim, ComfySetup(template=load_workflow(graph)))
    with pytest.raises(WorkflowRejected, match="only in part.*node 12") as info:
        await c.generate(variant())
    assert info.value.http_status == 200 and not info.value.retryable


async def test_execution_error_is_a_retryable_failure_naming_the_node(session, sims) -> None:
    sim = await sims(replace(FAST, error_rate=1.0))
    with pytest.raises(ExecutionFailed, match="node 3") as info:
        await client(session, sim).generate(variant())
    assert info.value.retryable and info.value.node == "3"


async def test_interrupt_stops_our_prompt_and_saves_nothing(session, sims) -> None:
    sim = await sims(replace(FAST, hang_rate=1.0, hang_s=60))
    c = client(session, sim)
    task = asyncio.create_task(c.generate(variant()))
    await until(lambda: sim.stats.running == 1)
    await c.interrupt()
    with pytest.raises(Interrupted) as info:
        await task
    assert info.value.retryable
    assert sim.stats.images_saved == 0 and sim.stats.interrupted == 1


async def test_timeout_cancels_the_prompt_on_the_server(session, sims) -> None:
    sim = await sims(replace(FAST, hang_rate=1.0, hang_s=60))
    c = client(session, sim, timeout_s=0.5)
    with pytest.raises(RequestTimeout):
        await c.generate(variant())
    await until(lambda: sim.stats.running == 0)
    async with session.get(sim.url + "/queue") as resp:
        queue = await resp.json()
    assert queue == {"queue_running": [], "queue_pending": []}


async def test_cache_hit_is_detected_and_recorded(session, sims) -> None:
    sim = await sims()
    c = client(session, sim, ComfySetup(adopt=False))
    first = await c.generate(variant())
    second = await c.generate(variant())
    assert first.info["cached"] == [False] and second.info["cached"] == [True]
    assert second.info["comfyui"]["fully_cached"] and not first.info["comfyui"]["fully_cached"]
    assert second.images[0].data == first.images[0].data
    assert second.info["comfyui"]["outputs"] == first.info["comfyui"]["outputs"]
    assert sim.stats.cache_hits == 1


async def test_lost_prompt_after_a_restart_is_retryable_and_redone(session, sims) -> None:
    sim = await sims(replace(FAST, restart_after_prompts=2))  # crashes while the 2nd samples
    c = client(session, sim)
    await c.generate(variant("v0001"))
    with pytest.raises(BackendError) as info:
        await c.generate(variant("v0002"))
    assert info.value.retryable and isinstance(info.value, PromptLost), info.value
    assert "neither the queue nor the history" in str(info.value)
    assert sim.stats.restarts == 1
    reply = await c.generate(variant("v0002"))  # attempt 2: a new prompt id
    assert reply.info["comfyui"]["prompt_id"] == prompt_id_for("v0002", 2)
    assert not reply.info["comfyui"]["adopted"]


async def test_a_killed_run_resumed_takes_over_its_prompt_instead_of_posting_again(
        session, sims) -> None:
    sim = await sims(replace(FAST, step_latency_s=0.05))
    first = client(session, sim)
    task = asyncio.create_task(first.generate(variant(steps=8)))
    await until(lambda: sim.stats.running == 1)
    task.cancel()  # the client dies; the server goes on
    with pytest.raises(asyncio.CancelledError):
        await task
    resumed = client(session, sim)  # a new run: its attempt count starts again
    reply = await resumed.generate(variant(steps=8))
    pid = prompt_id_for("v0001", 1)
    assert reply.info["comfyui"]["adopted"] is True
    assert sim.stats.posts_per_id[pid] == 1 and sim.stats.runs_per_id[pid] == 1
    assert pid in await client(session, sim).submitted_prompts()
    done = await client(session, sim).generate(variant(steps=8))  # finished: its result
    assert done.info["comfyui"]["adopted"] and done.images[0].data == reply.images[0].data
    assert sim.stats.prompts_posted == 1


async def test_a_lost_answer_or_a_cut_socket_does_not_run_a_prompt_twice(session, sims) -> None:
    sim = await sims(replace(FAST, drop_rate=1.0))  # queued, then the connection reset
    reply = await client(session, sim).generate(variant())
    pid = reply.info["comfyui"]["prompt_id"]
    assert len(reply.images) == 1 and sim.stats.posts_per_id[pid] == 1
    assert sim.stats.faults["drop"] == 1
    cut = await sims(replace(FAST, ws_drop_rate=1.0, step_latency_s=0.02))
    reply = await client(session, cut, ComfySetup(ws_check_s=30)).generate(variant())
    assert len(reply.images) == 1 and cut.stats.faults["ws_drop"] == 1
    failing = await sims(replace(FAST, http_error_rate=1.0))  # 500, nothing queued
    with pytest.raises(HTTPStatusError) as info:
        await client(session, failing).generate(variant())
    assert info.value.status == 500 and info.value.retryable


async def test_preflight_info_from_object_info(session, sims) -> None:
    from pipeline.backends.comfy.inspect import inspect_backend

    sim = await sims()
    info = await inspect_backend(client(session, sim))
    assert info.reachable and info.kind == "comfyui" and info.version == "0.3.64"
    assert info.has("checkpoint", "dreamshaper_8") and info.has("sampler", "DPM++ 2M Karras")
    assert info.has("lora", "detail_tweaker") and not info.has("lora", "detial_tweaker")
    custom = load_workflow({**SD15_TXT2IMG, "20": {"class_type": "FancyUpscaler",
                                                   "inputs": {"image": ["8", 0]}}})
    lacking = await inspect_backend(client(session, sim, ComfySetup(template=custom)))
    assert not lacking.reachable and "FancyUpscaler" in lacking.error
    down = await inspect_backend(ComfyClient(session, BackendSpec(
        url="http://127.0.0.1:9", kind="comfyui")))
    assert not down.reachable and down.error
