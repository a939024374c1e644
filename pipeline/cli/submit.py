"""``sdbatch submit JOB --queue redis://... --out s3://bucket/prefix``: put a job in the queue."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson


def add_parser(sub: Any) -> None:
    from pipeline.fleet.cli import add_queue_option

    p = sub.add_parser(
        "submit", help="put a job's variants in a Redis queue for agents on other machines",
        description="Expand the job lazily into the queue (one Redis stream per checkpoint), "
        "idempotently: submitting again adds only what is missing or failed, and variants whose "
        "record the store already holds are marked done. Agents ('sdbatch agent') generate them "
        "and write to --out; 'sdbatch collect' builds the output directory.")
    p.add_argument("job", help="the job file (YAML or JSON)")
    add_queue_option(p)
    p.add_argument("--out", required=True, metavar="STORE",
                   help="where agents write: s3://BUCKET/PREFIX[?endpoint=URL] (credentials from "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or s3://KEY:SECRET@...), or a "
                        "folder every agent mounts")
    p.add_argument("--lease-s", type=float, default=300.0, metavar="S",
                   help="how long an agent that stops answering keeps its variants before "
                        "others take them over; agents renew their leases while they work, so "
                        "this only needs to outlive a stall (default 300)")
    p.add_argument("--max-deliveries", type=int, default=5, metavar="N",
                   help="a variant delivered more often than this (its agents kept dying) goes "
                        "to the dead letter with its errors (default 5)")
    p.add_argument("--no-skip-stored", action="store_true",
                   help="do not look in the store for records of earlier runs")
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.errors import UsageError
    from pipeline.expand import build_plan
    from pipeline.fleet.cli import open_queue
    from pipeline.fleet.submit import submit
    from pipeline.fleet.urls import parse_store_url
    from pipeline.job.load import load_job

    if args.lease_s <= 0 or args.max_deliveries < 1:
        raise UsageError("--lease-s must be positive and --max-deliveries at least 1")
    spec = load_job(args.job)
    plan = build_plan(spec)
    store = parse_store_url(args.out)

    async def go() -> Any:
        queue = open_queue(args)
        try:
            return await submit(queue, spec, store, plan=plan, lease_s=args.lease_s,
                                max_deliveries=args.max_deliveries,
                                skip_stored=not args.no_skip_stored), queue.shown
        finally:
            await queue.close()

    summary, shown = asyncio.run(go())
    meta = summary.job
    if args.json:
        sys.stdout.write(orjson.dumps({
            "job": meta.id, "name": meta.name, "store": meta.store, "queue": shown,
            "total": meta.total, "enqueued": summary.enqueued, "added": summary.added,
            "requeued": summary.requeued, "already": summary.already,
            "found_stored": summary.found_stored, "repeated": summary.repeated,
            "inputs_uploaded": summary.inputs_uploaded,
            "checkpoints": list(meta.checkpoints)}).decode() + "\n")
        return 0
    if summary.note:
        print(f"sdbatch: {summary.note}", file=sys.stderr)
    streams = len(meta.checkpoints)
    print(f"job {meta.name} ({meta.id}): {meta.total} variants -> {meta.store}")
    print(f"  enqueued {summary.enqueued} ({summary.added} new, {summary.requeued} that had "
          f"failed), {summary.already} already queued or done, {summary.found_stored} found in "
          f"the store; {streams} stream{'s' if streams != 1 else ''} (one per checkpoint)")
    if summary.inputs_uploaded:
        print(f"  uploaded {summary.inputs_uploaded} input image(s) to the store")
    print(f"  agents: sdbatch agent --queue {shown} --backend http://HOST:7861")
    print(f"  then:   sdbatch collect --queue {shown} --job {meta.id} --out DIR")
    return 0
