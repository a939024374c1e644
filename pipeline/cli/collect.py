"""``sdbatch collect --queue redis://... --out DIR``: the output directory of a fleet job."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson


def add_parser(sub: Any) -> None:
    from pipeline.fleet.cli import add_queue_option

    p = sub.add_parser("collect", help="build a fleet job's output directory from the store",
                       description="Copy what the agents wrote (images, records) into an output "
                       "directory exactly as 'sdbatch run' makes it: images and sidecars, "
                       "manifest.jsonl, failures.jsonl, run.json, job.json, dataset files, grids "
                       "and the gallery. Resumable: run it again to add what came since.")
    add_queue_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the output directory")
    p.add_argument("--job", metavar="ID", help="which job (id, name or store URL; needed when "
                   "the queue holds more than one)")
    p.add_argument("--store", metavar="URL", help="where this machine reaches the job's store, "
                   "when not at the URL it was submitted with (a folder mounted elsewhere, "
                   "credentials in the URL)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="records fetched at once (default 8)")
    p.add_argument("--no-fsync", action="store_true", help="skip fsync after each file")
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    from pipeline.errors import UsageError
    from pipeline.fleet.cli import open_queue, select_job
    from pipeline.fleet.collect import collect
    from pipeline.fleet.urls import parse_store_url

    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    store = parse_store_url(args.store) if args.store else None

    async def go() -> Any:
        queue = open_queue(args)
        try:
            meta = await select_job(queue, args.job)
            return await collect(queue, meta, Path(args.out), store=store,
                                 fsync=not args.no_fsync, concurrency=args.concurrency), meta
        finally:
            await queue.close()

    summary, meta = asyncio.run(go())
    if args.json:
        sys.stdout.write(orjson.dumps({
            "job": meta.id, "out": str(summary.out_dir), "status": summary.status,
            "total": summary.total, "collected": summary.collected, "images": summary.images,
            "already": summary.already, "failed": summary.failed, "broken": summary.broken,
            "queued": summary.queued, "messages": summary.messages}).decode() + "\n")
    else:
        for message in summary.messages:
            print(f"sdbatch: {message}", file=sys.stderr)
        print(f"job {meta.name} ({meta.id}) -> {summary.out_dir}: {summary.status}")
        print(f"  collected {summary.collected} variant(s), {summary.images} image(s); "
              f"{summary.already} were there already; {summary.failed} failed for good "
              "(failures.jsonl)" + (f"; {summary.broken} broken record(s) skipped"
                                    if summary.broken else ""))
        if summary.queued:
            print(f"  {summary.queued} variant(s) still queued: collect again later")
    return 1 if summary.status == "failed" or summary.broken else 0
