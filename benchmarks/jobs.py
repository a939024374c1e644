"""Job files the cases run, as dicts (validated by ``pipeline.api.job_from_dict`` in the client).

Every job is an ordinary sweep: a prompt template whose options multiply, optional matrix axes,
and derived seeds (``seeds: {count: N}``), so a million variants is a short job, never a list.
"""

from __future__ import annotations

from typing import Any

WORDS = ("fox", "owl", "cat", "dog", "bear", "wolf", "hare", "lynx", "seal", "crow",
         "deer", "frog", "moth", "newt", "orca", "puma", "swan", "toad", "wren", "yak")
CHECKPOINTS = ("bench_a", "bench_b", "bench_c", "bench_d", "bench_e", "bench_f", "bench_g",
               "bench_h")


def _defaults(size: int) -> dict[str, Any]:
    return {"width": size, "height": size, "steps": 20, "cfg_scale": 7,
            "sampler_name": "Euler a", "negative_prompt": "blurry, low quality"}


def _prompt(options: int) -> str:
    return "a photo of a {" + "|".join(WORDS[:options]) + "} in the snow, detailed"


def sweep(variants: int, size: int = 64, *, name: str = "bench") -> dict[str, Any]:
    """Exactly ``variants`` variants: a prompt with P options (P divides it) x derived seeds."""
    options = next(p for p in (20, 10, 5, 4, 2, 1) if variants % p == 0)
    return {"name": name, "defaults": _defaults(size), "prompts": [_prompt(options)],
            "seeds": {"count": variants // options}, "seed": 7}


def grid(variants: int, size: int = 64, *, name: str = "grid") -> dict[str, Any]:
    """A 20-prompt x 10-CFG sweep with ``variants / 200`` seeds each (the memory cases)."""
    if variants % 200:
        raise ValueError("grid() needs a multiple of 200 variants")
    return {"name": name, "defaults": _defaults(size), "prompts": [_prompt(20)],
            "matrix": {"cfg_scale": "3..12"}, "seeds": {"count": variants // 200}, "seed": 7}


def checkpoint_sweep(checkpoints: int, prompts: int, seeds: int, size: int = 64
                     ) -> dict[str, Any]:
    """prompts x checkpoints x seeds, in that job order (checkpoint in the matrix)."""
    return {"name": "checkpoints", "defaults": _defaults(size), "prompts": [_prompt(prompts)],
            "matrix": {"checkpoint": list(CHECKPOINTS[:checkpoints])},
            "seeds": {"count": seeds}, "seed": 7}


def checkpoint_models(checkpoints: int) -> list[str]:
    """The simulated backends' checkpoint files for ``checkpoint_sweep`` (the first is loaded)."""
    return [f"{name}.safetensors" for name in CHECKPOINTS[:checkpoints]]
