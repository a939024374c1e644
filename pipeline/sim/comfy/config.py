"""What a simulated ComfyUI server is: its settings (``ComfySimConfig``) and the names it serves.

The defaults describe a stock ComfyUI 0.3.64 on a CPU: the 42 sampler and 9 scheduler names
its ``KSampler`` offers (``/object_info``), and the same checkpoint files as the simulated
WebUI backend (``pipeline.sim.config.SimConfig.models``) so a mixed run names one set of
models. ComfyUI lists LoRAs as files, so they carry ``.safetensors`` here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal")
CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sdxl_base_1.0.safetensors",
               "dreamshaper_8.safetensors")
LORAS = ("detail_tweaker.safetensors", "add_brightness.safetensors", "film_grain.safetensors")

# Faults drawn per POST /prompt, and per prompt whose KSampler really runs.
POST_FAULTS = ("http_error_rate", "drop_rate")
RUN_FAULTS = ("error_rate", "hang_rate", "ws_drop_rate")


@dataclass(frozen=True, slots=True)
class ComfySimConfig:
    """Settings of one simulated ComfyUI server (``sdbatch sim --kind comfyui --help``).

    Timing: ``step_latency_s`` per sampling step (the real CPU server: 1.6-29 s),
    ``switch_cost_s`` each time a ``CheckpointLoaderSimple`` really executes (first use, or a
    checkpoint other than the last prompt's: the classic cache keeps one), ``node_latency_s``
    for every other executed node. ``restart_after_prompts=N`` crashes and restarts the server
    while the N-th prompt since the last start samples (queue, history and cache lost, port
    closed for ``restart_downtime_s``). Faults, drawn from ``fault_seed``: ``http_error_rate``
    (POST /prompt answered 500, nothing queued), ``drop_rate`` (POST /prompt queued, then the
    connection reset before the answer), and per sampled prompt ``error_rate``
    (``execution_error`` from KSampler), ``hang_rate`` (KSampler stalls ``hang_s``; an
    interrupt ends it) and ``ws_drop_rate`` (the client's websocket is cut mid-run).
    """

    checkpoints: tuple[str, ...] = CHECKPOINTS
    loras: tuple[str, ...] = LORAS
    samplers: tuple[str, ...] = SAMPLERS
    schedulers: tuple[str, ...] = SCHEDULERS
    version: str = "0.3.64"
    jobs_api: bool = False
    step_latency_s: float = 0.0
    switch_cost_s: float = 0.0
    node_latency_s: float = 0.0
    output_dir: str | None = None  # None: a temporary directory, removed at close()
    image_size_cap: int = 2048  # larger width/height (or batch area) raises an OOM error
    restart_after_prompts: int = 0
    restart_downtime_s: float = 0.0
    http_error_rate: float = 0.0
    drop_rate: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    ws_drop_rate: float = 0.0
    hang_s: float = 3600.0
    fault_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("checkpoints", "samplers", "schedulers"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: a ComfyUI server needs at least one")
        for name in ("checkpoints", "loras", "samplers", "schedulers"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a name twice")
        for group in (POST_FAULTS, RUN_FAULTS):
            for name in group:
                rate = getattr(self, name)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1, not {rate}")
            total = sum(getattr(self, name) for name in group)
            if total > 1.0 + 1e-9:
                raise ValueError(f"{' + '.join(group)} add up to {total:.3g}, more than 1")
        for name in ("step_latency_s", "switch_cost_s", "node_latency_s", "hang_s",
                     "restart_downtime_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.restart_after_prompts < 0:
            raise ValueError("restart_after_prompts must not be negative (0: never)")
        if self.image_size_cap < 16:
            raise ValueError("image_size_cap must be at least 16")


def config_to_dict(config: ComfySimConfig) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


def apply_changes(config: ComfySimConfig, changes: dict[str, Any]) -> ComfySimConfig:
    """A new config with ``changes`` (``POST /sim/config``); ``ValueError`` naming a bad field.

    Lists or comma-separated strings are accepted for the name tuples, ints for floats.
    """
    fields = {f.name: f for f in dataclasses.fields(ComfySimConfig)}
    coerced: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"unknown field {key!r}; known: {', '.join(sorted(fields))}")
        default = getattr(ComfySimConfig(), key)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number")
            value = float(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer")
        elif key == "output_dir":
            raise ValueError("output_dir cannot change while the server runs")
        elif not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        coerced[key] = value
    return dataclasses.replace(config, **coerced)
