"""The simulated ComfyUI server, over real loopback HTTP and websockets, against what a real
ComfyUI 0.3.64 answered (``tests/recordings/comfy/``, cut from ``shared/real-comfy/``)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageChops

from pipeline.errors import UsageError
from pipeline.sim import add_sim_arguments
from pipeline.sim.comfy import (ComfySimConfig, ComfySimServer, add_comfy_arguments,
                                comfy_config_from_args, start_comfy_sim)

RECORDED = Path(__file__).parent / "recordings" / "comfy"
TINY = ComfySimConfig(checkpoints=("tiny-a.safetensors", "tiny-b.safetensors"),
                      loras=("tiny-lora.safetensors",))
Start = Callable[..., Awaitable[ComfySimServer]]


def recorded(name: str) -> dict[str, Any]:
    with open(RECORDED / name) as fh:
        return json.load(fh)


WS = recorded("websocket.json")
SHAPES = recorded("shapes.json")
GRAPH: dict[str, Any] = WS["own_id_ws"]["submit"]["prompt"]  # the recorded txt2img graph


def graph(seed: int = 45, prefix: str = "probe/test", **changes: Any) -> dict[str, Any]:
    """The recorded graph with another seed/prefix; ``changes`` as ``{"3.steps": 20}``."""
    g = copy.deepcopy(GRAPH)
    g["3"]["inputs"]["seed"] = seed
    g["9"]["inputs"]["filename_prefix"] = prefix
    for path, value in changes.items():
        node, field = path.split(".")
        g[node]["inputs"][field] = value
    return g


def strip_tracebacks(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: "<traceback>" if k == "traceback" else strip_tracebacks(v) for k, v in x.items()}
    if isinstance(x, list):
        return [strip_tracebacks(v) for v in x]
    return x


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(step_latency_s=0.01, ...)``: a simulated server (the recording's model
    names unless changed), closed after the test."""
    servers: list[ComfySimServer] = []

    async def _start(config: ComfySimConfig | None = None, **changes: Any) -> ComfySimServer:
        server = await start_comfy_sim(replace(config or TINY, **changes))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, *, status: int = 200,
               **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return json.loads(text) if text and resp.content_type == "application/json" else text


async def submit(http: aiohttp.ClientSession, sim: ComfySimServer, prompt: dict[str, Any],
                 *, status: int = 200, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = await call(http, "POST", f"{sim.url}/prompt", status=status,
                                        json={"prompt": prompt, **body})
    return result


async def finished(http: aiohttp.ClientSession, sim: ComfySimServer, prompt_id: str,
                   timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll ``/history/{id}`` until it is not ``{}`` (as a client without a socket does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = await call(http, "GET", f"{sim.url}/history/{prompt_id}")
        if entry:
            return entry[prompt_id]
        await asyncio.sleep(0.01)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout_s} s")


async def until_done(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 10.0
                     ) -> list[dict[str, Any]]:
    """Messages up to and including ``executing {node: null}`` (the legacy 'done')."""
    messages = []
    while True:
        message = await ws.receive_json(timeout=timeout_s)
        messages.append(message)
        if message["type"] == "executing" and message["data"]["node"] is None:
            return messages


async def drain(ws: aiohttp.ClientWebSocketResponse, quiet_s: float = 0.2) -> list[str]:
    """Types of everything that arrives until ``quiet_s`` passes without a message."""
    types = []
    while True:
        try:
            message = await ws.receive(timeout=quiet_s)
        except TimeoutError:
            return types
        if message.type != aiohttp.WSMsgType.TEXT:
            return types
        types.append(json.loads(message.data)["type"])


async def view_image(http: aiohttp.ClientSession, sim: ComfySimServer,
                     ref: dict[str, str]) -> Image.Image:
    async with http.get(f"{sim.url}/view", params=ref) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        image = Image.open(io.BytesIO(await resp.read()))
        image.load()
        return image


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"),
                                                      b.convert("RGB")).getbbox() is None


# --- discovery ----------------------------------------------------------------------------

async def test_object_info_entries_are_the_recorded_ones(start: Start, http) -> None:
    sim = await start()
    rec = recorded("object_info.json")
    everything = await call(http, "GET", f"{sim.url}/object_info")
    for name, entry in rec["entries"].items():
        assert everything[name] == entry, name
        assert await call(http, "GET", f"{sim.url}/api/object_info/{name}") == {name: entry}
    assert await call(http, "GET", f"{sim.url}/object_info/NoSuchNode") == \
        rec["unknown_class_response"]


async def test_choices_come_from_the_config(start: Start, http) -> None:
    sim = await start(ComfySimConfig(checkpoints=("a.safetensors", "sub/b.ckpt"),
                                     loras=("x.safetensors",), samplers=("euler",),
                                     schedulers=("karras", "normal")))
    info = await call(http, "GET", f"{sim.url}/object_info/KSampler")
    required = info["KSampler"]["input"]["required"]
    assert required["sampler_name"][0] == ["euler"]
    assert required["scheduler"][0] == ["karras", "normal"]
    assert await call(http, "GET", f"{sim.url}/models/checkpoints") == ["a.safetensors",
                                                                          "sub/b.ckpt"]
    assert await call(http, "GET", f"{sim.url}/models/loras") == ["x.safetensors"]


async def test_models_stats_features_and_api_prefix(start: Start, http) -> None:
    sim = await start(version="0.3.99")
    models = SHAPES["models"]
    assert await call(http, "GET", f"{sim.url}/models") == models["/models"]["response"]
    for path in ("/models/checkpoints", "/models/loras", "/models/vae"):
        assert await call(http, "GET", sim.url + path) == models[path]["response"]
    await call(http, "GET", f"{sim.url}/models/nope", status=404)
    stats = await call(http, "GET", f"{sim.url}/api/system_stats")
    want = SHAPES["system_stats"]
    assert stats.keys() == want.keys() and stats["system"].keys() == want["system"].keys()
    assert stats["devices"][0].keys() == want["devices"][0].keys()
    assert stats["system"]["comfyui_version"] == "0.3.99"
    assert await call(http, "GET", f"{sim.url}/features") == SHAPES["features"]
    assert await call(http, "GET", f"{sim.url}/api/queue") == {"queue_running": [],
                                                                "queue_pending": []}
    assert await call(http, "GET", f"{sim.url}/api/prompt") == {"exec_info":
                                                                 {"queue_remaining": 0}}
    for probe in SHAPES["api_jobs"]:
        if "jobs" in probe["path"]:
            await call(http, "GET", sim.url + probe["path"], status=probe["status"])


async def test_jobs_api_knob_lists_prompts_as_jobs(start: Start, http) -> None:
    sim = await start(jobs_api=True)
    done = await submit(http, sim, graph(1), prompt_id="job-a")
    await finished(http, sim, "job-a")
    assert done["prompt_id"] == "job-a"
    listing = await call(http, "GET", f"{sim.url}/api/jobs")
    assert [(j["id"], j["status"], j["outputs_count"]) for j in listing["jobs"]] == \
        [("job-a", "completed", 1)]
    assert listing["pagination"]["total"] == 1
    job = await call(http, "GET", f"{sim.url}/api/jobs/job-a")
    assert job["outputs"]["9"]["images"][0]["filename"].startswith("test_")
    await call(http, "GET", f"{sim.url}/api/jobs/nope", status=404)
    await call(http, "GET", f"{sim.url}/api/jobs?status=bogus", status=400)


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(recorded("validation.json")["cases"]))
async def test_validation_answers_as_recorded(start: Start, http, case: str) -> None:
    """Every recorded rejection (and the partly valid prompt) gets the same status and body."""
    sim = await start()
    rec = recorded("validation.json")["cases"][case]
    kwargs = {"json": rec["request"]} if "request" in rec else {"data": b"this is not json"}
    async with http.post(f"{sim.url}/prompt", **kwargs) as resp:
        assert resp.status == rec["status"]
        assert resp.content_type == rec["content_type"]
        body = await (resp.json() if resp.content_type == "application/json" else resp.text())
    want = rec["response"]
    if isinstance(want, dict) and "prompt_id" in want:  # accepted: ids and numbers differ
        assert set(body) == {"prompt_id", "number", "node_errors"}
        body, want = body["node_errors"], want["node_errors"]
    assert strip_tracebacks(body) == want
    if rec["status"] != 200:
        queue = await call(http, "GET", f"{sim.url}/queue")
        assert queue == {"queue_running": [], "queue_pending": []}, "a 400 queues nothing"


async def test_number_counts_every_post_and_numeric_strings_are_coerced(start: Start,
                                                                        http) -> None:
    sim = await start()
    await submit(http, sim, graph(**{"3.steps": 0}), status=400)
    await call(http, "POST", f"{sim.url}/prompt", json={"client_id": "x"}, status=400)
    accepted = await submit(http, sim, graph(43, **{"3.steps": "4", "3.seed": "43"}))
    assert accepted["number"] == 2, "rejected POSTs count too"
    entry = await finished(http, sim, accepted["prompt_id"])
    inputs = entry["prompt"][2]["3"]["inputs"]
    assert (inputs["steps"], inputs["seed"]) == (4, 43) == \
        tuple(SHAPES["steps_numeric_string"]["findings"]["history_graph_steps_and_seed"])


async def test_partly_valid_prompt_runs_only_its_valid_output(start: Start, http) -> None:
    sim = await start()
    rec = recorded("validation.json")["cases"]["err_partial_outputs"]
    answer = await submit(http, sim, rec["request"]["prompt"])
    assert list(answer["node_errors"]) == ["12"]
    entry = await finished(http, sim, answer["prompt_id"])
    want = SHAPES["partial_outputs_history"]
    want_entry = next(iter(want.values()))
    assert entry["prompt"][4] == want_entry["prompt"][4] == ["9"]
    assert list(entry["outputs"]) == list(want_entry["outputs"]) == ["9"]
    assert entry["status"]["status_str"] == "success"
    assert set(entry["prompt"][2]) == set(want_entry["prompt"][2]), "the broken nodes are kept"


# --- a prompt's life: queue, history, websocket -------------------------------------------

async def test_websocket_sequence_matches_the_recorded_run(start: Start, http) -> None:
    """The recorded run (own prompt_id and client_id, checkpoint and prompts cached from the
    prompt before) gives the same message types in the same order, the same routing, and
    messages of the same shape."""
    sim = await start(step_latency_s=0.01)
    await finished(http, sim, (await submit(http, sim, graph(44)))["prompt_id"])
    rec = WS["own_id_ws"]
    client_id, prompt_id = "probe-client", "ab5d7f47-734a-4b38-be53-348c7f729f34"
    async with http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws, \
            http.ws_connect(f"{sim.url}/ws?clientId=observer") as observer:
        answer = await submit(http, sim, graph(45, "probe/ownid"), prompt_id=prompt_id,
                              client_id=client_id)
        messages = await until_done(ws)
        observed = await drain(observer)
    assert answer == {"prompt_id": prompt_id, "number": 1, "node_errors": {}}
    assert [m["type"] for m in messages] == [t for t in rec["client_types"] if t != "close"]
    assert set(observed) == {t for t in rec["observer_types"] if t != "close"} == {"status"}
    for got, want in zip(messages, rec["client_messages"], strict=True):
        assert got["type"] == want["type"]
        assert got["data"].keys() == want["data"].keys(), got["type"]
        if "timestamp" not in got["data"] and got["type"] != "status":
            assert got["data"] == want["data"], got  # same ids, values, order, int/float
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["4", "6", "7", "5"]
    entry = await finished(http, sim, prompt_id)
    assert [m[0] for m in entry["status"]["messages"]] == \
        [m[0] for m in rec["history_status"]["messages"]]
    assert entry["prompt"][3] == {"client_id": client_id}


async def test_history_entry_has_the_recorded_shape_and_is_empty_until_done(start: Start,
                                                                            http) -> None:
    sim = await start(step_latency_s=0.1)
    answer = await submit(http, sim, graph(42, "probe/basic"))
    prompt_id = answer["prompt_id"]
    assert await call(http, "GET", f"{sim.url}/history/{prompt_id}") == {}, "running"
    queue = await call(http, "GET", f"{sim.url}/queue")
    want_queue = SHAPES["queue_right_after_post"]
    assert [len(item) for item in queue["queue_running"]] == [5]
    assert queue["queue_running"][0][2:] == want_queue["queue_running"][0][2:]
    assert await call(http, "GET", f"{sim.url}/prompt") == SHAPES["prompt_right_after_post"]
    entry = await finished(http, sim, prompt_id)
    want = next(iter(SHAPES["history_entry_basic"].values()))
    assert list(entry) == list(want)
    assert entry["prompt"][2:] == want["prompt"][2:]
    assert entry["outputs"] == want["outputs"]
    assert entry["meta"] == want["meta"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert await call(http, "GET", f"{sim.url}/history/not-an-id") == {}
    assert await call(http, "GET", f"{sim.url}/queue") == {"queue_running": [],
                                                            "queue_pending": []}


async def test_without_client_id_only_progress_is_broadcast(start: Start, http) -> None:
    sim = await start(step_latency_s=0.01)
    async with http.ws_connect(f"{sim.url}/ws?clientId=observer") as observer:
        answer = await submit(http, sim, graph(42))
        await finished(http, sim, answer["prompt_id"])
        types = await drain(observer)
    want = WS["basic_observer_no_client_id"]["observer_types"]
    assert types == want, "no execution_*, executing or executed without a client_id"


async def test_one_prompt_at_a_time_in_number_order(start: Start, http) -> None:
    sim = await start(step_latency_s=0.05)
    ids = [(await submit(http, sim, graph(50 + i), prompt_id=f"p{i}"))["prompt_id"]
           for i in range(3)]
    queue = await call(http, "GET", f"{sim.url}/queue")
    assert [item[1] for item in queue["queue_running"]] == ["p0"]
    assert [item[1] for item in queue["queue_pending"]] == ["p1", "p2"]
    front = await submit(http, sim, graph(60), prompt_id="front", front=True)
    assert front["number"] == -3
    for prompt_id in ids:
        await finished(http, sim, prompt_id)
    history = await call(http, "GET", f"{sim.url}/history")
    assert list(history) == ["p0", "front", "p1", "p2"], "front jumps the queue"
    starts = [h["status"]["messages"][0][1]["timestamp"] for h in history.values()]
    ends = [h["status"]["messages"][-1][1]["timestamp"] for h in history.values()]
    assert all(s >= e for s, e in zip(starts[1:], ends[:-1], strict=True))
    assert sim.stats.max_running == 1
    assert sim.stats.max_queue_remaining == 4
    assert sim.stats.prompts_executed == 4


async def test_history_max_items_delete_and_clear(start: Start, http) -> None:
    sim = await start()
    for i in range(3):
        await finished(http, sim, (await submit(http, sim, graph(i), prompt_id=f"h{i}"))[
            "prompt_id"])
    newest = await call(http, "GET", f"{sim.url}/history?max_items=2")
    assert list(newest) == ["h1", "h2"], SHAPES["history_ops"]["history_order"]
    await call(http, "POST", f"{sim.url}/history", json={"delete": ["h1"]})
    assert await call(http, "GET", f"{sim.url}/history/h1") == {}
    assert list(await call(http, "GET", f"{sim.url}/history")) == ["h0", "h2"]
    await call(http, "POST", f"{sim.url}/api/history", json={"clear": True})
    assert await call(http, "GET", f"{sim.url}/history") == {}


async def test_own_prompt_id_is_used_and_a_reused_one_replaces_the_entry(start: Start,
                                                                         http) -> None:
    sim = await start()
    first = await submit(http, sim, graph(43, "probe/cache"), prompt_id="my-job-0001")
    assert first["prompt_id"] == "my-job-0001"
    before = await finished(http, sim, "my-job-0001")
    again = await submit(http, sim, graph(43, "probe/dup-second"), prompt_id="my-job-0001")
    assert again["number"] == first["number"] + 1
    await asyncio.sleep(0.05)
    after = await finished(http, sim, "my-job-0001")
    assert after["prompt"][0] == again["number"]
    assert after["outputs"] != before["outputs"]
    assert list(await call(http, "GET", f"{sim.url}/history")) == ["my-job-0001"]
    assert SHAPES["duplicate_prompt_id"]["history_ids_with_this_id"] == 1
    assert sim.stats.posts_per_id["my-job-0001"] == 2


# --- files, pixels, metadata --------------------------------------------------------------

async def test_view_serves_the_png_with_the_prompt_and_workflow_chunks(start: Start,
                                                                       http) -> None:
    sim = await start()
    rec = SHAPES["workflow_chunk"]["request"]
    answer = await submit(http, sim, graph(43, "probe/workflow"), extra_data=rec["extra_data"])
    entry = await finished(http, sim, answer["prompt_id"])
    ref = entry["outputs"]["9"]["images"][0]
    assert ref == {"filename": "workflow_00001_.png", "subfolder": "probe", "type": "output"}
    image = await view_image(http, sim, ref)
    assert (image.size, image.mode) == ((64, 64), "RGB")
    assert list(image.text) == SHAPES["workflow_chunk"]["text_chunks"]
    assert json.loads(image.text["prompt"]) == entry["prompt"][2]
    assert json.loads(image.text["workflow"]) == rec["extra_data"]["extra_pnginfo"]["workflow"]
    rgb = await view_image(http, sim, {**ref, "channel": "rgb"})
    assert not rgb.text and same_pixels(rgb, image)
    assert os.path.isfile(os.path.join(sim.output_dir, "probe", "workflow_00001_.png"))


async def test_view_errors_are_the_recorded_ones(start: Start, http) -> None:
    sim = await start()
    await finished(http, sim, (await submit(http, sim, graph(42, "probe/basic")))["prompt_id"])
    for probe in SHAPES["view_errors"]:
        async with http.get(f"{sim.url}/view{probe['query']}") as resp:
            assert resp.status == probe["status"], probe


async def test_counter_continues_and_batch_shares_one_seed(start: Start, http) -> None:
    sim = await start()
    single = await finished(http, sim, (await submit(http, sim, graph(42, "probe/b")))[
        "prompt_id"])
    other = await finished(http, sim, (await submit(http, sim, graph(43, "probe/b")))[
        "prompt_id"])
    batch = await finished(http, sim, (await submit(http, sim, graph(
        42, "probe/batch2", **{"5.batch_size": 2})))["prompt_id"])
    assert [r["filename"] for r in single["outputs"]["9"]["images"]] == ["b_00001_.png"]
    assert [r["filename"] for r in other["outputs"]["9"]["images"]] == ["b_00002_.png"]
    refs = batch["outputs"]["9"]["images"]
    assert refs == SHAPES["batch2"]["outputs"]["9"]["images"]
    first, second = [await view_image(http, sim, r) for r in refs]
    seed42 = await view_image(http, sim, single["outputs"]["9"]["images"][0])
    seed43 = await view_image(http, sim, other["outputs"]["9"]["images"][0])
    assert [json.loads(i.text["prompt"])["3"]["inputs"]["seed"] for i in (first, second)] == \
        [42, 42], "the batch shares the seed"
    assert same_pixels(first, seed42), "image 0 of a batch is the batch-1 image"
    assert not same_pixels(second, first)
    assert not same_pixels(second, seed43), "image 1 is not the seed+1 image"


async def test_pixels_follow_seed_lora_and_checkpoint(start: Start, http) -> None:
    sim = await start()

    async def image_of(prompt: dict[str, Any]) -> Image.Image:
        entry = await finished(http, sim, (await submit(http, sim, prompt))["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        return await view_image(http, sim, entry["outputs"]["9"]["images"][0])

    base = await image_of(graph(48, "probe/d1"))
    between = await image_of(graph(49, "probe/d2"))
    again = await image_of(graph(48, "probe/d3"))
    assert same_pixels(base, again) and not same_pixels(base, between)
    with_lora = graph(48, "probe/lora")
    with_lora["10"] = {"class_type": "LoraLoader",
                       "inputs": {"lora_name": "tiny-lora.safetensors", "strength_model": 0.8,
                                  "strength_clip": 0.8, "model": ["4", 0], "clip": ["4", 1]}}
    with_lora["3"]["inputs"]["model"] = ["10", 0]
    with_lora["6"]["inputs"]["clip"] = with_lora["7"]["inputs"]["clip"] = ["10", 1]
    assert not same_pixels(await image_of(with_lora), base)
    assert not same_pixels(await image_of(graph(48, "probe/b", **{
        "4.ckpt_name": "tiny-b.safetensors"})), base)
    assert not same_pixels(await image_of(graph(48, "probe/c", **{"3.cfg": 6.5})), base)


async def test_odd_sizes_decode_to_multiples_of_eight(start: Start, http) -> None:
    sim = await start()
    entry = await finished(http, sim, (await submit(http, sim, graph(
        1, **{"5.width": 70, "5.height": 100})))["prompt_id"])
    image = await view_image(http, sim, entry["outputs"]["9"]["images"][0])
    assert image.size == (64, 96)


# --- the classic cache --------------------------------------------------------------------

async def test_the_same_graph_again_comes_from_the_cache(start: Start, http) -> None:
    sim = await start(step_latency_s=0.01)
    first = await finished(http, sim, (await submit(http, sim, graph(43, "probe/cache")))[
        "prompt_id"])
    files_before = sorted(os.listdir(os.path.join(sim.output_dir, "probe")))
    async with http.ws_connect(f"{sim.url}/ws?clientId=second") as ws:
        answer = await submit(http, sim, graph(43, "probe/cache"), client_id="second")
        messages = await until_done(ws)
    assert [m["type"] for m in messages] == [
        t for t in WS["cache"]["types"]["second_identical"] if t not in ("close", None)]
    recorded_id = WS["cache"]["second_identical_messages"][-1]["data"]["prompt_id"]
    for got, want in zip(messages, WS["cache"]["second_identical_messages"], strict=True):
        if "timestamp" not in got["data"] and got["type"] != "status":
            assert json.dumps(got["data"]).replace(answer["prompt_id"], "P") == \
                json.dumps(want["data"]).replace(recorded_id, "P"), got
    second = await finished(http, sim, answer["prompt_id"])
    cached = second["status"]["messages"][1]
    assert cached[0] == "execution_cached" and cached[1]["nodes"] == list(GRAPH)
    assert second["outputs"] == first["outputs"], "the earlier file name again"
    assert sorted(os.listdir(os.path.join(sim.output_dir, "probe"))) == files_before
    renamed = await finished(http, sim, (await submit(http, sim, graph(43, "probe/renamed")))[
        "prompt_id"])
    assert renamed["status"]["messages"][1][1]["nodes"] == [n for n in GRAPH if n != "9"]
    assert renamed["outputs"]["9"]["images"][0]["filename"] == "renamed_00001_.png"
    assert sim.stats.cache_hits == 1


async def test_the_cache_keeps_only_the_last_prompt(start: Start, http) -> None:
    sim = await start(switch_cost_s=0.05)
    loads = []
    for ckpt in ("tiny-b.safetensors", "tiny-a.safetensors", "tiny-b.safetensors"):
        started = time.monotonic()
        entry = await finished(http, sim, (await submit(http, sim, graph(
            44, f"probe/{ckpt[:6]}", **{"4.ckpt_name": ckpt})))["prompt_id"])
        loads.append(time.monotonic() - started)
        assert "4" not in entry["status"]["messages"][1][1]["nodes"], "switching reloads"
    assert sim.stats.checkpoint_loads == 3
    assert min(loads) >= 0.05
    await finished(http, sim, (await submit(http, sim, graph(45, "probe/same", **{
        "4.ckpt_name": "tiny-b.safetensors"})))["prompt_id"])
    assert sim.stats.checkpoint_loads == 3, "the same checkpoint again is cached"


# --- failures -----------------------------------------------------------------------------

async def test_execution_error_has_the_recorded_shape(start: Start, http) -> None:
    sim = await start()
    rec = WS["exec_error"]
    await finished(http, sim, (await submit(http, sim, graph(43)))["prompt_id"])  # as recorded
    async with http.ws_connect(f"{sim.url}/ws?clientId=err") as ws:
        answer = await submit(http, sim, rec["request"]["prompt"], client_id="err")
        messages = await until_done(ws)
    assert [m["type"] for m in messages] == [t for t in rec["client_types"] if t != "close"]
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    want = rec["execution_error"]
    assert error.keys() == want.keys()
    assert (error["node_id"], error["node_type"], error["executed"], error["exception_type"]) == \
        (want["node_id"], want["node_type"], want["executed"], want["exception_type"])
    assert error["exception_message"].startswith(
        "**** ERROR: Saving image outside the output folder is not allowed.")
    assert error["current_inputs"]["filename_prefix"] == ["../escape"]
    assert list(error["current_inputs"]) == list(want["current_inputs"])
    assert sorted(error["current_outputs"]) == sorted(want["current_outputs"])
    entry = await finished(http, sim, answer["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} and entry["meta"] == {}


def collapse(types: list[str]) -> list[str]:
    """Message types with runs of (progress_state, progress) steps counted once (timing)."""
    out: list[str] = []
    for kind in types:
        out.append(kind)
        if out[-4:] == ["progress_state", "progress"] * 2:
            del out[-2:]
    return out


async def test_interrupt_targets_the_running_prompt_and_saves_nothing(start: Start,
                                                                      http) -> None:
    """The recorded probe: C runs, D waits; D is deleted from the queue, an interrupt naming
    another prompt changes nothing, one naming C ends it at the next step."""
    sim = await start(step_latency_s=0.02)
    await finished(http, sim, (await submit(http, sim, graph(59, "probe/warm")))["prompt_id"])
    types: list[str] = []

    async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
        while True:
            message = await ws.receive_json(timeout=5)
            types.append(message["type"])
            if message["type"] == kind and (kind != "executing" or
                                            message["data"]["node"] is None):
                return

    async with http.ws_connect(f"{sim.url}/ws?clientId=int") as ws:
        c = await submit(http, sim, graph(60, "probe/interrupt-c", **{"3.steps": 50}),
                         client_id="int")
        d = await submit(http, sim, graph(61, "probe/interrupt-d"), client_id="int")
        await until(ws, "progress")
        await until(ws, "progress")
        await call(http, "POST", f"{sim.url}/queue", json={"delete": [d["prompt_id"]]})
        await call(http, "POST", f"{sim.url}/interrupt", json={"prompt_id": "not-running"})
        await until(ws, "progress")
        queue = await call(http, "GET", f"{sim.url}/queue")
        assert [i[1] for i in queue["queue_running"]] == [c["prompt_id"]], "wrong id: goes on"
        assert queue["queue_pending"] == []
        await call(http, "POST", f"{sim.url}/interrupt", json={"prompt_id": c["prompt_id"]})
        await until(ws, "executing")
    assert collapse(types) == collapse([t for t in WS["interrupt"]["client_types"]
                                        if t != "close"])
    entry = await finished(http, sim, c["prompt_id"])
    want = next(iter(WS["interrupt"]["C_history_status"].values()))
    assert [m[0] for m in entry["status"]["messages"]] == \
        [m[0] for m in want["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} == want["outputs"]
    interrupted = entry["status"]["messages"][-1][1]
    assert interrupted.keys() == want["status"]["messages"][-1][1].keys()
    assert (interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == \
        ("3", "KSampler", [])
    assert await call(http, "GET", f"{sim.url}/history/{d['prompt_id']}") == {}
    assert not any(n.startswith("interrupt") for n in
                   os.listdir(os.path.join(sim.output_dir, "probe"))), "nothing saved"
    await call(http, "POST", f"{sim.url}/interrupt")  # idle, no body: harmless
    await call(http, "POST", f"{sim.url}/interrupt", json={})
    after = await finished(http, sim, (await submit(http, sim, graph(62)))["prompt_id"])
    assert after["status"]["status_str"] == "success"


async def test_injected_execution_errors_and_http_500s(start: Start, http) -> None:
    sim = await start(error_rate=1.0)
    entry = await finished(http, sim, (await submit(http, sim, graph(1)))["prompt_id"])
    error = entry["status"]["messages"][-1]
    assert error[0] == "execution_error" and error[1]["node_type"] == "KSampler"
    assert error[1]["exception_type"] == "RuntimeError"
    assert sim.stats.faults["error"] == 1
    sim = await start(http_error_rate=1.0)
    async with http.post(f"{sim.url}/prompt", json={"prompt": graph(1)}) as resp:
        assert resp.status == 500 and resp.content_type == "text/plain"
    assert await call(http, "GET", f"{sim.url}/queue") == {"queue_running": [],
                                                            "queue_pending": []}


async def test_knobs_can_change_while_running(start: Start, http) -> None:
    sim = await start()
    assert (await finished(http, sim, (await submit(http, sim, graph(1)))["prompt_id"]))[
        "status"]["status_str"] == "success"
    sim.config = replace(sim.config, error_rate=1.0, version="0.4.0")
    assert (await finished(http, sim, (await submit(http, sim, graph(2)))["prompt_id"]))[
        "status"]["status_str"] == "error"
    stats = await call(http, "GET", f"{sim.url}/system_stats")
    assert stats["system"]["comfyui_version"] == "0.4.0"


async def test_injected_oversize_latent_is_an_out_of_memory_error(start: Start, http) -> None:
    sim = await start(image_size_cap=128)
    entry = await finished(http, sim, (await submit(http, sim, graph(
        1, **{"5.width": 256})))["prompt_id"])
    error = entry["status"]["messages"][-1][1]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert "TIPS" in error["exception_message"]


async def test_a_dropped_post_still_queues_the_prompt(start: Start, http) -> None:
    sim = await start(drop_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await submit(http, sim, graph(1), prompt_id="dropped")
    entry = await finished(http, sim, "dropped")
    assert entry["status"]["status_str"] == "success"


async def test_a_hang_lasts_until_interrupted(start: Start, http) -> None:
    sim = await start(hang_rate=1.0, hang_s=30.0)
    answer = await submit(http, sim, graph(1))
    await asyncio.sleep(0.2)
    queue = await call(http, "GET", f"{sim.url}/queue")
    assert [i[1] for i in queue["queue_running"]] == [answer["prompt_id"]]
    assert await call(http, "GET", f"{sim.url}/history/{answer['prompt_id']}") == {}
    await call(http, "POST", f"{sim.url}/interrupt")
    entry = await finished(http, sim, answer["prompt_id"])
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


async def test_a_dropped_websocket_leaves_the_prompt_running(start: Start, http) -> None:
    sim = await start(ws_drop_rate=1.0, step_latency_s=0.01)
    async with http.ws_connect(f"{sim.url}/ws?clientId=cut") as ws:
        answer = await submit(http, sim, graph(1), client_id="cut")
        with pytest.raises((aiohttp.ClientError, ConnectionError, TimeoutError)):
            while True:
                message = await ws.receive(timeout=5)
                if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR,
                                    aiohttp.WSMsgType.CLOSE):
                    raise ConnectionError("closed")
    entry = await finished(http, sim, answer["prompt_id"])
    assert entry["status"]["status_str"] == "success"


# --- restarts -----------------------------------------------------------------------------

async def test_restart_loses_queue_and_history_but_not_files(start: Start, http) -> None:
    sim = await start(step_latency_s=0.05)
    done = await finished(http, sim, (await submit(http, sim, graph(1, "probe/r")))["prompt_id"])
    running = await submit(http, sim, graph(2, "probe/r"), prompt_id="lost")
    waiting = await submit(http, sim, graph(3, "probe/r"), prompt_id="lost-too")
    assert waiting["number"] == 2
    restart = asyncio.create_task(sim.restart(downtime_s=0.3))
    await asyncio.sleep(0.15)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", f"{sim.url}/queue")
    await restart
    assert await call(http, "GET", f"{sim.url}/history") == {}
    assert await call(http, "GET", f"{sim.url}/queue") == {"queue_running": [],
                                                            "queue_pending": []}
    for prompt_id in (running["prompt_id"], waiting["prompt_id"]):
        assert await call(http, "GET", f"{sim.url}/history/{prompt_id}") == {}
    again = await submit(http, sim, graph(1, "probe/r"))
    assert again["number"] == 0, "the counter starts again"
    entry = await finished(http, sim, again["prompt_id"])
    assert entry["status"]["messages"][1][1]["nodes"] == [], "the cache is gone too"
    assert done["outputs"]["9"]["images"][0]["filename"] == "r_00001_.png"
    assert entry["outputs"]["9"]["images"][0]["filename"] == "r_00002_.png", \
        "the counter scans the folder, so it survives a restart"
    assert sim.stats.restarts == 1


async def test_restart_knob_crashes_during_the_nth_prompt(start: Start, http) -> None:
    sim = await start(restart_after_prompts=2, restart_downtime_s=0.05)
    first = await finished(http, sim, (await submit(http, sim, graph(1)))["prompt_id"])
    assert first["status"]["status_str"] == "success"
    async with http.ws_connect(f"{sim.url}/ws?clientId=k") as ws:
        await submit(http, sim, graph(2), prompt_id="crashed", client_id="k")
        closed = await ws.receive(timeout=5)
        while closed.type == aiohttp.WSMsgType.TEXT:
            closed = await ws.receive(timeout=5)
    deadline = time.monotonic() + 5
    while sim.stats.restarts < 1 or sim._state is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert await call(http, "GET", f"{sim.url}/history/crashed") == {}
    assert sim.stats.runs_per_id["crashed"] == 1


async def test_sim_routes_report_stats_and_restart(start: Start, http) -> None:
    sim = await start()
    await finished(http, sim, (await submit(http, sim, graph(1), prompt_id="s1"))["prompt_id"])
    stats = await call(http, "GET", f"{sim.url}/sim/stats")
    assert stats["prompts_executed"] == 1 and stats["posts_per_id"] == {"s1": 1}
    await call(http, "POST", f"{sim.url}/sim/restart", json={"downtime_s": 0})
    deadline = time.monotonic() + 5
    while sim.stats.restarts == 0 or sim._state is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await call(http, "GET", f"{sim.url}/history") == {}


async def test_sim_config_route_changes_knobs(start: Start, http) -> None:
    sim = await start()
    changed = await call(http, "POST", f"{sim.url}/sim/config",
                         json={"error_rate": 1, "loras": "a.safetensors,b.safetensors"})
    assert changed["error_rate"] == 1.0 and changed["loras"] == ["a.safetensors",
                                                                "b.safetensors"]
    assert await call(http, "GET", f"{sim.url}/models/loras") == changed["loras"]
    entry = await finished(http, sim, (await submit(http, sim, graph(1)))["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    for bad in ({"nope": 1}, {"error_rate": "high"}, {"error_rate": 0.7, "hang_rate": 0.7}):
        await call(http, "POST", f"{sim.url}/sim/config", json=bad, status=400)
    assert (await call(http, "GET", f"{sim.url}/sim/config"))["error_rate"] == 1.0


async def test_a_client_reconnecting_mid_run_hears_the_current_node(start: Start,
                                                                     http) -> None:
    sim = await start(step_latency_s=0.05)
    async with http.ws_connect(f"{sim.url}/ws?clientId=again") as ws:
        answer = await submit(http, sim, graph(1, **{"3.steps": 20}), client_id="again")
        while (await ws.receive_json(timeout=5))["type"] != "progress":
            pass
    async with http.ws_connect(f"{sim.url}/ws?clientId=again") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        assert await ws.receive_json(timeout=5) == {"type": "executing", "data": {"node": "3"}}
        rest = await until_done(ws)
    assert rest[-1]["data"] == {"node": None, "prompt_id": answer["prompt_id"]}


async def test_feature_flags_and_a_generated_sid(start: Start, http) -> None:
    sim = await start()
    async with http.ws_connect(f"{sim.url}/ws") as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "status" and len(hello["data"]["sid"]) == 32
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        flags = await ws.receive_json(timeout=5)
    assert flags == {"type": "feature_flags", "data": SHAPES["features"]}


# --- configuration ------------------------------------------------------------------------

def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="checkpoints"):
        ComfySimConfig(checkpoints=())
    with pytest.raises(ValueError, match="more than 1"):
        ComfySimConfig(error_rate=0.6, hang_rate=0.6)
    with pytest.raises(ValueError, match="step_latency_s"):
        ComfySimConfig(step_latency_s=-1)


def test_cli_flags_compose_with_the_webui_simulator() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    add_comfy_arguments(parser)
    ns = parser.parse_args(["--models", "a.safetensors,b.safetensors", "--loras", "x,y.pt",
                            "--step-latency-s", "0.5", "--error-rate", "0.25", "--jobs-api",
                            "--comfyui-version", "0.4.0", "--comfy-samplers", "euler,lcm"])
    config = comfy_config_from_args(ns)
    assert config.checkpoints == ("a.safetensors", "b.safetensors")
    assert config.loras == ("x.safetensors", "y.pt")
    assert (config.step_latency_s, config.error_rate, config.jobs_api, config.version) == \
        (0.5, 0.25, True, "0.4.0")
    assert config.samplers == ("euler", "lcm")
    assert config.schedulers == TINY.schedulers
    alone = argparse.ArgumentParser()
    add_comfy_arguments(alone)
    assert alone.parse_args([]).port == 8188
    assert comfy_config_from_args(alone.parse_args([])) == ComfySimConfig()
    with pytest.raises(UsageError):
        comfy_config_from_args(alone.parse_args(["--error-rate", "0.7", "--hang-rate", "0.7"]))
