"""``sdbatch plan``: what a job will generate and what it will cost, without generating anything.

Counting never expands the job (``expand.count`` multiplies axis sizes), so a million-variant job
plans in well under a second; only ``--shard`` with a small job counts its share exactly.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from pipeline import expand
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.run.report import format_duration
from pipeline.output.layout import MANIFEST
from pipeline.output.resume import read_records
from pipeline.errors import ExitStatus

DEFAULT_PER_IMAGE_S = 2.0
EXACT_SHARD_LIMIT = 200_000


def measured_per_image_s(out_dir: Path, backends: list[BackendSpec]) -> float | None:
    """Median seconds per image measured on these backends (by name or URL) in the first few
    thousand records of an output directory; None when none of them made any there."""
    mine = {b.label for b in backends} | {b.url for b in backends} or {"simulated"}
    samples: list[float] = []
    for record in itertools.islice(read_records(out_dir / MANIFEST), 5000):
        if record.get("backend") not in mine and record.get("backend_url") not in mine:
            continue
        if record.get("kind") == "generation" and record.get("image_index") == 0:
            elapsed, n = record.get("elapsed_s"), record.get("images_expected") or 1
            if isinstance(elapsed, (int, float)) and elapsed > 0:
                samples.append(elapsed / n)
    return statistics.median(samples) if samples else None


def summarize(spec: JobSpec, backends: list[BackendSpec], *, shard: tuple[int, int] | None,
              out_dir: Path | None, show: int, per_image_s: float | None) -> dict[str, Any]:
    plan = expand.build_plan(spec)
    total = expand.count(plan)
    exact = True
    if shard is not None:
        if total <= EXACT_SHARD_LIMIT:
            total = sum(1 for _ in expand.variants(plan, shard=shard))
        else:
            total = (total + shard[1] - shard[0]) // shard[1]
            exact = False
    first = list(itertools.islice(expand.variants(plan, shard=shard), max(show, 1)))
    varying_images = any(k in ("batch_size", "n_iter") for a in plan.axes for k in
                         (a.name.split("+") if a.kind == "zip" else [a.name])) or any(
        "batch_size" in t.overrides or "n_iter" in t.overrides for t in plan.templates)
    if varying_images and total <= EXACT_SHARD_LIMIT * 10:
        images = sum(v.images_expected for v in expand.variants(plan, shard=shard))
    else:
        images = total * (first[0].images_expected if first else 1)
    checkpoints = [c for c in expand.checkpoints(plan)]
    source = "given with --per-image-s"
    if per_image_s is None and out_dir is not None and (out_dir / MANIFEST).exists():
        per_image_s = measured_per_image_s(out_dir, backends)
        source = f"measured on these backends in {out_dir}"
        if per_image_s is None:
            source = (f"a default: {out_dir} has no timings from these backends, and timings "
                      "from others would mislead")
    if per_image_s is None:
        per_image_s = DEFAULT_PER_IMAGE_S
        if not source.startswith("a default"):
            source = "a default guess (nothing measured yet)"
    n_backends = max(1, len(backends))
    axes = {"prompts": expand.prompt_count(plan)}
    axes.update({a.name: len(a) for a in plan.axes})
    axes["seeds"] = expand.seed_count(plan)
    loads_max = len([c for c in checkpoints if c is not None]) + n_backends
    return {
        "variants": total,
        "images": images,
        "exact": exact,
        "axes": axes,
        "checkpoints": checkpoints,
        "checkpoint_loads_at_most": loads_max if any(checkpoints) else 0,
        "backends": [b.label for b in backends] or ["built-in simulator"],
        "per_image_s": per_image_s,
        "per_image_source": source,
        # The WebUI runs one generation at a time, so throughput scales with backends only.
        "estimated_s": images * per_image_s / n_backends,
        "first": [{"id": v.id, "endpoint": v.endpoint, "payload": v.payload} for v in first[:show]],
        "shard": list(shard) if shard else None,
        "writes": planned_files(spec, plan),
    }


def planned_files(spec: JobSpec, plan: Any) -> list[str]:
    """What the run will write into its output directory, as a user reads it."""
    files = ["images/", "manifest.jsonl", "run.json", "job.json", "index.html (gallery)"]
    try:
        from pipeline.grid import planned_sheets

        sheets = planned_sheets(spec, plan)
    except ImportError:
        sheets = []
    if sheets:
        files.append(f"grids/ ({len(sheets)} sheets: {', '.join(sheets[:4])}"
                     f"{', ...' if len(sheets) > 4 else ''})")
    names = {"imagefolder": "metadata.jsonl (Hugging Face imagefolder)",
             "captions": "a .txt caption beside each image", "csv": "metadata.csv",
             "webdataset": "webdataset/ tar shards with a .parquet each",
             "parquet": "parquet/ shards with the images embedded",
             "kohya": "kohya .caption files and meta_cap.json"}
    files += [names.get(str(o), str(o)) for o in spec.outputs]
    return files


def plan_report(spec: JobSpec, backends: list[BackendSpec], *, shard: tuple[int, int] | None,
                out_dir: Path | None, as_json: bool, show: int, per_image_s: float | None,
                stream: Any = None) -> int:
    stream = stream or sys.stdout
    info = summarize(spec, backends, shard=shard, out_dir=out_dir, show=show,
                     per_image_s=per_image_s)
    if as_json:
        stream.write(orjson.dumps(info, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return ExitStatus.OK
    approx = "" if info["exact"] else "~"
    print(f"{approx}{info['variants']} variants", file=stream)
    print(f"{approx}{info['images']} images", file=stream)
    print("axes: " + " x ".join(f"{name} {size}" for name, size in info["axes"].items()),
          file=stream)
    if any(info["checkpoints"]):
        names = ", ".join(str(c) if c else "(backend's current)" for c in info["checkpoints"])
        print(f"checkpoints: {names}; at most {info['checkpoint_loads_at_most']} loads with "
              "checkpoint affinity", file=stream)
    print(f"backends: {', '.join(info['backends'])}", file=stream)
    print(f"estimate: {format_duration(info['estimated_s'])} at {info['per_image_s']:.2f} s per "
          f"image per backend ({info['per_image_source']}; set --per-image-s), plus checkpoint "
          "loads", file=stream)
    print("writes: " + ", ".join(info["writes"]), file=stream)
    if shard:
        print(f"shard {shard[0]}/{shard[1]}", file=stream)
    for n, v in enumerate(info["first"], 1):
        print(f"--- variant {n} ({v['id']}): POST /sdapi/v1/{v['endpoint']}", file=stream)
        print(orjson.dumps(v["payload"], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                           ).decode(), file=stream)
    return ExitStatus.OK


def add_parser(sub: Any) -> None:
    from pipeline.cli.common import add_job_selection

    p = sub.add_parser("plan", help="show what a job will generate and how long it will take",
                       description="Count variants and images without generating anything; "
                       "show the axes, the first variants as they would be sent, the checkpoint "
                       "switches and an estimated duration.")
    add_job_selection(p)
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.add_argument("--show", type=int, default=3, metavar="N", help="variants to show (default 3)")
    p.add_argument("--per-image-s", type=float, default=None, metavar="S",
                   help="seconds one backend needs per image, for the estimate (default: "
                        "measured from the output directory if it has a manifest, else 2.0)")
    p.add_argument("--out", metavar="DIR", help="an output directory whose manifest gives the "
                   "measured seconds per image (default: the job's output directory)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: Any) -> int:
    from pipeline.cli.common import out_dir_for, parse_shard, resolve_backends
    from pipeline.job.load import load_job

    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    return plan_report(spec, backends, shard=parse_shard(args.shard),
                       out_dir=out_dir_for(spec, args.out), as_json=args.json, show=args.show,
                       per_image_s=args.per_image_s)
