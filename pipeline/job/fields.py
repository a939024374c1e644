"""The WebUI generation fields a job may set: names, the one alias table, and each field's type.

Unknown fields are silently ignored by the WebUI (a typo generates the wrong thing without an
error), so the job loader warns about names not listed here; forks add fields, so it only warns.
Fields listed in ``FIELD_TYPES`` are type-checked wherever a job can set them (``defaults``,
``matrix``, ``zip``, per-prompt overrides): see ``pipeline.job.values.check_field``. ``null`` is
accepted for every field and means the server's default, as the WebUI API reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TXT2IMG_FIELDS: frozenset[str] = frozenset({
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength",
    "seed_resize_from_h", "seed_resize_from_w", "sampler_name", "scheduler", "batch_size",
    "n_iter", "steps", "cfg_scale", "distilled_cfg_scale", "width", "height", "restore_faces",
    "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at",
    "disable_extra_networks", "firstpass_image", "comments", "enable_hr", "firstphase_width",
    "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt", "hr_cfg", "hr_distilled_cfg", "force_task_id", "sampler_index",
    "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext",
    # img2img
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y",
    "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "inpainting_mask_invert", "initial_noise_multiplier", "latent_mask", "include_init_images",
})

IMG2IMG_ONLY_FIELDS: frozenset[str] = frozenset({
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y",
    "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "inpainting_mask_invert", "initial_noise_multiplier", "latent_mask", "include_init_images",
})

CHECKPOINT_KEY = "override_settings.sd_model_checkpoint"

# The only alias table: short names a job may use for nested fields, wherever it sets fields
# (defaults, matrix, zip, per-prompt overrides). Everything else that folds aliases imports it.
MATRIX_ALIASES: dict[str, str] = {
    "checkpoint": CHECKPOINT_KEY,
    "model": CHECKPOINT_KEY,
    "vae": "override_settings.sd_vae",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
}


def payload_key(name: str) -> str:
    """The (dotted) request key a job's field name stands for: aliases folded."""
    return MATRIX_ALIASES.get(name, name)


Kind = Literal["int", "float", "bool", "str", "str_list", "dict", "list"]
SEED_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class FieldType:
    """What a field holds; numbers are also bounded (inclusive) where the WebUI needs it."""

    kind: Kind
    min: float | None = None
    max: float | None = None


_SIDE = FieldType("int", 1, 16384)
_SIDE_OR_0 = FieldType("int", 0, 16384)
_STEPS = FieldType("int", 0, 10000)
_SEED = FieldType("int", -1, SEED_MAX)
_UNIT = FieldType("float", 0, 1)
_FLOAT = FieldType("float")
_BOOL = FieldType("bool")
_STR = FieldType("str")

FIELD_TYPES: dict[str, FieldType] = {
    "prompt": _STR, "negative_prompt": _STR, "styles": FieldType("str_list"),
    "seed": _SEED, "subseed": _SEED, "subseed_strength": _UNIT,
    "seed_resize_from_h": FieldType("int", -1, 16384),
    "seed_resize_from_w": FieldType("int", -1, 16384),
    "sampler_name": _STR, "sampler_index": _STR, "scheduler": _STR,
    "batch_size": FieldType("int", 1, 256), "n_iter": FieldType("int", 1, 1000),
    "steps": FieldType("int", 1, 10000), "cfg_scale": _FLOAT, "distilled_cfg_scale": _FLOAT,
    "width": _SIDE, "height": _SIDE, "restore_faces": _BOOL, "tiling": _BOOL,
    "do_not_save_samples": _BOOL, "do_not_save_grid": _BOOL, "eta": _FLOAT,
    "denoising_strength": _UNIT, "s_min_uncond": _FLOAT, "s_churn": _FLOAT, "s_tmax": _FLOAT,
    "s_tmin": _FLOAT, "s_noise": _FLOAT,
    "override_settings": FieldType("dict"), "override_settings_restore_afterwards": _BOOL,
    "refiner_checkpoint": _STR, "refiner_switch_at": _UNIT, "disable_extra_networks": _BOOL,
    "firstpass_image": _STR, "comments": FieldType("dict"), "enable_hr": _BOOL,
    "firstphase_width": _SIDE_OR_0, "firstphase_height": _SIDE_OR_0,
    "hr_scale": FieldType("float", 0, 16), "hr_upscaler": _STR, "hr_second_pass_steps": _STEPS,
    "hr_resize_x": _SIDE_OR_0, "hr_resize_y": _SIDE_OR_0, "hr_checkpoint_name": _STR,
    "hr_sampler_name": _STR, "hr_scheduler": _STR, "hr_prompt": _STR, "hr_negative_prompt": _STR,
    "hr_cfg": _FLOAT, "hr_distilled_cfg": _FLOAT, "force_task_id": _STR, "script_name": _STR,
    "script_args": FieldType("list"), "send_images": _BOOL, "save_images": _BOOL,
    "alwayson_scripts": FieldType("dict"), "infotext": _STR,
    # img2img (init_images and mask are paths, checked by pipeline.expand.inputs)
    "resize_mode": FieldType("int", 0, 3), "image_cfg_scale": _FLOAT,
    "mask_blur": FieldType("int", 0, 4096), "mask_blur_x": FieldType("int", 0, 4096),
    "mask_blur_y": FieldType("int", 0, 4096), "mask_round": _BOOL,
    "inpainting_fill": FieldType("int", 0, 3), "inpaint_full_res": _BOOL,
    "inpaint_full_res_padding": FieldType("int", 0, 16384),
    "inpainting_mask_invert": FieldType("int", 0, 1), "initial_noise_multiplier": _FLOAT,
    "latent_mask": _STR, "include_init_images": _BOOL,
    # settings inside override_settings that sdbatch itself reads or that aliases reach
    CHECKPOINT_KEY: _STR, "override_settings.sd_vae": _STR,
    "override_settings.CLIP_stop_at_last_layers": FieldType("int", 1, 100),
}
