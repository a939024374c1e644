"""The node classes the simulated server knows, as ComfyUI 0.3.64 describes them.

Each class has its ``/object_info`` entry (inputs in the old combo form
``[[choices...], {tooltip}]``, ``input_order``, outputs, names, category, tooltips: the shapes
recorded from the real server) and what validation and execution need from it: the input
specs, ``RETURN_TYPES`` and whether it is an output node. The combo choices (checkpoints,
LoRAs, samplers, schedulers) come from the config.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from pipeline.sim.comfy.config import ComfySimConfig

InputSpec = list[Any]  # [type_or_choices, {extra}] as /object_info shows it


@dataclass(frozen=True, slots=True)
class NodeClass:
    name: str
    info: dict[str, Any]  # the /object_info entry

    @property
    def required(self) -> dict[str, InputSpec]:
        return self.info["input"]["required"]

    @property
    def optional(self) -> dict[str, InputSpec]:
        return self.info["input"].get("optional", {})

    @property
    def hidden(self) -> dict[str, str]:
        return self.info["input"].get("hidden", {})

    @property
    def return_types(self) -> tuple[str, ...]:
        return tuple(self.info["output"])

    @property
    def output_node(self) -> bool:
        return bool(self.info["output_node"])

    def input_info(self, name: str) -> tuple[Any, str, dict[str, Any]] | None:
        """``(input_type, category, extra)`` as ComfyUI's ``get_input_info`` returns them."""
        for category in ("required", "optional"):
            spec = self.info["input"].get(category, {}).get(name)
            if spec is not None:
                return spec[0], category, (spec[1] if len(spec) > 1 else {})
        return None

    def input_names(self) -> list[str]:
        order = self.info["input_order"]
        return [*order.get("required", []), *order.get("optional", [])]


def _entry(name: str, display: str, description: str, category: str,
           required: dict[str, InputSpec], outputs: list[str], tooltips: list[str] | None,
           *, hidden: dict[str, str] | None = None, output_node: bool = False) -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, Any] = {"required": list(required)}
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    info: dict[str, Any] = {
        "input": inputs, "input_order": order, "output": outputs,
        "output_is_list": [False] * len(outputs), "output_name": list(outputs), "name": name,
        "display_name": display, "description": description, "python_module": "nodes",
        "category": category, "output_node": output_node,
    }
    if tooltips is not None:
        info["output_tooltips"] = tooltips
    return info


def _tip(text: str, **extra: Any) -> dict[str, Any]:
    return {**extra, "tooltip": text}


def _entries(config: ComfySimConfig) -> dict[str, dict[str, Any]]:
    strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    size = {"default": 512, "min": 16, "max": 16384, "step": 8}
    return {
        "CheckpointLoaderSimple": _entry(
            "CheckpointLoaderSimple", "Load Checkpoint",
            "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            "loaders",
            {"ckpt_name": [list(config.checkpoints),
                           _tip("The name of the checkpoint (model) to load.")]},
            ["MODEL", "CLIP", "VAE"],
            ["The model used for denoising latents.",
             "The CLIP model used for encoding text prompts.",
             "The VAE model used for encoding and decoding images to and from latent space."]),
        "KSampler": _entry(
            "KSampler", "KSampler",
            "Uses the provided model, positive and negative conditioning to denoise the latent "
            "image.", "sampling",
            {"model": ["MODEL", _tip("The model used for denoising the input latent.")],
             "seed": ["INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                              "control_after_generate": True,
                              "tooltip": "The random seed used for creating the noise."}],
             "steps": ["INT", _tip("The number of steps used in the denoising process.",
                                   default=20, min=1, max=10000)],
             "cfg": ["FLOAT", _tip("The Classifier-Free Guidance scale balances creativity and "
                                   "adherence to the prompt. Higher values result in images "
                                   "more closely matching the prompt however too high values "
                                   "will negatively impact quality.",
                                   default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
             "sampler_name": [list(config.samplers),
                              _tip("The algorithm used when sampling, this can affect the "
                                   "quality, speed, and style of the generated output.")],
             "scheduler": [list(config.schedulers),
                           _tip("The scheduler controls how noise is gradually removed to "
                                "form the image.")],
             "positive": ["CONDITIONING", _tip("The conditioning describing the attributes you "
                                               "want to include in the image.")],
             "negative": ["CONDITIONING", _tip("The conditioning describing the attributes you "
                                               "want to exclude from the image.")],
             "latent_image": ["LATENT", _tip("The latent image to denoise.")],
             "denoise": ["FLOAT", _tip("The amount of denoising applied, lower values will "
                                       "maintain the structure of the initial image allowing "
                                       "for image to image sampling.",
                                       default=1.0, min=0.0, max=1.0, step=0.01)]},
            ["LATENT"], ["The denoised latent."]),
        "LoraLoader": _entry(
            "LoraLoader", "Load LoRA",
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which "
            "latents are denoised such as applying styles. Multiple LoRA nodes can be linked "
            "together.", "loaders",
            {"model": ["MODEL", _tip("The diffusion model the LoRA will be applied to.")],
             "clip": ["CLIP", _tip("The CLIP model the LoRA will be applied to.")],
             "lora_name": [list(config.loras), _tip("The name of the LoRA.")],
             "strength_model": ["FLOAT", _tip("How strongly to modify the diffusion model. "
                                              "This value can be negative.", **strength)],
             "strength_clip": ["FLOAT", _tip("How strongly to modify the CLIP model. This "
                                             "value can be negative.", **strength)]},
            ["MODEL", "CLIP"], ["The modified diffusion model.", "The modified CLIP model."]),
        "EmptyLatentImage": _entry(
            "EmptyLatentImage", "Empty Latent Image",
            "Create a new batch of empty latent images to be denoised via sampling.", "latent",
            {"width": ["INT", _tip("The width of the latent images in pixels.", **size)],
             "height": ["INT", _tip("The height of the latent images in pixels.", **size)],
             "batch_size": ["INT", _tip("The number of latent images in the batch.",
                                        default=1, min=1, max=4096)]},
            ["LATENT"], ["The empty latent image batch."]),
        "CLIPTextEncode": _entry(
            "CLIPTextEncode", "CLIP Text Encode (Prompt)",
            "Encodes a text prompt using a CLIP model into an embedding that can be used to "
            "guide the diffusion model towards generating specific images.", "conditioning",
            {"text": ["STRING", {"multiline": True, "dynamicPrompts": True,
                                 "tooltip": "The text to be encoded."}],
             "clip": ["CLIP", _tip("The CLIP model used for encoding the text.")]},
            ["CONDITIONING"], ["A conditioning containing the embedded text used to guide the "
                               "diffusion model."]),
        "SaveImage": _entry(
            "SaveImage", "Save Image", "Saves the input images to your ComfyUI output "
            "directory.", "image",
            {"images": ["IMAGE", _tip("The images to save.")],
             "filename_prefix": ["STRING", _tip(
                 "The prefix for the file to save. This may include formatting information "
                 "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                 "from nodes.", default="ComfyUI")]},
            [], None, hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True),
        "VAEDecode": _entry(
            "VAEDecode", "VAE Decode", "Decodes latent images back into pixel space images.",
            "latent",
            {"samples": ["LATENT", _tip("The latent to be decoded.")],
             "vae": ["VAE", _tip("The VAE model used for decoding the latent.")]},
            ["IMAGE"], ["The decoded image."]),
    }


@functools.lru_cache(maxsize=16)
def node_classes(config: ComfySimConfig) -> dict[str, NodeClass]:
    """Every class the server knows, by name (cached per config; treat as read-only)."""
    return {name: NodeClass(name, info) for name, info in sorted(_entries(config).items())}


def object_info(config: ComfySimConfig, name: str | None = None) -> dict[str, Any]:
    """``GET /object_info`` (all classes) or ``/object_info/{name}`` (``{}`` when unknown)."""
    classes = node_classes(config)
    if name is None:
        return {n: copy.deepcopy(c.info) for n, c in classes.items()}
    found = classes.get(name)
    return {name: copy.deepcopy(found.info)} if found else {}
