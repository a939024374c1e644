"""From a parsed request to what the WebUI would do and report: pure, no I/O.

:func:`plan_generation` resolves what the server decides on its own (random seeds, sampler and
scheduler substitutions, Dynamic Prompts re-expansion, which LoRA tags it knows) into a frozen
:class:`GenerationPlan`. :func:`build_info` and :func:`infotext` then word the result as
A1111 v1.10 does: the ``info`` JSON object and the "PNG Info" text.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.sim import dynamic
from pipeline.sim.config import Catalogue, Checkpoint, SimConfig, sha256_hex
from pipeline.sim.faults import http_error
from pipeline.sim.request import GenerationRequest, RequestInvalid, unprocessable

log = logging.getLogger(__name__)

Endpoint = Literal["txt2img", "img2img"]
SEED_MAX = 4294967294  # the WebUI draws random seeds from range(2**32 - 2)
SAMPLER_ALIASES = {
    "DPM++ 2M": ["k_dpmpp_2m"], "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"], "DPM++ SDE": ["k_dpmpp_sde"], "DDIM": [], "UniPC": [],
    "LMS": ["k_lms"], "Heun": ["k_heun"], "DPM2": ["k_dpm_2"], "DPM2 a": ["k_dpm_2_a"],
    "DPM++ 2S a": ["k_dpmpp_2s_a"], "DPM++ 2M SDE": ["k_dpmpp_2m_sde_ka"], "PLMS": [],
    "LCM": ["k_lcm"], "Restart": ["restart"],
}
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """Everything the server resolved for one request; ``model`` is set once the lock is held."""

    endpoint: Endpoint
    prompt: str
    negative_prompt: str
    all_prompts: tuple[str, ...]
    all_negative_prompts: tuple[str, ...]
    all_seeds: tuple[int, ...]
    all_subseeds: tuple[int, ...]
    subseed_strength: float
    width: int
    height: int
    out_width: int  # the images' size (larger than width/height with the high-res fix)
    out_height: int
    sampler: str
    scheduler: str | None  # None on servers without schedulers
    steps: int
    cfg_scale: float
    batch_size: int
    n_iter: int
    restore_faces: bool
    tiling: bool
    denoising_strength: float | None
    seed_resize_from: tuple[int, int]
    clip_skip: int
    styles: tuple[str, ...]
    vae: str | None
    extra_generation_params: dict[str, Any] = field(hash=False, compare=False)
    save_images: bool = False
    send_images: bool = True
    checkpoint: Checkpoint | None = None  # the override asked for, when the server knows it
    restore_afterwards: bool = True
    model: Checkpoint | None = None

    @property
    def total_images(self) -> int:
        return len(self.all_seeds)


def resolve_sampler(req: GenerationRequest, config: SimConfig) -> tuple[str, str | None]:
    """(sampler, scheduler label) as the server resolves them; 404 where the flavour says so."""
    asked = req.sampler_name or req.value("sampler_index") or "Euler"
    name = asked.strip()
    labels = config.schedulers if config.has_schedulers and config.schedulers else ()
    scheduler = labels[0] if labels else None
    if labels:
        wanted = (req.scheduler or "").strip()
        for label in labels:
            if wanted in (label, scheduler_name(label)):
                scheduler = label
        # a legacy combined name ("DPM++ 2M Karras") is split into sampler + scheduler
        for label in sorted(labels, key=len, reverse=True):
            if name.endswith(" " + label):
                name, scheduler = name[: -len(label) - 1], label
                break
    known = sampler_names(config)
    if name in known:
        return name, scheduler
    for sampler in config.samplers:
        if name.lower() in (alias.lower() for alias in SAMPLER_ALIASES.get(sampler, [])):
            return sampler, scheduler
    if config.sampler_strict:
        raise RequestInvalid(404, http_error(config.flavor, 404, "Sampler not found"))
    log.info("unknown sampler %r: using %r instead", asked, config.samplers[0])
    return config.samplers[0], scheduler


def scheduler_name(label: str) -> str:
    """The scheduler's machine name beside its label: "SGM Uniform" -> "sgm_uniform"."""
    return label.lower().replace(" ", "_")


def sampler_names(config: SimConfig) -> tuple[str, ...]:
    """Sampler names the server lists. Servers without schedulers (A1111 < 1.9) list the
    combined "<sampler> Karras" names as samplers of their own."""
    if config.has_schedulers or config.flavor == "sdnext":
        return config.samplers
    combined = tuple(f"{name} Karras" for name in config.samplers if name.startswith("DPM"))
    return (*config.samplers, *combined)


def check_sizes(req: GenerationRequest, config: SimConfig) -> tuple[int, int, int, int]:
    """(width, height, out_width, out_height), or 422 for sizes the simulator will not draw."""
    width, height = int(req.value("width")), int(req.value("height"))
    out_w, out_h = width, height
    if req.enable_hr and req.init_images is None:
        rx, ry = int(req.value("hr_resize_x")), int(req.value("hr_resize_y"))
        if rx > 0 or ry > 0:
            out_w = rx if rx > 0 else round(ry * width / height)
            out_h = ry if ry > 0 else round(rx * height / width)
        else:
            scale = float(req.value("hr_scale"))
            out_w, out_h = round(width * scale), round(height * scale)
    cap = config.image_size_cap
    for name, value in (("width", width), ("height", height), ("width", out_w),
                        ("height", out_h)):
        if value > cap:
            raise unprocessable(name, f"ensure this value is less than or equal to {cap}",
                                "value_error.number.not_le")
        if value < 8:
            raise unprocessable(name, "ensure this value is greater than or equal to 8",
                                "value_error.number.not_ge")
    for name in ("batch_size", "n_iter", "steps"):
        if int(req.value(name)) < 1:
            raise unprocessable(name, "ensure this value is greater than or equal to 1",
                                "value_error.number.not_ge")
    return width, height, out_w, out_h


def check_scripts(req: GenerationRequest, endpoint: Endpoint, config: SimConfig) -> None:
    """422 for a ``script_name`` or ``alwayson_scripts`` title the server does not have (the
    WebUI matches titles case-insensitively)."""
    selectable, alwayson = scripts(config, endpoint)
    if req.script_name and req.script_name.lower() not in selectable:
        raise RequestInvalid(422, http_error(config.flavor, 422,
                                             f"Script '{req.script_name}' not found"))
    for title in req.alwayson_scripts or {}:
        if title.lower() in selectable:
            raise RequestInvalid(422, http_error(
                config.flavor, 422, "Cannot have a selectable script in the always on scripts "
                "params"))
        if title.lower() not in alwayson:
            raise RequestInvalid(422, http_error(config.flavor, 422,
                                                 f"always on script {title} not found"))


def scripts(config: SimConfig, endpoint: Endpoint) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selectable, always-on) script names, lower-case as ``/sdapi/v1/scripts`` lists them."""
    selectable = ["prompt matrix", "prompts from file or textbox", "x/y/z plot"]
    alwayson = ["extra options", "hypertile", "refiner", "sampler", "seed"]
    if endpoint == "img2img":
        selectable += ["img2img alternative test", "loopback", "outpainting mk2",
                       "poor man's outpainting", "sd upscale"]
        alwayson.append("soft inpainting")
    if config.dynamic_prompts:
        alwayson.insert(0, dynamic.TITLE.lower())
    return tuple(selectable), tuple(alwayson)


def plan_generation(req: GenerationRequest, endpoint: Endpoint, config: SimConfig,
                    catalogue: Catalogue, rng: random.Random) -> GenerationPlan:
    """Resolve a valid request; raises ``RequestInvalid`` (404 sampler, 422 sizes)."""
    sampler, scheduler = resolve_sampler(req, config)
    check_scripts(req, endpoint, config)
    width, height, out_w, out_h = check_sizes(req, config)
    count = int(req.value("batch_size")) * int(req.value("n_iter"))
    seed = _fixed_seed(req.seed, rng)
    subseed = _fixed_seed(req.subseed, rng)
    strength = float(req.value("subseed_strength"))
    all_seeds = tuple(seed + (i if strength == 0 else 0) for i in range(count))
    all_subseeds = tuple(subseed + i for i in range(count))
    prompt, negative = req.value("prompt"), req.value("negative_prompt")
    extra: dict[str, Any] = {}
    all_prompts, all_negatives = [prompt] * count, [negative] * count
    if dynamic.is_enabled(config.dynamic_prompts, req.alwayson_scripts):
        all_prompts = [dynamic.expand_random(prompt, random.Random(s * 1_000_003 + i))
                       for i, s in enumerate(all_seeds)]
        all_negatives = [dynamic.expand_random(negative, random.Random(s * 1_000_003 + i))
                         for i, s in enumerate(all_seeds)]
        if any(p != prompt for p in all_prompts):
            extra["Template"] = prompt
        if any(n != negative for n in all_negatives):
            extra["Negative Template"] = negative
    lora_hashes = _lora_hashes(all_prompts + all_negatives, catalogue)
    if lora_hashes:
        extra["Lora hashes"] = lora_hashes
    overrides = req.override_settings or {}
    checkpoint = catalogue.resolve(overrides.get("sd_model_checkpoint"))
    if overrides.get("sd_model_checkpoint") and checkpoint is None:
        log.info("unknown checkpoint %r in override_settings: ignored",
                 overrides.get("sd_model_checkpoint"))
    vae = overrides.get("sd_vae")
    vae = vae if isinstance(vae, str) and vae in config.vaes else None
    clip_skip = overrides.get("CLIP_stop_at_last_layers", 1)
    clip_skip = clip_skip if isinstance(clip_skip, int) and clip_skip >= 1 else 1
    denoising = req.denoising_strength
    if endpoint == "img2img":
        denoising = 0.75 if denoising is None else denoising
        extra["Denoising strength"] = denoising
    elif req.enable_hr:
        denoising = 0.7 if denoising is None else denoising
        extra["Denoising strength"] = denoising
        if (out_w, out_h) == (round(width * float(req.value("hr_scale"))),
                              round(height * float(req.value("hr_scale")))):
            extra["Hires upscale"] = float(req.value("hr_scale"))
        else:
            extra["Hires resize"] = f"{out_w}x{out_h}"
        if int(req.value("hr_second_pass_steps")) > 0:
            extra["Hires steps"] = int(req.value("hr_second_pass_steps"))
        extra["Hires upscaler"] = req.hr_upscaler or "Latent"
    return GenerationPlan(
        endpoint=endpoint, prompt=prompt, negative_prompt=negative,
        all_prompts=tuple(all_prompts), all_negative_prompts=tuple(all_negatives),
        all_seeds=all_seeds, all_subseeds=all_subseeds, subseed_strength=strength,
        width=width, height=height, out_width=out_w, out_height=out_h,
        sampler=sampler, scheduler=scheduler, steps=int(req.value("steps")),
        cfg_scale=float(req.value("cfg_scale")), batch_size=int(req.value("batch_size")),
        n_iter=int(req.value("n_iter")), restore_faces=bool(req.restore_faces),
        tiling=bool(req.tiling), denoising_strength=denoising,
        seed_resize_from=(int(req.value("seed_resize_from_w")),
                          int(req.value("seed_resize_from_h"))),
        clip_skip=clip_skip, styles=tuple(req.styles or ()), vae=vae,
        extra_generation_params=extra, save_images=bool(req.save_images),
        send_images=bool(req.value("send_images")), checkpoint=checkpoint,
        restore_afterwards=bool(req.value("override_settings_restore_afterwards")),
    )


def _fixed_seed(seed: int | None, rng: random.Random) -> int:
    return rng.randrange(SEED_MAX) if seed is None or seed == -1 else int(seed)


def _lora_hashes(prompts: list[str], catalogue: Catalogue) -> str | None:
    """"name: hash, ..." for the LoRA tags the server has; the others are logged and ignored."""
    found: dict[str, str] = {}
    for text in dict.fromkeys(prompts):
        for kind, args in _EXTRA_NETWORK.findall(text):
            if kind not in ("lora", "lyco"):
                continue
            name = args.split(":", 1)[0].strip()
            if name in catalogue.lora_hashes:
                found[name] = catalogue.lora_hashes[name]
            else:
                log.info("couldn't find Lora with name %r: ignored", name)
    return ", ".join(f"{name}: {h}" for name, h in found.items()) or None


def vae_hash(name: str) -> str:
    return sha256_hex(f"vae:{name}")[:8]


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
    params: dict[str, Any] = {
        "Steps": plan.steps,
        "Sampler": plan.sampler,
        "Schedule type": plan.scheduler,
        "CFG scale": _number(plan.cfg_scale),
        "Seed": plan.all_seeds[0] if use_main_prompt else plan.all_seeds[index],
        "Face restoration": "CodeFormer" if plan.restore_faces else None,
        "Size": f"{plan.width}x{plan.height}",
        "Model hash": model.shorthash if model else None,
        "Model": model.model_name if model else None,
        "VAE hash": vae_hash(plan.vae) if plan.vae else None,
        "VAE": plan.vae,
        "Variation seed": None if plan.subseed_strength == 0 else (
            plan.all_subseeds[0] if use_main_prompt else plan.all_subseeds[index]),
        "Variation seed strength": None if plan.subseed_strength == 0 else _number(
            plan.subseed_strength),
        "Seed resize from": (None if min(plan.seed_resize_from) <= 0
                             else "{}x{}".format(*plan.seed_resize_from)),
        "Clip skip": None if plan.clip_skip <= 1 else plan.clip_skip,
        "Tiling": "True" if plan.tiling else None,
        **{k: _number(v) for k, v in plan.extra_generation_params.items()},
        "Version": config.version if config.flavor != "sdnext" else None,
    }
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    prompt = plan.prompt if use_main_prompt else plan.all_prompts[index]
    negative = plan.negative_prompt if use_main_prompt else plan.all_negative_prompts[index]
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_line}\n{line}".strip()


def _number(value: Any) -> Any:
    """7.0 -> 7, as Python's repr of the WebUI's values reads in infotexts."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
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
        "styles": list(plan.styles),
        "job_timestamp": job_timestamp,
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": config.version,
        "infotexts": infotexts,
    }
    if config.flavor == "sdnext":
        for key in ("index_of_first_image", "infotexts", "version", "face_restoration_model",
                    "sd_vae_hash", "is_using_inpainting_conditioning", "clip_skip"):
            info.pop(key)
    return info
