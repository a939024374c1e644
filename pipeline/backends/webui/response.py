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
import re
from typing import Any

import orjson
import pybase64

from pipeline.errors import BadResponseError, SubstitutionError
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
        if not isinstance(seed, int):
            raise BadResponseError("'info' reports neither 'all_seeds' nor 'seed', so images "
                                   "cannot be labelled with their seeds")
        all_seeds = [seed + i for i in range(expected)]
    if len(all_seeds) < expected:
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


def _infotext(infotexts: list[Any], first: int, i: int, generations: int) -> str | None:
    """Generation i's infotext. With a grid first, A1111 lists the grid's infotext first too."""
    offset = first if len(infotexts) >= generations + first else 0
    text = infotexts[i + offset] if i + offset < len(infotexts) else None
    return text if isinstance(text, str) else None


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return value
    return None


_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$")
_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", re.IGNORECASE)
_LEGACY_SCHEDULERS = ("Karras", "Exponential", "SGM Uniform", "Uniform", "Polyexponential",
                      "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "KL Optimal")


def title_parts(title: str) -> tuple[str, str | None]:
    """``"dir/name.safetensors [abc123]"`` -> ``("name", "abc123")``."""
    match = _HASH_SUFFIX.search(title)
    model_hash = match.group(0).strip().strip("[]") if match else None
    stem = _EXT.sub("", _HASH_SUFFIX.sub("", title)).replace("\\", "/").rsplit("/", 1)[-1]
    return stem.strip(), model_hash


def checkpoint_matches(asked: str, info: dict[str, Any]) -> bool:
    """Does what the server reports using match the checkpoint we asked for?

    ``asked`` may be a title ("name.safetensors [hash]"), a model name, a file name, or a hash.
    Unknown when the server does not report the model (older forks): then it matches.
    """
    name = info.get("sd_model_name")
    model_hash = info.get("sd_model_hash")
    if not name and not model_hash:
        return True
    want = asked.strip()
    if model_hash and want.lower().startswith(str(model_hash).lower()) and len(want) >= 8:
        return True
    hash_in_title = _HASH_SUFFIX.search(want)
    if hash_in_title and model_hash and str(model_hash).lower() in hash_in_title.group(0).lower():
        return True
    if not name:
        return False
    # A1111 names a model in a sub-folder "folder_name" (separators become "_").
    full = _EXT.sub("", _HASH_SUFFIX.sub("", want)).replace("\\", "/").strip("/")
    spellings = {title_parts(want)[0].lower(), full.replace("/", "_").lower()}
    return str(name).lower() in spellings


def split_legacy_sampler(name: str) -> tuple[str, str] | None:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; None when there is no such suffix."""
    for scheduler in _LEGACY_SCHEDULERS:
        suffix = " " + scheduler
        if name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            return name[: -len(suffix)], scheduler
    return None


def sampler_matches(asked: str, info: dict[str, Any],
                    aliases: dict[str, str] | None = None) -> bool:
    """Is the sampler the server reports the one asked for (by name, alias or legacy name)?"""
    used = info.get("sampler_name")
    if not used:
        return True
    got = str(used).strip().lower()
    candidates = [asked.strip()]
    legacy = split_legacy_sampler(asked.strip())  # "DPM++ 2M Karras" = "DPM++ 2M" + Karras
    if legacy:
        candidates.append(legacy[0])
    for want in candidates:
        resolved = (aliases or {}).get(want.lower(), want)
        if want.lower() == got or resolved.lower() == got:
            return True
    return False


def check_substitution(variant: Variant, info: dict[str, Any],
                       sampler_aliases: dict[str, str] | None = None) -> str | None:
    """What the server used instead of what was asked, as a model label (or raise)."""
    asked_model = variant.checkpoint
    if asked_model and not checkpoint_matches(asked_model, info):
        raise SubstitutionError(
            f"asked for checkpoint {asked_model!r} but the server used "
            f"{info.get('sd_model_name')!r} [{info.get('sd_model_hash')}]: it silently "
            "replaces checkpoints it does not have; check the name with 'sdbatch check'")
    asked_sampler = variant.sampler
    if asked_sampler and not sampler_matches(asked_sampler, info, sampler_aliases):
        raise SubstitutionError(
            f"asked for sampler {asked_sampler!r} but the server used "
            f"{info.get('sampler_name')!r}: it silently replaces unknown samplers; check the "
            "name with 'sdbatch check'")
    name = info.get("sd_model_name")
    return str(name) if name else None
