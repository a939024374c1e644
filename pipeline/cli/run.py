"""``sdbatch run JOB``: generate every variant of a job (resumes where it stopped)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pipeline.cli.common import (StopSignals, add_job_selection, out_dir_for, parse_shard,
                                 positive_float, resolve_backends, resume_command)
from pipeline.errors import ExitStatus, UsageError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="generate every variant of a job (resumes where it stopped)",
                       description="Expand the job, fan variants out over the backends with "
                       "per-host limits and retries, and write every image with its resolved "
                       "seed and metadata. Rerun the same command to resume: it finishes what is "
                       "missing and requests nothing twice.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_selection(p)
    p.add_argument("--out", "-o", metavar="DIR", help="output directory (default: the job's "
                   "'output', else out/<job name>)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="only the first N variants of the job (try a job before the full run)")
    p.add_argument("--only", action="append", default=[], metavar="ID",
                   help="only the variant with this id (repeat for several; ids are in the "
                        "manifest and failures.jsonl)")
    p.add_argument("--grace-s", type=positive_float("--grace-s"), default=30.0, metavar="S",
                   help="on Ctrl-C/SIGTERM, how long in-flight requests may finish (default 30)")
    p.add_argument("--interrupt-backends", action="store_true",
                   help="when the grace period ends, POST /sdapi/v1/interrupt to busy backends "
                        "(stops whatever job they run, possibly another client's)")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip fsync after each file (faster; a power cut may then lose recent "
                        "images, which a rerun regenerates)")
    p.add_argument("--verify", action="store_true",
                   help="on resume, check every recorded image's sha256 (default: its size); "
                        "images that changed are made again")
    p.add_argument("--wait-for-lock", type=positive_float("--wait-for-lock"), default=0.0,
                   metavar="S", help="if another run holds the output directory, wait up to S "
                   "seconds for it (default: exit 2 at once)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, only errors")
    p.add_argument("--json", action="store_true",
                   help="machine-readable events on stdout, one JSON object a line")
    p.add_argument("--progress-interval-s",
                   type=positive_float("--progress-interval-s", above_zero=True), default=10.0,
                   metavar="S",
                   help="seconds between progress lines when not on a terminal (default 10)")
    p.add_argument("--sim-latency-s", type=positive_float("--sim-latency-s"), default=0.02,
                   metavar="S", help="per-image latency of the built-in simulator, used only when "
                   "no backend is configured (default 0.02)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.expand import build_plan
    from pipeline.job.load import load_job
    from pipeline.run.runner import RunOptions
    from pipeline.run.start import RunRequest

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    options = RunOptions(out_dir=out_dir_for(spec, args.out, writable=True),
                         backends=tuple(backends),
                         shard=parse_shard(args.shard), grace_s=args.grace_s,
                         fsync=not args.no_fsync, interrupt_backends=args.interrupt_backends,
                         limit=args.limit, only=tuple(args.only), verify=args.verify,
                         lock_wait_s=args.wait_for_lock)
    plan = build_plan(spec)  # template and wildcard errors surface before anything starts
    request = RunRequest(spec, plan, options, sim_latency_s=args.sim_latency_s)
    return asyncio.run(_run(request, args))


async def _run(request: Any, args: argparse.Namespace) -> int:
    from pipeline.run.report import JsonEvents, Reporter
    from pipeline.run.start import open_run

    quiet = args.quiet or args.json
    reporter = Reporter(quiet=quiet, interval_s=args.progress_interval_s)
    listeners: tuple[Any, ...] = (reporter, JsonEvents()) if args.json else (reporter,)
    with StopSignals() as signals:  # preflight: a signal stops at once, nothing is written
        try:
            async with open_run(request, listeners=listeners) as run:
                signals.attach(run)  # from here: graceful stop, a second signal stops at once
                if run.options.simulated and not quiet:
                    print("sdbatch: no backend configured; started the built-in simulated WebUI "
                          f"backend at {run.options.backends[0].url}", file=sys.stderr)
                if not quiet:
                    for notice in run.notices:  # preflight's; the run's own come with RunStarted
                        print(f"sdbatch: {notice}", file=sys.stderr)
                render = asyncio.create_task(reporter.render())
                try:
                    summary = await run.execute()
                finally:
                    render.cancel()
                    await asyncio.gather(render, return_exceptions=True)
        except asyncio.CancelledError:
            if signals.early is None:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            print(f"sdbatch: {signals.early_message()}", file=sys.stderr)
            return ExitStatus.INTERRUPTED
    reporter.summary(resume_command(sys.argv[1:] if sys.argv[1:] else
                                    ["run", request.spec.source_path]))
    return ExitStatus(summary.exit_code)
