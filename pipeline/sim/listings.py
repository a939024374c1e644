"""The read-only JSON documents of the API: model lists, options, progress. Pure functions of
the config and state, worded as A1111 v1.10 words them (Forge and SD.Next where they differ)."""

from __future__ import annotations

import time
from typing import Any

from pipeline.sim.config import MODELS_DIR, SimConfig
from pipeline.sim.processing import SAMPLER_ALIASES, sampler_names, scheduler_name, scripts
from pipeline.sim.state import SimState

_SAMPLER_OPTIONS = {"DPM++ 2M": {"scheduler": "karras"}, "DPM++ SDE": {"scheduler": "karras"},
                    "DPM++ 2M SDE": {"scheduler": "exponential", "brownian_noise": True}}


def samplers(config: SimConfig) -> list[dict[str, Any]]:
    return [{"name": name, "aliases": SAMPLER_ALIASES.get(name.removesuffix(" Karras"), []),
             "options": _SAMPLER_OPTIONS.get(name, {})} for name in sampler_names(config)]


def schedulers(config: SimConfig) -> list[dict[str, Any]] | None:
    """None when the server has no ``/schedulers`` (A1111 < 1.9, SD.Next)."""
    if not config.has_schedulers or config.schedulers is None:
        return None
    return [{"name": scheduler_name(label), "label": label, "aliases": None,
             "default_rho": -1, "need_inner_model": False} for label in config.schedulers]


def loras(config: SimConfig) -> list[dict[str, Any]]:
    return [{"name": name, "alias": name, "path": f"{MODELS_DIR}/Lora/{name}.safetensors",
             "metadata": {}} for name in config.loras]


def vaes(config: SimConfig) -> list[dict[str, Any]]:
    return [{"model_name": name, "filename": f"{MODELS_DIR}/VAE/{name}"} for name in config.vaes]


def embeddings(config: SimConfig) -> dict[str, Any]:
    loaded = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": 768, "vectors": 8} for name in config.embeddings}
    return {"loaded": loaded, "skipped": {}}


def upscalers() -> list[dict[str, Any]]:
    def item(name: str, scale: float, path: str | None = None) -> dict[str, Any]:
        return {"name": name, "model_name": None if path is None else name, "model_path": path,
                "model_url": None, "scale": scale}

    return [item("None", 4), item("Lanczos", 4), item("Nearest", 4),
            item("R-ESRGAN 4x+", 4, f"{MODELS_DIR}/RealESRGAN/RealESRGAN_x4plus.pth"),
            item("4x-UltraSharp", 4, f"{MODELS_DIR}/ESRGAN/4x-UltraSharp.pth")]


def scripts_list(config: SimConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for endpoint in ("txt2img", "img2img"):
        selectable, alwayson = scripts(config, endpoint)
        out[endpoint] = [*selectable, *alwayson]
    return out


def options(state: SimState) -> dict[str, Any]:
    """``GET /sdapi/v1/options``: a realistic subset of the WebUI's settings."""
    config = state.config
    model = state.option_model
    out: dict[str, Any] = {
        "sd_model_checkpoint": model.title if model else None,
        "sd_checkpoint_hash": model.sha256 if model else None,
        "sd_vae": "Automatic",
        "samples_format": config.samples_format,
        "grid_format": "png",
        "jpeg_quality": 80,
        "enable_pnginfo": True,
        "return_grid": True,
        "grid_only_if_multiple": True,
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "samples_save": True,
        "outdir_samples": "",
        "sd_checkpoints_limit": 1,
        "add_model_hash_to_info": True,
        "add_model_name_to_info": True,
        "add_version_to_infotext": True,
    }
    if config.flavor == "forge":
        out.update({"forge_preset": "sd", "forge_additional_modules": []})
    return out


def progress(state: SimState) -> dict[str, Any]:
    """``GET /sdapi/v1/progress``: global, about whatever job runs now."""
    job = state.job
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0,
                "state": _state_dict(job="", job_count=0, job_no=0, step=0, steps=0,
                                     interrupted=False, skipped=False, timestamp="0"),
                "current_image": None, "textinfo": None}
    fraction = job.fraction_done()
    batch_size = max(1, job.total_images // max(1, job.n_iter))
    within = (fraction * job.total_images) % batch_size / batch_size
    elapsed_s = time.monotonic() - job.started_s
    progress_value = min(1.0, 0.01 + fraction)
    eta_s = elapsed_s / progress_value - elapsed_s
    return {"progress": progress_value, "eta_relative": max(0.0, eta_s),
            "state": _state_dict(job=job.name, job_count=job.n_iter,
                                 job_no=min(job.n_iter - 1, job.done_images // batch_size),
                                 step=int(within * job.steps), steps=job.steps,
                                 interrupted=job.interrupted, skipped=job.skipped,
                                 timestamp=job.job_timestamp),
            "current_image": None, "textinfo": None}


def _state_dict(*, job: str, job_count: int, job_no: int, step: int, steps: int,
                interrupted: bool, skipped: bool, timestamp: str) -> dict[str, Any]:
    return {"skipped": skipped, "interrupted": interrupted, "stopping_generation": False,
            "job": job, "job_count": job_count, "job_timestamp": timestamp, "job_no": job_no,
            "sampling_step": step, "sampling_steps": steps}
