"""Command-line flags of ``sdbatch sim --kind comfyui`` and the ``ComfySimConfig`` they make.

``add_comfy_arguments`` composes with the WebUI simulator's ``add_sim_arguments`` in one
parser: a flag the parser already has (``--host``, ``--port``, ``--models``, ``--loras``,
``--switch-cost-s``, ``--error-rate``, ``--hang-rate``, ``--hang-s``, ``--fault-seed``) is
shared, not added twice, and read with the ComfyUI meaning. Sampler and scheduler names differ
between the two APIs, so ComfyUI's have their own flags. LoRA names without an extension get
``.safetensors`` (ComfyUI lists files).
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.errors import UsageError
from pipeline.sim.comfy.config import ComfySimConfig

_DEFAULTS = ComfySimConfig()
DEFAULT_PORT = 8188


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_comfy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ComfyUI simulator's flags (skipping any the parser already has)."""
    group = parser.add_argument_group("ComfyUI simulator (--kind comfyui)")
    have = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public query

    def add(flag: str, **kwargs: Any) -> None:
        if flag not in have:
            group.add_argument(flag, **kwargs)

    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=DEFAULT_PORT,
        help=f"port to bind (default {DEFAULT_PORT}, ComfyUI's; 0 picks a free one)")
    add("--models", type=_names, default=_DEFAULTS.checkpoints, metavar="A,B,...",
        help="checkpoint file names (default: " + ", ".join(_DEFAULTS.checkpoints) + ")")
    add("--loras", type=_names, default=_DEFAULTS.loras, metavar="A,B,...",
        help="LoRA file names (.safetensors is added to names without an extension)")
    add("--comfy-samplers", type=_names, default=None, metavar="A,B,...",
        help="KSampler sampler_name choices (default: ComfyUI 0.3.64's 42)")
    add("--comfy-schedulers", type=_names, default=None, metavar="A,B,...",
        help="KSampler scheduler choices (default: ComfyUI 0.3.64's 9)")
    add("--comfyui-version", default=_DEFAULTS.version,
        help=f"version /system_stats reports (default {_DEFAULTS.version})")
    add("--jobs-api", action="store_true",
        help="serve /api/jobs as newer ComfyUI servers do (0.3.64 answers 404)")
    add("--output-dir", default=None, metavar="DIR",
        help="where SaveImage writes (default: a temporary directory, removed at exit)")
    add("--step-latency-s", type=_seconds, default=0.0, metavar="S",
        help="seconds per sampling step (default 0)")
    add("--switch-cost-s", type=_seconds, default=0.0, metavar="S",
        help="seconds each time a checkpoint loader really runs (default 0)")
    add("--node-latency-s", type=_seconds, default=0.0, metavar="S",
        help="seconds for each other node that runs (default 0)")
    add("--restart-after-prompts", type=int, default=0, metavar="N",
        help="crash and restart while every N-th prompt runs (default 0: never)")
    add("--restart-downtime-s", type=_seconds, default=0.0, metavar="S",
        help="how long the port stays closed in a restart (default 0)")
    for flag, what in (("--http-error-rate", "of POST /prompt answered 500, nothing queued"),
                       ("--drop-rate", "of POST /prompt queued, then the connection reset"),
                       ("--error-rate", "of sampled prompts ending in execution_error"),
                       ("--hang-rate", "of sampled prompts whose KSampler stalls --hang-s"),
                       ("--ws-drop-rate", "of sampled prompts whose websocket is cut")):
        add(flag, type=_rate, default=0.0, metavar="F", help=f"fraction {what} (default 0)")
    add("--hang-s", type=_seconds, default=_DEFAULTS.hang_s, metavar="S",
        help=f"how long a hang lasts (default {_DEFAULTS.hang_s:g})")
    add("--fault-seed", type=int, default=0, metavar="N", help="seed of the fault draws")


def _lora_file(name: str) -> str:
    return name if "." in name.rsplit("/", 1)[-1] else f"{name}.safetensors"


def comfy_config_from_args(ns: argparse.Namespace) -> ComfySimConfig:
    """The ``ComfySimConfig`` the parsed flags describe (missing flags keep the defaults);
    ``UsageError`` for values that make no sense together."""
    def get(name: str, default: Any) -> Any:
        value = getattr(ns, name, None)
        return default if value is None else value

    try:
        return ComfySimConfig(
            checkpoints=tuple(get("models", _DEFAULTS.checkpoints)),
            loras=tuple(_lora_file(n) for n in get("loras", _DEFAULTS.loras)),
            samplers=tuple(get("comfy_samplers", _DEFAULTS.samplers)),
            schedulers=tuple(get("comfy_schedulers", _DEFAULTS.schedulers)),
            version=get("comfyui_version", _DEFAULTS.version),
            jobs_api=bool(get("jobs_api", False)),
            output_dir=get("output_dir", None),
            step_latency_s=get("step_latency_s", 0.0),
            switch_cost_s=get("switch_cost_s", 0.0),
            node_latency_s=get("node_latency_s", 0.0),
            restart_after_prompts=get("restart_after_prompts", 0),
            restart_downtime_s=get("restart_downtime_s", 0.0),
            http_error_rate=get("http_error_rate", 0.0),
            drop_rate=get("drop_rate", 0.0),
            error_rate=get("error_rate", 0.0),
            hang_rate=get("hang_rate", 0.0),
            ws_drop_rate=get("ws_drop_rate", 0.0),
            hang_s=get("hang_s", _DEFAULTS.hang_s),
            fault_seed=get("fault_seed", 0),
        )
    except ValueError as exc:
        raise UsageError(f"sdbatch sim --kind comfyui: {exc}") from exc
