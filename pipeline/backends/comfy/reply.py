"""A ComfyUI result in the shape the rest of sdbatch reads: A1111-style info and infotexts. Pure.

ComfyUI writes no infotext and reports no seeds; the values here come from the filled graph
(what was sent, and what the server validated). Grids, the gallery and the dataset formats read
``info["infotexts"]``, ``all_seeds``, ``sd_model_name`` and ``sampler_name`` as for the WebUI, so
they work unchanged. A batch shares one seed (ComfyUI draws one noise tensor for the whole batch;
image i is *not* seed + i): every image records that seed and its batch position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.backends.comfy.names import A1111_SAMPLER, A1111_SCHEDULER, stem
from pipeline.backends.comfy.workflow import Filled, Template


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def display_sampler(values: dict[str, Any]) -> str | None:
    sampler = values.get("sampler")
    return A1111_SAMPLER.get(str(sampler), str(sampler)) if sampler else None


def display_scheduler(values: dict[str, Any]) -> str | None:
    scheduler = values.get("scheduler")
    return A1111_SCHEDULER.get(str(scheduler), str(scheduler)) if scheduler else None


def model_label(values: dict[str, Any]) -> str | None:
    checkpoint = values.get("checkpoint")
    return stem(str(checkpoint)) if checkpoint else None


def infotext(prompt: str, negative: str, values: dict[str, Any], *, seed: int | None,
             batch_size: int, batch_pos: int, version: str | None) -> str:
    """An A1111 "generation parameters" text for one image."""
    pairs: list[tuple[str, Any]] = [
        ("Steps", values.get("steps")), ("Sampler", display_sampler(values)),
        ("Schedule type", display_scheduler(values)), ("CFG scale", values.get("cfg")),
        ("Seed", seed),
    ]
    width, height = values.get("width"), values.get("height")
    if isinstance(width, int) and isinstance(height, int):
        pairs.append(("Size", f"{width}x{height}"))
    pairs.append(("Model", model_label(values)))
    if batch_size > 1:
        pairs += [("Batch size", batch_size), ("Batch pos", batch_pos)]
    pairs.append(("Version", f"ComfyUI {version}" if version else "ComfyUI"))
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs if v not in (None, "")))
    return "\n".join(lines)


def build_info(*, prompt: str, negative: str, filled: Filled, seed: int | None,
               generations: int, cached: Sequence[bool], version: str | None,
               comfy: dict[str, Any]) -> dict[str, Any]:
    """The ``Reply.info`` of one prompt (``generations`` images from the primary output)."""
    values = filled.values
    texts = [infotext(prompt, negative, values, seed=seed, batch_size=generations, batch_pos=i,
                      version=version) for i in range(generations)]
    info: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative,
        "all_prompts": [prompt] * generations, "all_negative_prompts": [negative] * generations,
        "seed": seed, "all_seeds": [seed] * generations, "batch_indices": list(range(generations)),
        "steps": values.get("steps"), "cfg_scale": values.get("cfg"),
        "width": values.get("width"), "height": values.get("height"),
        "batch_size": generations, "sampler_name": display_sampler(values),
        "scheduler": display_scheduler(values), "sd_model_name": model_label(values),
        "infotexts": texts, "index_of_first_image": 0, "cached": list(cached),
        "comfyui": comfy,
    }
    return info


def build_params(payload: dict[str, Any], template: Template, filled: Filled,
                 version: str | None, prompt_id: str) -> dict[str, Any]:
    """``Reply.params``: the WebUI payload as asked (so grids and CSVs read it unchanged), plus
    under ``comfyui`` the workflow (file, sha256), the server version and the filled values."""
    params = dict(payload)
    params["comfyui"] = {"workflow": template.source, "workflow_sha256": template.sha256,
                         "version": version, "prompt_id": prompt_id,
                         "filled": dict(filled.values)}
    return params
