"""``sdbatch sim``: a simulated backend on its own (no GPU needed)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from pipeline.sim import add_sim_arguments

    p = sub.add_parser("sim", help="run a simulated WebUI (or ComfyUI) backend (no GPU needed)",
                       description="A real HTTP server on 127.0.0.1 speaking the AUTOMATIC1111 "
                       "WebUI API (or, with --kind comfyui, the ComfyUI API), with knobs for "
                       "latency, checkpoint-switch cost and faults. Point sdbatch (or any client) "
                       "at it.")
    add_sim_arguments(p)
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.sim import config_from_args, run_sim

    run_sim(config_from_args(args), host=args.host, port=args.port)
    return 0
