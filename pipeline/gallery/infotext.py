"""The A1111 infotext of an image: from the manifest, else the PNG, else rebuilt from the payload.

The infotext is the WebUI's "generation parameters" text (prompt, ``Negative prompt:`` line, then
``Key: value`` pairs); pasted into the WebUI's prompt box it restores the settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.infotext import format_params

log = logging.getLogger(__name__)

# Payload field -> infotext key, in the WebUI's order.
_FIELDS = (("steps", "Steps"), ("sampler_name", "Sampler"), ("scheduler", "Schedule type"),
           ("cfg_scale", "CFG scale"), ("seed", "Seed"), ("size", "Size"), ("model", "Model"),
           ("denoising_strength", "Denoising strength"), ("clip_skip", "Clip skip"),
           ("hr_scale", "Hires upscale"), ("hr_upscaler", "Hires upscaler"))


def png_parameters(path: Path) -> str | None:
    """The ``parameters`` text chunk of a PNG (where the WebUI stores the infotext)."""
    try:
        with Image.open(path) as image:
            text = image.info.get("parameters")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return text if isinstance(text, str) else None


def compose(record: dict[str, Any]) -> str:
    """An infotext rebuilt from a manifest record (when the server sent none)."""
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    prompt = record.get("prompt") or params.get("prompt") or ""
    negative = record.get("negative_prompt") or params.get("negative_prompt") or ""
    values: dict[str, Any] = dict(params)
    values["seed"] = record.get("seed") if record.get("seed") is not None else params.get("seed")
    if isinstance(params.get("width"), int) and isinstance(params.get("height"), int):
        values["size"] = f"{params['width']}x{params['height']}"
    overrides = params.get("override_settings") if isinstance(params.get("override_settings"),
                                                              dict) else {}
    values["model"] = record.get("model") or overrides.get("sd_model_checkpoint")
    values["clip_skip"] = overrides.get("CLIP_stop_at_last_layers")
    if not params.get("enable_hr"):
        values.pop("hr_scale", None)
        values.pop("hr_upscaler", None)
    if "denoising_strength" in values and not params.get("enable_hr") \
            and not params.get("init_images"):
        values.pop("denoising_strength")
    pairs = {label: values[key] for key, label in _FIELDS if values.get(key) not in (None, "")}
    lines = [str(prompt)]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(format_params(pairs))
    return "\n".join(lines)
