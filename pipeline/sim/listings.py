"""The read-only JSON documents of the API: model lists, options, progress. Pure functions of
the config and state, worded as A1111 v1.10 words them (Forge and SD.Next where they differ;
realistic profiles serve what ``forge_data.py`` recorded)."""

from __future__ import annotations

import time
from typing import Any

from pipeline.sim import forge_data
from pipeline.sim.config import MODELS_DIR, SimConfig
from pipeline.sim.processing import scripts
from pipeline.sim.samplers import SCHEDULER_INFO, aliases_of, options_of, sampler_names, \
    scheduler_name
from pipeline.sim.state import SimState


def sd_models(state: SimState) -> list[dict[str, Any]]:
    return [c.listing(hashed=state.is_hashed(c)) for c in state.catalogue.checkpoints]


def samplers(config: SimConfig) -> list[dict[str, Any]]:
    return [{"name": name, "aliases": aliases_of(name),
             "options": options_of(name)} for name in sampler_names(config)]


def schedulers(config: SimConfig) -> list[dict[str, Any]] | None:
    """None when the server has no ``/schedulers`` (A1111 < 1.9, SD.Next)."""
    if not config.has_schedulers or config.schedulers is None:
        return None
    out = []
    for label in config.schedulers:
        known = SCHEDULER_INFO.get(label)
        if known is not None and config.server.realistic:
            out.append(dict(known))
        else:
            out.append({"name": scheduler_name(label), "label": label, "aliases": None,
                        "default_rho": -1, "need_inner_model": False})
    return out


def loras(config: SimConfig) -> list[dict[str, Any]]:
    def metadata(name: str) -> dict[str, str]:
        if not config.server.realistic:
            return {}
        return {"ss_network_dim": "4", "ss_network_alpha": "4.0",
                "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_output_name": name,
                "ss_network_module": "networks.lora", "ss_training_comment": "simulated"}

    return [{"name": name, "alias": name, "path": f"{MODELS_DIR}/Lora/{name}.safetensors",
             "metadata": metadata(name)} for name in config.loras]


def vaes(config: SimConfig) -> list[dict[str, Any]]:
    return [{"model_name": name, "filename": f"{MODELS_DIR}/VAE/{name}"} for name in config.vaes]


def sd_vae(config: SimConfig) -> list[dict[str, Any]] | None:
    """``/sdapi/v1/sd-vae``: Forge has no such route (None: 404)."""
    if config.profile == "classic":
        return None if config.flavor == "forge" else vaes(config)
    return vaes(config) if config.server.vae_route == "sd-vae" else None


def sd_modules(config: SimConfig) -> list[dict[str, Any]] | None:
    """``/sdapi/v1/sd-modules`` (Forge only): empty unless Forge built its UI (``forge_ui``),
    as the real one fills it only then."""
    if config.profile == "classic":
        return vaes(config) if config.flavor == "forge" else None
    if config.server.vae_route != "sd-modules":
        return None
    return vaes(config) if config.forge_ui else []


def module_paths(config: SimConfig) -> dict[str, str]:
    """Every spelling Forge accepts for a module (file name or full path) -> full path."""
    out: dict[str, str] = {}
    for entry in sd_modules(config) or []:
        out[entry["model_name"]] = out[entry["filename"]] = entry["filename"]
    return out


def embeddings(config: SimConfig) -> dict[str, Any]:
    loaded = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": 768, "vectors": 8} for name in config.embeddings}
    return {"loaded": loaded, "skipped": {}}


def upscalers(config: SimConfig) -> list[dict[str, Any]]:
    if config.server.realistic:
        return [dict(entry) for entry in forge_data.UPSCALERS]

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


def cmd_flags() -> dict[str, Any]:
    """The command-line flags (Forge's recorded ones)."""
    return dict(forge_data.CMD_FLAGS)


def memory() -> dict[str, Any]:
    return {"ram": {"free": 16.0e9, "used": 8.0e9, "total": 24.0e9},
            "cuda": {"error": "unavailable"}}


def sdnext_version(config: SimConfig) -> dict[str, Any]:
    """SD.Next's ``/sdapi/v1/version``: how a client tells it apart."""
    return {"app": "sd.next", "updated": config.webui_version, "commit": "0000000",
            "branch": "master", "url": "https://github.com/vladmandic/sdnext/tree/master"}


def options(state: SimState) -> dict[str, Any]:
    """``GET /sdapi/v1/options``: the live settings (realistic: the ~330 recorded ones)."""
    config = state.config
    live = state.options
    if config.server.realistic_options:
        out = dict(live.values)
        out["sd_model_checkpoint"] = state.checkpoint_option()
        weights = state.weights_model
        out["sd_checkpoint_hash"] = weights.sha256 if weights else ""
        return out
    model = state.option_model
    out = {
        "sd_model_checkpoint": state.checkpoint_option(),
        "sd_checkpoint_hash": model.sha256 if model else None,
        "sd_vae": live.get("sd_vae", "Automatic"),
        "samples_format": live.get("samples_format", config.samples_format),
        "grid_format": "png",
        "jpeg_quality": 80,
        "enable_pnginfo": True,
        "return_grid": True,
        "grid_only_if_multiple": True,
        "CLIP_stop_at_last_layers": live.get("CLIP_stop_at_last_layers", 1),
        "eta_noise_seed_delta": 0,
        "samples_save": True,
        "outdir_samples": "",
        "sd_checkpoints_limit": 1,
        "add_model_hash_to_info": True,
        "add_model_name_to_info": True,
        "add_version_to_infotext": True,
    }
    if config.kind == "forge":
        out.update({"forge_preset": "sd",
                    "forge_additional_modules": live.get("forge_additional_modules", [])})
    return out


def progress(state: SimState) -> dict[str, Any]:
    """``GET /sdapi/v1/progress``: global, about whatever job runs now."""
    job = state.job
    realistic = state.config.server.realistic
    if job is None:
        idle = state.idle if realistic else {"job_timestamp": "0", "job_no": 0,
                                             "sampling_steps": 0, "interrupted": False,
                                             "skipped": False}
        return {"progress": 0.0, "eta_relative": 0.0,
                "state": _state_dict(job="", job_count=0, job_no=int(idle["job_no"]), step=0,
                                     steps=int(idle["sampling_steps"]),
                                     interrupted=bool(idle["interrupted"]),
                                     skipped=bool(idle["skipped"]),
                                     timestamp=str(idle["job_timestamp"])),
                "current_image": None, "textinfo": None}
    now = time.monotonic()
    elapsed_s = now - job.started_s
    if realistic:
        value, job_no, step, steps = _realistic_progress(job, now)
    else:
        fraction = job.fraction_done()
        batch_size = max(1, job.total_images // max(1, job.n_iter))
        within = (fraction * job.total_images) % batch_size / batch_size
        value = min(1.0, 0.01 + fraction)
        job_no = min(job.n_iter - 1, job.done_images // batch_size)
        step, steps = int(within * job.steps), job.steps
    eta_s = elapsed_s / value - elapsed_s
    return {"progress": value, "eta_relative": max(0.0, eta_s),
            "state": _state_dict(job=job.name, job_count=job.n_iter, job_no=job_no, step=step,
                                 steps=steps, interrupted=job.interrupted,
                                 skipped=job.skipped, timestamp=job.job_timestamp),
            "current_image": None, "textinfo": None}


def _realistic_progress(job: Any, now: float) -> tuple[float, int, int, int]:
    """A1111's formula: 0.01 + (job_no + step/steps) / job_count, so it sits at 0.01 (and the
    ETA, elapsed/progress - elapsed, climbs absurdly) until the first step is done; the
    previous job's step count shows until this one's sampling is set up."""
    steps = job.steps if now >= job.steps_shown_from_s or job.sampling else job.leftover_steps
    step = 0
    if job.sampling and job.unit_s > 0 and job.steps > 0:
        step = min(job.steps - 1, int((now - job.image_started_s) / job.unit_s * job.steps))
    count = max(1, job.n_iter)
    value = 0.01 + job.unit_no / count
    if steps > 0:
        value += step / steps / count
    return min(1.0, value), job.unit_no, step, steps


def _state_dict(*, job: str, job_count: int, job_no: int, step: int, steps: int,
                interrupted: bool, skipped: bool, timestamp: str) -> dict[str, Any]:
    return {"skipped": skipped, "interrupted": interrupted, "stopping_generation": False,
            "job": job, "job_count": job_count, "job_timestamp": timestamp, "job_no": job_no,
            "sampling_step": step, "sampling_steps": steps}
