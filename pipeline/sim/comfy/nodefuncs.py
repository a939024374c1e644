"""What each simulated node does with its inputs.

Values flowing along links are small descriptions instead of tensors: a model is its
checkpoint plus the LoRAs patched onto it, a latent is its size plus, once sampled, the
:class:`~pipeline.sim.comfy.images.ImageSpec` of each image, and an image batch is rendered
pictures. Node functions get a :class:`NodeContext` for what costs time or talks back
(sleeping, progress per sampling step, interrupts, injected faults).

Real ComfyUI quirks kept: a latent is ``width // 8`` by ``height // 8``, so a decoded image is
``(width // 8) * 8`` wide; a batch shares one seed; a widget value given where a link was
expected passes validation and fails when the node runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from pipeline.sim.comfy.images import ImageSpec, render, save_images


class Interrupted(Exception):  # noqa: N818 - ComfyUI's InterruptProcessingException
    """The prompt was interrupted (``POST /interrupt``)."""


class OutOfMemoryError(RuntimeError):
    """What torch raises when an allocation does not fit (a latent over ``image_size_cap``)."""


OutOfMemoryError.__module__ = "torch"
OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow "
            "worked before you might have accidentally set the batch_size to a large number.")


@dataclass(frozen=True, slots=True)
class ModelPatcher:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object: {self.checkpoint}>"


@dataclass(frozen=True, slots=True)
class Clip:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.sd.CLIP object: {self.checkpoint}>"


@dataclass(frozen=True, slots=True)
class Vae:
    checkpoint: str

    def __str__(self) -> str:
        return f"<comfy.sd.VAE object: {self.checkpoint}>"


@dataclass(frozen=True, slots=True)
class Conditioning:
    text: str
    clip: Clip

    def __str__(self) -> str:
        return f"[[tensor(<conditioning of {self.text!r}>), {{'pooled_output': tensor(...)}}]]"


@dataclass(frozen=True, slots=True)
class Latent:
    width: int  # in pixels, a multiple of 8
    height: int
    batch_size: int
    specs: tuple[ImageSpec, ...] | None = None  # None: not sampled

    def __str__(self) -> str:
        return f"{{'samples': tensor(<{self.batch_size}x4x{self.height // 8}x{self.width // 8}>)}}"


@dataclass(frozen=True, slots=True)
class Images:
    pictures: tuple[Image.Image, ...] = field(repr=False)

    def __str__(self) -> str:
        w, h = self.pictures[0].size
        return f"tensor(<{len(self.pictures)}x{h}x{w}x3 image batch>)"


class NodeContext(Protocol):
    """What a running node may ask of the executor."""

    config: Any
    folders: Any

    async def pause(self, seconds: float) -> None: ...
    async def stall(self, seconds: float) -> None: ...
    def check_interrupt(self) -> None: ...
    def progress(self, value: int, total: int) -> None: ...
    def draw_fault(self) -> str | None: ...
    def drop_socket(self) -> None: ...
    def count(self, what: str, n: int = 1) -> None: ...


_ATTRIBUTE = {ModelPatcher: "clone", Clip: "tokenize", Vae: "decode", Conditioning: "copy",
              Latent: "copy", Images: "shape"}


def _expect(value: Any, kind: type) -> Any:
    """Fail as the real node would when a link input got a plain value."""
    if not isinstance(value, kind):
        raise AttributeError(f"'{type(value).__name__}' object has no attribute "
                             f"'{_ATTRIBUTE[kind]}'")
    return value


async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> tuple[Any, ...]:
    await ctx.pause(ctx.config.switch_cost_s)
    ctx.count("checkpoint_loads")
    return ModelPatcher(ckpt_name), Clip(ckpt_name), Vae(ckpt_name)


async def lora_loader(ctx: NodeContext, model: Any, clip: Any, lora_name: str,
                      strength_model: float, strength_clip: float) -> tuple[Any, ...]:
    model, clip = _expect(model, ModelPatcher), _expect(clip, Clip)
    await ctx.pause(ctx.config.node_latency_s)
    if strength_model != 0:
        model = ModelPatcher(model.checkpoint, (*model.loras, (lora_name, strength_model)))
    if strength_clip != 0:
        clip = Clip(clip.checkpoint, (*clip.loras, (lora_name, strength_clip)))
    return model, clip


async def clip_text_encode(ctx: NodeContext, text: str, clip: Any) -> tuple[Any, ...]:
    if clip is None:
        raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a "
                           "checkpoint loader node your checkpoint does not contain a valid "
                           "clip or text encoder model.")
    clip = _expect(clip, Clip)
    await ctx.pause(ctx.config.node_latency_s)
    return (Conditioning(text, clip),)


async def empty_latent(ctx: NodeContext, width: int, height: int,
                       batch_size: int) -> tuple[Any, ...]:
    return (Latent(width // 8 * 8, height // 8 * 8, batch_size),)


async def ksampler(ctx: NodeContext, model: Any, seed: int, steps: int, cfg: float,
                   sampler_name: str, scheduler: str, positive: Any, negative: Any,
                   latent_image: Any, denoise: float) -> tuple[Any, ...]:
    model = _expect(model, ModelPatcher)
    positive, negative = _expect(positive, Conditioning), _expect(negative, Conditioning)
    latent = _expect(latent_image, Latent)
    cap = ctx.config.image_size_cap
    if max(latent.width, latent.height) > cap or \
            latent.width * latent.height * latent.batch_size > cap * cap:
        mib = latent.width * latent.height * latent.batch_size * 4 * 4 // 64 // (1 << 20) + 1
        raise OutOfMemoryError(f"Allocation on device would exceed allowed memory. (out of "
                               f"memory)\nCurrently allocated     : 3.19 GiB\nRequested      "
                               f"         : {mib} MiB")
    fault = ctx.draw_fault()
    for step in range(steps):
        if step == 0 and fault == "error":
            raise RuntimeError("simulated failure while sampling (error_rate)")
        if step == 0 and fault == "ws_drop":
            ctx.drop_socket()
        if step == 0 and fault == "hang":
            await ctx.stall(ctx.config.hang_s)
        await ctx.pause(ctx.config.step_latency_s)
        ctx.check_interrupt()
        ctx.progress(step + 1, steps)
    loras = (*model.loras, *positive.clip.loras)
    settings = (float(cfg), steps, sampler_name, scheduler, float(denoise))
    specs = tuple(ImageSpec(latent.width, latent.height, seed, index, model.checkpoint, loras,
                            positive.text, negative.text, settings)
                  for index in range(latent.batch_size))
    return (Latent(latent.width, latent.height, latent.batch_size, specs),)


def _decode(latent: Latent, vae: Vae) -> tuple[Image.Image, ...]:
    if latent.specs is None:  # an empty latent decodes to a flat picture
        blank = ImageSpec(latent.width, latent.height, None, 0, vae.checkpoint)
        return tuple(render(blank) for _ in range(latent.batch_size))
    return tuple(render(spec) for spec in latent.specs)


async def vae_decode(ctx: NodeContext, samples: Any, vae: Any) -> tuple[Any, ...]:
    latent, vae = _expect(samples, Latent), _expect(vae, Vae)
    await ctx.pause(ctx.config.node_latency_s)
    return (Images(await asyncio.to_thread(_decode, latent, vae)),)


async def save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI",
                     prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
    """Returns ``{"ui": ...}`` like ComfyUI's output nodes."""
    images = _expect(images, Images)
    ui = await asyncio.to_thread(save_images, ctx.folders, list(images.pictures),
                                 filename_prefix, prompt, extra_pnginfo)
    ctx.count("images_saved", len(ui["images"]))
    return {"ui": ui}


NodeFunction = Callable[..., Awaitable[Any]]
FUNCTIONS: dict[str, NodeFunction] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "LoraLoader": lora_loader,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent,
    "KSampler": ksampler,
    "VAEDecode": vae_decode,
    "SaveImage": save_image,
}
