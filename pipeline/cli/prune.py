"""``sdbatch prune OUT``: set aside the images a changed job no longer makes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.errors import ExitStatus, UsageError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("prune", help="move aside the images the (edited) job no longer makes",
                       description="After a job file changed, the output directory may hold "
                       "images of variants the job no longer makes. Move them (with their "
                       "sidecars) into OUT/pruned/<time>/, drop them from the manifest, and "
                       "rebuild the dataset files, grid sheets and gallery from what is left. "
                       "Nothing is deleted.")
    p.add_argument("out", metavar="OUT", help="the output directory")
    p.add_argument("--job", metavar="FILE", help="the job to keep (default: the job the "
                   "directory was last run with, OUT/job.json)")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="only say what would be moved")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from pipeline import expand
    from pipeline.job.load import load_job
    from pipeline.output.lock import DirectoryLock
    from pipeline.output.prune import job_ids, prune
    from pipeline.output.runfiles import load_run_job

    out = Path(args.out)
    if not (out / "manifest.jsonl").is_file():
        raise UsageError(f"{out} holds no manifest.jsonl: it is not an sdbatch output directory")
    spec = load_job(args.job) if args.job else load_run_job(out)
    if spec is None:
        raise UsageError(f"{out} has no job.json\n  fix: name the job with --job FILE")
    ids = job_ids(expand.build_plan(spec))
    lock = DirectoryLock(out)
    lock.acquire()
    try:
        report = prune(out, ids, dry_run=args.dry_run)
        if report.stale_images and not args.dry_run:
            _rebuild(out, spec)
    finally:
        lock.release()
    verb = "would move" if args.dry_run else "moved"
    if not report.stale_images:
        print(f"nothing to prune: all {report.kept_images} images belong to the job")
        return ExitStatus.OK
    print(f"{verb} {report.stale_images} images of {report.stale_variants} variants the job no "
          f"longer makes{' to ' + str(report.moved_to) if report.moved_to else ''}; "
          f"{report.kept_images} images kept")
    for example in report.examples:
        print(f"  {example}")
    return ExitStatus.OK


def _rebuild(out: Path, spec: Any) -> None:
    from pipeline import expand
    from pipeline.grid import LiveOutputs
    from pipeline.outputs import build_exporters

    for exporter in build_exporters(spec, out, plan=expand.build_plan(spec)):
        exporter.rebuild()
    LiveOutputs(out, spec).final()
