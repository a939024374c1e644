"""Case: a heterogeneous fleet. Backends of three speeds, six checkpoints that cost time to load:
sdbatch's makespan against a computed lower bound and against SwarmUI's rule (``baselines.py``)."""

from __future__ import annotations

from benchmarks import jobs
from benchmarks.context import Ctx, median, spread
from benchmarks.harness import Farm, Farms, Measured
from benchmarks.report import CaseResult, Row

TIME_SCALE = 0.05
# (name, backends, seconds per image, seconds per checkpoint load), before scaling
CLASSES = (("fast", 2, 2.0, 8.0), ("medium", 2, 4.0, 12.0), ("slow", 2, 8.0, 20.0))
MODELS = 6
MIXED_TARGET = 1.05  # makespan / lower bound


def lower_bound_s(count: int, loads_needed: int) -> float:
    """No schedule finishes sooner: in time T backend b makes at most (T - its loads' time) /
    its seconds per image; every checkpoint not loaded anywhere at the start is loaded at least
    once, each load costing at least the cheapest backend's load in images it could have made.
    So T >= (images + loads needed x min(load_s / image_s)) / sum(1 / image_s)."""
    rate = sum(n / (image_s * TIME_SCALE) for _, n, image_s, _ in CLASSES)
    cheapest = min(load_s / image_s for _, _, image_s, load_s in CLASSES)
    return (count + loads_needed * cheapest) / rate


def _farms() -> Farms:
    models = jobs.checkpoint_models(MODELS)
    return Farms([Farm(n, {"latency_s": image_s * TIME_SCALE,
                           "switch_cost_s": load_s * TIME_SCALE, "models": models},
                       pool=True)
                  for _, n, image_s, load_s in CLASSES])


def mixed(ctx: Ctx) -> CaseResult:
    prompts, seeds = (2, 5) if ctx.quick else (5, 30)
    count = prompts * MODELS * seeds
    job = jobs.checkpoint_sweep(MODELS, prompts, seeds)
    bound = lower_bound_s(count, MODELS - 1)
    rate = sum(n / (image_s * TIME_SCALE) for _, n, image_s, _ in CLASSES)
    shown = ", ".join(f"{n} {name} ({image_s:g} s per image, {load_s:g} s per load)"
                      for name, n, image_s, load_s in CLASSES)
    case = CaseResult(
        "mixed", "Heterogeneous fleet: three speeds, six checkpoints",
        f"{sum(c[1] for c in CLASSES)} simulated backends: {shown}, times scaled by "
        f"x{TIME_SCALE:g}. {prompts} prompts x {MODELS} checkpoints x {seeds} seeds = {count} "
        f"variants in job order (prompt, checkpoint, seed); every backend starts with the first "
        f"checkpoint loaded (fresh servers per run). Makespan = first request to last image "
        f"written (sdbatch: from RunStarted, so preflight's name checks are left out; the "
        f"whole call is in details). Lower bound = (images + 5 loads x the cheapest load in "
        f"images) / the fleet's images per second = {bound:.2f} s "
        f"(generations alone {count / rate:.2f} s). 'SwarmUI rule' is SwarmUI's "
        f"BackendHandler assignment re-implemented as a client (baselines.py), its 1.5 s and "
        f"10 s constants scaled too. Concurrency 1 (one request at a time per backend) for "
        f"both. Median of {ctx.reps}, alternating.")
    arms = ("sdbatch", "swarmui")
    runs: dict[str, list[Measured]] = {arm: [] for arm in arms}
    for rep, arm in ctx.alternate(arms):
        ctx.say(f"mixed fleet: {arm} #{rep + 1}")
        with _farms() as farms:
            extra = {"timestamps": True, "time_scale": TIME_SCALE}
            run = ctx.run(farms, arm, job, extra=extra)
        if run.images != count:
            raise RuntimeError(f"{arm}: {run.images} of {count} images")
        runs[arm].append(run)
    span = {a: [r.report["run_s"] for r in rs] for a, rs in runs.items()}
    ratio = {a: median([s / bound for s in v]) for a, v in span.items()}
    loads = {a: median([r.server_stats["checkpoint_loads"] for r in rs]) for a, rs in runs.items()}
    case.rows += [
        Row("sdbatch: makespan / lower bound", ratio["sdbatch"], target=f"<= {MIXED_TARGET}",
            met=ratio["sdbatch"] <= MIXED_TARGET),
        Row("SwarmUI rule: makespan / lower bound", ratio["swarmui"]),
        Row("sdbatch makespan / SwarmUI rule's", median(span["sdbatch"]) / median(span["swarmui"]),
            target="< 1", met=median(span["sdbatch"]) < median(span["swarmui"])),
        Row("sdbatch: checkpoint loads", int(loads["sdbatch"])),
        Row("SwarmUI rule: checkpoint loads", int(loads["swarmui"])),
    ]
    case.details = {arm: {"makespan_s": spread(span[arm]),
                          "wall_s": spread([r.report["wall_s"] for r in rs]),
                          "loads": [r.server_stats["checkpoint_loads"] for r in rs]}
                    for arm, rs in runs.items()}
    case.details["lower_bound_s"] = round(bound, 3)
    case.details["generations_only_s"] = round(count / rate, 3)
    return case
