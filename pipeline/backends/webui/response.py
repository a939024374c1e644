"""Turn a WebUI generation response into labelled images, or say exactly why it is unusable.

Pure: bytes in, ``Image`` values out. Rules (see shared/webui-api.md):
- ``info`` is a JSON string that must be parsed a second time (some forks send an object);
- the generations are ``images[first : first + len(all_seeds)]`` with
  ``first = index_of_first_image`` (1 when a grid came first); anything else is not a
  generation and never gets a seed;
- image i has seed ``all_seeds[i]`` and subseed ``all_subseeds[i]``;
- fewer generations than ``all_seeds`` (an interrupted job), ``images: []`` with empty ``info``
  (SD.Next with no model), bad base64, unknown image bytes: failures, never saved;
- the format comes from the bytes' magic numbers, never from an assumption.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson
import pybase64

from pipeline import names
from pipeline.backends.webui.substitution import (check_substitution, find_substitutions,
                                                 split_legacy_sampler)
from pipeline.errors import BadResponseError
from pipeline.imagebytes import sniff_format
from pipeline.model import Image, Variant


def decode_image(b64: Any, *, where: str) -> bytes:
    if not isinstance(b64, str):
        raise BadResponseError(f"{where} is not a base64 string")
    if b64.startswith("data:"):
        b64 = b64.partition(",")[2]
    try:  # strict: no stray characters. pybase64 (SIMD) is ~30x faster than binascii here.
        return pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise BadResponseError(f"{where} is not valid base64 ({exc})") from None


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        snippet = body[:120].decode("utf-8", "replace")
        raise BadResponseError(f"the response is not JSON ({exc.msg}; {len(body)} bytes, "
                               f"starting {snippet!r})") from None
    if not isinstance(data, dict):
        raise BadResponseError("the response is JSON but not an object")
    return data


def parse_info(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    if not isinstance(raw, str):
        raise BadResponseError("'info' is neither a JSON string nor an object")
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadResponseError(f"'info' is not valid JSON ({exc.msg})") from None
    if not isinstance(info, dict):
        raise BadResponseError("'info' is JSON but not an object")
    return info


def split_images(data: dict[str, Any], variant: Variant) -> tuple[tuple[Image, ...], dict[str, Any]]:
    """Decode and label the images of a parsed response body; raises ``BadResponseError``."""
    images = data.get("images")
    if not isinstance(images, list):
        raise BadResponseError("the response has no 'images' list")
    info = parse_info(data.get("info"))
    if not images:
        reason = " and an empty 'info' (no model loaded?)" if not info else ""
        raise BadResponseError(f"the server answered 200 with no images{reason}")
    expected = variant.images_expected
    all_seeds = _int_list(info.get("all_seeds"))
    if all_seeds is None:
        seed = info.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BadResponseError("'info' reports neither 'all_seeds' nor 'seed', so images "
                                   "cannot be labelled with their seeds")
        all_seeds = [seed + i for i in range(expected)]
    if len(all_seeds) < expected or (len(all_seeds) > expected
                                     and not variant.payload.get("script_name")):
        raise BadResponseError(f"'info.all_seeds' lists {len(all_seeds)} seeds for "
                               f"{expected} requested images")
    all_subseeds = _int_list(info.get("all_subseeds")) or []
    first = info.get("index_of_first_image")
    if not isinstance(first, int) or first < 0:
        grid_first = bool(variant.payload.get("save_images")) and len(all_seeds) > 1 \
            and len(images) > len(all_seeds)
        first = 1 if grid_first else 0
    generations = images[first:first + len(all_seeds)]
    if len(generations) < len(all_seeds):
        raise BadResponseError(f"got {len(generations)} of {len(all_seeds)} images (the job was "
                               "interrupted or the server dropped some)")
    extras, allowed = len(images) - len(generations), max_extra_images(variant.payload)
    if extras > allowed:
        raise BadResponseError(f"the answer holds {len(images)} images for {len(generations)} "
                               f"requested; at most {allowed} more (a grid, ControlNet maps, a "
                               "script's images) can come with them, so it is not saved")
    all_prompts = info.get("all_prompts") if isinstance(info.get("all_prompts"), list) else []
    all_negatives = (info.get("all_negative_prompts")
                     if isinstance(info.get("all_negative_prompts"), list) else [])
    infotexts = info.get("infotexts") if isinstance(info.get("infotexts"), list) else []
    out: list[Image] = []
    for i, b64 in enumerate(generations):
        raw = decode_image(b64, where=f"image {first + i}")
        fmt = sniff_format(raw)
        if fmt is None:
            raise BadResponseError(f"image {first + i} is not a PNG, JPEG, WebP, GIF or AVIF "
                                   f"(starts {raw[:8]!r})")
        wrong_size = size_problem(raw, fmt, variant.payload)
        if wrong_size:
            raise BadResponseError(f"image {first + i} {wrong_size}: not an answer to this "
                                   "request, so it is not saved")
        out.append(Image(
            index=i, data=raw, format=fmt, kind="generation", seed=all_seeds[i],
            subseed=all_subseeds[i] if i < len(all_subseeds) else None,
            prompt=all_prompts[i] if i < len(all_prompts) else variant.prompt,
            negative_prompt=all_negatives[i] if i < len(all_negatives) else variant.negative_prompt,
            infotext=_infotext(infotexts, first, i, len(all_seeds)),
        ))
    for n, b64 in enumerate(images[first + len(all_seeds):]):
        raw = decode_image(b64, where=f"extra image {n}")
        out.append(Image(index=len(all_seeds) + n, data=raw, format=sniff_format(raw) or "bin",
                         kind="extra"))
    return tuple(out), info


MAX_SCRIPT_IMAGES = 1024  # a selectable script (X/Y/Z plot, SD upscale) returns its own images
EXTRA_SLACK = 16  # extensions that add an image or two (detection maps, previews)


def max_extra_images(payload: dict[str, Any]) -> int:
    """How many images beyond the generations an answer to ``payload`` may hold: a grid, per
    generation one per always-on script unit (ControlNet detect maps), a selectable script's
    images, and some slack. More is not an answer to this request (``images`` with 10,000
    entries for one image)."""
    count = _count(payload.get("batch_size")) * _count(payload.get("n_iter"))
    script = MAX_SCRIPT_IMAGES if payload.get("script_name") else 0
    return (1 if count > 1 else 0) + count * script_units(payload) + script + EXTRA_SLACK


def script_units(payload: dict[str, Any]) -> int:
    """Always-on script units in ``payload`` (each may add an image per generation: a
    ControlNet unit its detect map)."""
    units = 0
    scripts = payload.get("alwayson_scripts")
    for value in scripts.values() if isinstance(scripts, dict) else ():
        args = value.get("args") if isinstance(value, dict) else None
        if isinstance(args, list):
            units += max(1, sum(1 for a in args if isinstance(a, dict)))
    return units


def output_size(payload: dict[str, Any]) -> tuple[float, float]:
    """The largest width and height an answer's images may have (hires fix included)."""
    width, height = _number(payload.get("width"), 512), _number(payload.get("height"), 512)
    if not payload.get("enable_hr"):
        return width, height
    resize_x = _number(payload.get("hr_resize_x"), 0)
    resize_y = _number(payload.get("hr_resize_y"), 0)
    if resize_x and resize_y:
        hires = resize_x, resize_y
    elif resize_x:
        hires = resize_x, resize_x * height / width
    elif resize_y:
        hires = resize_y * width / height, resize_y
    else:
        scale = _number(payload.get("hr_scale"), 2.0)
        hires = width * scale, height * scale
    return max(width, hires[0]), max(height, hires[1])


def _number(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6:
        return float(value)
    return float(default)


SIZE_SLACK_PX = 64  # servers round sizes to multiples of 8 (some of 64)


def size_problem(data: bytes, fmt: str, payload: dict[str, Any]) -> str | None:
    """Why a generation's declared size cannot be the answer to ``payload`` (a 100000x100000
    "PNG" for a 64x64 request: larger than the request's output, hires fix included), or None.
    Reads the header only; a header it cannot read is left to the structure check. A
    selectable script may resize: unchecked."""
    if payload.get("script_name"):
        return None
    size = _declared_size(data, fmt)
    if isinstance(size, str):
        return size
    if size is None:
        return None
    width, height = size
    high_w, high_h = output_size(payload)
    if width > high_w + SIZE_SLACK_PX or height > high_h + SIZE_SLACK_PX:
        return f"is {width}x{height} where at most {high_w:.0f}x{high_h:.0f} was asked"
    return None


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | str | None:
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    import io
    import warnings

    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                return image.size
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return f"declares more than {PILImage.MAX_IMAGE_PIXELS:,} pixels"
    except Exception:  # noqa: BLE001 - a header Pillow cannot read: the structure check decides
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**6 \
        else 1


def _infotext(infotexts: list[Any], first: int, i: int, generations: int) -> str | None:
    """Generation i's infotext. With a grid first, A1111 lists the grid's infotext first too."""
    offset = first if len(infotexts) >= generations + first else 0
    text = infotexts[i + offset] if i + offset < len(infotexts) else None
    return text if isinstance(text, str) else None


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in value):
        return value
    return None


def checkpoint_matches(asked: str, info: dict[str, Any]) -> bool:
    """Does the model ``info`` reports (``sd_model_name``/``sd_model_hash``) match ``asked``?"""
    return names.checkpoint_matches(asked, info.get("sd_model_name"), info.get("sd_model_hash"))


# The one copy of each rule lives in ``pipeline.names`` and ``substitution``; these names stay
# importable from here for the callers that used them.
title_parts = names.title_parts
__all__ = ["check_substitution", "checkpoint_matches", "decode_image", "find_substitutions",
           "max_extra_images", "output_size", "parse_body", "parse_info", "script_units",
           "size_problem", "split_images", "split_legacy_sampler", "title_parts"]
