"""Running one generation job while holding the queue lock, and wording its response.

Under the lock, first what depends on the server's state: the checkpoint an override names
(unknown names are dropped; the model the option names is loaded, paying ``switch_cost_s``),
and, on realistic profiles, the overrides applied to the live settings (``options.py``: keys
not yet saved leak). Then the job runs in units (one image, or one batch on realistic
profiles) of ``latency_s`` per image, each an interruptible wait, so ``/interrupt``, ``/skip``
and shutdown take effect at once. Classic: an interrupted or skipped unit is dropped.
Realistic: it is returned half-done (the WebUI decodes the half-sampled latent) and its
infotext still claims every step; interrupt stops the job, skip goes on with the next batch.
Then, as the WebUI orders them: the grid (``save_images`` and 2+ images), the generations,
the extra images.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import Image

from pipeline.sim import render
from pipeline.sim.listings import module_paths
from pipeline.sim.config import SimConfig, normalize_format, sha256_hex
from pipeline.sim.faults import Fault, out_of_memory, simulated_error
from pipeline.sim.processing import GenerationPlan, strip_networks
from pipeline.sim.state import Job, SimState
from pipeline.sim.wording import build_info, infotext

log = logging.getLogger(__name__)

OFFLOAD_PIXELS = 512 * 512 + 1  # draw and encode larger images in a worker thread


@dataclass(frozen=True, slots=True)
class JobResult:
    status: int
    body: dict[str, Any]


async def run_job(state: SimState, plan: GenerationPlan, parameters: dict[str, Any],
                  fault: Fault, images_kept: int | None) -> JobResult:
    """Run ``plan`` (the caller holds ``state.lock``) and build the response body."""
    config = state.config  # may have changed while the request waited for the lock
    realistic = config.server.realistic
    previous = (state.option_model, state.option_text)
    checkpoint = None
    if plan.checkpoint_asked is not None:
        checkpoint = state.catalogue.resolve(plan.checkpoint_asked, state.hash_view())
        if checkpoint is None:
            log.info("unknown checkpoint %r in override_settings: ignored",
                     plan.checkpoint_asked)
            echoed = parameters.get("override_settings")
            if realistic and isinstance(echoed, dict):  # A1111 pops it from the very dict
                echoed.pop("sd_model_checkpoint", None)  # the API echoes
        else:
            state.set_checkpoint_option(checkpoint, plan.checkpoint_asked)
    stored = state.options.override(_settable(plan.overrides, state)) if realistic else {}
    restoring = plan.restore_afterwards
    job = Job(total_images=plan.total_images, steps=plan.steps, n_iter=plan.n_iter,
              job_timestamp=datetime.now().strftime("%Y%m%d%H%M%S"),
              per_image_s=config.latency_s, name=f"scripts_{plan.endpoint}",
              leftover_steps=int(state.idle["sampling_steps"]))
    state.job = job
    try:
        model = state.option_model
        if model is None:  # SD.Next with no model loaded: 200, no images, empty info
            return JobResult(200, {"images": [], "parameters": parameters, "info": ""})
        await state.load_weights(model)
        job.steps_shown_from_s = time.monotonic() + config.prepare_s / 2
        if fault is Fault.ERROR:
            return JobResult(500, simulated_error(config.kind))
        if fault is Fault.OOM:
            return JobResult(500, out_of_memory(config.kind, plan.out_width, plan.out_height))
        if realistic:
            plan = _with_settings(plan, state, stored, restoring)
        fmt = plan.samples_format if realistic else state.options.get("samples_format")
        plan = dataclasses.replace(plan, model=state.weights_model,
                                   samples_format=normalize_format(str(fmt)) or "png")
        generated = await _generate(state, job, plan, config, images_kept)
    finally:
        if checkpoint is not None and restoring:
            state.option_model, state.option_text = previous  # the weights stay loaded
        if restoring:
            state.options.restore(stored)
        state.end_job(job)
    body = await _response(plan, config, parameters, generated, job.job_timestamp)
    return JobResult(200, body)


def _settable(overrides: dict[str, Any], state: SimState) -> dict[str, Any]:
    """Overrides as the server stores them: Forge maps additional modules to its list (empty
    in API-only mode, where it knows none)."""
    out = dict(overrides)
    if "forge_additional_modules" in out and state.config.server.kind == "forge":
        out["forge_additional_modules"] = forge_modules(out["forge_additional_modules"],
                                                        state.config)
    return out


def forge_modules(value: Any, config: SimConfig) -> list[str]:
    """Forge's ``forge_additional_modules`` as it keeps them: full paths of known modules;
    a name it does not list resets the list to none (silently). Without its UI built Forge
    lists no module, so nothing is ever kept."""
    known = module_paths(config)
    names = value if isinstance(value, list) else [value]
    paths: list[str] = []
    for name in names:
        path = known.get(str(name))
        if path is None:
            return []
        paths.append(path)
    return paths


def _with_settings(plan: GenerationPlan, state: SimState, stored: dict[str, Any],
                   restoring: bool) -> GenerationPlan:
    """The live settings the job runs with (overrides and earlier leaks included)."""
    config = state.config
    options = state.options
    clip = options.get("CLIP_stop_at_last_layers", 1)
    clip_skip = int(clip) if isinstance(clip, (int, float)) and not isinstance(clip, bool) else 1
    vae = None
    if config.server.sd_vae_override:
        wanted = options.get("sd_vae")
        vae = wanted if isinstance(wanted, str) and wanted in config.vaes else None
    modules: tuple[str, ...] = ()
    if config.server.kind == "forge":
        modules = tuple(str(m) for m in options.get("forge_additional_modules") or ())
    fmt = options.after_restore(stored, "samples_format", restoring)
    return dataclasses.replace(plan, clip_skip=max(1, clip_skip), vae=vae, modules=modules,
                               samples_format=str(fmt))


def pixel_variant(plan: GenerationPlan) -> int:
    """A number for everything besides seed and prompt that changes a real server's pixels
    (0: nothing; the classic profile never varies). Unknown LoRAs are not in ``networks``, so
    they change nothing, as on the real server."""
    parts = [plan.model.sha256 if plan.model else "", plan.sampler, str(plan.scheduler),
             repr(plan.cfg_scale), str(plan.steps), str(plan.clip_skip), str(plan.vae),
             ",".join(plan.modules),
             ",".join(f"{name}:{weight:g}" for name, weight in plan.networks if weight)]
    return int(sha256_hex("|".join(parts))[:12], 16)


async def _generate(state: SimState, job: Job, plan: GenerationPlan, config: SimConfig,
                    images_kept: int | None) -> list[tuple[str, Image.Image | None]]:
    """(base64, picture) per finished generation, in order; the picture is kept only when a
    grid will be made of them."""
    realistic = config.server.realistic
    unit_images = plan.batch_size if realistic else 1
    job.unit_s = config.latency_s * unit_images
    offload = plan.out_width * plan.out_height >= OFFLOAD_PIXELS
    keep_pictures = plan.save_images and plan.send_images and plan.total_images >= 2
    variant = pixel_variant(plan) if realistic else 0
    done: list[tuple[str, Image.Image | None]] = []
    if realistic and config.prepare_s > 0:
        await state.pause(config.prepare_s, job.wake)
    for first in range(0, plan.total_images, unit_images):
        if images_kept is not None and len(done) >= images_kept:
            job.interrupted = True
            break
        if job.interrupted or state.stopping.is_set():
            break
        job.skipped = False  # a skip before sampling starts is dropped, as in the WebUI
        job.wake.clear()
        job.unit_no = first // unit_images
        job.image_started_s = time.monotonic()
        job.sampling = True
        finished = await state.pause(job.unit_s, job.wake)
        job.sampling = False
        progress = 1.0
        if not finished:
            if state.stopping.is_set():
                break
            if not config.server.half_done_images:  # classic: the image being made is dropped
                if job.interrupted:
                    break
                job.skipped = False  # /skip drops the image being made and goes on
                job.wake.clear()
                continue
            elapsed_s = time.monotonic() - job.image_started_s
            progress = min(0.99, elapsed_s / job.unit_s) if job.unit_s > 0 else 0.0
        indices = range(first, min(first + unit_images, plan.total_images))
        for index in indices:
            args = (plan, config, index, keep_pictures, variant, progress)
            drawn = await asyncio.to_thread(_draw, *args) if offload else _draw(*args)
            done.append(drawn)
            job.done_images += 1
            state.stats.generations += 1
        if images_kept is not None and len(done) > images_kept:
            del done[images_kept:]
        job.unit_no = first // unit_images + 1
        if job.interrupted:
            break
    return done


def _draw(plan: GenerationPlan, config: SimConfig, index: int, keep_picture: bool,
          variant: int, progress: float) -> tuple[str, Image.Image | None]:
    prompt = plan.all_prompts[index]
    if config.server.strip_network_tags:
        prompt = strip_networks(prompt)
    image = render.render_generation(plan.out_width, plan.out_height, plan.all_seeds[index],
                                     prompt, variant=variant, progress=progress)
    text = infotext(plan, config, index)
    encoded = render.encode_b64(image, plan.samples_format, text)
    return encoded, image if keep_picture else None


async def _response(plan: GenerationPlan, config: SimConfig, parameters: dict[str, Any],
                    generated: list[tuple[str, Image.Image | None]],
                    timestamp: str) -> dict[str, Any]:
    grid = plan.save_images and len(generated) >= 2
    info = build_info(plan, config, generated=len(generated), grid=grid,
                      job_timestamp=timestamp)
    images: list[str] = []
    if plan.send_images:
        def extras() -> list[str]:
            out = []
            if grid:
                pictures = [image for _, image in generated if image is not None]
                picture = render.render_grid(pictures)
                out.append(render.encode_b64(picture, plan.samples_format,
                                             infotext(plan, config, 0, use_main_prompt=True)))
            out += [render.encode_b64(render.render_extra(plan.out_width, plan.out_height, n),
                                      plan.samples_format, None)
                    for n in range(config.extra_images)]
            return out

        made = (await asyncio.to_thread(extras)
                if grid or plan.out_width * plan.out_height >= OFFLOAD_PIXELS else extras())
        grid_b64 = made[:1] if grid else []
        images = [*grid_b64, *(b64 for b64, _ in generated), *made[len(grid_b64):]]
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}
