"""``sdbatch sim``: a simulated backend on its own (no GPU needed)."""

from __future__ import annotations

import argparse
from typing import Any
from pipeline.errors import ExitStatus


def add_parser(sub: Any) -> None:
    from pipeline.sim import add_sim_arguments
    from pipeline.sim.comfy import add_comfy_arguments

    p = sub.add_parser("sim", help="run a simulated WebUI or ComfyUI backend (no GPU needed)",
                       description="A real HTTP server on 127.0.0.1 speaking the AUTOMATIC1111 "
                       "WebUI API (profiles a1111, forge, sdnext, as recorded from real servers) "
                       "or, with --kind comfyui, the ComfyUI API, with knobs for latency, "
                       "checkpoint-switch cost and faults. Point sdbatch (or any client) at it.",
                       epilog="examples:\n  sdbatch sim --port 7861 --profile forge\n"
                       "  sdbatch sim --kind comfyui --port 8188",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("webui", "comfyui"), default="webui",
                   help="which API to speak (default webui)")
    add_sim_arguments(p)
    add_comfy_arguments(p)
    p.set_defaults(func=cmd_sim, port=None)  # the kind's own default: 7861 or ComfyUI's 8188


def cmd_sim(args: argparse.Namespace) -> int:
    if args.kind == "comfyui":
        from pipeline.sim.comfy import comfy_config_from_args, run_comfy_sim
        from pipeline.sim.comfy.cli_args import DEFAULT_PORT

        port = DEFAULT_PORT if args.port is None else args.port
        run_comfy_sim(comfy_config_from_args(args), host=args.host, port=port)
        return ExitStatus.OK
    from pipeline.sim import config_from_args, run_sim

    run_sim(config_from_args(args), host=args.host, port=WEBUI_PORT if args.port is None
            else args.port)
    return ExitStatus.OK


WEBUI_PORT = 7861  # as 'webui --nowebui'

