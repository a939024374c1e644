"""From a parsed request to what the WebUI would do: pure, no I/O.

:func:`plan_generation` resolves what the server decides on its own from the request alone
(random seeds, sampler and scheduler substitutions, Dynamic Prompts re-expansion, which LoRA
tags it knows) into a frozen :class:`GenerationPlan`. What depends on the server's state (the
checkpoint an override names, the live settings an override may leak into) is settled later,
under the queue lock, by ``jobs.run_job``. ``wording.py`` then words the result.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.sim import dynamic, forge_data
from pipeline.sim.config import Catalogue, Checkpoint, SimConfig
from pipeline.sim.faults import error_body, http_error_for
from pipeline.sim.request import GenerationRequest, RequestInvalid, out_of_range
from pipeline.sim.samplers import resolve_sampler

log = logging.getLogger(__name__)

Endpoint = Literal["txt2img", "img2img"]
SEED_MAX = 4294967294  # the WebUI draws random seeds from range(2**32 - 2)
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """Everything the server resolved for one request; the fields after ``model`` are set
    once the queue lock is held (``jobs.run_job``)."""

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
    checkpoint_asked: str | None = None  # override_settings.sd_model_checkpoint, as sent
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    networks: tuple[tuple[str, float], ...] = ()  # known LoRAs and their weights
    restore_afterwards: bool = True
    model: Checkpoint | None = None
    modules: tuple[str, ...] = ()  # Forge's additional modules in force (file names)
    samples_format: str = "png"

    @property
    def total_images(self) -> int:
        return len(self.all_seeds)


def check_sizes(req: GenerationRequest, config: SimConfig) -> tuple[int, int, int, int]:
    """(width, height, out_width, out_height), or 422 for sizes the simulator will not draw;
    realistic servers fail batch_size or n_iter 0 with a 500 IndexError, as Forge does."""
    full_v2 = config.server.pydantic_v2 and config.server.realistic
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
            raise out_of_range(name, "le", cap, value, full_v2=full_v2)
        if value < 8:
            raise out_of_range(name, "ge", 8, value, full_v2=full_v2)
    for name in ("batch_size", "n_iter", "steps"):
        value = int(req.value(name))
        if value >= 1:
            continue
        if config.server.batch_size_zero_error and name != "steps":
            raise RequestInvalid(500, error_body(config.kind, "IndexError",
                                                 "list index out of range"))
        raise out_of_range(name, "ge", 1, value, full_v2=full_v2)
    return width, height, out_w, out_h


def check_scripts(req: GenerationRequest, endpoint: Endpoint, config: SimConfig) -> None:
    """422 for a ``script_name`` or ``alwayson_scripts`` title the server does not have (the
    WebUI matches titles case-insensitively)."""
    selectable, alwayson = scripts(config, endpoint)
    if req.script_name and req.script_name.lower() not in selectable:
        raise RequestInvalid(422, http_error_for(config, 422,
                                             f"Script '{req.script_name}' not found"))
    for title in req.alwayson_scripts or {}:
        if title.lower() in selectable:
            raise RequestInvalid(422, http_error_for(
                config, 422, "Cannot have a selectable script in the always on scripts "
                "params"))
        if title.lower() not in alwayson:
            raise RequestInvalid(422, http_error_for(config, 422,
                                                 f"always on script {title} not found"))


def scripts(config: SimConfig, endpoint: Endpoint) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selectable, always-on) script names, lower-case as ``/sdapi/v1/scripts`` lists them
    (Forge: its recorded list, with its integrated extensions)."""
    if config.server.kind == "forge" and config.server.realistic:
        names = forge_data.SCRIPTS[endpoint]
        cut = names.index("x/y/z plot") + 1
        selectable, alwayson = list(names[:cut]), list(names[cut:])
    else:
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
    realistic = config.server.realistic
    if realistic and scheduler is not None and scheduler != _automatic(config):
        extra["Schedule type"] = scheduler  # set while sampling, as A1111's get_sigmas does
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
    networks = known_networks(all_prompts + all_negatives, catalogue)
    if networks:
        extra["Lora hashes"] = ", ".join(f"{name}: {catalogue.lora_hashes[name]}"
                                         for name in dict.fromkeys(n for n, _ in networks))
    overrides = dict(req.override_settings or {})
    asked = overrides.pop("sd_model_checkpoint", None)
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
        send_images=bool(req.value("send_images")),
        checkpoint_asked=asked if isinstance(asked, str) and asked.strip() else None,
        overrides=overrides, networks=networks,
        restore_afterwards=bool(req.value("override_settings_restore_afterwards")),
        samples_format=config.samples_format,
    )


def _automatic(config: SimConfig) -> str | None:
    return config.schedulers[0] if config.schedulers else None


def _fixed_seed(seed: int | None, rng: random.Random) -> int:
    return rng.randrange(SEED_MAX) if seed is None or seed == -1 else int(seed)


def known_networks(prompts: list[str], catalogue: Catalogue) -> tuple[tuple[str, float], ...]:
    """(name, weight) of the LoRA tags the server has, in prompt order; the others are logged
    and dropped, as the WebUI drops them (the image is the same as without the tag)."""
    found: list[tuple[str, float]] = []
    for text in dict.fromkeys(prompts):
        for kind, args in EXTRA_NETWORK.findall(text):
            if kind not in ("lora", "lyco"):
                continue
            name, _, rest = args.partition(":")
            name = name.strip()
            if name not in catalogue.lora_hashes:
                log.info("couldn't find Lora with name %r: ignored", name)
                continue
            try:
                weight = float(rest.split(":", 1)[0]) if rest.strip() else 1.0
            except ValueError:
                weight = 1.0
            found.append((name, weight))
    return tuple(found)


def strip_networks(text: str) -> str:
    """The prompt as the model sees it: every ``<kind:...>`` extra-network tag removed."""
    return " ".join(EXTRA_NETWORK.sub("", text).split())
