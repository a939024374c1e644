"""Cases about scale: memory over long runs and huge plans, checkpoint switches against naive
in-order dispatch, and the soak run (faults, nothing lost or duplicated, flat memory)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import jobs
from benchmarks.cases_speed import FAULT_MIX, HANG_S
from benchmarks.context import Ctx, median, spread
from benchmarks.harness import Farm, Measured, run_child
from benchmarks.report import CaseResult, Row

FLAT_RATIO = 1.25  # "flat": peak RSS grows by at most this factor over 100x the work


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


def memory(ctx: Ctx) -> CaseResult:
    small, large = (200, 1_000) if ctx.quick else (1_000, 100_000)
    plan_small, plan_large = 1_000, 1_000_000
    backends, concurrency = 4, 2
    case = CaseResult(
        "memory", "4. Memory",
        f"Peak RSS (the kernel's ru_maxrss of the client process) of a {small:,}- and a "
        f"{large:,}-variant run ({backends} zero-latency backends, concurrency {concurrency}, "
        f"64x64 images, 20 prompts x 10 CFG x seeds), and of `sdbatch plan --json` for "
        f"{plan_small:,} and {plan_large:,} variants. Flat means at most x{FLAT_RATIO} for "
        f"{large // small} (plan: {plan_large // plan_small:,}) times the work. One run each; "
        "RSS sampled every 0.5 s.")
    runs: dict[int, Measured] = {}
    with Farm(backends, {"latency_s": 0.0}) as farm:
        for count in (small, large):
            ctx.say(f"memory: {count:,}-variant run")
            run = ctx.run(farm, "sdbatch", jobs.grid(count), concurrency=concurrency,
                          sample_rss_s=0.5)
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
        Row(f"run: {large:,} / {small:,}", run_ratio, target=f"flat (<= {FLAT_RATIO})",
            met=run_ratio <= FLAT_RATIO),
        Row(f"plan, {plan_small:,} variants: peak RSS", _mb(plan_kb[plan_small][0]), "MB", digits=1),
        Row(f"plan, {plan_large:,} variants: peak RSS", _mb(plan_kb[plan_large][0]), "MB",
            digits=1),
        Row(f"plan: {plan_large:,} / {plan_small:,}", plan_ratio, target=f"flat (<= {FLAT_RATIO})",
            met=plan_ratio <= FLAT_RATIO),
    ]
    big = runs[large]
    case.details = {
        "run_wall_s": {n: round(r.report["wall_s"], 1) for n, r in runs.items()},
        "run_images_per_s": {n: round(r.images / r.report["wall_s"], 1) for n, r in runs.items()},
        f"rss_mb_of_{large}_run_at_10_50_90_100_percent": [
            round(_mb(_rss_at(big.rss_series, f)), 1) for f in (0.1, 0.5, 0.9, 1.0)],
        "plan_wall_s": {n: round(v[1], 2) for n, v in plan_kb.items()},
    }
    return case


# --- 5. checkpoint switches --------------------------------------------------------------------

def checkpoints(ctx: Ctx) -> CaseResult:
    models, backends, latency_s, switch_s = 4, 4, 0.05, 0.25
    prompts, seeds = (2, 5) if ctx.quick else (10, 10)
    count = prompts * models * seeds
    job = jobs.checkpoint_sweep(models, prompts, seeds)
    gen_only_s = count * latency_s / backends
    config = {"latency_s": latency_s, "switch_cost_s": switch_s,
              "models": jobs.checkpoint_models(models)}
    case = CaseResult(
        "checkpoints", "5. Checkpoint switches",
        f"{prompts} prompts x {models} checkpoints x {seeds} seeds = {count} variants (job "
        f"order: prompt, checkpoint, seed) on {backends} simulated backends, {latency_s:g} s "
        f"per image, {switch_s:g} s per checkpoint load; every backend starts with the first "
        f"checkpoint loaded (fresh servers per run). sdbatch (checkpoint affinity; concurrency "
        f"1, the default, and 2) against naive in-order dispatch (a FIFO of the same payloads, one worker per backend). Loads "
        f"are counted by the servers. Generations-only time = images x latency / backends = "
        f"{gen_only_s:.2f} s. Median of {ctx.reps}, alternating.")
    arms = [("sdbatch", 1), ("sdbatch", 2), ("naive", 1)]
    runs: dict[tuple[str, int], list[Measured]] = {arm: [] for arm in arms}
    for _, (mode, c) in ctx.alternate(arms):
        ctx.say(f"checkpoints: {mode}, concurrency {c}")
        with Farm(backends, config) as farm:
            run = ctx.run(farm, mode, job, concurrency=c)
        if run.images != count:
            raise RuntimeError(f"{mode}: {run.images} of {count} images")
        runs[(mode, c)].append(run)
    loads = {a: median([r.server_stats["checkpoint_loads"] for r in rs]) for a, rs in runs.items()}
    over = {a: median([r.report["wall_s"] / gen_only_s for r in rs]) for a, rs in runs.items()}
    limit = models + backends
    ours, ours2, naive = ("sdbatch", 1), ("sdbatch", 2), ("naive", 1)
    case.rows += [
        Row("sdbatch: checkpoint loads", int(loads[ours]), target=f"<= M + B = {limit}",
            met=loads[ours] <= limit),
        Row("sdbatch: wall / generations-only", over[ours], target="<= 1.10",
            met=over[ours] <= 1.10),
        Row("sdbatch, concurrency 2: loads", int(loads[ours2])),
        Row("sdbatch, concurrency 2: wall / generations-only", over[ours2]),
        Row("naive in-order: checkpoint loads", int(loads[naive])),
        Row("naive in-order: wall / generations-only", over[naive]),
    ]
    case.details = {f"{m}, concurrency {c}": {
        "loads": [r.server_stats["checkpoint_loads"] for r in rs],
        "wall_s": spread([r.report["wall_s"] for r in rs]),
        "client_counted_loads": [r.report.get("checkpoint_loads") for r in rs]}
        for (m, c), rs in runs.items()}
    case.details["generations_only_s"] = gen_only_s
    case.details["lower_bound_s"] = round(gen_only_s + (models - 1) * switch_s / backends, 3)
    return case


# --- soak ----------------------------------------------------------------------------------------

def verify_output(out: Path, job: dict[str, Any]) -> dict[str, int]:
    """Every expected (id, image_index) exactly once in the manifest, each file's sha256 right."""
    from pipeline import api, expand

    plan = expand.build_plan(api.job_from_dict(job))
    expected = {(v.id, i) for v in expand.variants(plan) for i in range(v.images_expected)}
    seen: Counter[tuple[str, int]] = Counter()
    bad_hash = missing_file = 0
    with (out / "manifest.jsonl").open("rb") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("kind") != "generation":
                continue
            seen[(record["id"], record["image_index"])] += 1
            path = out / record["file"]
            if not path.is_file():
                missing_file += 1
            elif hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
                bad_hash += 1
    return {"expected": len(expected), "recorded": sum(seen.values()),
            "missing": len(expected - set(seen)), "duplicated": sum(1 for n in seen.values() if n > 1),
            "unexpected": len(set(seen) - expected), "sha256_mismatch": bad_hash,
            "file_missing": missing_file}


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
    with Farm(backends, {"latency_s": 0.0, "hang_s": HANG_S, **FAULT_MIX}) as farm:
        for _ in range(3):  # the run, then at most two resumes
            run = ctx.run(farm, "sdbatch", job, keep_output=True, sample_rss_s=0.25,
                          extra={"out": str(out)})
            attempts.append(run)
            if run.report.get("status") == "complete":
                break
    check = verify_output(out, job)
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
