"""Names the WebUI's generation endpoints accept, for did-you-mean warnings on job files.

Unknown fields are silently ignored by the WebUI (a typo generates the wrong thing without an
error), so the job loader warns about names not listed here. Forks add fields, so it only warns.
"""

from __future__ import annotations

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

# Short names a job may use for nested fields, in matrix, zip and prompt overrides.
MATRIX_ALIASES: dict[str, str] = {
    "checkpoint": CHECKPOINT_KEY,
    "model": CHECKPOINT_KEY,
    "vae": "override_settings.sd_vae",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
}
