"""Two more measured clients (run by ``benchmarks.clients``, each in a process of its own).

    floor    what any client must do per image, measured alone: base64-decode the image the
             server sent, sha256 it, write it to a temporary name, fsync, rename. The bytes are
             fetched from the farm first (one request per pooled picture, not measured).
    swarmui  SwarmUI's rule for giving work to backends, re-implemented from its
             ``BackendHandler`` (``src/Backends/BackendHandler.cs``) for comparison; nothing of
             its code is used. The whole batch waits as requests; whenever a backend is free,
             each request in arrival order takes a free backend that has its model loaded. A
             request that finds none adds "pressure" for its model (how many wait, since when);
             while a backend is free, the model of highest pressure (count x 10 + seconds the
             oldest has waited) is loaded on one free backend that does not have it, an unused
             one first, else the one released longest ago, once the pressure is 1.5 s old (or
             at once when only one backend is free). A backend that loads is reserved until it
             has. ``MaxUsages`` (requests at once per backend) is the job's concurrency. Times
             in the rule (the 1.5 s, the 10 s a request is worth) are scaled by ``time_scale``
             like the simulated costs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESSURE_AGE_S = 1.5  # SwarmUI: a model load waits until its pressure is this old ...
REQUEST_WORTH_S = 10.0  # ... and each waiting request is worth this many seconds of waiting


def _cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the floor -----------------------------------------------------------------------------------

async def _fetch_pool(spec: dict[str, Any], payload: dict[str, Any], n: int) -> list[str]:
    import aiohttp
    import orjson

    pool: list[str] = []
    async with aiohttp.ClientSession() as session:
        for k in range(n):
            url = spec["urls"][k % len(spec["urls"])]
            body = {**payload, "seed": int(payload.get("seed", 0)) + k}
            async with session.post(f"{url}/sdapi/v1/txt2img", data=orjson.dumps(body),
                                    headers={"Content-Type": "application/json"}) as resp:
                resp.raise_for_status()
                pool.append(orjson.loads(await resp.read())["images"][0])
    return pool


async def run_floor(spec: dict[str, Any]) -> dict[str, Any]:
    import pybase64

    from benchmarks.clients import _payloads

    payloads = _payloads(spec["job"])
    pool = await _fetch_pool(spec, payloads[0], spec.get("pool", 6))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    fsync = spec.get("fsync", True)
    image_bytes = 0
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for n in range(len(payloads)):
        data = pybase64.b64decode(pool[n % len(pool)], validate=True)
        hashlib.sha256(data).hexdigest()
        path = out / f"{n:06d}.png"
        tmp = out / f".tmp-{n:06d}.png"
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        image_bytes += len(data)
    t1, cpu1 = time.perf_counter(), _cpu_s()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "run_s": t1 - t0,
            "images": len(payloads), "written": len(payloads), "image_bytes": image_bytes}


# --- SwarmUI's rule ------------------------------------------------------------------------------

@dataclass
class _Backend:
    url: str
    max_usages: int
    model: str | None = None
    usages: int = 0
    reserved: bool = False  # loading a model
    last_release: float = 0.0
    loads: int = 0


@dataclass
class _Pressure:
    model: str
    first_at: float
    count: int = 0
    loading: bool = False
    bad: set[str] = field(default_factory=set)


@dataclass
class _Request:
    index: int
    payload: dict[str, Any]
    model: str | None
    pressure: _Pressure | None = None


def _model_of(payload: dict[str, Any]) -> str | None:
    value = (payload.get("override_settings") or {}).get("sd_model_checkpoint")
    return str(value) if value else None


def _matches(loaded: str | None, wanted: str | None) -> bool:
    """Does the loaded title (``name.safetensors [hash]``) name the wanted checkpoint?"""
    if loaded is None or wanted is None:
        return False
    stem = loaded.split(" [")[0].rsplit("/", 1)[-1]
    return stem == wanted or stem.rsplit(".", 1)[0] == wanted


async def run_swarmui(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp
    import orjson

    from benchmarks.clients import _payloads

    scale = float(spec.get("time_scale", 1.0))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    pending: deque[_Request] = deque(_Request(i, p, _model_of(p))
                                     for i, p in enumerate(_payloads(spec["job"])))
    backends = [_Backend(u, spec.get("concurrency", 1)) for u in spec["urls"]]
    pressures: dict[str, _Pressure] = {}
    changed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    counts = {"images": 0, "written": 0, "loads": 0}
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 600.0))

    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        for backend in backends:  # what each has loaded (SwarmUI knows its backends' models)
            async with session.get(f"{backend.url}/sdapi/v1/options") as resp:
                backend.model = (await resp.json()).get("sd_model_checkpoint")

        async def generate(backend: _Backend, request: _Request) -> None:
            try:
                async with session.post(f"{backend.url}/sdapi/v1/txt2img", headers=headers,
                                        data=orjson.dumps(request.payload)) as resp:
                    resp.raise_for_status()
                    body = orjson.loads(await resp.read())
                for i, b64 in enumerate(body["images"]):
                    (out / f"{request.index:06d}_{i}.png").write_bytes(base64.b64decode(b64))
                    counts["images"] += 1
                counts["written"] += 1
                if request.model is not None:
                    backend.model = request.model  # the payload's override loaded it, if needed
            finally:
                backend.usages -= 1
                backend.last_release = time.monotonic()
                if request.pressure is not None:
                    _release(request.pressure)
                changed.set()

        async def load(backend: _Backend, pressure: _Pressure) -> None:
            try:
                while backend.usages > 0:  # wait for the backend to be released from use
                    await asyncio.sleep(0.1 * scale)
                async with session.post(f"{backend.url}/sdapi/v1/options", headers=headers,
                                        data=orjson.dumps({"sd_model_checkpoint":
                                                           pressure.model})) as resp:
                    resp.raise_for_status()
                backend.model = pressure.model
                backend.loads += 1
                counts["loads"] += 1
            except aiohttp.ClientError:
                pressure.bad.add(backend.url)
            finally:
                backend.reserved = False
                pressure.loading = False
                changed.set()

        def _release(pressure: _Pressure) -> None:
            pressure.count -= 1
            if pressure.count <= 0:
                pressures.pop(pressure.model, None)

        def spawn(coro: Any) -> None:
            task = asyncio.get_running_loop().create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def free() -> list[_Backend]:
            return sorted((b for b in backends if not b.reserved and b.usages < b.max_usages),
                          key=lambda b: b.usages)

        def claim(backend: _Backend, request: _Request) -> None:
            backend.usages += 1
            backend.last_release = time.monotonic()
            spawn(generate(backend, request))

        def load_highest_pressure(available: list[_Backend]) -> None:
            now = time.monotonic()
            waiting = sorted((p for p in pressures.values() if not p.loading),
                             key=lambda p: -(p.count * REQUEST_WORTH_S
                                             + (now - p.first_at) / scale))
            if not waiting:
                return
            top = waiting[0]
            if len(available) > 1 and now - top.first_at <= PRESSURE_AGE_S * scale:
                return  # the pressure is too new
            valid = [b for b in available if b.url not in top.bad
                     and not _matches(b.model, top.model)]
            if not valid:
                return
            unused = [b for b in valid if b.usages == 0]
            chosen = min(unused or valid, key=lambda b: b.last_release)
            top.loading = True
            chosen.reserved = True
            spawn(load(chosen, top))

        def try_find() -> None:
            """One pass over the waiting requests, oldest first (SwarmUI's TryFind)."""
            for request in list(pending):
                available = free()
                if not available:
                    return
                if request.model is None:
                    chosen = available[0]
                else:
                    correct = [b for b in available if _matches(b.model, request.model)]
                    chosen = correct[0] if correct else None
                if chosen is not None:
                    pending.remove(request)
                    claim(chosen, request)
                    continue
                if request.pressure is None:
                    pressure = pressures.get(request.model)  # type: ignore[arg-type]
                    if pressure is None:
                        pressure = pressures[request.model] = _Pressure(  # type: ignore[index]
                            request.model, time.monotonic())  # type: ignore[arg-type]
                    pressure.count += 1
                    request.pressure = pressure
                load_highest_pressure(available)

        cpu0, t0 = _cpu_s(), time.perf_counter()
        while pending or tasks:
            changed.clear()
            try_find()
            try:  # SwarmUI's loop also wakes every so often to look at new pressure
                await asyncio.wait_for(changed.wait(), timeout=0.25 * scale)
            except asyncio.TimeoutError:
                pass
        t1, cpu1 = time.perf_counter(), _cpu_s()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "run_s": t1 - t0,
            "checkpoint_loads": counts["loads"], **counts}
