"""Conformance: the simulator's ``forge`` profile against a recording of a real Forge server.

``tests/recordings/forge/`` holds what a real, unmodified Forge f2.0.1 (API-only, CPU, random
weights) answered to about 80 probes (copied from ``shared/real-forge/``, base64 images cut
short, ``derived.images[].pixels_sha256`` added). The main test replays every probe that is
a plain request, in the order they were recorded, against ONE simulated backend set up like
that server, so state carries over as it did there (loaded models, hashes, leaked settings).
For each it compares the route's status, the set of keys and their JSON types (recursively,
the ``info`` string included), the infotexts field by field (names, order, values: sampler,
``Schedule type``, ``Lora hashes`` names, ``Clip skip``, ``Version``, ``Module 1``...), the
``parameters`` echo and ``info`` values, the option values the probe noted before/after, and
which images had identical pixels. Probes whose point is timing (interrupt, skip, progress,
concurrency) are replayed with a small latency in tests of their own.

Numbers compare as one JSON type (Forge writes ``7.0`` and ``0`` where the simulator may
write ``7`` and ``0.0``; no JSON client can tell reliably); the infotext's wording of numbers
(``CFG scale: 7.0``) is compared as text. A difference names the probe and the JSON path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from pipeline.sim import SimConfig, SimServer, start_sim
from pipeline.sim.config import MODELS_DIR

RECORDINGS = Path(__file__).parent / "recordings" / "forge"
RECORDED_MODELS_DIR = "/srv/webui/forge/models"


def load(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def recorded_config() -> SimConfig:
    """A simulated Forge set up as the recorded one: its checkpoints, LoRA and VAE, its 25
    samplers and 16 schedulers, and tiny-a's hash cached from an earlier run."""
    samplers = tuple(s["name"] for s in load("samplers")["response"])
    schedulers = tuple(s["label"] for s in load("schedulers")["response"])
    return SimConfig(profile="forge", models=("tiny-a.safetensors", "tiny-b.safetensors"),
                     loras=("tiny-lora",), vaes=("tiny-vae.safetensors",), embeddings=(),
                     samplers=samplers, schedulers=schedulers,
                     hash_cache=("tiny-a.safetensors",))


# --- shapes: keys and JSON types, recursively ----------------------------------------------

def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return {str: "str", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def shape(value: Any) -> Any:
    """A hashable description of ``value``'s structure: keys and types, not values."""
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, shape(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(sorted({shape(v) for v in value}, key=repr)))
    return kind(value)


def differences(recorded: Any, simulated: Any, path: str = "$") -> list[str]:
    """Where the structures differ: missing or extra keys, other types, list elements of a
    shape the other side never has. A JSON string holding an object (``info``) is opened."""
    if isinstance(recorded, str) and isinstance(simulated, str) and path.endswith(".info"):
        try:
            recorded, simulated = json.loads(recorded), json.loads(simulated)
        except ValueError:
            pass
    if kind(recorded) != kind(simulated):
        return [f"{path}: {kind(recorded)} recorded, {kind(simulated)} simulated"]
    if isinstance(recorded, dict):
        out = []
        for key in recorded.keys() - simulated.keys():
            out.append(f"{path}.{key}: missing")
        for key in simulated.keys() - recorded.keys():
            out.append(f"{path}.{key}: not in the recording")
        for key in recorded.keys() & simulated.keys():
            out += differences(recorded[key], simulated[key], f"{path}.{key}")
        return out
    if isinstance(recorded, list):
        if bool(recorded) != bool(simulated):
            return [f"{path}: {len(recorded)} items recorded, {len(simulated)} simulated"]
        if {shape(v) for v in recorded} != {shape(v) for v in simulated}:
            if len(recorded) == len(simulated):
                out = []
                for i, (r, s) in enumerate(zip(recorded, simulated, strict=True)):
                    out += differences(r, s, f"{path}[{i}]")
                return out or [f"{path}: items of other shapes"]
            return differences(recorded[0], simulated[0], f"{path}[0]") or [
                f"{path}: items of other shapes"]
    return []


# --- infotexts ------------------------------------------------------------------------------

PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's own
TAG = re.compile(r"<\w+:[^>]+>")


def parse_infotext(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(prompt lines, [(field, value)...]) as A1111's paste parser reads an infotext."""
    head, _, last = text.rpartition("\n")
    return head, [(m.group(1).strip(), m.group(2).strip()) for m in PARAM.finditer(last)]


def infotext_differences(recorded: str, simulated: str, fixed_seed: bool, where: str) -> list[str]:
    rec_head, rec = parse_infotext(recorded)
    sim_head, sim = parse_infotext(simulated)
    out = []
    if rec_head != sim_head:
        out.append(f"{where}: prompt lines {rec_head!r} recorded, {sim_head!r} simulated")
    if [k for k, _ in rec] != [k for k, _ in sim]:
        out.append(f"{where}: fields {[k for k, _ in rec]} recorded, {[k for k, _ in sim]} "
                   "simulated")
        return out
    for (key, r), (_, s) in zip(rec, sim, strict=True):
        if key == "Model hash":
            ok = bool(re.fullmatch(r"[0-9a-f]{10}", r)) and bool(re.fullmatch(r"[0-9a-f]{10}", s))
        elif key == "Lora hashes":
            ok = _lora_names(r) == _lora_names(s)
        elif key == "Seed" and not fixed_seed:
            ok = r.isdigit() and s.isdigit()
        else:
            ok = r == s
        if not ok:
            out.append(f"{where}: {key}: {r!r} recorded, {s!r} simulated")
    return out


def _lora_names(value: str) -> list[str]:
    return [part.split(":", 1)[0].strip() for part in value.strip('"').split(", ")]


# --- replaying -------------------------------------------------------------------------------

IMPLIED_PATHS = {"interrupt-idle": "/sdapi/v1/interrupt", "refresh-vae": "/sdapi/v1/refresh-vae",
                 "sd-modules-with-vae": "/sdapi/v1/sd-modules", "sd-modules": "/sdapi/v1/sd-modules"}
# the option a probe's derived option_before/option_after are about
OPTION_OF = {"post-options-forge-modules-vae": "forge_additional_modules",
             "post-options-forge-modules-none": "forge_additional_modules"}
# probes replayed in tests of their own: timing, concurrency, or another server
DYNAMIC = {"concurrent-two", "gets-during-generation", "progress-during", "progress-raw-mid",
           "sd-models-fresh-install"}
# probes without a timestamp, and the probe they followed
UNTIMED_AFTER = {"options-after-unknown-ckpt": "override-ckpt-unknown",
                 "samples-format-leak-reset": "txt2img-save_images-true-batch2"}
INFO_VARYING = {"subseed", "all_subseeds", "job_timestamp", "sd_model_hash", "infotexts",
                "extra_generation_params"}


def init_image() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def localise(value: Any) -> Any:
    """Request values as the simulated server spells them (its models folder, real images)."""
    if isinstance(value, str):
        if value.startswith("<") and "PNG, base64" in value:
            return init_image()
        if value == "<VAE path>":
            return f"{MODELS_DIR}/VAE/tiny-vae.safetensors"
        return value.replace(RECORDED_MODELS_DIR, MODELS_DIR)
    if isinstance(value, list):
        return [localise(v) for v in value]
    if isinstance(value, dict):
        return {k: localise(v) for k, v in value.items()}
    return value


def route_of(name: str, probe: dict[str, Any]) -> tuple[str, str, Any, bytes | None]:
    """(method, path, JSON body, raw body) of a probe's request."""
    request = probe["request"]
    if isinstance(request, str):
        return "POST", "/sdapi/v1/txt2img", None, request.encode()
    if "method" in request:
        path = request.get("path") or IMPLIED_PATHS[name]
        return request["method"], path, localise(request.get("body")), None
    endpoint = "img2img" if name.startswith("img2img") else "txt2img"
    return "POST", f"/sdapi/v1/{endpoint}", localise(request), None


@dataclass
class Answer:
    status: int
    body: Any


@dataclass
class Replay:
    """One simulated backend and what replaying has found so far."""

    sim: SimServer
    http: aiohttp.ClientSession
    problems: list[str] = field(default_factory=list)
    pixels: dict[str, tuple[tuple[Any, ...], str, str, str]] = field(default_factory=dict)

    async def send(self, method: str, path: str, body: Any = None,
                   raw: bytes | None = None) -> Answer:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.sim.url + path, **kwargs) as resp:
            text = await resp.read()
            return Answer(resp.status, json.loads(text) if text else None)

    async def option(self, key: str) -> Any:
        return (await self.send("GET", "/sdapi/v1/options")).body.get(key)

    async def probe(self, name: str, probe: dict[str, Any]) -> None:
        method, path, body, raw = route_of(name, probe)
        derived = probe.get("derived") or {}
        key = OPTION_OF.get(name, "sd_model_checkpoint")
        if "option_before" in derived:
            self.check(name, "option before", derived["option_before"], await self.option(key))
        answer = await self.send(method, path, body, raw)
        self.compare(name, probe, answer)
        if "option_after" in derived:
            self.check(name, "option after", derived["option_after"], await self.option(key))

    def check(self, name: str, what: str, recorded: Any, simulated: Any) -> None:
        recorded = localise(recorded)
        if recorded != simulated:
            self.problems.append(f"{name}: {what}: {recorded!r} recorded, {simulated!r} "
                                 "simulated")

    def compare(self, name: str, probe: dict[str, Any], answer: Answer) -> None:
        recorded = probe["response"]
        self.check(name, "status", probe["http_status"], answer.status)
        simulated = answer.body
        if name in PARTIAL and isinstance(simulated, dict):  # the recorder kept a few keys
            simulated = {k: v for k, v in simulated.items() if k in recorded}
        self.problems += [f"{name}: {d}" for d in differences(recorded, simulated)]
        if answer.status != probe["http_status"]:
            return
        if isinstance(recorded, dict) and "images" in recorded and "info" in recorded:
            self.compare_generation(name, probe, answer.body)
        elif name in EXACT:
            self.check(name, "body", recorded, answer.body)
        elif isinstance(recorded, dict) and "error" in recorded:
            self.check(name, "error", recorded["error"], answer.body["error"])
            if recorded["error"] != "ResponseValidationError":
                self.check(name, "message", recorded["message"], answer.body["message"])
        elif isinstance(recorded, dict) and isinstance(recorded.get("detail"), list):
            self.check(name, "422 errors", [(d["type"], d["loc"]) for d in recorded["detail"]],
                       [(d["type"], d["loc"]) for d in answer.body["detail"]])
        elif name.startswith("options"):
            for key in ("sd_model_checkpoint", "samples_format", "forge_additional_modules",
                        "CLIP_stop_at_last_layers", "sd_checkpoint_hash"):
                if key in recorded:
                    self.check(name, key, recorded[key], answer.body.get(key))

    def compare_generation(self, name: str, probe: dict[str, Any], body: dict[str, Any]) -> None:
        recorded = probe["response"]
        request = probe["request"]
        rec_info, sim_info = json.loads(recorded["info"]), json.loads(body["info"])
        fixed_seed = request.get("seed") not in (None, -1)
        self.check(name, "image count", len(recorded["images"]), len(body["images"]))
        varying = INFO_VARYING | (set() if fixed_seed else {"seed", "all_seeds"})
        for key in rec_info.keys() - varying:
            self.check(name, f"info.{key}", rec_info[key], sim_info.get(key))
        extra = {k: v for k, v in sim_info["extra_generation_params"].items()
                 if k != "Lora hashes"}
        self.check(name, "extra_generation_params",
                   {k: v for k, v in rec_info["extra_generation_params"].items()
                    if k != "Lora hashes"}, extra)
        self.check(name, "Lora hashes present",
                   "Lora hashes" in rec_info["extra_generation_params"],
                   "Lora hashes" in sim_info["extra_generation_params"])
        self.check(name, "infotext count", len(rec_info["infotexts"]), len(sim_info["infotexts"]))
        for i, (r, s) in enumerate(zip(rec_info["infotexts"], sim_info["infotexts"],
                                       strict=False)):
            self.problems += infotext_differences(r, s, fixed_seed, f"{name}: infotexts[{i}]")
        parameters = {k: v for k, v in body["parameters"].items() if k != "init_images"}
        self.check(name, "parameters",
                   {k: localise(v) for k, v in recorded["parameters"].items()
                    if k != "init_images"}, parameters)
        images = (probe.get("derived") or {}).get("images") or []
        if fixed_seed and body["images"] and images and "pixels_sha256" in images[0]:
            group = (request.get("seed"), request.get("width"), request.get("height"),
                     " ".join(TAG.sub("", request.get("prompt", "")).split()))
            fmt, digest = sim_pixels(body["images"][0])
            self.pixels[name] = (group, images[0]["format"], images[0]["pixels_sha256"],
                                 f"{fmt}:{digest}")

    def pixel_problems(self) -> list[str]:
        """Images the real server made identical (or not) must be so in the simulator too
        (same seed, size and prompt; compared only where both made the same format)."""
        out = []
        names = sorted(self.pixels)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ga, fa, ra, sa = self.pixels[a]
                gb, fb, rb, sb = self.pixels[b]
                if ga != gb or fa != fb or sa.split(":")[0] != sb.split(":")[0]:
                    continue
                if (ra == rb) != (sa == sb):
                    same = "identical" if ra == rb else "different"
                    out.append(f"{a} and {b}: the real images are {same}, the simulated not")
        return out


PARTIAL = {"options-after-unknown-ckpt"}
EXACT = {"progress-idle", "embeddings", "sd-modules", "sd-modules-with-vae", "sd-vae",
         "samplers", "schedulers", "scripts", "upscalers", "interrupt-idle", "refresh-vae",
         "post-options-ckpt-tiny-a", "post-options-forge-modules-vae",
         "post-options-forge-modules-none", "clip-skip-leak-reset", "img2img-no-init",
         "not-json"}


def sim_pixels(b64: str) -> tuple[str, str]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return str(image.format), hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def timeline(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    probes = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    timed = sorted((p.get("started_at") or 0.0, name) for name, p in probes.items()
                   if p.get("started_at"))
    order = [name for _, name in timed]
    for name, after in UNTIMED_AFTER.items():
        if name in probes and after in order:
            order.insert(order.index(after) + 1, name)
    return [(name, probes[name]) for name in order if name not in DYNAMIC]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def replay_all(replay: Replay, probes: list[tuple[str, dict[str, Any]]]) -> None:
    config = replay.sim.config
    for name, probe in probes:
        if name == "samples-format-leak-reset":
            replay.check(name, "samples_format before", probe["samples_format_before_post"],
                         await replay.option("samples_format"))
            answer = await replay.send("POST", "/sdapi/v1/options", {"samples_format": "png"})
            replay.check(name, "post", (200, None), (answer.status, answer.body))
            replay.check(name, "samples_format after", probe["samples_format_after_post"],
                         await replay.option("samples_format"))
        elif name == "clip-skip-leak-reset":
            key = "CLIP_stop_at_last_layers"
            replay.check(name, "option before", probe["derived"]["option_before_post"],
                         await replay.option(key))
            await replay.probe(name, probe)
            replay.check(name, "option after", probe["derived"]["option_after_post"],
                         await replay.option(key))
        elif name in ("interrupt-during", "skip-during"):
            replay.sim.config = replace(config, latency_s=0.4)
            await stop_midway(replay, name, probe)
            replay.sim.config = config
        else:
            await replay.probe(name, probe)


async def stop_midway(replay: Replay, name: str, probe: dict[str, Any]) -> None:
    """Send the probe's txt2img, and its interrupt or skip once sampling step 2 is reached."""
    route = "interrupt" if name.startswith("interrupt") else "skip"
    _, path, body, _ = route_of(name, probe)
    task = asyncio.create_task(replay.send("POST", path, body))
    deadline = time.monotonic() + 10
    while (await replay.send("GET", "/sdapi/v1/progress")).body["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline, f"{name}: sampling never reached step 2"
        await asyncio.sleep(0.01)
    stopped = await replay.send("POST", f"/sdapi/v1/{route}")
    recorded = probe["derived"][f"{route}_response"]
    replay.check(name, f"{route} answer", (recorded["http_status"], recorded["response"]),
                 (stopped.status, stopped.body))
    replay.compare(name, probe, await task)


async def test_replay_the_recorded_forge(http: aiohttp.ClientSession) -> None:
    probes = timeline(RECORDINGS)
    assert len(probes) > 60, "the recordings are missing"
    sim = await start_sim(recorded_config())
    try:
        replay = Replay(sim, http)
        await replay_all(replay, probes)
    finally:
        await sim.close()
    problems = replay.problems + replay.pixel_problems()
    assert not problems, "the simulator differs from the real Forge:\n" + "\n".join(problems)
    assert len(replay.pixels) > 30, "pixel relations were compared"


async def test_replay_the_recorded_forge_with_its_ui(http: aiohttp.ClientSession) -> None:
    """The ``ui-mode/`` probes: Forge with its gradio UI built lists the VAE in sd-modules,
    and ``forge_additional_modules`` then works (and leaks)."""
    probes = timeline(RECORDINGS / "ui-mode")
    assert len(probes) >= 8
    sim = await start_sim(replace(recorded_config(), forge_ui=True))
    try:
        replay = Replay(sim, http)
        await replay_all(replay, probes)
    finally:
        await sim.close()
    problems = replay.problems + replay.pixel_problems()
    assert not problems, "the simulator differs from the real Forge UI:\n" + "\n".join(problems)


async def test_fresh_install_lists_no_hashes(http: aiohttp.ClientSession) -> None:
    probe = load("sd-models-fresh-install")
    sim = await start_sim(replace(recorded_config(), hash_cache=()))
    try:
        replay = Replay(sim, http)
        await replay.probe("sd-models-fresh-install", probe)
        replay.check("sd-models-fresh-install", "titles",
                     [m["title"] for m in probe["response"]],
                     [m["title"] for m in (await replay.send("GET", "/sdapi/v1/sd-models")).body])
    finally:
        await sim.close()
    assert not replay.problems, "\n".join(replay.problems)


async def test_progress_like_the_recording(http: aiohttp.ClientSession) -> None:
    """progress-during: 0.01 and a climbing ETA before the first step, the previous job's
    step count at first, then 0.01 + step/steps, and leftovers once idle."""
    probe = load("progress-during")
    polls = [p["response"] for p in probe["response"]]
    sim = await start_sim(replace(recorded_config(), latency_s=0.8, prepare_s=0.3))
    try:
        replay = Replay(sim, http)
        await replay.send("POST", "/sdapi/v1/txt2img", {**probe["request"]["txt2img"], "steps": 4})
        task = asyncio.create_task(replay.send("POST", "/sdapi/v1/txt2img",
                                               probe["request"]["txt2img"]))
        seen = []
        while not task.done():
            seen.append((await replay.send("GET", "/sdapi/v1/progress")).body)
            await asyncio.sleep(0.05)
        await task
        seen.append((await replay.send("GET", "/sdapi/v1/progress")).body)
    finally:
        await sim.close()
    for poll in seen:
        assert not differences(polls[0], poll), differences(polls[0], poll)
    busy_recorded = [p for p in polls if p["state"]["job_count"]]
    busy = [p for p in seen if p["state"]["job_count"]]
    for polls_of in (busy_recorded, busy):
        assert polls_of[0]["progress"] == pytest.approx(0.01)
        assert polls_of[0]["state"]["sampling_steps"] == 4, "left over from the job before"
        assert polls_of[-1]["state"]["sampling_steps"] == 8
        assert max(p["state"]["sampling_step"] for p in polls_of) < 8, "never reports the end"
        early = [p["eta_relative"] for p in polls_of if p["state"]["sampling_step"] == 0]
        assert early == sorted(early) and early[-1] > early[0], "the ETA climbs before step 1"
        stepping = [p for p in polls_of if p["state"]["sampling_step"] > 0]
        assert stepping and all(p["progress"] == pytest.approx(
            0.01 + p["state"]["sampling_step"] / 8) for p in stepping)
    assert seen[-1]["state"] == {**polls[-1]["state"], "job_timestamp":
                                 seen[-1]["state"]["job_timestamp"]}


async def test_two_at_once_queue_and_gets_do_not_wait(http: aiohttp.ClientSession) -> None:
    """concurrent-two: both 200, served one after the other; gets-during-generation: GETs
    answer at once while a generation runs, refresh-checkpoints waits for it."""
    two = load("concurrent-two")
    sim = await start_sim(replace(recorded_config(), latency_s=0.3))
    try:
        replay = Replay(sim, http)
        started = time.monotonic()
        a, b = await asyncio.gather(*(replay.send("POST", "/sdapi/v1/txt2img", two["request"][k])
                                      for k in ("A", "B")))
        elapsed_s = time.monotonic() - started
        assert (a.status, b.status) == (two["response"]["A"]["http_status"],
                                        two["response"]["B"]["http_status"])
        assert elapsed_s >= 0.6, "queued, not run side by side"
        stamps = sorted(json.loads(x.body["info"])["job_timestamp"] for x in (a, b))
        assert stamps == sorted(stamps)
        during = load("gets-during-generation")
        task = asyncio.create_task(replay.send("POST", "/sdapi/v1/txt2img", during["request"]))
        while not (await replay.send("GET", "/sdapi/v1/progress")).body["state"]["job_count"]:
            await asyncio.sleep(0.01)
        for route, recorded in during["response"].items():
            method, _, path = route.rpartition(" ")
            started = time.monotonic()
            answer = await replay.send(method or "GET", path)
            assert answer.status == recorded["http_status"], route
            waited = time.monotonic() - started > 0.1
            assert waited == (recorded["elapsed_s"] > 1), route
        await task
    finally:
        await sim.close()
