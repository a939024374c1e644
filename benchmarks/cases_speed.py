"""Cases about speed: scheduling efficiency, client CPU per image against webuiapi, the
throughput ceiling, and throughput under injected faults."""

from __future__ import annotations

from benchmarks import jobs
from benchmarks.context import Ctx, median, spread
from benchmarks.harness import Farm, Measured
from benchmarks.report import CaseResult, Row

# 10% of generation requests fail, in every way the simulator knows (see pipeline/sim/faults.py)
FAULT_MIX = {"error_rate": 0.03, "oom_rate": 0.01, "reset_rate": 0.02, "truncate_rate": 0.02,
             "interrupt_rate": 0.01, "hang_rate": 0.01}
HANG_S = 0.5
NO_FAULTS = dict.fromkeys(FAULT_MIX, 0.0)
# The job's retry section for the 'fast retry' arm: what the default backoff costs
FAST_RETRY = {"backoff_initial_s": 0.05, "backoff_max_s": 1.0, "cooldown_s": 0.5}


def _share(seconds: float, wall_s: float) -> float:
    return seconds / wall_s if wall_s > 0 else float("nan")


def _complete(run: Measured, expected: int) -> None:
    if run.report.get("status") != "complete" or run.images != expected:
        raise RuntimeError(f"{run.report.get('mode')} run incomplete: status "
                           f"{run.report.get('status')}, {run.images} of {expected} images")


# --- 1. scheduling efficiency ------------------------------------------------------------------

def scheduling(ctx: Ctx) -> CaseResult:
    latency_s = 0.2 if ctx.quick else 0.5
    per_backend = 5 if ctx.quick else 10
    backend_counts = (4, 16) if ctx.quick else (1, 4, 16, 64)
    with_c2 = () if ctx.quick else (16, 64)  # concurrency 2 hides the gap between requests
    with_naive = () if ctx.quick else (16, 64)  # is it the servers? a minimal client on them
    case = CaseResult(
        "scheduling", "1. Scheduling efficiency",
        f"B simulated backends, each {latency_s:g} s per image (a sleep), {per_backend} images "
        f"per backend (64x64), one client process. Ideal = B / latency images/s. 'steady' = "
        f"images/s between the writes at 20% and 80% of the run, over the ideal: the "
        f"scheduler at work. 'whole run' = ideal time / the whole `api.run` call, preflight, "
        f"probes and the last stragglers included (a fixed cost per run, shown in seconds). "
        f"Per-image overhead = B / steady images/s - latency: what each request adds to the "
        f"backend's latency; fixed cost = whole call - images / steady images/s. "
        f"Concurrency 1 (the default) and, where shown, 2; 'minimal client' is a bare aiohttp "
        f"FIFO client (raw bytes written, no manifest) on the same servers, to show what the "
        f"servers allow. Median of {ctx.reps}, alternating.")
    server_peak = 0.0
    for count in backend_counts:
        arms: list[tuple[str, int]] = [("sdbatch", 1)]
        if count in with_c2:
            arms.append(("sdbatch", 2))
        if count in with_naive:
            arms.append(("naive", 1))
        job = jobs.sweep(count * per_backend, 64)
        runs: dict[tuple[str, int], list[Measured]] = {arm: [] for arm in arms}
        ctx.say(f"scheduling: {count} backends")
        with Farm(count, {"latency_s": latency_s}) as farm:
            for _, (mode, c) in ctx.alternate(arms):
                run = ctx.run(farm, mode, job, concurrency=c, extra={"timestamps": True})
                if mode == "sdbatch":
                    _complete(run, count * per_backend)
                elif run.images != count * per_backend:
                    raise RuntimeError(f"minimal client: {run.images} images")
                runs[(mode, c)].append(run)
            processes = farm.processes
        ideal_rate, ideal_s = count / latency_s, per_backend * latency_s
        plural = "s" if count > 1 else ""
        for (mode, c), rs in runs.items():
            steady = [r.report["steady_images_per_s"] / ideal_rate for r in rs]
            whole = [ideal_s / r.report["wall_s"] for r in rs]
            fixed_s = [r.report["wall_s"] - r.images / r.report["steady_images_per_s"]
                       for r in rs]
            gap_ms = [(count / r.report["steady_images_per_s"] - latency_s) * 1000 for r in rs]
            server = [_share(r.server_cpu_s, r.report["wall_s"]) / processes for r in rs]
            client = [_share(r.report["cpu_s"], r.report["wall_s"]) for r in rs]
            server_peak = max(server_peak, max(server))
            label = (f"{count} backend{plural}" + (", concurrency 2" if c == 2 else "")
                     + (", minimal client" if mode == "naive" else ""))
            target, met = "", None
            if count == 16 and c == 1 and mode == "sdbatch":
                target, met = ">= 0.98", median(steady) >= 0.98
            case.rows.append(Row(f"{label}: steady / ideal (whole run {median(whole):.3f})",
                                 median(steady), target=target, met=met))
            case.details[label] = {
                "steady_efficiency": spread(steady), "whole_run_efficiency": spread(whole),
                "steady_images_per_s": round(median([r.report["steady_images_per_s"]
                                                     for r in rs]), 2),
                "ideal_images_per_s": round(ideal_rate, 2),
                "fixed_cost_per_run_s": round(median(fixed_s), 3),
                "per_image_overhead_ms": round(median(gap_ms), 2),
                "preflight_s": round(median([r.report.get("preflight_s", 0.0) for r in rs]), 3),
                "client_cpu_ms_per_image": round(median([r.per_image_ms(r.report["cpu_s"])
                                                         for r in rs]), 2),
                "client_cpu_share_of_a_core": round(median(client), 3),
                "server_cpu_share_of_a_core_per_process": round(median(server), 3),
                "server_max_in_flight": max(r.server_stats["max_in_flight"] for r in rs),
            }
        if count == 16:
            gap = case.details["16 backends"]["per_image_overhead_ms"]
            case.rows.append(Row("16 backends: per-image overhead", gap, "ms", digits=1))
    case.checks.append(f"Simulated backends used at most {server_peak:.0%} of a core per farm "
                       "process (they sleep the latency); the minimal client's efficiency on "
                       "the same servers is what the servers allow.")
    return case


# --- 2. client CPU per image against webuiapi --------------------------------------------------

CLIENT_COST_TARGET = 0.05  # sdbatch (fsync on) / webuiapi, real-size images
FLOOR_TARGET = 2.0  # sdbatch (fsync on) / the floor measured alone


def client_cost(ctx: Ctx) -> CaseResult:
    backends, latency_s, size = 4, 0.1, 512
    kinds = [("photo-like RGB PNG", True, 32 if ctx.quick else 160)]
    if not ctx.quick:
        kinds.append(("simulator palette PNG", False, 240))
    arms = ("sdbatch", "sdbatch, fsync off", "webuiapi")
    case = CaseResult(
        "client_cost", "2. Client CPU per 512x512 image",
        f"{backends} simulated backends ({latency_s:g} s per image), the same variants through "
        "sdbatch (`api.run`, fsync on as by default: each image and sidecar fsynced before "
        "its rename; and with fsync off) and through a `webuiapi` baseline (one "
        "`WebUIApi.txt2img(..., use_async=True)` worker per backend, every PIL image saved "
        "with `image.save(path)`, no fsync), alternating, each in its own process. The floor "
        "is what any client must do with the same bytes, measured alone in a process of its "
        "own (no HTTP): base64-decode, sha256, write to a temporary name, fsync, rename. CPU = "
        "user+sys of the client process over the batch (imports and setup excluded; process "
        "totals in details). Two payloads: photo-like RGB PNGs of the size real 512x512 WebUI "
        f"outputs have, and the simulator's own 8 kB palette PNGs. Median of {ctx.reps}.")
    for label, photo, count in kinds:
        job = jobs.sweep(count, size)
        runs: dict[str, list[Measured]] = {arm: [] for arm in (*arms, "floor")}
        ctx.say(f"client cost: {label}")
        with Farm(backends, {"latency_s": latency_s},
                  photo_sizes=[(size, size)] if photo else ()) as farm:
            for _, arm in ctx.alternate(arms):
                mode = arm.split(",")[0]
                extra = {"fsync": arm == "sdbatch"}
                run = ctx.run(farm, mode, job, extra=extra)
                if run.images != count:
                    raise RuntimeError(f"{arm}: {run.images} of {count} images")
                runs[arm].append(run)
            for _ in range(ctx.reps):  # alone: nothing else of ours runs meanwhile
                runs["floor"].append(ctx.run(farm, "floor", job, extra={"fsync": True}))
        ms = {arm: [r.per_image_ms(r.report["cpu_s"]) for r in rs] for arm, rs in runs.items()}
        ours, base, floor = median(ms["sdbatch"]), median(ms["webuiapi"]), median(ms["floor"])
        ratio, over_floor = ours / base, ours / floor
        kb = median([r.report["image_bytes"] / max(1, r.images) for r in runs["sdbatch"]]) / 1024
        real = photo  # the targets are for real-size images
        case.rows += [
            Row(f"{label} ({kb:.0f} kB): sdbatch, fsync on", ours, "ms CPU/image", digits=2),
            Row(f"{label}: sdbatch, fsync off", median(ms["sdbatch, fsync off"]),
                "ms CPU/image", digits=2),
            Row(f"{label}: webuiapi baseline", base, "ms CPU/image", digits=2),
            Row(f"{label}: floor (base64 + sha256 + write + fsync, alone)", floor,
                "ms CPU/image", digits=2),
            Row(f"{label}: sdbatch (fsync on) / webuiapi", ratio,
                target=f"<= {CLIENT_COST_TARGET}" if real else "",
                met=ratio <= CLIENT_COST_TARGET if real else None),
            Row(f"{label}: sdbatch (fsync on) / floor", over_floor,
                target=f"<= {FLOOR_TARGET:g}" if real else "",
                met=over_floor <= FLOOR_TARGET if real else None),
        ]
        case.details[label] = {
            "image_kb": round(kb, 1), "images_per_run": count,
            **{f"{arm}_ms_per_image": spread(v) for arm, v in ms.items()},
            **{f"{arm}_process_total_cpu_s": spread([r.client_cpu_total_s for r in rs])
               for arm, rs in runs.items()},
            "server_cpu_ms_per_image": round(median([r.per_image_ms(r.server_cpu_s)
                                                     for r in runs["sdbatch"]]), 2),
            **{f"{arm}_images_per_s": round(median([r.images / r.report["wall_s"]
                                                    for r in rs]), 1)
               for arm, rs in runs.items()},
        }
    case.checks.append("CPU is counted per process (the client's own rusage), so the servers' "
                       "work is never in these figures; the servers' CPU per image is in "
                       "details.")
    return case


# --- 3. throughput ceiling ---------------------------------------------------------------------

CEILING_TARGET = 600.0  # images/s: 64 turbo-class GPUs at ~10 images/s each


def ceiling(ctx: Ctx) -> CaseResult:
    backends, concurrency = 4, 2
    count = 1000 if ctx.quick else 6000
    job = jobs.sweep(count, 64)
    case = CaseResult(
        "ceiling", "3. Throughput ceiling",
        f"{backends} zero-latency simulated backends, concurrency {concurrency}, {count} "
        f"variants of 64x64, one client process, writer included (fsync off). 'steady' = the "
        f"least-squares slope of images written against time between 20% and 80% of the run "
        f"(what the run sustains); 'whole call' = images / the whole `api.run` call (preflight, "
        f"probes, final gallery included). Median of {ctx.reps}. The machine's 2 cores are "
        "shared by the client and the servers (and by whatever else runs), so the client-only "
        "ceiling (1 / client CPU per image) is given too.")
    runs = []
    ctx.say("ceiling")
    with Farm(backends, {"latency_s": 0.0}, pool=True) as farm:
        for _ in range(ctx.reps):
            run = ctx.run(farm, "sdbatch", job, concurrency=concurrency,
                          extra={"timestamps": True})
            _complete(run, count)
            runs.append(run)
    steady = [r.report["steady_images_per_s"] for r in runs]
    rate = [r.images / r.report["wall_s"] for r in runs]
    client_ms = [r.per_image_ms(r.report["cpu_s"]) for r in runs]
    server_ms = [r.per_image_ms(r.server_cpu_s) for r in runs]
    busy = [(r.report["cpu_s"] + r.server_cpu_s) / r.report["wall_s"] for r in runs]
    case.rows += [
        Row("images/s, steady", median(steady), "images/s", digits=0,
            target=f">= {CEILING_TARGET:g}", met=median(steady) >= CEILING_TARGET),
        Row("images/s, whole call", median(rate), "images/s", digits=0),
        Row("client CPU per image", median(client_ms), "ms", digits=2),
        Row("client-only ceiling (1 / client CPU)", 1000 / median(client_ms), "images/s",
            digits=0),
        Row("servers' CPU per image", median(server_ms), "ms", digits=2),
    ]
    case.details = {"steady_images_per_s": spread(steady), "images_per_s": spread(rate),
                    "client_cpu_ms_per_image": spread(client_ms),
                    "server_cpu_ms_per_image": spread(server_ms),
                    "cores_busy_client_plus_servers": spread(busy),
                    "wall_s": spread([r.report["wall_s"] for r in runs])}
    case.checks.append(f"Servers spent {median(server_ms):.2f} ms CPU per image against the "
                       f"client's {median(client_ms):.2f} ms; together they kept "
                       f"{median(busy):.2f} of 2 cores busy.")
    return case


# --- 6. under faults ---------------------------------------------------------------------------

FAULTS_TARGET = 0.90  # throughput with 10% faults / clean, default retry policy


def _default_retry() -> str:
    """The job's default retry policy, as the pipeline under test defines it (for the setup)."""
    try:
        from pipeline.job.schema import RetrySpec
    except ImportError:  # the package before the stage folders
        from pipeline.jobspec import RetrySpec  # type: ignore[no-redef]
    spec = RetrySpec()
    return (f"backoff from {spec.backoff_initial_s:g} s (max {spec.backoff_max_s:g} s), bench "
            f"after {spec.bench_after_failures} failures for {spec.cooldown_s:g} s")


def faults(ctx: Ctx) -> CaseResult:
    backends, latency_s = 4, 0.05
    count = 400 if ctx.quick else 1600
    job = jobs.sweep(count, 64)
    mix = ", ".join(f"{k.removesuffix('_rate')} {v:.0%}" for k, v in FAULT_MIX.items())
    case = CaseResult(
        "faults", "6. Under faults",
        f"{backends} simulated backends ({latency_s:g} s per image), {count} variants; clean "
        f"and with 10% of generation requests failing ({mix}; a hang lasts {HANG_S:g} s), "
        f"alternating on the same servers, with this checkout's default retry policy "
        f"({_default_retry()}) and with a fast one ({FAST_RETRY}). Throughput = images saved "
        f"/ wall time of the whole call. Lost = variants not saved at the end of the run. "
        f"Full mode adds the same faults without the hangs (what they cost), and faults and "
        f"clean with concurrency 2 (a hang then holds one of two requests). Concurrency 1 "
        f"otherwise. Median of {ctx.reps}.")
    fast_job = {**job, "retry": FAST_RETRY}
    arms: tuple[str, ...] = ("clean", "faults", "faults, fast retry")
    if not ctx.quick:  # what the hangs cost, and what a second request in flight does to them
        arms += ("faults but no hangs", "faults, concurrency 2", "clean, concurrency 2")
    no_hangs = {**FAULT_MIX, "hang_rate": 0.0}
    runs: dict[str, list[Measured]] = {arm: [] for arm in arms}
    ctx.say("faults")
    with Farm(backends, {"latency_s": latency_s, "hang_s": HANG_S}, pool=True) as farm:
        for _, arm in ctx.alternate(arms):
            farm.reset_config(NO_FAULTS if arm.startswith("clean") else
                              no_hangs if "no hangs" in arm else FAULT_MIX)
            runs[arm].append(ctx.run(farm, "sdbatch", fast_job if "fast" in arm else job,
                                     concurrency=2 if "concurrency 2" in arm else 1))
    rate = {k: [r.images / r.report["wall_s"] for r in v] for k, v in runs.items()}
    clean = median(rate["clean"])
    ratio = median(rate["faults"]) / clean
    lost = max(count - r.images for r in runs["faults"])
    useful = [r.images / max(1, r.server_stats["generations"]) for r in runs["faults"]]
    case.rows += [
        Row("clean", clean, "images/s", digits=1),
        Row("10% faults, default policy", median(rate["faults"]), "images/s", digits=1),
        Row("10% faults, default policy: / clean", ratio, target=f">= {FAULTS_TARGET:g}",
            met=ratio >= FAULTS_TARGET),
        Row("10% faults, default policy: lost (worst run)", lost, "variants", target="0",
            met=lost == 0),
        Row("10% faults, fast retry policy: / clean", median(rate["faults, fast retry"]) / clean),
    ]
    if "faults but no hangs" in rate:
        case.rows += [
            Row("9% faults (no hangs), default policy: / clean",
                median(rate["faults but no hangs"]) / clean),
            Row("10% faults, concurrency 2: / clean at concurrency 2",
                median(rate["faults, concurrency 2"]) / median(rate["clean, concurrency 2"])),
        ]
    case.details = {
        "images_per_s": {k: spread(v) for k, v in rate.items()},
        "faults_injected": [r.server_stats["faults"] for r in runs["faults"]],
        "retries": {k: [r.report["retries"] for r in v] for k, v in runs.items()},
        "failed": {k: [r.report["failed"] for r in v] for k, v in runs.items()},
        "wall_s": {k: spread([r.report["wall_s"] for r in v]) for k, v in runs.items()},
        "images_saved_per_image_generated": spread(useful),
        "fast_retry_policy": FAST_RETRY,
    }
    return case
