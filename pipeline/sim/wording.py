"""How the WebUI words a generation: the "PNG Info" infotext, the ``info`` object, and the
``parameters`` echo. Pure functions of a :class:`GenerationPlan` and the config.

Infotext fields follow A1111 v1.10's ``create_infotext`` order; ``extra_generation_params``
that share a name with a fixed field ("Schedule type", "Denoising strength") take that field's
place, the rest follow "Tiling", then ``Version``; Forge appends ``Module 1: <name>`` for each
additional module (a VAE) after it. Realistic profiles write numbers as Python prints them
(``CFG scale: 7.0``), the classic one without a trailing ``.0``.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.sim import forge_data
from pipeline.sim.config import SimConfig, sha256_hex
from pipeline.sim.processing import Endpoint, GenerationPlan
from pipeline.sim.request import GenerationRequest

FORGE_ONLY_FIELDS = ("distilled_cfg_scale", "hr_additional_modules", "hr_cfg",
                     "hr_distilled_cfg")


def vae_hash(name: str) -> str:
    return sha256_hex(f"vae:{name}")[:8]


def module_label(path: str) -> str:
    """``/models/VAE/tiny-vae.safetensors`` -> ``tiny-vae``, as Forge names a module."""
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def quote(value: Any) -> str:
    """Quote an infotext value as the WebUI does (JSON string when it has , : or newline)."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(plan: GenerationPlan, config: SimConfig, index: int, *,
             use_main_prompt: bool = False) -> str:
    """The "PNG Info" text of generation ``index`` (or of the grid, ``use_main_prompt``)."""
    model = plan.model
    realistic = config.server.realistic
    number = _as_printed if config.server.float_infotext else _number
    params: dict[str, Any] = {
        "Steps": plan.steps,
        "Sampler": plan.sampler,
        "Schedule type": plan.scheduler,
        "CFG scale": number(plan.cfg_scale),
        "Seed": plan.all_seeds[0] if use_main_prompt else plan.all_seeds[index],
        "Face restoration": "CodeFormer" if plan.restore_faces else None,
        "Size": f"{plan.width}x{plan.height}",
        "Model hash": model.shorthash if model else None,
        "Model": model.model_name if model else None,
        "VAE hash": vae_hash(plan.vae) if plan.vae else None,
        "VAE": plan.vae,
        "Variation seed": None if plan.subseed_strength == 0 else (
            plan.all_subseeds[0] if use_main_prompt else plan.all_subseeds[index]),
        "Variation seed strength": None if plan.subseed_strength == 0 else number(
            plan.subseed_strength),
        "Seed resize from": (None if min(plan.seed_resize_from) <= 0
                             else "{}x{}".format(*plan.seed_resize_from)),
    }
    if realistic:
        params["Denoising strength"] = None  # its place, filled from the extra parameters
    params["Clip skip"] = None if plan.clip_skip <= 1 else plan.clip_skip
    params["Tiling"] = "True" if plan.tiling else None
    for key, value in plan.extra_generation_params.items():
        params[key] = number(value)
    params["Version"] = config.webui_version if config.kind != "sdnext" else None
    for n, module in enumerate(plan.modules, start=1):
        params[f"Module {n}"] = module_label(module)
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    prompt = plan.prompt if use_main_prompt else plan.all_prompts[index]
    negative = plan.negative_prompt if use_main_prompt else plan.all_negative_prompts[index]
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_line}\n{line}".strip()


def _number(value: Any) -> Any:
    """7.0 -> 7 (the classic simulator's wording)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_printed(value: Any) -> Any:
    return value


def build_info(plan: GenerationPlan, config: SimConfig, *, generated: int, grid: bool,
               job_timestamp: str) -> dict[str, Any]:
    """The ``info`` object (sent as a JSON string) for a job that made ``generated`` images."""
    model = plan.model
    infotexts = [infotext(plan, config, i) for i in range(generated)]
    if grid:
        infotexts.insert(0, infotext(plan, config, 0, use_main_prompt=True))
    info: dict[str, Any] = {
        "prompt": plan.prompt,
        "all_prompts": list(plan.all_prompts),
        "negative_prompt": plan.negative_prompt,
        "all_negative_prompts": list(plan.all_negative_prompts),
        "seed": plan.all_seeds[0],
        "all_seeds": list(plan.all_seeds),
        "subseed": plan.all_subseeds[0],
        "all_subseeds": list(plan.all_subseeds),
        "subseed_strength": plan.subseed_strength,
        "width": plan.width,
        "height": plan.height,
        "sampler_name": plan.sampler,
        "cfg_scale": plan.cfg_scale,
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "restore_faces": plan.restore_faces,
        "face_restoration_model": "CodeFormer" if plan.restore_faces else None,
        "sd_model_name": model.model_name if model else None,
        "sd_model_hash": model.shorthash if model else None,
        "sd_vae_name": plan.vae,
        "sd_vae_hash": vae_hash(plan.vae) if plan.vae else None,
        "seed_resize_from_w": plan.seed_resize_from[0],
        "seed_resize_from_h": plan.seed_resize_from[1],
        "denoising_strength": plan.denoising_strength,
        "extra_generation_params": dict(plan.extra_generation_params),
        "index_of_first_image": 1 if grid else 0,
        "infotexts": infotexts,
        "styles": list(plan.styles),
        "job_timestamp": job_timestamp,
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": config.webui_version,
    }
    if config.kind == "sdnext":
        for key in ("index_of_first_image", "infotexts", "version", "face_restoration_model",
                    "sd_vae_hash", "is_using_inpainting_conditioning", "clip_skip"):
            info.pop(key)
    return info


def echo(req: GenerationRequest, raw: dict[str, Any], endpoint: Endpoint,
         config: SimConfig) -> dict[str, Any]:
    """``parameters``: the request as the server validated it, unresolved (seed -1 stays).

    Realistic profiles echo every field their request model has (59 on Forge), with its
    default where the request left it out; the classic one echoes the simulator's subset.
    A1111 (not Forge) blanks ``init_images`` and ``mask`` unless ``include_init_images``.
    """
    if not config.server.realistic_echo:
        out = req.model_dump()
        if endpoint == "img2img" and not req.include_init_images:
            out["init_images"] = out["mask"] = None
        return out
    template = forge_data.TXT2IMG_ECHO if endpoint == "txt2img" else forge_data.IMG2IMG_ECHO
    forge = config.server.kind == "forge"
    modelled = type(req).model_fields
    out = {}
    for key, default in template.items():
        if not forge and key in FORGE_ONLY_FIELDS:
            continue
        if key in raw:
            out[key] = getattr(req, key) if key in modelled else raw[key]
        else:
            out[key] = default
    if endpoint == "img2img" and not forge and not req.include_init_images:
        out["init_images"] = out["mask"] = None
    return out
