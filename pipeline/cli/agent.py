"""``sdbatch agent --queue redis://... --backend http://127.0.0.1:7861``: one per GPU machine."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    from pipeline.fleet.cli import add_queue_option

    p = sub.add_parser(
        "agent", help="pull variants from a fleet queue and generate them on local backends",
        description="Lease variants from the queue (preferring the checkpoint a backend has "
        "loaded), generate them with the same client, checks and retries as 'sdbatch run', "
        "write images and records to the job's store, and only then acknowledge them. Agents "
        "may join and leave at any time; SIGTERM finishes (or hands back) the work in flight.")
    add_queue_option(p)
    p.add_argument("--backend", action="append", default=[], metavar="URL", required=True,
                   help="a WebUI backend this agent drives, e.g. http://127.0.0.1:7861 "
                        "(repeat for several GPUs)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="requests in flight per backend (default 1)")
    p.add_argument("--timeout-s", type=float, default=600.0, metavar="S",
                   help="longest a generation may take, a checkpoint load included (default 600)")
    p.add_argument("--name", metavar="ID", help="this agent's id in status (default host-pid-xxxx)")
    p.add_argument("--store", metavar="URL", help="where this machine reaches the jobs' store, "
                   "when not at the submitted URL (a shared folder mounted elsewhere)")
    p.add_argument("--grace-s", type=float, default=30.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, how long work in flight may finish before it is "
                        "handed back (default 30; a second signal hands back at once)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="leave once every job in the queue has nothing left queued")
    p.add_argument("--interrupt-backends", action="store_true",
                   help="when the grace period ends, POST /sdapi/v1/interrupt to busy backends")
    p.add_argument("--heartbeat-s", type=float, default=5.0, metavar="S",
                   help="seconds between heartbeats (default 5)")
    p.add_argument("--poll-s", type=float, default=1.0, metavar="S",
                   help="longest wait between looks at an empty queue (default 1)")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip fsync for a shared-folder store")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--progress-interval-s", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines (default 10)")
    p.set_defaults(func=cmd_agent)


def backend_specs(urls: list[str], concurrency: int, timeout_s: float) -> tuple[Any, ...]:
    from pydantic import ValidationError

    from pipeline.errors import UsageError
    from pipeline.fleet.urls import redact
    from pipeline.job.schema import BackendSpec

    if concurrency < 1 or timeout_s <= 0:
        raise UsageError("--concurrency must be at least 1 and --timeout-s positive")
    specs = []
    for url in urls:
        try:
            specs.append(BackendSpec.model_validate({"url": url, "concurrency": concurrency,
                                                     "timeout_s": timeout_s}))
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise UsageError(f"--backend {redact(url)}: {redact(msg)}") from None
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError("--backend names the same backend twice")
    return tuple(specs)


def cmd_agent(args: argparse.Namespace) -> int:
    from pipeline.fleet.agent import AgentOptions
    from pipeline.fleet.cli import open_queue
    from pipeline.fleet.urls import parse_store_url

    options = AgentOptions(
        backends=backend_specs(args.backend, args.concurrency, args.timeout_s),
        agent_id=args.name, store=parse_store_url(args.store) if args.store else None,
        grace_s=args.grace_s, heartbeat_s=args.heartbeat_s, poll_s=args.poll_s,
        exit_when_done=args.exit_when_done, interrupt_backends=args.interrupt_backends,
        fsync=not args.no_fsync, patience_s=args.patience_s)
    return asyncio.run(_run(open_queue(args), options, args))


async def _run(queue: Any, options: Any, args: argparse.Namespace) -> int:
    from pipeline.fleet.agent import Agent

    agent = Agent(queue, options)
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal(name: str) -> None:
        nonlocal presses
        presses += 1
        if not args.quiet:
            print(f"sdbatch agent: {name}: " + ("handing back work in flight now" if presses > 1
                  else f"finishing work in flight (up to {options.grace_s:g} s; again to hand "
                  "it back now)"), file=sys.stderr)
        agent.request_stop(hard=presses > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    if not args.quiet:
        print(f"sdbatch agent {agent.id}: queue {queue.shown}, backends "
              f"{', '.join(s.label for s in options.backends)}", file=sys.stderr)
    progress = None if args.quiet else asyncio.create_task(_progress(agent, args))
    try:
        await agent.run()
    finally:
        if progress is not None:
            progress.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await queue.close()
    if not args.quiet:
        print(f"sdbatch agent {agent.id}: stopped; {_line(agent)}", file=sys.stderr)
    return 0


async def _progress(agent: Any, args: argparse.Namespace) -> None:
    while True:
        await asyncio.sleep(args.progress_interval_s)
        print(f"sdbatch agent {agent.id}: {_line(agent)}", file=sys.stderr, flush=True)


def _line(agent: Any) -> str:
    s = agent.stats
    return (f"{s.done} variant(s) done, {s.images} image(s), {s.images_per_s():.2f} images/s, "
            f"{agent.in_flight} in flight, {s.reclaimed} reclaimed, {s.handed_back} handed back, "
            f"{s.dead} failed for good, {s.found_stored} found already stored")
