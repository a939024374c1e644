"""File names for images: readable, unique by construction, and never outside the output directory.

A name template uses ``{ordinal}``, ``{id}``, ``{index}``, ``{seed}``, ``{slug}`` (from the
prompt) and any axis name the job's variants carry (``{cfg_scale}``, ``{lora}``, ``{prompt}``,
``{template}``, a dotted matrix key such as ``{override_settings.sd_vae}``, a zip key, the aliases
``{checkpoint}``/``{model}``/``{vae}``/``{clip_skip}``, ``{replace:cat}`` for a replace axis),
with optional format specs (``{ordinal:06d}``). ``/`` in the template makes subfolders.

Why names never collide: a variant's ``{id}`` and the image's ``{index}`` are in every path
(appended to the file name when the template lacks them), they take no spec that could shorten
them (``{id:.1}`` is refused), and nothing is ever cut from a name: each substituted value is
bounded (a slug 48 characters, an axis value 40, numbers by their width), specs are bounded
(width at most ``MAX_WIDTH``, no ``!r`` conversions, no attribute or index lookups such as
``{seed.__class__}``), and a template whose folder or file name could grow past
``MAX_SEGMENT_CHARS`` is refused when the job is loaded. Every segment is then sanitised (no
separators, no ``..``, no control characters, no reserved device names), which only ever
replaces or drops characters around the id and index, never the id and index themselves.
"""

from __future__ import annotations

import difflib
import re
import string
import unicodedata
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import JobError
from pipeline.job.fields import payload_key
from pipeline.names import strip_network_tags

if TYPE_CHECKING:
    from pipeline.job.schema import JobSpec

DEFAULT_TEMPLATE = "{ordinal:06d}_{slug}_s{seed}_{id}_{index}"
MAX_SEGMENT_CHARS = 200  # + "_extra" + ".json" stays under the 255 bytes file systems allow
MAX_SEGMENTS = 8
MAX_WIDTH = 40
MAX_SLUG_CHARS = 48
MAX_AXIS_CHARS = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")
_FILL = r"(?:[0-9A-Za-z_. -]?[<>=^])?"
_INT_SPEC = re.compile(rf"^{_FILL}[+ -]?#?0?(?P<width>\d+)?[,_]?[dxXob]?$")
_STR_SPEC = re.compile(rf"^{_FILL}(?P<width>\d+)?(?:\.(?P<precision>\d+))?s?$")
_ID_SPEC = re.compile(rf"^{_FILL}(?P<width>\d+)?s?$")
BUILTIN = {"ordinal": 27, "index": 27, "seed": MAX_SLUG_CHARS, "id": 16, "slug": MAX_SLUG_CHARS}


def slugify(text: Any, max_chars: int = MAX_SLUG_CHARS) -> str:
    """A safe file-name piece: ASCII letters, digits, ``._-``; never empty, ``.`` or ``..``."""
    raw = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    raw = strip_network_tags(raw)
    slug = _UNSAFE.sub("_", raw).strip("._-")[:max_chars].strip("._-")
    if not slug:
        return "x"
    if slug.split(".")[0].lower() in _RESERVED:
        slug = "_" + slug
    return slug


def job_axis_names(spec: JobSpec) -> list[str]:
    """Every axis name a variant of ``spec`` carries in its ``axes`` (as the manifest records it)."""
    names = ["prompt", "template", "seed"]
    names += [f"replace:{values[0]}" for values in spec.replace]
    if spec.loras is not None:
        names += ["lora", "lora_name", "lora_weight"]
    for group in spec.zip:
        names += [payload_key(k) for k in group]
    names += list(spec.matrix)
    return names


class Namer:
    """Builds relative image paths (under ``images/``) from a checked template.

    ``axes``: the names the job's variants carry (``job_axis_names``); when given, a field naming
    no axis is an error now rather than ``none`` in every file name.
    """

    def __init__(self, template: str | None = None, *, axes: Iterable[str] | None = None) -> None:
        template = (template or DEFAULT_TEMPLATE).strip()
        known = list(axes) if axes is not None else None
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise _bad(f"naming template {_short(template)!r} is malformed ({exc})",
                       "use fields in braces, e.g. {ordinal:06d}_{slug}_{id}_{index}") from None
        if template.startswith("/") or any(p in ("..", ".") for p in template.split("/")):
            raise _bad(f"naming template {_short(template)!r} may not start with / or use . or ..",
                       "names are relative to the images/ folder")
        pieces: list[tuple[str, str | None, str]] = []  # (literal, field, spec)
        fields: set[str] = set()
        for literal, field, spec, conversion in parsed:
            if field is not None:
                field, spec = _check_field(field, spec or "", conversion, known)
                fields.add(field)
            pieces.append((literal, field, spec or ""))
        if "id" not in fields:
            pieces.append(("_", "id", ""))
        if "index" not in fields:
            pieces.append(("_", "index", ""))
        self.pieces = tuple(pieces)
        self.template = "".join(lit + ("" if f is None else "{" + f + (":" + s if s else "") + "}")
                                for lit, f, s in pieces)
        self._check_lengths()

    def _check_lengths(self) -> None:
        segments: list[int] = [0]
        for literal, field, spec in self.pieces:
            parts = literal.split("/")
            for n, part in enumerate(parts):
                if n:
                    segments.append(0)
                segments[-1] += len(unicodedata.normalize("NFKD", part).encode("ascii", "ignore"))
            if field is not None:
                segments[-1] += _max_chars(field, spec)
        if len(segments) > MAX_SEGMENTS:
            raise _bad(f"naming template {_short(self.template)!r} makes {len(segments)} folder levels; "
                       f"the most is {MAX_SEGMENTS}", "use fewer '/' in the template")
        longest = max(segments) + 1  # a reserved device name gets a "_" in front
        if longest > MAX_SEGMENT_CHARS:
            raise _bad(f"naming template {_short(self.template)!r} can make names of {longest} "
                       f"characters; the most is {MAX_SEGMENT_CHARS} per folder or file name",
                       "use fewer fields or shorter text, a precision such as {prompt:.20}, or "
                       "'/' to put parts into folders")

    def relative_path(self, *, ordinal: int, variant_id: str, index: int, seed: Any,
                      prompt: str, axes: dict[str, Any], extension: str, extra: bool = False
                      ) -> str:
        values: dict[str, Any] = {k: slugify(v, MAX_AXIS_CHARS) for k, v in axes.items()}
        values.update(ordinal=ordinal, id=variant_id, index=index,
                      seed=seed if isinstance(seed, int) else slugify(seed),
                      slug=slugify(prompt))
        out: list[str] = []
        for literal, field, spec in self.pieces:
            out.append(literal)
            if field is not None:
                out.append(_formatted(_lookup(values, field), spec))
        parts = [slugify(p, 4 * MAX_SEGMENT_CHARS) for p in "".join(out).split("/") if p]
        if extra:
            parts[-1] += "_extra"
        return f"{PurePosixPath('images', *parts)}.{extension}"


def _bad(message: str, hint: str) -> JobError:
    return JobError(message, where="naming", hint=hint)


def _short(template: str) -> str:
    return template if len(template) <= 80 else template[:77] + "..."


def _check_field(field: str, spec: str, conversion: str | None, known: list[str] | None
                 ) -> tuple[str, str]:
    shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") \
        + "}"
    if field == "replace" and spec:  # {replace:cat}: the replace axis searching "cat"
        field, spec = f"replace:{spec}", ""
    elif not field or not _NAME.fullmatch(field) or any(p.startswith("_") for p in
                                                         field.split(".")[1:]):
        raise _bad(f"naming template field {shown} is not a plain name",
                   "write e.g. {seed} or {cfg_scale}; no [index] or attribute lookups")
    if conversion:
        raise _bad(f"naming template field {shown} uses a !{conversion} conversion",
                   f"remove it: write {{{field}}}")
    if "{" in spec or "}" in spec:
        raise _bad(f"naming template field {shown} has a nested field in its spec",
                   "write a fixed spec, e.g. {ordinal:06d}")
    if known is not None and field not in BUILTIN and field not in known \
            and not any(payload_key(field) == payload_key(a) for a in known):
        choices = sorted(set(BUILTIN) | set(known))
        close = difflib.get_close_matches(field, choices, n=1, cutoff=0.6)
        raise _bad(f"naming template field {{{field}}} is not a name this job's images have",
                   (f"did you mean {{{close[0]}}}? " if close else "") +
                   "available: " + ", ".join("{" + c + "}" for c in choices))
    if field in ("ordinal", "index", "seed"):
        pattern, kind = _INT_SPEC, "a whole-number spec such as 06d"
    elif field == "id":
        pattern, kind = _ID_SPEC, "only a width, such as >20 (a precision would cut the id)"
    else:
        pattern, kind = _STR_SPEC, "a text spec such as .20 or >10"
    match = pattern.match(spec)
    if not match:
        raise _bad(f"naming template field {shown}: {spec!r} is not allowed for {{{field}}}",
                   f"use {kind}")
    if int(match.group("width") or 0) > MAX_WIDTH:
        raise _bad(f"naming template field {shown}: width {int(match.group('width'))} is more "
                   f"than {MAX_WIDTH}", f"use a width up to {MAX_WIDTH}, e.g. {{{field}:06d}}"
                   if field in ("ordinal", "index", "seed") else f"use a width up to {MAX_WIDTH}")
    sample: Any = 123456 if field in ("ordinal", "index", "seed") else "sample"
    try:
        format(sample, spec)
    except ValueError as exc:
        raise _bad(f"naming template field {shown}: {exc}", f"use {kind}") from None
    return field, spec


def _max_chars(field: str, spec: str) -> int:
    width = 0
    precision = None
    for pattern in (_INT_SPEC, _STR_SPEC, _ID_SPEC):
        match = pattern.match(spec)
        if match:
            width = int(match.group("width") or 0)
            precision = match.groupdict().get("precision")
            break
    natural = BUILTIN.get(field, MAX_AXIS_CHARS)
    if precision is not None:
        natural = min(natural, int(precision))
    return max(width, natural)


def _lookup(values: dict[str, Any], field: str) -> Any:
    if field in values:
        return values[field]
    wanted = payload_key(field)
    for key, value in values.items():
        if payload_key(key) == wanted:
            return value
    return "none"


def _formatted(value: Any, spec: str) -> str:
    if not spec:
        return str(value)
    if not isinstance(value, int) and _INT_SPEC.match(spec):  # a seed the server did not report
        width = _INT_SPEC.match(spec).group("width")  # type: ignore[union-attr]
        return format(str(value), f">{width}") if width else str(value)
    return format(value, spec)
