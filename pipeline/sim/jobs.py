"""Running one generation job while holding the queue lock, and wording its response.

Per image: draw it (in a worker thread when large), then wait out the rest of ``latency_s``
(an interruptible wait, so ``/interrupt``, ``/skip`` and shutdown take effect at once). An
interrupted job keeps the images finished before the interrupt. Then, as the WebUI orders
them: the grid (``save_images`` and 2+ images), the generations, the extra images.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import Image

from pipeline.sim import render
from pipeline.sim.config import SimConfig
from pipeline.sim.faults import Fault, out_of_memory, simulated_error
from pipeline.sim.processing import GenerationPlan, build_info, infotext
from pipeline.sim.state import Job, SimState

OFFLOAD_PIXELS = 512 * 512 + 1  # draw and encode larger images in a worker thread


@dataclass(frozen=True, slots=True)
class JobResult:
    status: int
    body: dict[str, Any]


async def run_job(state: SimState, plan: GenerationPlan, parameters: dict[str, Any],
                  fault: Fault, images_kept: int | None) -> JobResult:
    """Run ``plan`` (the caller holds ``state.lock``) and build the response body."""
    config = state.config  # may have changed while the request waited for the lock
    previous_option = state.option_model
    if plan.checkpoint is not None:
        state.option_model = plan.checkpoint
    try:
        model = state.option_model
        if model is None:  # SD.Next with no model loaded: 200, no images, empty info
            return JobResult(200, {"images": [], "parameters": parameters, "info": ""})
        await state.load_weights(model)
        if fault is Fault.ERROR:
            return JobResult(500, simulated_error(config.flavor))
        if fault is Fault.OOM:
            return JobResult(500, out_of_memory(config.flavor, plan.out_width, plan.out_height))
        plan = dataclasses.replace(plan, model=state.weights_model)
        timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        generated = await _generate(state, plan, config, timestamp, images_kept)
    finally:
        if plan.checkpoint is not None and plan.restore_afterwards:
            state.option_model = previous_option  # the weights stay loaded
    return JobResult(200, await _response(plan, config, parameters, generated, timestamp))


async def _generate(state: SimState, plan: GenerationPlan, config: SimConfig, timestamp: str,
                    images_kept: int | None) -> list[tuple[str, Image.Image | None]]:
    """(base64, picture) per finished generation, in order; the picture is kept only when a
    grid will be made of them."""
    job = Job(total_images=plan.total_images, steps=plan.steps, n_iter=plan.n_iter,
              job_timestamp=timestamp, per_image_s=config.latency_s,
              name=f"scripts_{plan.endpoint}")
    state.job = job
    offload = plan.out_width * plan.out_height >= OFFLOAD_PIXELS
    keep_pictures = plan.save_images and plan.send_images and plan.total_images >= 2
    done: list[tuple[str, Image.Image | None]] = []
    try:
        for index in range(plan.total_images):
            if images_kept is not None and len(done) >= images_kept:
                job.interrupted = True
                break
            if job.interrupted or state.stopping.is_set():
                break
            job.image_started_s = time.monotonic()
            if offload:
                drawn = await asyncio.to_thread(_draw, plan, config, index, keep_pictures)
            else:
                drawn = _draw(plan, config, index, keep_pictures)
            remaining_s = config.latency_s - (time.monotonic() - job.image_started_s)
            if not await state.pause(remaining_s, job.wake):
                if job.interrupted or state.stopping.is_set():
                    break
                job.skipped = False  # /skip drops the image being made and goes on
                job.wake.clear()
                continue
            done.append(drawn)
            job.done_images += 1
            state.stats.generations += 1
    finally:
        state.job = None
    return done


def _draw(plan: GenerationPlan, config: SimConfig, index: int,
          keep_picture: bool) -> tuple[str, Image.Image | None]:
    image = render.render_generation(plan.out_width, plan.out_height, plan.all_seeds[index],
                                     plan.all_prompts[index])
    text = infotext(plan, config, index)
    encoded = render.encode_b64(image, config.samples_format, text)
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
                out.append(render.encode_b64(picture, config.samples_format,
                                             infotext(plan, config, 0, use_main_prompt=True)))
            out += [render.encode_b64(render.render_extra(plan.out_width, plan.out_height, n),
                                      config.samples_format, None)
                    for n in range(config.extra_images)]
            return out

        made = (await asyncio.to_thread(extras)
                if grid or plan.out_width * plan.out_height >= OFFLOAD_PIXELS else extras())
        grid_b64 = made[:1] if grid else []
        images = [*grid_b64, *(b64 for b64, _ in generated), *made[len(grid_b64):]]
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}
