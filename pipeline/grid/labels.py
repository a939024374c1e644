"""Axis values as sheet text: default labels, custom labels, ordering and the baseline. Pure.

Values come from variant axes (Python values from the plan, or JSON from the manifest), so every
comparison goes through ``value_key``: one canonical text per value, dicts and lists included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.job.grid import CHECKPOINT_KEY, canonical

_AXIS_TITLES = {
    "lora": "LoRA", "lora_name": "LoRA name", "lora_weight": "LoRA weight", "seed": "seed",
    "prompt": "prompt", "template": "prompt template", "cfg_scale": "CFG scale",
    "sampler_name": "sampler", "scheduler": "scheduler", "steps": "steps",
    CHECKPOINT_KEY: "checkpoint", "override_settings.sd_vae": "VAE",
    "override_settings.CLIP_stop_at_last_layers": "CLIP skip",
    "denoising_strength": "denoising", "hr_scale": "hires scale",
}
_VALUE_PREFIX = {"cfg_scale": "CFG ", "steps": "", "denoising_strength": "denoise "}
_VALUE_SUFFIX = {"steps": " steps"}
# Axes whose default label already says what it is ("seed 3", "CFG 7", "detail @ 0.5").
_SELF_DESCRIBING = {"lora", "lora_weight", "seed", "cfg_scale", "steps", "template",
                    "denoising_strength"}


def value_key(value: Any) -> str:
    """Canonical text of an axis value; equal values (plan or manifest) give equal keys."""
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        value = int(value) if abs(value) < 2**53 else value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def axis_title(axis: str) -> str:
    """A readable name for an axis: ``override_settings.sd_model_checkpoint`` -> checkpoint."""
    if axis.startswith("replace:"):
        return f"replace {axis.removeprefix('replace:')!r}"
    if "+" in axis:
        return " + ".join(axis_title(part) for part in axis.split("+"))
    key = canonical(axis)
    return _AXIS_TITLES.get(key, key.removeprefix("override_settings."))


def is_baseline(axis: str, value: Any) -> bool:
    """True for the no-LoRA value of a LoRA axis."""
    key = canonical(axis)
    if key == "lora":
        return value == "baseline"
    if key == "lora_name":
        return value is None
    if key == "lora_weight":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
    return False


def default_label(axis: str, value: Any) -> str:
    """What a header shows for ``value`` on ``axis`` when the job gives no custom label."""
    key = canonical(axis)
    if key == "lora":
        if value == "baseline":
            return "baseline (no LoRA)"
        name, _, weight = str(value).rpartition(":")
        return f"{name} @ {weight}" if name else str(value)
    if key == "lora_name":
        return "no LoRA" if value is None else str(value)
    if key == "lora_weight":
        return "0 (baseline)" if is_baseline(axis, value) else f"weight {_number(value)}"
    if key == "seed":
        if isinstance(value, str) and value.startswith("random#"):
            return f"random seed {value.removeprefix('random#')}"
        if isinstance(value, str) and value.startswith("derived#"):
            return f"seed #{value.removeprefix('derived#')}"
        return f"seed {value}"
    if axis.startswith("replace:"):
        search = axis.removeprefix("replace:")
        return f"{value} (as written)" if value == search else str(value)
    if key == "template":
        return f"prompt {int(value) + 1}" if isinstance(value, int) else str(value)
    if isinstance(value, dict):
        return " · ".join(part_labels(axis, value, {}))
    if isinstance(value, (list, tuple)):
        return " × ".join(_scalar(v) for v in value)
    text = _scalar(value)
    return f"{_VALUE_PREFIX.get(key, '')}{text}{_VALUE_SUFFIX.get(key, '')}"


def size_text(value: Mapping[str, Any]) -> str | None:
    """``512x768`` for a mapping with an integer width and height, else None."""
    w, h = value.get("width"), value.get("height")
    if isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool):
        return f"{w}x{h}"
    return None


def part_labels(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]], *,
                described: bool = True) -> list[str]:
    """A composite value (``prompt+seed``, ``width+height``) as one label per part, each
    understandable alone; width and height together read ``512x768``."""
    one = described_label if described else label_for
    if not isinstance(value, dict):
        return [one(axis, value, custom)]
    if axis in custom:  # a custom label for the whole zip group
        whole = _custom(axis, value, custom)
        if whole is not None:
            return [whole]
    out: list[str] = []
    size = size_text(value)
    for part, v in value.items():
        if size is not None and part in ("width", "height"):
            if part == "width" or "width" not in value:
                out.append(size)
            continue
        out.append(one(part, v, custom))
    return out


def header_label(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]]) -> str:
    """A row or column header: a composite's parts on lines of their own."""
    if "+" in axis and isinstance(value, dict):
        return "\n".join(part_labels(axis, value, custom, described=False))
    return label_for(axis, value, custom)


def title_label(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]]) -> str:
    """A value in a title, where it must say which axis it is on."""
    if "+" in axis and isinstance(value, dict):
        return " · ".join(part_labels(axis, value, custom))
    return described_label(axis, value, custom)


def matches_text(axis: str, value: Any, text: str) -> bool:
    """True when ``text`` names ``value`` of ``axis``: its raw text, its label (``CFG 7``,
    ``512x768``, ``seed #1``), its number (``7`` is ``7.0``); a prompt also by a part of it."""
    wanted = text.strip()
    folded = wanted.casefold()
    if isinstance(value, dict):
        size = size_text(value)
        labels = {" · ".join(part_labels(axis, value, {})).casefold(), value_key(value).casefold()}
        if size is not None and len(value) == 2:
            labels.add(size.casefold())
        return folded.replace("×", "x").replace(" ", "") in {t.replace(" ", "") for t in labels}
    candidates = {k.casefold() for k in _label_keys(value)}
    candidates.add(default_label(axis, value).casefold())
    if isinstance(value, str) and value.startswith(("derived#", "random#")):
        candidates.add("#" + value.split("#", 1)[1])
    if folded in candidates:
        return True
    number = _as_number(value)
    if number is not None and _as_number(wanted) == number:
        return True
    return canonical(axis) == "prompt" and isinstance(value, str) and bool(folded) \
        and folded in value.casefold()


def _custom(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]]) -> str | None:
    mapping = custom.get(axis)
    if not mapping:
        return None
    for candidate in _label_keys(value):
        if candidate in mapping:
            return mapping[candidate]
    if isinstance(value, dict):
        size = size_text(value)
        if size is not None and size in mapping:
            return mapping[size]
    return None


def label_for(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]]) -> str:
    """The custom label for ``value`` if the job gives one, else the default label.

    Custom labels are keyed by the value's text: ``"0.5"``, ``"detail:0.5"``, ``baseline``;
    numbers match by value (``1`` and ``1.0`` are the same key).
    """
    mapping = custom.get(axis)
    if mapping:
        for candidate in _label_keys(value):
            if candidate in mapping:
                return mapping[candidate]
        number = _as_number(value)
        if number is not None:
            for text, label in mapping.items():
                if _as_number(text) == number:
                    return label
    return default_label(axis, value)


def described_label(axis: str, value: Any, custom: Mapping[str, Mapping[str, str]]) -> str:
    """A label that makes sense on its own (for titles): the axis name added where needed."""
    if isinstance(value, dict):
        return " · ".join(part_labels(axis, value, custom))
    text = label_for(axis, value, custom)
    if canonical(axis) in _SELF_DESCRIBING or axis.startswith("replace:"):
        if axis.startswith("replace:"):
            search = axis.removeprefix("replace:")
            return f"{search!r} as written" if value == search else f"{search!r} → {value!r}"
        return text
    if canonical(axis) == "lora_name":
        return text if value is None else f"LoRA {text}"
    return f"{axis_title(axis)} {text}"


def ordered(axis: str, values: Iterable[Any], *, baseline: str = "first") -> list[Any]:
    """Distinct ``values`` in first-seen (job) order, the baseline moved first or last."""
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(value_key(value), value)
    plain = [v for v in seen.values() if not is_baseline(axis, v)]
    base = [v for v in seen.values() if is_baseline(axis, v)]
    return base + plain if baseline == "first" else plain + base


def _label_keys(value: Any) -> list[str]:
    keys = [str(value), value_key(value)]
    if value is None:
        keys += ["null", "none", "baseline"]
    if isinstance(value, bool):
        keys.append(str(value).lower())
    return keys


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _scalar(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    return str(value)
