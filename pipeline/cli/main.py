"""The command line: ``sdbatch run | plan | sim`` (and ``python -m pipeline ...``).

This is the one choke point where errors become exit codes and text:
0 everything done, 1 some variants failed / the run stopped on an error, 2 bad usage or job
file, 130 interrupted. Nothing below prints a traceback for an error we expected.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import JobError, SdbatchError, UsageError

log = logging.getLogger("pipeline")

EPILOG = """\
examples:
  sdbatch run jobs/example.yaml                 # no backend configured: built-in simulator
  sdbatch run sweep.yaml --out out/sweep        # backends listed in the job file
  sdbatch run sweep.yaml --backend http://gpu1:7861 --backend http://user:pass@gpu2:7861
  sdbatch plan sweep.yaml                       # what it will generate, and how long it takes
  sdbatch sim --port 7861                       # a simulated WebUI backend on its own

Rerun the same command after a crash, Ctrl-C or a closed laptop: it finishes what is missing
and requests nothing twice. Exit codes: 0 all done, 1 some failed (see failures.jsonl),
2 bad usage or job file, 130 interrupted.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: exit 2, with the fix
        raise UsageError(f"{self.prog}: {message}\n  fix: see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdbatch", description="Batch image generation on Stable Diffusion "
                     "WebUI backends (AUTOMATIC1111, Forge, SD.Next): job file in, images with "
                     "resolved seeds and full metadata out, crash-safe and resumable.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sdbatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_plan(sub)
    _add_sim(sub)
    for extension in _extensions():
        extension(sub)
    return parser


def _extensions() -> list[Any]:
    """Subcommands that live beside the code they drive: check, grid, reproduce, import."""
    from pipeline.cli import check as preflight_cli, importers as importers_cli, reproduce
    from pipeline.cli import grid as grid_cli

    return [preflight_cli.add_parser, grid_cli.add_parser, reproduce.add_parser,
            importers_cli.add_parser]


def _add_job_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job file (YAML or JSON)")
    p.add_argument("--backend", action="append", default=[], metavar="URL",
                   help="a WebUI backend, e.g. http://127.0.0.1:7861 or http://user:pass@host:7861 "
                        "(repeat for several; replaces the job file's backends)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="requests in flight per backend (default: the job's, else 1; the WebUI "
                        "runs one job at a time, so 1-2 is right)")
    p.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint shares of the "
                   "variants (split by id: N machines can share one sweep without talking)")
    p.add_argument("--subpath", metavar="PREFIX", default="",
                   help="URL path prefix in front of /sdapi/v1 on every backend (a WebUI behind a "
                        "reverse proxy at e.g. /sd)")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="generate every variant of a job (resumes where it stopped)",
                       description="Expand the job, fan variants out over the backends with "
                       "per-host limits and retries, and write every image with its resolved "
                       "seed and metadata. Rerun to resume.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_job_selection(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: the job's "
                   "'output', else out/<job name>)")
    p.add_argument("--grace-s", type=float, default=30.0, metavar="S",
                   help="on Ctrl-C/SIGTERM, how long in-flight requests may finish (default 30)")
    p.add_argument("--interrupt-backends", action="store_true",
                   help="when the grace period ends, POST /sdapi/v1/interrupt to busy backends "
                        "(stops whatever job they run, possibly another client's)")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip fsync after each file (faster; a power cut may then lose recent "
                        "images, which a rerun regenerates)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, only errors")
    p.add_argument("--progress-interval-s", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when not on a terminal (default 10)")
    p.add_argument("--sim-latency-s", type=float, default=0.02, metavar="S",
                   help="per-image latency of the built-in simulator, used only when no backend "
                        "is configured (default 0.02)")
    p.set_defaults(func=cmd_run)


def _add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="show what a job will generate and how long it will take",
                       description="Count variants and images without generating anything; "
                       "show the axes, the first variants as they would be sent, the checkpoint "
                       "switches and an estimated duration.")
    _add_job_selection(p)
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.add_argument("--show", type=int, default=3, metavar="N", help="variants to show (default 3)")
    p.add_argument("--per-image-s", type=float, default=None, metavar="S",
                   help="seconds one backend needs per image, for the estimate (default: "
                        "measured from the output directory if it has a manifest, else 2.0)")
    p.add_argument("--out", metavar="DIR", help="an output directory whose manifest gives the "
                   "measured seconds per image (default: the job's output directory)")
    p.set_defaults(func=cmd_plan)


def _add_sim(sub: Any) -> None:
    from pipeline.sim import add_sim_arguments

    p = sub.add_parser("sim", help="run the simulated WebUI backend (no GPU needed)",
                       description="A real HTTP server speaking the AUTOMATIC1111 WebUI API on "
                       "127.0.0.1, with knobs for latency, checkpoint-switch cost and faults. "
                       "Point sdbatch (or any WebUI client) at it.")
    add_sim_arguments(p)
    p.set_defaults(func=cmd_sim)


# --- helpers ---------------------------------------------------------------------------------

def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index_s, total_s = text.split("/")
        index, total = int(index_s), int(total_s)
    except ValueError:
        raise UsageError(f"--shard {text!r} is not I/N\n  fix: e.g. --shard 1/4 for the first "
                         "of four shares") from None
    if not (1 <= index <= total):
        raise UsageError(f"--shard {text!r}: I must be between 1 and N\n  fix: e.g. --shard 2/4")
    return index, total


def resolve_backends(spec: Any, urls: list[str], concurrency: int | None,
                     subpath: str = "") -> list[Any]:
    from pydantic import ValidationError

    from pipeline.job.schema import BackendSpec

    if concurrency is not None and concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    prefix = "/" + subpath.strip("/") if subpath.strip("/") else ""
    if prefix and not all(part and part not in (".", "..") for part in prefix[1:].split("/")):
        raise UsageError(f"--subpath {subpath!r} is not a URL path like /sd")
    if urls:
        backends = []
        for url in urls:
            try:
                backends.append(BackendSpec.model_validate(
                    {"url": url, "concurrency": concurrency or 1}))
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                raise UsageError(f"--backend: {msg}") from None
    else:
        backends = list(spec.backends)
        if concurrency is not None:
            backends = [b.model_copy(update={"concurrency": concurrency}) for b in backends]
    if prefix:
        if not backends:
            raise UsageError("--subpath needs backends (in the job or with --backend)")
        backends = [b.model_copy(update={"url": b.url + prefix}) for b in backends]
    return backends


def default_out_dir(spec: Any, job_path: str, out: str | None) -> Path:
    if out:
        return Path(out)
    if spec.output:
        return Path(spec.output)
    from pipeline.job.naming import slugify

    return Path("out") / slugify(spec.name or Path(job_path).stem)


def _resume_command(argv: list[str]) -> str:
    return "sdbatch " + " ".join(shlex.quote(_redact(a)) for a in argv)


def _redact(arg: str) -> str:
    from pipeline.job.schema import BackendSpec

    if "@" in arg and "://" in arg:
        try:
            return BackendSpec.model_validate({"url": arg}).url.replace("://", "://USER:PASS@", 1)
        except Exception:
            return "URL"
    return arg


# --- commands ----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.job.load import load_job

    from pipeline.expand import build_plan

    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    shard = parse_shard(args.shard)
    out_dir = default_out_dir(spec, args.job, args.out)
    plan = build_plan(spec)  # template and wildcard errors surface before anything starts
    return asyncio.run(_run_async(spec, plan, backends, shard, out_dir, args))


async def _run_async(spec: Any, plan: Any, backends: list[Any], shard: Any, out_dir: Path,
                     args: argparse.Namespace) -> int:
    from pipeline.api import backends_or_sim
    from pipeline.backends.preflight import payload_extras, prepare_run
    from pipeline.run.report import Reporter
    from pipeline.run.runner import Run, RunOptions

    async with backends_or_sim(backends, sim_latency_s=args.sim_latency_s) as (backends, sim_url):
        if sim_url and not args.quiet:
            print(f"sdbatch: no backend configured; started the built-in simulated WebUI "
                  f"backend at {sim_url}", file=sys.stderr)
        options = RunOptions(out_dir=out_dir, backends=tuple(backends), shard=shard,
                             grace_s=args.grace_s, fsync=not args.no_fsync,
                             interrupt_backends=args.interrupt_backends,
                             simulated=sim_url is not None)
        can_serve, verdict = await prepare_run(spec, plan, options)
        if not args.quiet:
            for finding in verdict.findings:
                if finding.missing_on and finding.available_on:
                    print(f"sdbatch: {finding.kind} {finding.name!r} is only on "
                          f"{', '.join(finding.available_on)}: its variants go there only",
                          file=sys.stderr)
        run = Run(spec, options, plan=plan, can_serve=can_serve,
                  payload_extras={i.label: payload_extras(i) for i in verdict.infos},
                  sampler_aliases={i.label: i.sampler_aliases for i in verdict.infos})
        reporter = Reporter(run, quiet=args.quiet, interval_s=args.progress_interval_s)
        run.add_listener(reporter)
        loop = asyncio.get_running_loop()
        presses = 0

        def on_signal(signame: str) -> None:
            nonlocal presses
            presses += 1
            run.request_stop(f"{signame} received", hard=presses > 1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        render = asyncio.create_task(reporter.render())
        try:
            summary = await run.execute()
        finally:
            render.cancel()
            await asyncio.gather(render, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        reporter.summary(_resume_command(sys.argv[1:] if sys.argv[1:] else ["run", spec.source_path]))
        return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.job.load import load_job
    from pipeline.cli.plan import plan_report

    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    shard = parse_shard(args.shard)
    out_dir = default_out_dir(spec, args.job, args.out)
    return plan_report(spec, backends, shard=shard, out_dir=out_dir, as_json=args.json,
                       show=args.show, per_image_s=args.per_image_s)


def cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.sim import config_from_args, run_sim

    run_sim(config_from_args(args), host=args.host, port=args.port)
    return 0


# --- the choke point ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity = sum(a.count("v") for a in argv if a.startswith("-v") and set(a[1:]) == {"v"})
    verbosity += argv.count("--verbose")
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)],
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SdbatchError as exc:
        kind = "job file error" if isinstance(exc, JobError) else "error"
        print(f"sdbatch: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sdbatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
