"""The simulated WebUI backend, over real loopback HTTP: what a client meets on a real server."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from PIL import Image

from pipeline.errors import UsageError
from pipeline.sim import SimConfig, SimServer, add_sim_arguments, config_from_args, start_sim
from pipeline.sim.config import make_checkpoint
from pipeline.sim.render import read_user_comment

Start = Callable[..., Awaitable[SimServer]]
SMALL = {"width": 64, "height": 64, "steps": 4}


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(latency_s=0.1, ...)`` starts a simulated backend, closed after the test."""
    servers: list[SimServer] = []

    async def _start(config: SimConfig | None = None, **changes: Any) -> SimServer:
        server = await start_sim(replace(config or SimConfig(), **changes))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def txt2img(http: aiohttp.ClientSession, sim: SimServer, payload: dict[str, Any],
                  *, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    async with http.post(f"{sim.url}/sdapi/v1/txt2img", json={**SMALL, **payload},
                         **kwargs) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, body
        return body


async def get(http: aiohttp.ClientSession, url: str, *, status: int = 200, **kw: Any) -> Any:
    async with http.get(url, **kw) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None)


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def info_of(body: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(body["info"], str), "info is a JSON string, parsed a second time"
    return json.loads(body["info"])


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# --- seeds, info, images ------------------------------------------------------------------

async def test_seed_minus_one_is_resolved_and_steps(start: Start, http) -> None:
    sim = await start()
    body = await txt2img(http, sim, {"prompt": "a fox", "seed": -1, "batch_size": 2,
                                     "n_iter": 2})
    info = info_of(body)
    seed = info["seed"]
    assert seed != -1 and 0 <= seed < 2**32
    assert info["all_seeds"] == [seed, seed + 1, seed + 2, seed + 3]
    assert len(info["all_subseeds"]) == 4 and info["all_subseeds"][0] != -1
    assert body["parameters"]["seed"] == -1, "parameters echo the request, not resolved values"
    assert len(body["images"]) == 4
    variation = info_of(await txt2img(http, sim, {"seed": 100, "subseed": 7,
                                                  "subseed_strength": 0.5, "batch_size": 3}))
    assert variation["all_seeds"] == [100, 100, 100]
    assert variation["all_subseeds"] == [7, 8, 9]


async def test_info_string_has_the_documented_keys(start: Start, http) -> None:
    sim = await start()
    body = await txt2img(http, sim, {"prompt": "p", "negative_prompt": "n", "seed": 5})
    info = info_of(body)
    for key in ("prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed",
                "all_seeds", "subseed", "all_subseeds", "subseed_strength", "width", "height",
                "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
                "sd_model_name", "sd_model_hash", "sd_vae_name", "seed_resize_from_w",
                "seed_resize_from_h", "denoising_strength", "extra_generation_params",
                "index_of_first_image", "styles", "job_timestamp", "clip_skip",
                "is_using_inpainting_conditioning", "version", "infotexts"):
        assert key in info, key
    assert info["sampler_name"] == "Euler", "sampler omitted -> Euler"
    assert info["steps"] == 4 and info["index_of_first_image"] == 0
    first = make_checkpoint(SimConfig().models[0])
    assert (info["sd_model_name"], info["sd_model_hash"]) == (first.model_name, first.shorthash)
    assert info["infotexts"][0].startswith("p\nNegative prompt: n\nSteps: 4, Sampler: Euler")
    defaults = info_of(await txt2img(http, sim, {"width": None, "height": None, "steps": None}))
    assert (defaults["width"], defaults["height"], defaults["steps"]) == (512, 512, 50)


async def test_grid_first_with_save_images_and_extras_after(start: Start, http) -> None:
    sim = await start(extra_images=2)
    body = await txt2img(http, sim, {"prompt": "grid", "seed": 10, "batch_size": 3,
                                     "save_images": True})
    info = info_of(body)
    assert info["index_of_first_image"] == 1
    assert len(body["images"]) == 1 + 3 + 2
    assert decode(body["images"][0]).size == (2 * 64, 2 * 64), "a grid of all 3, 2 rows"
    for i, b64 in enumerate(body["images"][1:4]):
        image = decode(b64)
        assert image.size == (64, 64)
        assert f"Seed: {10 + i}," in image.info["parameters"]
    for b64 in body["images"][4:]:
        assert "parameters" not in decode(b64).info, "extras are not generations"
    assert len(info["infotexts"]) == 4, "the grid's infotext comes first, as in A1111"
    plain = await txt2img(http, sim, {"batch_size": 3})
    assert info_of(plain)["index_of_first_image"] == 0 and len(plain["images"]) == 3 + 2
    single = await txt2img(http, sim, {"save_images": True})
    assert info_of(single)["index_of_first_image"] == 0, "no grid for a single image"


async def test_png_carries_parameters_text_chunk(start: Start, http) -> None:
    sim = await start()
    body = await txt2img(http, sim, {"prompt": "a red barn", "negative_prompt": "blurry",
                                     "seed": 42, "sampler_name": "DPM++ 2M",
                                     "scheduler": "Karras", "cfg_scale": 6.5})
    data = base64.b64decode(body["images"][0])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    text = image.info["parameters"]
    assert text.startswith("a red barn\nNegative prompt: blurry\nSteps: 4, Sampler: DPM++ 2M, "
                           "Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 64x64, "
                           "Model hash: ")
    assert text.endswith("Version: v1.10.1")
    assert text == info_of(body)["infotexts"][0]


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
async def test_jpeg_and_webp_carry_infotext_in_exif(start: Start, http, fmt: str,
                                                    magic: bytes) -> None:
    sim = await start(samples_format=fmt)
    body = await txt2img(http, sim, {"prompt": "snow", "seed": 3})
    data = base64.b64decode(body["images"][0])
    assert data.startswith(magic)
    with Image.open(io.BytesIO(data)) as image:
        raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\x00"), "UserComment as piexif writes it"
    text = info_of(body)["infotexts"][0]
    assert raw[8:].decode("utf-16-be") == text
    assert "Seed: 3," in (read_user_comment(data) or "")
    try:  # A1111 itself reads it back with piexif, which insists on the UNDEFINED type
        import piexif
        import piexif.helper
    except ImportError:
        return
    with Image.open(io.BytesIO(data)) as image:
        exif = piexif.load(image.info["exif"])
    assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == text


async def test_samples_format_follows_options(start: Start, http) -> None:
    sim = await start()
    async with http.post(f"{sim.url}/sdapi/v1/options", json={"samples_format": "jpg"}) as resp:
        assert resp.status == 200
    assert (await get(http, f"{sim.url}/sdapi/v1/options"))["samples_format"] == "jpg"
    body = await txt2img(http, sim, {})
    assert base64.b64decode(body["images"][0]).startswith(b"\xff\xd8\xff")


# --- validation and substitutions ---------------------------------------------------------

async def test_wrong_types_get_422_and_unknown_fields_are_ignored(start: Start, http) -> None:
    sim = await start()
    body = await txt2img(http, sim, {"steps": "abc", "width": 64.5}, status=422)
    locs = {tuple(d["loc"]) for d in body["detail"]}
    assert locs == {("body", "steps"), ("body", "width")}
    assert all(d["msg"] and d["type"] for d in body["detail"])
    async with http.post(f"{sim.url}/sdapi/v1/txt2img", data=b"[1, 2]") as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["loc"] == ["body"]
    await txt2img(http, sim, {"width": 4096}, status=422)
    ok = await txt2img(http, sim, {"stepz": 3, "no_such_field": {"x": 1}})
    assert info_of(ok)["steps"] == 4


async def test_unknown_sampler_per_flavor(start: Start, http) -> None:
    v110 = await start()
    info = info_of(await txt2img(http, v110, {"sampler_name": "Nonexistent"}))
    assert info["sampler_name"] == "DPM++ 2M", "v1.10 silently uses the first sampler"
    for flavor in ("a1111-1.9", "sdnext"):
        strict = await start(flavor=flavor)
        body = await txt2img(http, strict, {"sampler_name": "Nonexistent"}, status=404)
        assert body["detail"] == "Sampler not found"
    legacy = await txt2img(http, v110, {"sampler_name": "DPM++ 2M Karras"})
    assert info_of(legacy)["sampler_name"] == "DPM++ 2M"
    assert "Schedule type: Karras" in info_of(legacy)["infotexts"][0]
    unknown_scheduler = await txt2img(http, v110, {"sampler_name": "Euler", "scheduler": "Zzz"})
    assert "Schedule type: Automatic" in info_of(unknown_scheduler)["infotexts"][0]


async def test_flavor_specific_listings(start: Start, http) -> None:
    sdnext = await start(flavor="sdnext")
    await get(http, f"{sdnext.url}/sdapi/v1/schedulers", status=404)
    info = info_of(await txt2img(http, sdnext, {}))
    assert "index_of_first_image" not in info and "infotexts" not in info
    forge = await start(flavor="forge")
    await get(http, f"{forge.url}/sdapi/v1/sd-vae", status=404)
    assert (await get(http, f"{forge.url}/sdapi/v1/sd-modules"))[0]["model_name"]
    old = await start(schedulers=None)
    await get(http, f"{old.url}/sdapi/v1/schedulers", status=404)
    names = [s["name"] for s in await get(http, f"{old.url}/sdapi/v1/samplers")]
    assert "DPM++ 2M Karras" in names, "before v1.9 combined names are samplers of their own"


async def test_sdnext_without_model_answers_no_images(start: Start, http) -> None:
    sim = await start(flavor="sdnext", loaded_model="")
    body = await txt2img(http, sim, {})
    assert body["images"] == [] and body["info"] == ""


async def test_unknown_checkpoint_is_silently_ignored(start: Start, http) -> None:
    sim = await start()
    body = await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": "nope.ckpt"}})
    assert info_of(body)["sd_model_name"] == make_checkpoint(SimConfig().models[0]).model_name
    assert sim.stats.checkpoint_loads == 0


async def test_checkpoint_spellings_and_restore_afterwards(start: Start, http) -> None:
    sim = await start(switch_cost_s=0.05)
    a, b = (make_checkpoint(name) for name in SimConfig().models[:2])
    for spelling in (b.title, b.model_name, b.name, b.shorthash, b.sha256):
        info = info_of(await txt2img(http, sim,
                                     {"override_settings": {"sd_model_checkpoint": spelling}}))
        assert info["sd_model_name"] == b.model_name, spelling
    assert sim.stats.checkpoint_loads == 1, "B loaded once, then kept"
    options = await get(http, f"{sim.url}/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == a.title, "the option was restored afterwards"
    started = time.monotonic()
    info = info_of(await txt2img(http, sim, {}))
    assert info["sd_model_name"] == a.model_name
    assert sim.stats.checkpoint_loads == 2, "no override: the default is loaded again"
    assert time.monotonic() - started >= 0.05, "a load costs switch_cost_s"
    await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": b.title},
                              "override_settings_restore_afterwards": False})
    assert sim.stats.checkpoint_loads == 3
    options = await get(http, f"{sim.url}/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == b.title, "without restore the option stays"
    assert info_of(await txt2img(http, sim, {}))["sd_model_name"] == b.model_name
    assert sim.stats.checkpoint_loads == 3


async def test_options_post_loads_checkpoint(start: Start, http) -> None:
    sim = await start()
    c = make_checkpoint(SimConfig().models[2])
    async with http.post(f"{sim.url}/sdapi/v1/options",
                         json={"sd_model_checkpoint": c.model_name}) as resp:
        assert resp.status == 200
    assert sim.stats.checkpoint_loads == 1
    assert (await get(http, f"{sim.url}/sim/stats"))["loaded_model"] == c.title
    async with http.post(f"{sim.url}/sdapi/v1/options",
                         json={"sd_model_checkpoint": "missing"}) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"] == "RuntimeError"


async def test_loras_and_dynamic_prompts(start: Start, http) -> None:
    sim = await start(dynamic_prompts=True)
    scripts = await get(http, f"{sim.url}/sdapi/v1/scripts")
    title = next(s for s in scripts["txt2img"] if "dynamic prompts" in s)
    prompt = "a {red|green|blue|pink|grey} car <lora:film_grain:0.6> <lora:missing:1>"
    info = info_of(await txt2img(http, sim, {"prompt": prompt, "seed": 1, "batch_size": 6}))
    assert all("{" not in p for p in info["all_prompts"]), "re-expanded on the server"
    assert len(set(info["all_prompts"])) > 1
    assert info["extra_generation_params"]["Template"] == prompt
    assert info["extra_generation_params"]["Lora hashes"].startswith("film_grain: ")
    assert "missing" not in info["extra_generation_params"]["Lora hashes"]
    off = info_of(await txt2img(http, sim, {"prompt": prompt, "alwayson_scripts": {
        title.title(): {"args": [False]}}}))
    assert off["all_prompts"] == [prompt]
    await txt2img(http, sim, {"alwayson_scripts": {"No Such Script": {"args": []}}}, status=422)


async def test_img2img(start: Start, http) -> None:
    sim = await start()
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    async with http.post(f"{sim.url}/sdapi/v1/img2img",
                         json={**SMALL, "init_images": [init], "seed": 9}) as resp:
        body = await resp.json()
        assert resp.status == 200
    assert decode(body["images"][0]).size == (64, 64)
    assert info_of(body)["denoising_strength"] == 0.75
    assert body["parameters"]["init_images"] is None
    async with http.post(f"{sim.url}/sdapi/v1/img2img", json=SMALL) as resp:
        assert resp.status == 404


# --- auth -------------------------------------------------------------------------------

async def test_auth_shapes(start: Start, http) -> None:
    sim = await start(auth="alice:pw1,bob:pw2")
    body = await txt2img(http, sim, {}, status=401)
    assert body["detail"] == "Not authenticated"
    body = await txt2img(http, sim, {}, status=401, headers=basic_auth("alice", "nope"))
    assert body["detail"] == "Incorrect username or password"
    await get(http, f"{sim.url}/sdapi/v1/options", status=401)
    await get(http, f"{sim.url}/sdapi/v1/loras")
    await get(http, f"{sim.url}/sim/stats")
    await get(http, f"{sim.url}/internal/ping")
    await txt2img(http, sim, {}, headers=basic_auth("bob", "pw2"))
    assert sim.stats.requests == 1, "requests count generations that passed authentication"


# --- concurrency ------------------------------------------------------------------------

async def test_one_generation_at_a_time_but_all_counted_in_flight(start: Start, http) -> None:
    latency_s, n = 0.1, 4
    sim = await start(latency_s=latency_s)
    started = time.monotonic()
    results = await asyncio.gather(*(txt2img(http, sim, {"seed": i}) for i in range(n)))
    elapsed_s = time.monotonic() - started
    assert [info_of(r)["seed"] for r in results] == list(range(n))
    assert sim.stats.max_in_flight == n, "counted on arrival, before the queue lock"
    assert n * latency_s <= elapsed_s < n * latency_s + 0.35, "serialised by the lock"
    assert sim.stats.in_flight == 0 and sim.stats.generations == n


async def test_interrupt_and_progress(start: Start, http) -> None:
    sim = await start(latency_s=0.1)
    task = asyncio.create_task(txt2img(http, sim, {"n_iter": 10, "seed": 1}))
    deadline = time.monotonic() + 5
    while sim.stats.generations < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    progress = await get(http, f"{sim.url}/sdapi/v1/progress")
    assert progress["state"]["job_count"] == 10 and 0 < progress["progress"] < 1
    async with http.post(f"{sim.url}/sdapi/v1/interrupt") as resp:
        assert resp.status == 200
    body = await task
    assert 2 <= len(body["images"]) < 10
    assert len(info_of(body)["all_seeds"]) == 10, "all_seeds still lists every seed"
    idle = await get(http, f"{sim.url}/sdapi/v1/progress")
    assert idle["state"]["job_count"] == 0


async def test_skip_drops_the_current_image_and_goes_on(start: Start, http) -> None:
    sim = await start(latency_s=0.1)
    task = asyncio.create_task(txt2img(http, sim, {"n_iter": 4, "seed": 1}))
    while sim.stats.generations < 1:
        await asyncio.sleep(0.005)
    async with http.post(f"{sim.url}/sdapi/v1/skip") as resp:
        assert resp.status == 200
    body = await task
    assert len(body["images"]) == 3 and len(info_of(body)["all_seeds"]) == 4


# --- faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("flavor, key", [("a1111", "errors"), ("forge", "message"),
                                         ("sdnext", "errors")])
async def test_error_fault_bodies(start: Start, http, flavor: str, key: str) -> None:
    sim = await start(error_rate=1.0, flavor=flavor)
    body = await txt2img(http, sim, {}, status=500)
    assert body["error"] == "RuntimeError" and body[key]
    assert ("code" in body) == (flavor == "sdnext")
    assert sim.stats.faults["error"] == 1


async def test_oom_fault(start: Start, http) -> None:
    sim = await start(oom_rate=1.0)
    body = await txt2img(http, sim, {}, status=500)
    assert body["error"] == "OutOfMemoryError" and "CUDA out of memory" in body["errors"]


async def test_reset_fault_drops_the_connection(start: Start, http) -> None:
    sim = await start(reset_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await txt2img(http, sim, {})
    assert sim.stats.faults["reset"] == 1
    await get(http, f"{sim.url}/sim/stats")  # the server itself is fine


async def test_hang_fault_and_prompt_close(start: Start, http) -> None:
    sim = await start(hang_rate=1.0, hang_s=3600)
    with pytest.raises(asyncio.TimeoutError):
        await txt2img(http, sim, {}, timeout=aiohttp.ClientTimeout(total=0.2))
    assert sim.stats.faults["hang"] == 1
    pending = asyncio.create_task(txt2img(http, sim, {}))
    while sim.stats.in_flight < 1:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await sim.close()
    assert time.monotonic() - started < 2, "close() must not wait for hanging requests"
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_truncate_and_interrupt_faults(start: Start, http) -> None:
    sim = await start(truncate_rate=1.0)
    async with http.post(f"{sim.url}/sdapi/v1/txt2img", json=SMALL) as resp:
        assert resp.status == 200
        with pytest.raises(ValueError):
            json.loads(await resp.read())
    short = await start(interrupt_rate=1.0)
    body = await txt2img(http, short, {"batch_size": 2, "n_iter": 2})
    assert len(body["images"]) < len(info_of(body)["all_seeds"]) == 4
    assert short.stats.faults["interrupt"] == 1


async def test_faults_are_reproducible_from_the_seed(start: Start, http) -> None:
    async def outcomes(sim: SimServer) -> list[int]:
        out = []
        for _ in range(12):
            async with http.post(f"{sim.url}/sdapi/v1/txt2img", json=SMALL) as resp:
                out.append(resp.status)
        return out

    config = SimConfig(error_rate=0.5, fault_seed=7)
    first, second = await outcomes(await start(config)), await outcomes(await start(config))
    assert first == second and 200 in first and 500 in first


async def test_sim_config_changes_at_run_time(start: Start, http) -> None:
    sim = await start()
    async with http.post(f"{sim.url}/sim/config", json={"error_rate": 1.0}) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_rate"] == 1.0
    assert sim.config.error_rate == 1.0
    await txt2img(http, sim, {}, status=500)
    async with http.post(f"{sim.url}/sim/config",
                         json={"error_rate": 0, "models": ["only.safetensors"]}) as resp:
        assert resp.status == 200
    assert info_of(await txt2img(http, sim, {}))["sd_model_name"] == "only"
    async with http.post(f"{sim.url}/sim/config", json={"eror_rate": 1}) as resp:
        assert resp.status == 400 and "eror_rate" in (await resp.json())["detail"]
    stats = await get(http, f"{sim.url}/sim/stats")
    assert stats["requests"] == 2 and stats["faults"]["error"] == 1


async def test_restart_on_the_same_port(http) -> None:
    first = await start_sim(SimConfig())
    port = first.port
    await txt2img(http, first, {})
    await first.close()
    with pytest.raises(aiohttp.ClientError):
        await txt2img(http, first, {})
    second = await start_sim(SimConfig(), port=port)
    try:
        assert second.url == first.url
        await txt2img(http, second, {})
        assert second.stats.requests == 1, "a restarted backend starts from zero"
    finally:
        await second.close()


# --- compatibility and CLI ----------------------------------------------------------------

async def test_webuiapi_client_gets_an_image(start: Start) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    sim = await start()

    def call() -> Any:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=sim.port, sampler="Euler a", steps=5)
        return api.txt2img(prompt="a lighthouse", seed=1234, width=64, height=64)

    result = await asyncio.to_thread(call)
    assert result.image.size == (64, 64)
    assert result.info["all_seeds"] == [1234]
    assert result.info["sampler_name"] == "Euler a"


def test_cli_arguments_build_a_config() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    ns = parser.parse_args(["--port", "0", "--latency-s", "0.5", "--error-rate", "0.1",
                            "--models", "a.safetensors,b.ckpt", "--schedulers", "none",
                            "--flavor", "forge", "--dynamic-prompts", "--samples-format",
                            "webp", "--auth", "u:p", "--extra-images", "2"])
    config = config_from_args(ns)
    assert (ns.host, ns.port) == ("127.0.0.1", 0)
    assert config.latency_s == 0.5 and config.error_rate == 0.1
    assert config.models == ("a.safetensors", "b.ckpt") and config.schedulers is None
    assert config.flavor == "forge" and config.dynamic_prompts
    assert config.samples_format == "webp" and config.auth == "u:p" and config.extra_images == 2
    assert config_from_args(parser.parse_args([])) == SimConfig()


# --- server profiles: what real servers do (see shared/real-forge/) --------------------------

FORGE = SimConfig(profile="forge", models=("tiny-a.safetensors", "tiny-b.safetensors"),
                  loras=("tiny-lora",), vaes=("tiny-vae.safetensors",), embeddings=())


def pixels(b64: str) -> bytes:
    """The colours of an image (palette images compare by index otherwise)."""
    return decode(b64).convert("RGB").tobytes()


def infotext_of(body: dict[str, Any], index: int = 0) -> str:
    return info_of(body)["infotexts"][index]


def fields_of(infotext: str) -> dict[str, str]:
    """The "Key: value" pairs of an infotext's last line (quoted values kept quoted)."""
    out: dict[str, str] = {}
    for part in infotext.rsplit("\n", 1)[-1].split(", "):
        key, sep, value = part.partition(": ")
        if sep:
            out[key] = value
    return out


async def options_of(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, Any]:
    return await get(http, f"{sim.url}/sdapi/v1/options")


async def post_options(http: aiohttp.ClientSession, sim: SimServer,
                       changes: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(f"{sim.url}/sdapi/v1/options", json=changes) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_forge_titles_have_no_hash_until_loaded(start: Start, http) -> None:
    sim = await start(FORGE, switch_cost_s=0.05)
    models = await get(http, f"{sim.url}/sdapi/v1/sd-models")
    assert [m["title"] for m in models] == list(FORGE.models)
    assert all(m["hash"] is None and m["sha256"] is None for m in models)
    options = await options_of(http, sim)
    assert options["sd_model_checkpoint"] == FORGE.models[0] and options["sd_checkpoint_hash"] == ""
    assert sim.stats.checkpoint_loads == 0, "Forge loads lazily, on the first generation"
    a, b = (make_checkpoint(name) for name in FORGE.models)
    early = await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": b.title}})
    assert info_of(early)["sd_model_name"] == a.model_name, \
        "a title with its hash is no known name before the server has hashed that file"
    models = await get(http, f"{sim.url}/sdapi/v1/sd-models")
    assert models[0]["title"] == a.title and models[0]["hash"] == a.shorthash
    assert models[1]["title"] == b.name and models[1]["hash"] is None
    await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": b.model_name},
                              "override_settings_restore_afterwards": False})
    assert (await options_of(http, sim))["sd_model_checkpoint"] == b.model_name, \
        "the option holds the very string the client sent"
    assert all(m["hash"] for m in await get(http, f"{sim.url}/sdapi/v1/sd-models"))
    status, _ = await post_options(http, sim, {"sd_model_checkpoint": a.name})
    assert status == 200 and (await options_of(http, sim))["sd_model_checkpoint"] == a.name
    status, body = await post_options(http, sim, {"sd_model_checkpoint": "no-such-model"})
    assert status == 500 and body["error"] == "RuntimeError" and "no-such-model" in body["message"]


async def test_forge_silent_substitutions(start: Start, http) -> None:
    sim = await start(FORGE)
    base = {"prompt": "a house", "seed": 11, "sampler_name": "Euler"}
    plain = await txt2img(http, sim, base)
    unknown_lora = await txt2img(http, sim, {**base, "prompt": "a house <lora:no-such:0.8>"})
    known_lora = await txt2img(http, sim, {**base, "prompt": "a house <lora:tiny-lora:0.8>"})
    assert unknown_lora["images"][0] != plain["images"][0], "the infotexts differ (the prompt)"
    assert pixels(unknown_lora["images"][0]) == pixels(plain["images"][0]), \
        "an unknown LoRA is stripped: the pixels are those of no LoRA at all"
    assert "Lora hashes" not in fields_of(infotext_of(unknown_lora))
    assert "Lora hashes" not in info_of(unknown_lora)["extra_generation_params"]
    assert pixels(known_lora["images"][0]) != pixels(plain["images"][0])
    assert fields_of(infotext_of(known_lora))["Lora hashes"].startswith('"tiny-lora: ')
    for asked in ("No Such Sampler", "k_euler_a"):  # an alias /samplers lists is no name here
        info = info_of(await txt2img(http, sim, {**base, "sampler_name": asked}))
        fields = fields_of(info["infotexts"][0])
        assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras"), asked
        assert info["sampler_name"] == "DPM++ 2M"
        assert info["extra_generation_params"]["Schedule type"] == "Karras"
    aliases = {s["name"]: s["aliases"] for s in await get(http, f"{sim.url}/sdapi/v1/samplers")}
    assert "k_euler_a" in aliases["Euler a"]
    fields = fields_of(infotext_of(await txt2img(http, sim, {**base, "scheduler": "Nope"})))
    assert fields["Schedule type"] == "Automatic"
    fields = fields_of(infotext_of(await txt2img(http, sim, {**base, "scheduler": "karras"})))
    assert fields["Schedule type"] == "Karras"
    fields = fields_of(infotext_of(await txt2img(http, sim, {"sampler_name": "DPM++ 2M Karras"})))
    assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras")
    loads = sim.stats.checkpoint_loads
    body = await txt2img(http, sim, {**base, "override_settings": {
        "sd_model_checkpoint": "no-such-model"}, "override_settings_restore_afterwards": False})
    assert info_of(body)["sd_model_name"] == "tiny-a" and sim.stats.checkpoint_loads == loads
    assert (await options_of(http, sim))["sd_model_checkpoint"] == FORGE.models[0]
    assert fields_of(infotext_of(body))["CFG scale"] == "7.0", "numbers as Python prints them"
    assert info_of(body)["version"].startswith("f2.")


async def test_unsaved_override_settings_leak(start: Start, http) -> None:
    sim = await start(FORGE, switch_cost_s=0.01)
    first = await txt2img(http, sim, {"override_settings": {"samples_format": "jpg",
                                                             "CLIP_stop_at_last_layers": 2}})
    assert base64.b64decode(first["images"][0]).startswith(b"\xff\xd8\xff"), \
        "a leaking override is still in force when the images are encoded"
    assert fields_of(infotext_of(first))["Clip skip"] == "2"
    options = await options_of(http, sim)
    assert (options["samples_format"], options["CLIP_stop_at_last_layers"]) == ("jpg", 2), \
        "restore is on, but the keys were not in the saved config: they stay"
    later = await txt2img(http, sim, {})
    assert base64.b64decode(later["images"][0]).startswith(b"\xff\xd8\xff")
    assert fields_of(infotext_of(later))["Clip skip"] == "2"
    for key, value in (("samples_format", "png"), ("CLIP_stop_at_last_layers", 1)):
        assert (await post_options(http, sim, {key: value}))[0] == 200
    again = await txt2img(http, sim, {"override_settings": {"samples_format": "jpg",
                                                             "CLIP_stop_at_last_layers": 2}})
    assert fields_of(infotext_of(again))["Clip skip"] == "2"
    assert base64.b64decode(again["images"][0]).startswith(b"\x89PNG"), \
        "a saved key is restored, before the images are encoded"
    after = await txt2img(http, sim, {})
    assert "Clip skip" not in fields_of(infotext_of(after))
    assert (await options_of(http, sim))["samples_format"] == "png"
    await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": "tiny-b"}})
    assert (await options_of(http, sim))["sd_model_checkpoint"] == FORGE.models[0], \
        "sd_model_checkpoint is always saved, so it is restored"
    assert info_of(await txt2img(http, sim, {}))["sd_model_name"] == "tiny-a"


async def test_classic_profile_restores_every_override(start: Start, http) -> None:
    sim = await start()
    await txt2img(http, sim, {"override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert "Clip skip" not in fields_of(infotext_of(await txt2img(http, sim, {})))


async def test_forge_routes_and_vae(start: Start, http) -> None:
    sim = await start(FORGE)
    assert await get(http, f"{sim.url}/sdapi/v1/sd-vae", status=404) == {"detail": "Not Found"}
    assert await get(http, f"{sim.url}/sdapi/v1/sd-modules") == [], "API-only Forge lists none"
    async with http.get(f"{sim.url}/sdapi/v1/cmd-flags") as resp:
        body = await resp.json()
        assert resp.status == 500 and body["error"] == "ResponseValidationError"
        assert isinstance(body["body"], dict) and "port" in body["message"]
    base = {"prompt": "vae", "seed": 13}
    plain = await txt2img(http, sim, base)
    for override in ({"sd_vae": "tiny-vae.safetensors"},
                     {"forge_additional_modules": ["tiny-vae.safetensors"]}):
        body = await txt2img(http, sim, {**base, "override_settings": override})
        assert infotext_of(body) == infotext_of(plain), f"{override} does nothing here"
        assert pixels(body["images"][0]) == pixels(plain["images"][0])
    assert (await options_of(http, sim))["forge_additional_modules"] == []
    ui = await start(FORGE, forge_ui=True)
    modules = await get(http, f"{ui.url}/sdapi/v1/sd-modules")
    assert [m["model_name"] for m in modules] == ["tiny-vae.safetensors"]
    with_vae = await txt2img(http, ui, {**base, "override_settings": {
        "forge_additional_modules": ["tiny-vae.safetensors"]}})
    text = infotext_of(with_vae)
    assert text.endswith(", Module 1: tiny-vae") and "Version: f2." in text
    assert pixels(with_vae["images"][0]) != pixels(plain["images"][0])
    assert infotext_of(await txt2img(http, ui, base)).endswith("Module 1: tiny-vae"), "it leaks"
    bad = await txt2img(http, ui, {**base, "override_settings": {
        "forge_additional_modules": ["no/such/vae.safetensors"]}})
    assert "Module 1" not in infotext_of(bad), "an unknown module resets the list to none"
    await post_options(http, ui, {"forge_additional_modules": ["tiny-vae.safetensors"]})
    assert (await options_of(http, ui))["forge_additional_modules"] == [modules[0]["filename"]]


async def test_forge_error_shapes(start: Start, http) -> None:
    sim = await start(FORGE)
    body = await txt2img(http, sim, {"steps": "many"}, status=422)
    (error,) = body["detail"]
    assert error["loc"] == ["body", "steps"] and error["input"] == "many"
    assert error["msg"].startswith("Input should be a valid integer") and error["url"]
    async with http.post(f"{sim.url}/sdapi/v1/txt2img", data=b"{not json") as resp:
        detail = (await resp.json())["detail"][0]
        assert resp.status == 422 and detail["type"] == "json_invalid"
        assert detail["loc"] == ["body", 1]
    body = await txt2img(http, sim, {"batch_size": 0}, status=500)
    assert set(body) == {"error", "detail", "body", "message"} and body["error"] == "IndexError"
    await txt2img(http, sim, {"width": "64", "no_such_field": 1})  # lax ints, unknown fields
    assert await get(http, f"{sim.url}/sdapi/v1/no-such-route", status=404) == \
        {"detail": "Not Found"}
    async with http.post(f"{sim.url}/sdapi/v1/img2img", json=SMALL) as resp:
        assert resp.status == 404 and await resp.json() == {"detail": "Init image not found"}
    parameters = (await txt2img(http, sim, {"seed": -1}))["parameters"]
    assert parameters["seed"] == -1 and "distilled_cfg_scale" in parameters


async def test_first_request_pays_the_model_load(start: Start, http) -> None:
    forge = await start(FORGE, switch_cost_s=0.2, hash_cost_s=0.1)
    started = time.monotonic()
    await txt2img(http, forge, {})
    first_s = time.monotonic() - started
    started = time.monotonic()
    await txt2img(http, forge, {})
    again_s = time.monotonic() - started
    assert first_s >= 0.3 > again_s and forge.stats.checkpoint_loads == 1
    a1111 = await start(replace(FORGE, profile="a1111"), switch_cost_s=0.2)
    started = time.monotonic()
    await txt2img(http, a1111, {})
    assert time.monotonic() - started < 0.2, "A1111 loads its model at start"


async def test_a1111_profile(start: Start, http) -> None:
    sim = await start(replace(FORGE, profile="a1111"))
    a, b = (make_checkpoint(name) for name in FORGE.models)
    models = await get(http, f"{sim.url}/sdapi/v1/sd-models")
    assert models[0]["title"] == a.title and models[1]["hash"] is None, "loaded at start"
    assert (await options_of(http, sim))["sd_model_checkpoint"] == a.title
    await txt2img(http, sim, {"override_settings": {"sd_model_checkpoint": "tiny-b"},
                              "override_settings_restore_afterwards": False})
    assert (await options_of(http, sim))["sd_model_checkpoint"] == b.title, \
        "A1111 writes the title of what it loaded"
    assert await get(http, f"{sim.url}/sdapi/v1/sd-vae")
    await get(http, f"{sim.url}/sdapi/v1/sd-modules", status=404)
    fields = fields_of(infotext_of(await txt2img(http, sim, {
        "sampler_name": "k_euler_a", "override_settings": {"sd_vae": "tiny-vae.safetensors"}})))
    assert fields["Sampler"] == "DPM++ 2M" and fields["VAE"] == "tiny-vae.safetensors"
    body = await txt2img(http, sim, {"steps": "many"}, status=422)
    assert body["detail"][0]["msg"] == "value is not a valid integer"
    assert "errors" in await txt2img(http, sim, {"batch_size": 0}, status=500)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def progress_of(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, Any]:
    return await get(http, f"{sim.url}/sdapi/v1/progress")


@pytest.mark.parametrize("route", ["interrupt", "skip"])
async def test_forge_interrupt_and_skip_answer_a_half_done_image(start: Start, http,
                                                                 route: str) -> None:
    sim = await start(FORGE, latency_s=0.4)
    request = {"prompt": "stop me", "seed": 303, "steps": 20}
    task = asyncio.create_task(txt2img(http, sim, request))

    async def sampling() -> bool:
        return (await progress_of(http, sim))["state"]["sampling_step"] >= 2

    await wait_for(sampling)
    async with http.post(f"{sim.url}/sdapi/v1/{route}") as resp:
        assert resp.status == 200
        assert await resp.json() == ({} if route == "interrupt" else None)
    body = await task
    assert len(body["images"]) == 1, "200 with one image, as if nothing happened"
    assert fields_of(infotext_of(body))["Steps"] == "20", "it still claims every step"
    complete = await txt2img(http, sim, request)
    assert pixels(complete["images"][0]) != pixels(body["images"][0]), "but it is half done"
    assert infotext_of(complete) == infotext_of(body)


async def test_forge_skip_goes_on_with_the_next_batch(start: Start, http) -> None:
    sim = await start(FORGE, latency_s=0.3)
    task = asyncio.create_task(txt2img(http, sim, {"seed": 1, "n_iter": 2}))

    async def sampling() -> bool:
        return (await progress_of(http, sim))["state"]["sampling_step"] >= 1

    await wait_for(sampling)
    async with http.post(f"{sim.url}/sdapi/v1/skip"):
        pass
    body = await task
    assert len(body["images"]) == 2 and info_of(body)["all_seeds"] == [1, 2]
    complete = await txt2img(http, sim, {"seed": 1, "n_iter": 2})
    assert pixels(body["images"][0]) != pixels(complete["images"][0])
    assert pixels(body["images"][1]) == pixels(complete["images"][1])


async def test_forge_progress_early_nonsense_and_leftovers(start: Start, http) -> None:
    sim = await start(FORGE, latency_s=0.4, prepare_s=0.3)
    idle = await progress_of(http, sim)
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    assert set(idle) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    await txt2img(http, sim, {"steps": 4})
    task = asyncio.create_task(txt2img(http, sim, {"steps": 8}))
    await wait_for(lambda: _busy(http, sim))
    early = await progress_of(http, sim)
    assert early["progress"] == pytest.approx(0.01) and early["state"]["sampling_step"] == 0
    assert early["state"]["sampling_steps"] == 4, "the previous job's step count, at first"
    await asyncio.sleep(0.1)
    later = await progress_of(http, sim)
    assert later["eta_relative"] > early["eta_relative"], "elapsed/progress: it only climbs"

    async def stepping() -> bool:
        return (await progress_of(http, sim))["state"]["sampling_step"] >= 2

    await wait_for(stepping)
    mid = await progress_of(http, sim)
    assert mid["state"]["sampling_steps"] == 8 and 0.01 < mid["progress"] < 1
    await task
    after = await progress_of(http, sim)
    assert after["progress"] == 0 and after["state"]["job_count"] == 0
    assert (after["state"]["job_no"], after["state"]["sampling_steps"]) == (1, 8)


async def _busy(http: aiohttp.ClientSession, sim: SimServer) -> bool:
    return (await progress_of(http, sim))["state"]["job_count"] > 0


async def test_forge_gets_do_not_wait_but_refresh_does(start: Start, http) -> None:
    sim = await start(FORGE, latency_s=0.5)
    task = asyncio.create_task(txt2img(http, sim, {}))
    await wait_for(lambda: _busy(http, sim))
    started = time.monotonic()
    for route in ("sd-models", "options", "samplers", "loras", "progress", "memory"):
        await get(http, f"{sim.url}/sdapi/v1/{route}")
    assert time.monotonic() - started < 0.3
    async with http.post(f"{sim.url}/sdapi/v1/refresh-checkpoints") as resp:
        assert resp.status == 200
    assert task.done(), "refresh-checkpoints takes the queue lock"
    await task


SDNEXT = replace(FORGE, profile="sdnext")


async def test_sdnext_rate_budget(start: Start, http) -> None:
    sim = await start(SDNEXT, rate_limit_per_min=12, rate_window_s=0.6)
    for _ in range(2):  # txt2img costs 5 of the 12
        await txt2img(http, sim, {})
    async with http.post(f"{sim.url}/sdapi/v1/txt2img", json=SMALL) as resp:
        body = await resp.json()
        assert resp.status == 429 and body["code"] == 429 and "rate limit" in body["detail"]
        assert resp.headers["Retry-After"] == "1", "whole seconds until the budget frees"
    assert sim.stats.generations == 3, "SD.Next checks after the handler: the work was done"
    for _ in range(12):  # every route has a budget of its own
        await get(http, f"{sim.url}/sdapi/v1/options")
    await get(http, f"{sim.url}/sdapi/v1/options", status=429)
    await asyncio.sleep(0.65)
    await txt2img(http, sim, {})
    quiet = await start(SDNEXT, rate_limit_per_min=5, rate_retry_after=False)
    await txt2img(http, quiet, {})
    async with http.post(f"{quiet.url}/sdapi/v1/txt2img", json=SMALL) as resp:
        assert resp.status == 429 and "Retry-After" not in resp.headers
    off = await start(SDNEXT, rate_limit_per_min=0)
    for _ in range(3):
        await txt2img(http, off, {})


async def test_sdnext_profile_routes(start: Start, http) -> None:
    sim = await start(SDNEXT)
    version = await get(http, f"{sim.url}/sdapi/v1/version")
    assert version["app"] == "sd.next"
    await get(http, f"{sim.url}/sdapi/v1/schedulers", status=404)
    body = await txt2img(http, sim, {"sampler_name": "No Such Sampler"}, status=404)
    assert body["detail"] == "Sampler not found" and body["code"] == 404
    async with http.post(f"{sim.url}/sdapi/v1/interrupt") as resp:
        assert resp.status == 204
    forge = await start(FORGE)
    await get(http, f"{forge.url}/sdapi/v1/version", status=404)


def test_cli_profile_flags() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--profile", "forge", "--forge-ui", "--hash-cache", "a.safetensors", "--models",
        "a.safetensors,b.safetensors", "--hash-cost-s", "2", "--prepare-s", "1",
        "--saved-options", "sd_model_checkpoint,samples_format"]))
    assert (config.profile, config.forge_ui, config.hash_cache) == ("forge", True,
                                                                    ("a.safetensors",))
    assert config.webui_version.startswith("f2.") and config.kind == "forge"
    assert config.saved_options == ("sd_model_checkpoint", "samples_format")
    sdnext = config_from_args(parser.parse_args(["--profile", "sdnext", "--rate-limit-per-min",
                                                 "10", "--no-retry-after"]))
    assert (sdnext.rate_limit_per_min, sdnext.rate_retry_after) == (10, False)
    with pytest.raises(UsageError, match="classic profile only"):
        config_from_args(parser.parse_args(["--profile", "forge", "--flavor", "sdnext"]))
