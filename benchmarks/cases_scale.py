"""Cases about scale: memory over long runs and huge plans, checkpoint switches against naive
in-order dispatch, and the soak run (faults, nothing lost or duplicated, flat memory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks import jobs
from benchmarks.cases_speed import FAULT_MIX, HANG_S
from benchmarks.context import Ctx, median, spread
from benchmarks.harness import Farm, Measured, client_env, run_child
from benchmarks.report import CaseResult, Row

FLAT_RATIO = 1.25  # the soak: RSS at the end / at 25% of the run


def _mb(kb: float) -> float:
    return kb / 1024


def _rss_at(series: list[tuple[float, int]], fraction: float) -> int:
    if not series:
        return 0
    return series[min(len(series) - 1, int(fraction * (len(series) - 1)))][1]


# --- 4. memory ---------------------------------------------------------------------------------

def plan_rss(ctx: Ctx, variants: int) -> tuple[int, float]:
    """Peak RSS (kB) and wall time of ``sdbatch plan --json`` for a job of ``variants``."""
    path = ctx.workdir / f"plan-{variants}.json"
    path.write_text(json.dumps(jobs.grid(variants)))
    child = run_child(["-m", "pipeline", "plan", str(path), "--json"], cwd=ctx.workdir)
    if child.returncode != 0:
        raise RuntimeError(f"sdbatch plan failed: {child.stderr}")
    reported = child.report
    if reported.get("variants") != variants:
        raise RuntimeError(f"plan counted {reported.get('variants')} variants, not {variants}")
    return child.maxrss_kb, child.wall_s


MEMORY_TARGET = 1.10  # peak RSS, 1,000,000-variant run / 10,000-variant run


def memory(ctx: Ctx) -> CaseResult:
    small, large = (1_000, 20_000) if ctx.quick else (10_000, ctx.memory_variants)
    plan_small, plan_large = 1_000, 1_000_000
    backends, concurrency = 4, 2
    case = CaseResult(
        "memory", "4. Memory",
        f"Peak RSS (the kernel's ru_maxrss of the client process) of a {small:,}- and a "
        f"{large:,}-variant run ({backends} zero-latency backends, concurrency {concurrency}, "
        f"64x64 images, 20 prompts x 10 CFG x seeds, fsync off, gallery and live refreshes "
        f"on as by default), and of `sdbatch plan --json` for {plan_small:,} and "
        f"{plan_large:,} variants. Target: at most x{MEMORY_TARGET} for {large // small} times "
        f"the work (nothing kept per variant or per image). One run each; RSS sampled every "
        "0.5 s. The large run takes about half an hour on 2 shared cores (`--memory-variants "
        "N` sizes it).")
    runs: dict[int, Measured] = {}
    with Farm(backends, {"latency_s": 0.0}, pool=True) as farm:
        for count in (small, large):
            ctx.say(f"memory: {count:,}-variant run")
            run = ctx.run(farm, "sdbatch", jobs.grid(count), concurrency=concurrency,
                          sample_rss_s=0.5, timeout_s=max(900.0, count / 50))
            if run.report.get("status") != "complete" or run.images != count:
                raise RuntimeError(f"{count}-variant run: {run.report.get('status')}, "
                                   f"{run.images} images")
            runs[count] = run
    ctx.say("memory: plans")
    plan_kb = {n: plan_rss(ctx, n) for n in (plan_small, plan_large)}
    run_ratio = runs[large].client_maxrss_kb / runs[small].client_maxrss_kb
    plan_ratio = plan_kb[plan_large][0] / plan_kb[plan_small][0]
    case.rows += [
        Row(f"run, {small:,} variants: peak RSS", _mb(runs[small].client_maxrss_kb), "MB", digits=1),
        Row(f"run, {large:,} variants: peak RSS", _mb(runs[large].client_maxrss_kb), "MB", digits=1),
        Row(f"run: {large:,} / {small:,}", run_ratio, target=f"<= {MEMORY_TARGET}",
            met=run_ratio <= MEMORY_TARGET),
        Row(f"plan, {plan_small:,} variants: peak RSS", _mb(plan_kb[plan_small][0]), "MB", digits=1),
        Row(f"plan, {plan_large:,} variants: peak RSS", _mb(plan_kb[plan_large][0]), "MB",
            digits=1),
        Row(f"plan: {plan_large:,} / {plan_small:,}", plan_ratio, target=f"<= {MEMORY_TARGET}",
            met=plan_ratio <= MEMORY_TARGET),
    ]
    big = runs[large]
    case.details = {
        "run_wall_s": {n: round(r.report["wall_s"], 1) for n, r in runs.items()},
        "run_images_per_s": {n: round(r.images / r.report["wall_s"], 1) for n, r in runs.items()},
        f"rss_mb_of_{large}_run_at_10_25_50_75_90_100_percent": [
            round(_mb(_rss_at(big.rss_series, f)), 1) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)],
        f"rss_mb_of_{small}_run_at_50_100_percent": [
            round(_mb(_rss_at(runs[small].rss_series, f)), 1) for f in (0.5, 1.0)],
        "plan_wall_s": {n: round(v[1], 2) for n, v in plan_kb.items()},
    }
    return case


# --- 5. checkpoint switches --------------------------------------------------------------------

TIME_SCALE = 0.05  # realistic costs (seconds) scaled down uniformly
REAL_IMAGE_S, REAL_LOAD_S = 2.0, 10.0
SWEEP_TARGET = 1.05  # wall / generations-only


def checkpoints(ctx: Ctx) -> CaseResult:
    models, backends = 4, 4
    latency_s, switch_s = REAL_IMAGE_S * TIME_SCALE, REAL_LOAD_S * TIME_SCALE
    prompts, seeds = (2, 5) if ctx.quick else (10, 25)
    count = prompts * models * seeds
    job = jobs.checkpoint_sweep(models, prompts, seeds)
    gen_only_s = count * latency_s / backends
    bound_s = gen_only_s + (models - 1) * switch_s / backends  # each other checkpoint once
    config = {"latency_s": latency_s, "switch_cost_s": switch_s,
              "models": jobs.checkpoint_models(models)}
    case = CaseResult(
        "checkpoints", "5. Checkpoint switches",
        f"Realistic costs ({REAL_IMAGE_S:g} s per image, {REAL_LOAD_S:g} s per checkpoint "
        f"load) scaled by x{TIME_SCALE:g}: {latency_s:g} s and {switch_s:g} s. {prompts} "
        f"prompts x {models} checkpoints x {seeds} seeds = {count} variants (job order: "
        f"prompt, checkpoint, seed) on {backends} simulated backends; every backend starts "
        f"with the first checkpoint loaded (fresh servers per run). sdbatch (checkpoint "
        f"affinity; concurrency 1, the default, and 2) against naive in-order dispatch (a FIFO "
        f"of the same payloads, one worker per backend). Loads are counted by the servers. "
        f"Generations-only time = images x latency / backends = {gen_only_s:.2f} s; no "
        f"schedule beats generations-only + (M - 1) loads spread over the backends = "
        f"{bound_s:.2f} s ({bound_s / gen_only_s:.3f}). The time scale does not shrink the "
        f"per-request round trip (a few ms on loopback), nor the fixed cost per run. Median "
        f"of {ctx.reps}, alternating.")
    arms = [("sdbatch", 1), ("sdbatch", 2), ("naive", 1)]
    runs: dict[tuple[str, int], list[Measured]] = {arm: [] for arm in arms}
    for _, (mode, c) in ctx.alternate(arms):
        ctx.say(f"checkpoints: {mode}, concurrency {c}")
        with Farm(backends, config, pool=True) as farm:
            run = ctx.run(farm, mode, job, concurrency=c, extra={"timestamps": True})
        if run.images != count:
            raise RuntimeError(f"{mode}: {run.images} of {count} images")
        runs[(mode, c)].append(run)
    loads = {a: median([r.server_stats["checkpoint_loads"] for r in rs]) for a, rs in runs.items()}
    over = {a: median([r.report["wall_s"] / gen_only_s for r in rs]) for a, rs in runs.items()}
    run_over = {a: median([r.report["run_s"] / gen_only_s for r in rs])
                for a, rs in runs.items()}
    limit = models + backends
    ours, ours2, naive = ("sdbatch", 1), ("sdbatch", 2), ("naive", 1)
    case.rows += [
        Row("sdbatch: checkpoint loads", int(loads[ours]), target=f"<= M + B = {limit}",
            met=loads[ours] <= limit),
        Row("sdbatch: wall / generations-only", over[ours], target=f"<= {SWEEP_TARGET}",
            met=over[ours] <= SWEEP_TARGET),
        Row("sdbatch: first to last image / generations-only", run_over[ours]),
        Row("sdbatch, concurrency 2: loads", int(loads[ours2]), target=f"<= {limit}",
            met=loads[ours2] <= limit),
        Row("sdbatch, concurrency 2: wall / generations-only", over[ours2],
            target=f"<= {SWEEP_TARGET}", met=over[ours2] <= SWEEP_TARGET),
        Row("naive in-order: checkpoint loads", int(loads[naive])),
        Row("naive in-order: wall / generations-only", over[naive]),
    ]
    case.details = {f"{m}, concurrency {c}": {
        "loads": [r.server_stats["checkpoint_loads"] for r in rs],
        "wall_s": spread([r.report["wall_s"] for r in rs]),
        "run_s": spread([r.report["run_s"] for r in rs]),
        "preflight_s": spread([r.report.get("preflight_s", 0.0) for r in rs]),
        "client_counted_loads": [r.report.get("checkpoint_loads") for r in rs]}
        for (m, c), rs in runs.items()}
    case.details["generations_only_s"] = gen_only_s
    case.details["lower_bound_s"] = round(bound_s, 3)
    return case


# --- soak ----------------------------------------------------------------------------------------

def verify_output(ctx: Ctx, out: Path, job: dict[str, Any]) -> dict[str, int]:
    """``benchmarks.verify`` in a child process with the pipeline under test (its ids)."""
    job_file = ctx.workdir / "verify-job.json"
    job_file.write_text(json.dumps(job))
    child = run_child(["-m", "benchmarks.verify", "--out", str(out), "--job", str(job_file)],
                      env=client_env(ctx.pipeline_root), cwd=ctx.workdir)
    if child.returncode != 0 or not child.report:
        raise RuntimeError(f"verifying {out} failed: {child.stderr}")
    return child.report


def soak(ctx: Ctx) -> CaseResult:
    backends, count = 4, (200 if ctx.quick else 5000)
    job = jobs.sweep(count, 64, name="soak")
    mix = ", ".join(f"{k.removesuffix('_rate')} {v:.0%}" for k, v in FAULT_MIX.items())
    case = CaseResult(
        "soak", "Soak (faults, nothing lost)",
        f"{count:,} variants over {backends} fast simulated backends (no latency) with 10% of "
        f"generation requests failing ({mix}; hangs {HANG_S:g} s), default retry policy. "
        f"Variants that failed for good are finished by rerunning the same command "
        f"(resume). Then the manifest is checked: every expected (id, image_index) exactly "
        f"once, every file's sha256 as recorded. RSS sampled every 0.25 s.")
    out = ctx.workdir / "soak-out"
    shutil.rmtree(out, ignore_errors=True)
    attempts: list[Measured] = []
    ctx.say("soak")
    with Farm(backends, {"latency_s": 0.0, "hang_s": HANG_S, **FAULT_MIX}, pool=True) as farm:
        for _ in range(3):  # the run, then at most two resumes
            run = ctx.run(farm, "sdbatch", job, keep_output=True, sample_rss_s=0.25,
                          extra={"out": str(out)})
            attempts.append(run)
            if run.report.get("status") == "complete":
                break
    check = verify_output(ctx, out, job)
    if not ctx.keep:
        shutil.rmtree(out, ignore_errors=True)
    first = attempts[0]
    series = first.rss_series
    early, late = _rss_at(series, 0.25), _rss_at(series, 1.0)
    intact = (check["missing"] == 0 and check["duplicated"] == 0 and check["unexpected"] == 0
              and check["sha256_mismatch"] == 0 and check["file_missing"] == 0
              and check["recorded"] == check["expected"])
    growth = late / early if early else float("nan")
    case.rows += [
        Row("images recorded / expected", f"{check['recorded']:,} / {check['expected']:,}"),
        Row("lost, duplicated, bad sha256", f"{check['missing']}, {check['duplicated']}, "
            f"{check['sha256_mismatch']}", target="0, 0, 0", met=intact),
        Row("runs needed (1 + resumes)", len(attempts)),
        Row("RSS at end / at 25% of the run", growth, target=f"flat (<= {FLAT_RATIO})",
            met=growth <= FLAT_RATIO),
    ]
    case.details = {
        "check": check,
        "per_run": [{"status": r.report.get("status"), "images": r.images,
                     "failed": r.report.get("failed"), "retries": r.report.get("retries"),
                     "wall_s": round(r.report["wall_s"], 1), "faults": r.server_stats["faults"],
                     "peak_rss_mb": round(_mb(r.client_maxrss_kb), 1)} for r in attempts],
        "rss_mb_at_10_25_50_75_100_percent": [round(_mb(_rss_at(series, f)), 1)
                                              for f in (0.1, 0.25, 0.5, 0.75, 1.0)],
    }
    return case
