"""The simulated ComfyUI server: a real aiohttp server speaking the ComfyUI 0.3.64 API.

Built against what a real ComfyUI 0.3.64 answered (``shared/real-comfy/``): ``POST /prompt``
validation with ComfyUI's own error shapes and quirks, the queue run one prompt at a time in
``number`` order, history that is ``{}`` until a prompt ends, the websocket message sequence
and routing, the classic cache (the same graph again is not executed and repeats the earlier
file names), ``SaveImage``'s ``prefix_NNNNN_.png`` with ``prompt``/``extra_pnginfo`` text
chunks, ``/view`` and its errors, interrupts, ``/object_info`` with the config's names. Images
are cheap and deterministic (seed-laid-out, recoloured by checkpoint, LoRA, settings and batch
index). Knobs add latency per sampling step, checkpoint-load cost, restarts that lose queue
and history, and injected faults.

    sim = await start_comfy_sim(ComfySimConfig(step_latency_s=0.01))
    ...  # point a client at sim.url (also ws://.../ws?clientId=...)
    sim.stats.max_running, sim.stats.posts_per_id   # what the server saw
    sim.config = replace(sim.config, error_rate=0.5)  # knobs change while it runs
    await sim.restart()   # queue and history gone, same port
    await sim.close()

Over HTTP (for a server in another thread or process): ``GET /sim/stats``,
``GET``/``POST /sim/config``, ``POST /sim/restart``.

Modules: ``config`` (settings), ``nodes`` (node classes, /object_info), ``validate``,
``graph`` (cache signatures, execution order), ``nodefuncs`` (what nodes do), ``images``
(pictures, files, paths), ``executor`` (one prompt and its messages), ``queue`` (queue,
history, websocket hub), ``state`` (one server life, counters), ``routes``, ``jobs``
(the optional newer ``/api/jobs``), ``server`` (start/restart/close, the CLI loop),
``cli_args``.
"""

from typing import Any

from pipeline.sim.comfy.cli_args import add_comfy_arguments, comfy_config_from_args
from pipeline.sim.comfy.config import ComfySimConfig

__all__ = ["ComfySimConfig", "ComfySimServer", "ComfySimStats", "add_comfy_arguments",
           "comfy_config_from_args", "run_comfy_sim", "start_comfy_sim"]

_LAZY = {"ComfySimServer": "server", "start_comfy_sim": "server", "run_comfy_sim": "server",
         "ComfySimStats": "state"}


def __getattr__(name: str) -> Any:
    """The server is imported on first use (the CLI parser only needs the flags)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"pipeline.sim.comfy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.sim.comfy' has no attribute {name!r}")
