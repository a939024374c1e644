"""The simulated WebUI backend: a real aiohttp server speaking the AUTOMATIC1111 API.

It generates cheap, seed-dependent images (prompt and seed written on them) instead of running
a model, and reproduces what a batch client meets on real servers: the one-at-a-time queue,
seed resolution, silent substitutions (sampler, checkpoint, LoRA, Dynamic Prompts), grids and
extra images, checkpoint switching costs, HTTP Basic auth, and injected faults (500s, OOM,
resets, hangs, truncated bodies, interrupted jobs). See ``server.py`` for the routes.

``SimConfig.profile`` picks the server kind: ``classic`` (the default, idealised), or
``a1111``, ``forge``, ``sdnext`` as those servers really behave (``profiles.py``); the
``forge`` profile is checked against a recording of a real Forge by
``tests/test_sim_conformance.py``.

    sim = await start_sim(SimConfig(latency_s=0.05, error_rate=0.1))
    forge = await start_sim(SimConfig(profile="forge", switch_cost_s=3.5, hash_cost_s=2))
    ...  # point a client at sim.url
    await sim.close()
"""

from typing import Any

from pipeline.sim.cli_args import add_sim_arguments, config_from_args
from pipeline.sim.config import SimConfig

__all__ = ["SimConfig", "SimServer", "SimStats", "add_sim_arguments", "build_app",
           "config_from_args", "run_sim", "start_sim"]

_LAZY = {"SimServer": "server", "build_app": "server", "run_sim": "server", "start_sim": "server",
         "SimStats": "state"}


def __getattr__(name: str) -> Any:
    """The server is imported on first use: ``sdbatch run`` against real backends never needs it."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"pipeline.sim.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.sim' has no attribute {name!r}")
