"""File names for images: readable, collision-free, and never outside the output directory.

A name template uses ``{ordinal}``, ``{id}``, ``{index}``, ``{seed}``, ``{slug}`` (from the prompt)
and any axis name (``{cfg_scale}``, ``{lora}``, ...), with optional format specs
(``{ordinal:06d}``). ``/`` in the template makes subfolders. Every substituted value is sanitised
(no separators, no ``..``, no control characters, no reserved device names, bounded length);
``{id}`` and ``{index}`` are appended when the template lacks them, so names never collide.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import PurePosixPath
from typing import Any

from pipeline.errors import JobError

DEFAULT_TEMPLATE = "{ordinal:06d}_{slug}_s{seed}_{id}_{index}"
MAX_SEGMENT_CHARS = 120
MAX_SLUG_CHARS = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_LORA_TAG = re.compile(r"<(lora|lyco|hypernet):[^>]*>", re.IGNORECASE)


def slugify(text: Any, max_chars: int = MAX_SLUG_CHARS) -> str:
    """A safe file-name piece: ASCII letters, digits, ``._-``; never empty, ``.`` or ``..``."""
    raw = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    raw = _LORA_TAG.sub("", raw) if "<" in raw else raw
    slug = _UNSAFE.sub("_", raw).strip("._-")[:max_chars].strip("._-")
    if not slug:
        return "x"
    if slug.split(".")[0].lower() in _RESERVED:
        slug = "_" + slug
    return slug


class Namer:
    """Builds relative image paths (under ``images/``) from a checked template."""

    def __init__(self, template: str | None = None) -> None:
        template = (template or DEFAULT_TEMPLATE).strip()
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise JobError(f"naming template {template!r} is malformed ({exc})", where="naming",
                           hint="use fields in braces, e.g. {ordinal:06d}_{slug}_{id}_{index}"
                           ) from None
        if template.startswith("/") or any(p in ("..", ".") for p in template.split("/")):
            raise JobError(f"naming template {template!r} may not start with / or use . or ..",
                           where="naming", hint="names are relative to the images/ folder")
        for field in fields:
            if not field or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:+-]*", field):
                raise JobError(f"naming template field {{{field}}} is not a plain name",
                               where="naming", hint="write e.g. {seed} or {cfg_scale}")
        if "id" not in fields:
            template += "_{id}"
        if "index" not in fields:
            template += "_{index}"
        self.template = template

    def relative_path(self, *, ordinal: int, variant_id: str, index: int, seed: Any,
                      prompt: str, axes: dict[str, Any], extension: str, extra: bool = False
                      ) -> str:
        values: dict[str, Any] = {k: slugify(v, 40) for k, v in axes.items()}
        values.update(ordinal=ordinal, id=variant_id, index=index,
                      seed=seed if isinstance(seed, int) else slugify(seed),
                      slug=slugify(prompt))
        try:
            name = self.template.format_map(_Missing(values))
        except (ValueError, TypeError) as exc:
            raise JobError(f"naming template {self.template!r} cannot be filled ({exc})",
                           where="naming", hint="format specs like :06d need numbers") from None
        parts = [slugify(p, MAX_SEGMENT_CHARS) for p in name.split("/") if p]
        if extra:
            parts[-1] += "_extra"
        path = PurePosixPath("images", *parts)
        return f"{path}.{extension}"


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "none"
