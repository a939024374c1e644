r"""Read prompt lists written for other tools, one line at a time, into txt2img fields.

Two line formats, both giving a dict of WebUI txt2img fields (``prompt``, ``negative_prompt``,
``width``, ...), or None for a blank line or a ``#`` comment:

- WebUI "Prompts from file or textbox" script (``parse_prompts_file_line``)::

      --prompt "a cat" --negative_prompt "blurry" --steps 20 --seed 5 --sampler_name "Euler a"

  Split like a shell line (``shlex``), as the WebUI does. ``--prompt`` and ``--negative_prompt``
  take every word up to the next ``--option``; every other option takes one value. A line that
  does not start with ``--`` is a plain prompt. ``--sd_model X`` becomes
  ``override_settings.sd_model_checkpoint``; ``--styles X`` becomes ``styles: [X]``;
  ``--outpath_samples``, ``--outpath_grids`` and ``--prompt_for_display`` (server-side output
  settings) are accepted and dropped. Booleans must be ``true`` or ``false`` (the WebUI reads any
  other word as false; here it is an error).

- kohya sd-scripts sample prompts (``parse_kohya_line``)::

      a cat --n bad hands --w 512 --h 768 --d 42 --s 28 --l 7.5 --ss euler_a

  Split on " --" as sd-scripts does (not shlex: these lines are unquoted, and apostrophes as in
  "a cat's hat" are common). ``--n`` negative prompt, ``--w``/``--h`` size, ``--d`` seed, ``--s``
  steps, ``--l`` CFG scale, ``--g`` distilled CFG (Flux), ``--ss`` sampler (diffusers names such
  as ``euler_a`` map to WebUI names such as "Euler a"; others pass through). sd-scripts silently
  ignores options it cannot read; here they are errors.

Bad lines raise ``JobError(path=path, where="line N")``. Prompts are returned as written: the
job layer decides whether to parse them as templates.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from typing import Any

from pipeline.errors import JobError
from pipeline.job.fields import CHECKPOINT_KEY


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return lowered == "true"


_DROPPED = object()
_WEBUI_TAGS: dict[str, Callable[[str], Any] | object] = {
    "prompt": str, "negative_prompt": str, "styles": lambda v: [v], "sd_model": str,
    "seed": int, "subseed": int, "subseed_strength": float, "seed_resize_from_h": int,
    "seed_resize_from_w": int, "sampler_index": int, "sampler_name": str, "scheduler": str,
    "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float, "width": int,
    "height": int, "restore_faces": _bool, "tiling": _bool, "do_not_save_samples": _bool,
    "do_not_save_grid": _bool,
    "outpath_samples": _DROPPED, "outpath_grids": _DROPPED, "prompt_for_display": _DROPPED,
}
_MULTIWORD = ("prompt", "negative_prompt")


def parse_prompts_file_line(line: str, lineno: int, path: str) -> dict[str, Any] | None:
    """One line of the WebUI's "prompts from file or textbox" script, as txt2img fields."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if not text.startswith("--"):
        return {"prompt": text}

    def fail(message: str, hint: str) -> JobError:
        return JobError(message, path=path, where=f"line {lineno}", hint=hint)

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise fail(f"cannot split the line: {exc}",
                   "close every quote; write \\\" for a quote inside a quoted value") from None
    fields: dict[str, Any] = {}
    at = 0
    while at < len(words):
        word = words[at]
        tag = word[2:]
        if not word.startswith("--") or tag not in _WEBUI_TAGS:
            close = difflib.get_close_matches(tag, list(_WEBUI_TAGS), n=1)
            problem = f"unknown option {word!r}" if word.startswith("--") else (
                f"{word!r} is not an option (values with spaces need quotes)")
            if not word.startswith("--"):
                hint = 'quote values that contain spaces, e.g. --sampler_name "Euler a"'
            elif close:
                hint = f"did you mean --{close[0]}?"
            else:
                hint = "options are " + ", ".join(f"--{t}" for t in _WEBUI_TAGS)
            raise fail(problem, hint)
        if tag in _MULTIWORD:
            end = at + 1
            while end < len(words) and not words[end].startswith("--"):
                end += 1
            fields[tag] = " ".join(words[at + 1:end])
            at = end
            continue
        if at + 1 >= len(words):
            raise fail(f"{word} needs a value", f"write {word} VALUE")
        convert, raw = _WEBUI_TAGS[tag], words[at + 1]
        at += 2
        if convert is _DROPPED:
            continue
        try:
            value = convert(raw)  # type: ignore[operator]
        except ValueError:
            kind = {int: "a whole number", float: "a number", _bool: "true or false"}.get(
                convert, "a value")  # type: ignore[call-overload]
            raise fail(f"{word} {raw!r} is not {kind}", f"write {word} followed by {kind}"
                       ) from None
        if tag == "sd_model":
            section, _, key = CHECKPOINT_KEY.partition(".")
            fields.setdefault(section, {})[key] = value
        else:
            fields[tag] = value
    if "prompt" not in fields:
        raise fail("the line has no --prompt", 'add --prompt "..." (a line without leading '
                                               '-- is taken as a plain prompt)')
    return fields


_KOHYA_SAMPLERS = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler",
    "k_euler": "Euler", "euler_a": "Euler a", "k_euler_a": "Euler a", "heun": "Heun",
    "dpm_2": "DPM2", "k_dpm_2": "DPM2", "dpm_2_a": "DPM2 a", "k_dpm_2_a": "DPM2 a",
    "dpmsolver++": "DPM++ 2M",
}


def kohya_sampler(name: str) -> str:
    """A kohya/diffusers sampler name as the WebUI spells it; unknown names pass through."""
    return _KOHYA_SAMPLERS.get(name.lower(), name)


_KOHYA_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "n": ("negative_prompt", str), "w": ("width", int), "h": ("height", int),
    "d": ("seed", int), "s": ("steps", int), "l": ("cfg_scale", float),
    "g": ("distilled_cfg_scale", float), "ss": ("sampler_name", kohya_sampler),
}


def parse_kohya_line(line: str, lineno: int, path: str) -> dict[str, Any] | None:
    """One line of a kohya sd-scripts sample-prompt file, as txt2img fields."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    prompt, *options = (" " + text).split(" --")
    fields: dict[str, Any] = {"prompt": prompt.strip()}
    for option in options:
        key, _, raw = option.strip().partition(" ")
        key, raw = key.lower(), raw.strip()
        where = f"line {lineno}"
        if key not in _KOHYA_OPTIONS:
            close = difflib.get_close_matches(key, list(_KOHYA_OPTIONS), n=1)
            raise JobError(f"unknown option --{key}", path=path, where=where,
                           hint=(f"did you mean --{close[0]}? " if close else "") +
                           "options are --n, --w, --h, --d, --s, --l, --g, --ss")
        field, convert = _KOHYA_OPTIONS[key]
        if not raw:
            raise JobError(f"--{key} needs a value", path=path, where=where,
                           hint=f"write --{key} VALUE ({field})")
        try:
            fields[field] = convert(raw)
        except ValueError:
            raise JobError(f"--{key} {raw!r} is not a valid {field}", path=path, where=where,
                           hint=f"--{key} sets {field}; write a number, e.g. --w 512 or --l 7.5"
                           ) from None
    return fields
