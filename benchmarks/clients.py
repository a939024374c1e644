"""The measured clients, each run in a child process of its own (``python -m benchmarks.clients``).

    sdbatch   the pipeline through its Python API (``pipeline.api.run``), fsync off unless the
              spec says ``"fsync": true``
    webuiapi  the baseline people use today: ``webuiapi.WebUIApi(...).txt2img(use_async=True)``
              per variant, one worker per backend, every PIL image saved with ``image.save``
    naive     in-order (FIFO) dispatch to one worker per backend, no checkpoint affinity: the
              same payloads as sdbatch, raw bytes written; the checkpoint-switch baseline
    floor     base64 + sha256 + write (+ fsync) of the same bytes, no HTTP (``baselines.py``)
    swarmui   SwarmUI's rule for assigning work to backends (``baselines.py``)

Input: one JSON file (``--spec``) with ``job`` (a job as a dict), ``urls``, ``concurrency`` and
``out``. Output: one JSON line on stdout with the client's own figures: ``cpu_s`` (user+sys of
this process, all threads, over the measured part only: imports, job parsing and client setup
come before), ``wall_s``, ``images``, ``maxrss_kb`` and mode-specific timings. The parent also
takes the child's rusage after it exits, so process totals (startup included) are known too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds per thread name (summed over threads of the same name) of this process."""
    import threading

    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}  # the OS names them all python
    for task in Path("/proc/self/task").iterdir():
        try:
            raw = (task / "stat").read_bytes()
        except OSError:
            continue
        name = names.get(int(task.name)) or raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(
            errors="replace")
        fields = raw.rsplit(b")", 1)[1].split()
        name = name.rstrip("0123456789_") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return out


def steady_rate(times: list[float], start: float = 0.2, end: float = 0.8) -> float | None:
    """Images/s in the steady state: the least-squares slope of (time, images written so far)
    over the writes from ``start`` to ``end`` of the run (fractions), so neither the start-up,
    the last stragglers nor where a burst of simultaneous answers falls bias it."""
    if len(times) < 10:
        return None
    times = sorted(times)
    a, b = int(start * (len(times) - 1)), int(end * (len(times) - 1))
    xs, ys = times[a:b + 1], range(a, b + 1)
    mx, my = sum(xs) / len(xs), sum(ys) / len(xs)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- sdbatch ---------------------------------------------------------------------------------

async def run_sdbatch(spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline import api
    from pipeline.events import (
        RunStarted,
        VariantFailed,
        VariantRetrying,
        VariantWritten,
    )
    try:
        from pipeline.job.schema import BackendSpec
    except ImportError:  # the package before the stage folders (--pipeline with an old copy)
        from pipeline.jobspec import BackendSpec  # type: ignore[no-redef]

    job = api.job_from_dict(spec["job"])
    backends = [BackendSpec(url=u, concurrency=spec.get("concurrency", 1),
                            timeout_s=spec.get("timeout_s", 600.0)) for u in spec["urls"]]
    marks: dict[str, float] = {}
    counts = {"written": 0, "images": 0, "failed": 0, "retries": 0, "image_bytes": 0}
    times: list[float] | None = [] if spec.get("timestamps") else None  # off for memory runs

    def listen(event: Any) -> None:
        now = time.perf_counter()
        if isinstance(event, RunStarted):
            marks["started"] = now
        elif isinstance(event, VariantWritten):
            marks.setdefault("first_write", now)
            marks["last_write"] = now
            counts["written"] += 1
            if times is not None:
                times.append(now)
            for record in event.records:
                if record["kind"] == "generation":
                    counts["images"] += 1
                    counts["image_bytes"] += record.get("bytes") or 0
        elif isinstance(event, VariantFailed):
            counts["failed"] += 1
        elif isinstance(event, VariantRetrying):
            counts["retries"] += 1

    cpu0, t0 = cpu_s(), time.perf_counter()
    summary = await api.run(job, out_dir=spec["out"], backends=backends,
                            fsync=bool(spec.get("fsync", False)),
                            listeners=(listen,), **spec.get("run_options", {}))
    t1, cpu1 = time.perf_counter(), cpu_s()
    threads = threads_cpu_s()  # while the executor's threads are still there
    started = marks.get("started", t0)
    return {
        "cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
        # RunStarted -> last image written: the run proper, without preflight's name checks
        "run_s": marks.get("last_write", t1) - started,
        "preflight_s": started - t0,
        "images": counts["images"], "written": counts["written"], "failed": counts["failed"],
        "retries": counts["retries"], "status": summary.status,
        "image_bytes": counts["image_bytes"],
        "steady_images_per_s": steady_rate(times) if times is not None else None,
        "checkpoint_loads": sum(b.get("checkpoint_loads", 0)
                                for b in summary.backends.values()),
        "threads_cpu_s_at_end": threads,
    }


# --- webuiapi (the baseline) -------------------------------------------------------------------

def _payloads(job: dict[str, Any]) -> list[dict[str, Any]]:
    from pipeline import api, expand

    plan = expand.build_plan(api.job_from_dict(job))
    return [v.payload for v in expand.variants(plan)]


async def run_webuiapi(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    import webuiapi

    payloads = _payloads(spec["job"])
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    clients = []
    for url in spec["urls"]:
        parts = urlsplit(url)
        clients.append(webuiapi.WebUIApi(host=parts.hostname, port=parts.port))
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(payloads):
        queue.put_nowait(item)
    counts = {"images": 0, "written": 0}

    async def worker(client: Any) -> None:
        while True:
            try:
                n, p = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            # as its README shows: keyword arguments in, PIL images out, image.save(path)
            result = await client.txt2img(
                prompt=p["prompt"], negative_prompt=p.get("negative_prompt", ""),
                seed=p["seed"], width=p["width"], height=p["height"], steps=p["steps"],
                cfg_scale=p["cfg_scale"], sampler_name=p["sampler_name"], use_async=True)
            for i, image in enumerate(result.images):
                image.save(out / f"{n:06d}_{i}.png")
                counts["images"] += 1
            counts["written"] += 1

    cpu0, t0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients
                           for _ in range(spec.get("concurrency", 1))))
    t1, cpu1 = time.perf_counter(), cpu_s()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "run_s": t1 - t0, **counts}


# --- naive in-order dispatch (checkpoint-switch baseline) ------------------------------------

async def run_naive(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp
    import orjson

    payloads = _payloads(spec["job"])
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(payloads):
        queue.put_nowait(item)
    counts = {"images": 0, "written": 0}
    times: list[float] = []

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        while True:
            try:
                n, payload = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            async with session.post(f"{url}/sdapi/v1/txt2img", data=orjson.dumps(payload),
                                    headers={"Content-Type": "application/json"}) as resp:
                resp.raise_for_status()
                body = orjson.loads(await resp.read())
            for i, b64 in enumerate(body["images"]):
                (out / f"{n:06d}_{i}.png").write_bytes(base64.b64decode(b64))
                counts["images"] += 1
            counts["written"] += 1
            times.append(time.perf_counter())

    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 600.0))
    cpu0, t0 = cpu_s(), time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session, url) for url in spec["urls"]
                               for _ in range(spec.get("concurrency", 1))))
    t1, cpu1 = time.perf_counter(), cpu_s()
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
            "run_s": (max(times) if times else t1) - t0,
            "steady_images_per_s": steady_rate(times), **counts}


def _modes() -> dict[str, Any]:
    from benchmarks.baselines import run_floor, run_swarmui

    return {"sdbatch": run_sdbatch, "webuiapi": run_webuiapi, "naive": run_naive,
            "floor": run_floor, "swarmui": run_swarmui}


MODE_NAMES = ("sdbatch", "webuiapi", "naive", "floor", "swarmui")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODE_NAMES)
    parser.add_argument("--spec", required=True, help="JSON file: job, urls, concurrency, out")
    parser.add_argument("--profile", metavar="FILE", help="profile the measured part with "
                        "pyinstrument (if installed) and write its text report to FILE")
    parser.add_argument("--cprofile", metavar="FILE", help="profile the measured part with "
                        "cProfile timed by the main thread's CPU clock (GIL waits and sleeps "
                        "do not count) and dump its stats to FILE (pstats format)")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    # Import everything the mode needs before the measured part starts.
    import aiohttp  # noqa: F401

    import pipeline.api  # noqa: F401
    if args.mode == "webuiapi":
        import webuiapi  # noqa: F401
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        result = asyncio.run(_modes()[args.mode](spec))
        profiler.stop()
        Path(args.profile).write_text(profiler.output_text(unicode=False, color=False,
                                                           show_all=False))
        profiler.last_session.save(args.profile + ".pyisession")
    elif args.cprofile:
        import cProfile

        cprofiler = cProfile.Profile(time.thread_time)
        result = cprofiler.runcall(asyncio.run, _modes()[args.mode](spec))
        cprofiler.dump_stats(args.cprofile)
    else:
        result = asyncio.run(_modes()[args.mode](spec))
    result["mode"] = args.mode
    result["maxrss_kb"] = maxrss_kb()
    result["threads_cpu_s"] = threads_cpu_s()
    result["pid"] = os.getpid()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
