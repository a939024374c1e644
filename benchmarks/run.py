"""The benchmark suite's entry point: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

    .venv/bin/python -m benchmarks            # the full suite (about 70 minutes on 2 cores, half
                                              # of it the memory case's million variants)
    .venv/bin/python -m benchmarks --quick    # a sanity check, about 3 minutes
    .venv/bin/python -m benchmarks --only scheduling,client_cost --reps 5

Starts simulated WebUI backends on 127.0.0.1 in child processes, runs each case with the client
in a process of its own, prints a table and writes ``benchmarks/results/latest.json`` and
``latest.md`` (the directory is not committed; BENCHMARKS.md is the write-up).
``--pipeline DIR`` measures the ``pipeline`` package found in DIR instead (a scratch copy with
a candidate fix), against the same backends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `pipeline` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cases_fleet, cases_mixed, cases_scale, cases_speed
from benchmarks.context import Ctx
from benchmarks.report import CaseResult, machine, render_markdown, render_text, to_json

CASES: dict[str, Callable[[Ctx], CaseResult]] = {
    "scheduling": cases_speed.scheduling,
    "client_cost": cases_speed.client_cost,
    "ceiling": cases_speed.ceiling,
    "memory": cases_scale.memory,
    "checkpoints": cases_scale.checkpoints,
    "mixed": cases_mixed.mixed,
    "faults": cases_speed.faults,
    "soak": cases_scale.soak,
    "fleet": cases_fleet.fleet,
}
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one repetition: a sanity check of about 3 minutes")
    parser.add_argument("--only", metavar="CASE,...",
                        help="run only these cases: " + ", ".join(CASES))
    parser.add_argument("--reps", type=int, metavar="N",
                        help="repetitions of each comparison (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="DIR",
                        help=f"where latest.json and latest.md go (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the runs' output directories")
    parser.add_argument("--pipeline", metavar="DIR",
                        help="measure the pipeline package in DIR (a scratch copy) instead")
    parser.add_argument("--memory-variants", type=int, default=1_000_000, metavar="N",
                        help="the memory case's large run in full mode (default 1,000,000; "
                             "about half an hour); a multiple of 200")
    args = parser.parse_args(argv)
    selected = list(CASES)
    if args.only:
        selected = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in selected if name not in CASES]
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.pipeline and not (Path(args.pipeline) / "pipeline" / "__init__.py").is_file():
        parser.error(f"--pipeline {args.pipeline}: no pipeline/__init__.py there")
    reps = args.reps or (1 if args.quick else 3)
    mode = "quick" if args.quick else "full"
    workdir = Path(tempfile.mkdtemp(prefix="sdbatch-bench-"))
    if args.memory_variants < 200 or args.memory_variants % 200:
        parser.error("--memory-variants must be a positive multiple of 200")
    ctx = Ctx(quick=args.quick, reps=reps, workdir=workdir, keep=args.keep,
              pipeline_root=str(Path(args.pipeline).resolve()) if args.pipeline else None,
              memory_variants=args.memory_variants)
    info = machine()
    if args.pipeline:
        info["pipeline_under_test"] = ctx.pipeline_root
    results: list[CaseResult] = []
    started = time.monotonic()
    sys.stderr.write(f"sdbatch benchmarks ({mode}, {reps} repetition(s)); scratch {workdir}\n")
    try:
        for name in selected:
            t0 = time.monotonic()
            sys.stderr.write(f"- {name}\n")
            try:
                result = CASES[name](ctx)
            except Exception:  # noqa: BLE001 - one broken case must not hide the others
                result = CaseResult(name, name, "", error=traceback.format_exc())
                sys.stderr.write(result.error)
            result.seconds = time.monotonic() - t0
            results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    info["total_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(to_json(results, info, mode))
    (args.out / "latest.md").write_text(render_markdown(results, info, mode))
    print(render_text(results, info, mode))
    print(f"\n({info['total_s']:.0f} s; written to {args.out / 'latest.json'} and latest.md)")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
