"""``sdbatch status --queue redis://...``: jobs (pending, leased, done, dead) and agents."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson


def add_parser(sub: Any) -> None:
    from pipeline.fleet.cli import add_queue_option

    p = sub.add_parser("status", help="what a fleet queue holds: jobs and agents",
                       description="Per job: variants pending (waiting for an agent), leased "
                       "(an agent has them), done and dead (failed for good). Per agent: its "
                       "backends, their loaded checkpoints and images per second, and when it "
                       "was last heard from.")
    add_queue_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.add_argument("--heartbeat-s", type=float, default=5.0, metavar="S",
                   help="the agents' heartbeat interval: silent for 3 of them = lost (default 5)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.fleet.cli import open_queue
    from pipeline.fleet.status import gather

    async def go() -> Any:
        queue = open_queue(args)
        try:
            return await gather(queue, heartbeat_s=args.heartbeat_s), queue.shown
        finally:
            await queue.close()

    (jobs, agents), shown = asyncio.run(go())
    if args.json:
        sys.stdout.write(orjson.dumps({"queue": shown, "jobs": [j.as_dict() for j in jobs],
                                       "agents": [a.as_dict() for a in agents]}).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"jobs in {shown}", title_justify="left")
    for col in ("job", "id", "total", "pending", "leased", "done", "dead", "images", "store"):
        table.add_column(col, justify="right" if col in ("total", "pending", "leased", "done",
                                                         "dead", "images") else "left")
    for job in jobs:
        d = job.as_dict()
        table.add_row(d["name"], d["id"], str(d["total"]), str(d["pending"]), str(d["leased"]),
                      str(d["done"]), f"[red]{d['dead']}[/]" if d["dead"] else "0",
                      str(d["images"]), d["store"])
    console.print(table)
    if not agents:
        console.print("no agents seen yet (start one: sdbatch agent --queue ... --backend URL)")
        return 0
    table = Table(title="agents", title_justify="left")
    for col in ("agent", "state", "seen", "in flight", "done", "images/s", "backends"):
        table.add_column(col)
    now = time.time()
    for agent in agents:
        d = agent.as_dict()
        backends = "; ".join(f"{b.get('label')} [{b.get('state')}] "
                             f"{b.get('checkpoint') or b.get('loaded') or '-'} "
                             f"{b.get('images_per_s', 0):g}/s" for b in d.get("backends") or ())
        state = {"lost": "[red]lost[/]", "running": "[green]running[/]"}.get(d["state"],
                                                                            d["state"])
        age = now - float(d.get("seen") or now)
        table.add_row(str(d.get("id")), state, f"{age:.0f} s ago", str(d.get("in_flight", 0)),
                      str(d.get("done", 0)), f"{d.get('images_per_s', 0):g}", backends)
    console.print(table)
    return 0
