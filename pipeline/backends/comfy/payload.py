"""From a WebUI txt2img payload to the slot values of a ComfyUI workflow. Pure.

A job is written in WebUI fields (``prompt``, ``cfg_scale``, ``sampler_name``,
``override_settings.sd_model_checkpoint`` ...); ``requested_values`` turns one variant's payload
into values by slot (A1111 names still: ``names`` maps them per server) and cuts its
``<lora:name:weight>`` tags out of the prompt. A field the workflow has no place for and that
would change the image (hires fix, img2img, ``n_iter`` > 1, other ``override_settings`` ...)
is a ``JobError``, never silently dropped; ``check_job`` finds those at load time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from pipeline.backends.comfy.workflow import PAYLOAD_FIELDS, SLOTS, SLOTS_KEY, Template
from pipeline import names
from pipeline.errors import JobError

# Payload fields that never change a txt2img image, or only when another field switches them on.
_HARMLESS = frozenset({
    "override_settings_restore_afterwards", "save_images", "send_images", "do_not_save_samples",
    "do_not_save_grid", "sampler_index", "n_iter", "subseed", "seed_resize_from_h",
    "seed_resize_from_w", "denoising_strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
    "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt", "hr_checkpoint_name", "hr_cfg", "script_args", "s_min_uncond",
    "disable_extra_networks", "comments", "comfyui",  # "comfyui": what a ComfyUI reply recorded
})
# Values that are the WebUI's defaults, so asking for them changes nothing.
_DEFAULTS = {"override_settings.CLIP_stop_at_last_layers": 1, "styles": [], "eta": None}
def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """Cut ``<lora:name:w>`` tags out of a prompt: (text, [(name, te_weight, unet_weight)]).

    A1111's forms (read by ``pipeline.names``, the one tag reader): ``<lora:name>`` (1.0),
    ``<lora:name:w>``, ``<lora:name:te:unet>``, ``<lora:name:te=0.5:unet=0.8>``. A weight that is
    not a number is a ``JobError``: ComfyUI's LoraLoader needs numbers.
    """
    found = names.lora_tags(prompt)
    tags: list[tuple[str, float, float]] = []
    for tag in found:
        extra = [part.strip() for part in tag.text.strip("<>").split(":")[2:]
                 if "=" in part and part.partition("=")[0].strip().lower() not in ("te", "unet")]
        if extra:
            raise JobError(f"LoRA tag {tag.text!r}: {extra[0]!r} is not a weight ComfyUI's "
                           "LoraLoader can take", hint="write <lora:name:weight> or "
                                                      "<lora:name:te:unet>")
        if tag.te_weight is None or tag.unet_weight is None:
            raise JobError(f"LoRA tag {tag.text!r}: a weight is not a number ComfyUI's "
                           "LoraLoader can take", hint="write <lora:name:weight> or "
                                                      "<lora:name:te:unet>")
        tags.append((tag.name.strip(), tag.te_weight, tag.unet_weight))
    text = prompt
    for tag in found:
        text = text.replace(tag.text, "", 1)
    if tags:
        text = re.sub(r"[ \t]{2,}", " ", text)
        text = re.sub(r"\s*,(\s*,)+", ",", text).strip().strip(",").strip()
    return text, tags


def _get(payload: Mapping[str, Any], dotted: str) -> Any:
    value: Any = payload
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _empty(value: Any) -> bool:
    return value is None or value is False or value in ("", 0, "None", "Automatic") \
        or value == [] or value == {}


def requested_values(payload: Mapping[str, Any], template: Template
                     ) -> tuple[dict[str, Any], list[tuple[str, float, float]]]:
    """The slot values a WebUI payload asks for, in A1111 names, and its LoRA tags.

    Fields a ComfyUI txt2img graph cannot honour (hires fix, img2img, n_iter > 1, scripts,
    other override_settings ...) are a ``JobError`` unless the workflow names a slot for them,
    so nothing is silently dropped.
    """
    values: dict[str, Any] = {}
    for slot, key in PAYLOAD_FIELDS.items():
        value = _get(payload, key)
        if value is not None:
            values[slot] = value
    prompt, loras = split_lora_tags(str(values.get("prompt", "")))
    values["prompt"] = prompt
    custom = [k for k in template.places if k not in SLOTS]
    for key in custom:
        value = _get(payload, key)
        if value is not None:
            values[key] = value
    problems: list[str] = []
    handled = set(PAYLOAD_FIELDS.values()) | set(custom)
    for key, value in payload.items():
        if key in handled or key in _HARMLESS:
            continue
        if key == "override_settings" and isinstance(value, Mapping):
            for sub, v in value.items():
                dotted = f"override_settings.{sub}"
                if dotted not in handled and not _empty(v) and _DEFAULTS.get(dotted) != v:
                    problems.append(f"{dotted}: {v!r}")
        elif not _empty(value) and _DEFAULTS.get(key) != value:
            problems.append(f"{key}: {value!r}")
    n_iter = payload.get("n_iter")
    if isinstance(n_iter, int) and n_iter > 1:
        problems.append(f"n_iter: {n_iter} (use batch_size or more seeds)")
    if problems:
        raise JobError("the job sets fields this ComfyUI workflow has no place for: "
                       + "; ".join(problems), path=template.source,
                       hint=f"drop them for ComfyUI backends, or name a place for each in "
                            f"\"{SLOTS_KEY}\" (e.g. \"denoising_strength\": \"3.inputs.denoise\")")
    return values, loras


def _set_dotted(payload: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = payload
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[parts[-1]] = value


def check_job(template: Template, job: Any) -> None:
    """``JobError`` now, at load, for what every variant of ``job`` would be refused for: a field
    the workflow has no place for, or a slot it lacks (LoRAs, a negative prompt, the output).

    Reads the job's fields (defaults, the first value of each matrix axis and zip group, each
    prompt's overrides) without expanding it, folding aliases where the expansion does.
    """
    from pipeline.job.fields import MATRIX_ALIASES

    base: dict[str, Any] = dict(job.defaults)
    for key, values in (job.matrix or {}).items():
        items = values if isinstance(values, list) else [values]
        if items:
            _set_dotted(base, MATRIX_ALIASES.get(key, key), items[0])
    for group in job.zip or []:
        for key, values in group.items():
            if values:
                _set_dotted(base, MATRIX_ALIASES.get(key, key), values[0])
    payloads: list[dict[str, Any]] = []
    texts: list[str] = []
    negatives: list[str] = [str(base.get("negative_prompt") or "")]
    for prompt in job.prompts:
        payload = copy.deepcopy(base)
        if isinstance(prompt, str):
            texts.append(prompt)
        else:
            texts.append(prompt.prompt)
            negatives.append(prompt.negative_prompt or "")
            for key, value in prompt.overrides.items():
                _set_dotted(payload, MATRIX_ALIASES.get(key, key), value)
        payload["prompt"] = texts[-1]
        payloads.append(payload)
    needed: list[str] = ["prompt", "output"]
    for payload in payloads:
        values, _ = requested_values(payload, template)
        needed += [k for k, v in values.items() if v is not None and not (
            (k == "negative_prompt" and v == "") or (k == "batch_size" and v == 1))]
    if job.loras is not None or any("<lora:" in t.lower() or "<lyco:" in t.lower()
                                    for t in texts):
        needed.append("lora")
    if any(negatives):
        needed.append("negative_prompt")
    needed.append("seed")
    template.require(needed)
