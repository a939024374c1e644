"""Dataset columns: which values of a manifest record become columns, named and typed how.

A ``Column`` has a name that is safe both as a dataset column and as a caption template field
(``[A-Za-z_][A-Za-z0-9_]*``), a fixed type (``int``, ``float``, ``bool`` or ``str``) and a way to
read its raw value from a manifest record. Types are fixed before any row is written, because
``datasets`` infers one schema per column and refuses a column that is a number in one row and a
string in the next; every value is coerced to its column's type (or null).

Where columns come from:

- base: prompt, negative_prompt, seed, model, sampler (the record), steps, cfg_scale, width,
  height (the request parameters);
- record fields: id, image_index, file, subseed, backend, sha256, ... (for ``columns:``/CSV);
- axes: every axis of the job's plan (matrix keys, zip keys, lora/lora_name/lora_weight,
  replace), typed from all the values the plan can give; dict values are flattened one level
  (``override_settings_<key>``); a name that clashes with a record column gets ``axis_``;
- any other request field (``scheduler``, ``denoising_strength``, ...) when asked for by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.expand.plan import Axis, Plan
from pipeline.job.fields import MATRIX_ALIASES
from pipeline.job.fields import TXT2IMG_FIELDS
from pipeline.job.schema import JobSpec

Record = dict[str, Any]
Getter = Callable[[Record], Any]

DEFAULT_COLUMNS = ("prompt", "negative_prompt", "seed", "model", "sampler", "steps",
                   "cfg_scale", "width", "height")
# Columns a record provides; an axis with one of these names is renamed ``axis_<name>``.
RESERVED = frozenset({"file_name", "id", "image_index", "kind", "file", "format", "prompt",
                      "raw_prompt", "negative_prompt", "seed", "subseed", "requested_seed",
                      "model", "sampler", "backend", "sha256", "params", "ordinal", "template",
                      "infotext", "created", "attempts", "elapsed_s", "bytes",
                      "images_expected"})
# Request fields whose type is known whatever the job file says.
_PARAM_TYPES = {"steps": "int", "cfg_scale": "float", "width": "int", "height": "int",
                "batch_size": "int", "n_iter": "int", "denoising_strength": "float",
                "subseed_strength": "float", "hr_scale": "float", "eta": "float",
                "distilled_cfg_scale": "float", "image_cfg_scale": "float",
                "hr_second_pass_steps": "int", "clip_skip": "int"}
_PRETTY = {"override_settings.sd_model_checkpoint": "checkpoint",
           "override_settings.sd_vae": "vae",
           "override_settings.CLIP_stop_at_last_layers": "clip_skip"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")
# Request fields too big or too binary for a CSV cell.
BULKY_PARAMS = frozenset({"init_images", "mask", "alwayson_scripts", "script_args"})


@dataclass(frozen=True, slots=True)
class Column:
    """One typed column: ``value(record)`` is always of ``type`` or None."""

    name: str
    type: str  # "int" | "float" | "bool" | "str"
    get: Getter

    def value(self, record: Record) -> Any:
        return coerce(self.get(record), self.type)


def column_name(raw: str) -> str:
    """``override_settings.sd_vae`` -> ``override_settings_sd_vae``; never empty or digit-led."""
    name = _UNSAFE.sub("_", raw).strip("_")
    if not name:
        return "axis"
    return f"_{name}" if name[0].isdigit() else name


def infer_type(values: Iterable[Any]) -> str:
    """The one type that fits every value: bool, int, float (ints and floats), else str."""
    present = [v for v in values if v is not None]
    if not present:
        return "str"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if any(isinstance(v, bool) for v in present):
        return "str"
    if all(isinstance(v, int) for v in present):
        return "int"
    if all(isinstance(v, (int, float)) for v in present):
        return "float"
    return "str"


def coerce(value: Any, type_: str) -> Any:
    """``value`` as ``type_``, or None when it is missing or cannot be one."""
    if value is None:
        return None
    if type_ == "str":
        return to_text(value)
    if type_ == "bool":
        return value if isinstance(value, bool) else None
    if type_ == "int":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return None
        return None
    if type_ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return None
        return None
    raise ValueError(f"unknown column type {type_!r}")


def to_text(value: Any) -> str:
    """A value as one string: text as it is, true/false, numbers, JSON for lists and dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                        default=str).decode()


# --- where values come from ---------------------------------------------------------------------

def _field(key: str) -> Getter:
    return lambda record: record.get(key)


def _param(key: str) -> Getter:
    def get(record: Record) -> Any:
        params = record.get("params")
        return params.get(key) if isinstance(params, dict) else None
    return get


def _axis(key: str, sub: str | None = None) -> Getter:
    def get(record: Record) -> Any:
        axes = record.get("axes")
        value = axes.get(key) if isinstance(axes, dict) else None
        if sub is not None:
            return value.get(sub) if isinstance(value, dict) else None
        return value
    return get


def _seed(record: Record) -> Any:
    seed = record.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    requested = record.get("requested_seed")
    return requested if isinstance(requested, int) and requested != -1 else None


def _sampler(record: Record) -> Any:
    return record.get("sampler") or _param("sampler_name")(record)


def params_json(record: Record) -> str:
    """The request parameters as sorted JSON, without images and script blobs."""
    params = record.get("params")
    if not isinstance(params, dict):
        return "{}"
    kept = {k: v for k, v in params.items() if k not in BULKY_PARAMS}
    return to_text(kept)


BASE: dict[str, Column] = {
    "prompt": Column("prompt", "str", _field("prompt")),
    "negative_prompt": Column("negative_prompt", "str", _field("negative_prompt")),
    "seed": Column("seed", "int", _seed),
    "model": Column("model", "str", _field("model")),
    "sampler": Column("sampler", "str", _sampler),
    "steps": Column("steps", "int", _param("steps")),
    "cfg_scale": Column("cfg_scale", "float", _param("cfg_scale")),
    "width": Column("width", "int", _param("width")),
    "height": Column("height", "int", _param("height")),
}
RECORD_FIELDS: dict[str, Column] = {
    name: Column(name, type_, _field(name)) for name, type_ in (
        ("id", "str"), ("image_index", "int"), ("kind", "str"), ("file", "str"),
        ("format", "str"), ("subseed", "int"), ("requested_seed", "int"), ("backend", "str"),
        ("sha256", "str"), ("ordinal", "int"), ("attempts", "int"), ("elapsed_s", "float"),
        ("created", "str"), ("bytes", "int"), ("images_expected", "int"), ("infotext", "str"))
}
RECORD_FIELDS["template"] = Column("template", "int", _axis("template"))
RECORD_FIELDS["params"] = Column("params", "str", params_json)


class ColumnSet:
    """Every column a job's records can give, looked up by (sanitised) name."""

    def __init__(self, spec: JobSpec, plan: Plan) -> None:
        self.spec = spec
        self.axes: tuple[Column, ...] = tuple(_axis_columns(plan.axes))
        self._by_name: dict[str, Column] = {**RECORD_FIELDS, **BASE}
        for column in self.axes:
            self._by_name.setdefault(column.name, column)

    def default(self) -> list[Column]:
        """The imagefolder default: base columns, then every axis not already among them."""
        columns = [BASE[name] for name in DEFAULT_COLUMNS]
        names = {c.name for c in columns}
        return columns + [c for c in self.axes if c.name not in names]

    def lookup(self, name: str) -> Column | None:
        """A column by name (as written, or sanitised), or a request field by name."""
        for candidate in (name, column_name(name), _PRETTY.get(name, "")):
            if candidate in self._by_name:
                return self._by_name[candidate]
        key = MATRIX_ALIASES.get(name, name)
        if key in TXT2IMG_FIELDS or key in self.spec.defaults:
            type_ = _PARAM_TYPES.get(key) or infer_type([self.spec.defaults.get(key)])
            return Column(column_name(name), type_, _param(key))
        return None

    def known_names(self) -> list[str]:
        return sorted(self._by_name)


def _axis_columns(axes: tuple[Axis, ...]) -> list[Column]:
    columns: list[Column] = []
    taken = set(RESERVED)
    for key, values in _axis_values(axes):
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            subkeys: dict[str, None] = {}
            for value in present:
                subkeys.update(dict.fromkeys(str(k) for k in value))
            for sub in subkeys:
                name = _unique(column_name(f"{_PRETTY.get(key, key)}_{sub}"), taken)
                columns.append(Column(name, infer_type(v.get(sub) for v in present),
                                      _axis(key, sub)))
            continue
        name = _unique(column_name(_PRETTY.get(key, key)), taken)
        columns.append(Column(name, infer_type(values), _axis(key)))
    return columns


def _axis_values(axes: tuple[Axis, ...]) -> list[tuple[str, list[Any]]]:
    """(key in the record's ``axes``, every value it can take) for each axis of the plan."""
    out: list[tuple[str, list[Any]]] = []
    for axis in axes:
        if axis.kind == "lora":
            pairs = [v for v in axis.values if v is not None]
            has_baseline = len(pairs) < len(axis.values)
            out.append(("lora", [f"{n}:{w}" for n, w in pairs] +
                        (["baseline"] if has_baseline else [])))
            out.append(("lora_name", [n for n, _ in pairs]))
            out.append(("lora_weight", [w for _, w in pairs] + ([0] if has_baseline else [])))
        elif axis.kind == "zip":
            keys: dict[str, None] = {}
            for row in axis.values:
                keys.update(dict.fromkeys(row))
            out.extend((key, [row.get(key) for row in axis.values]) for key in keys)
        else:  # matrix, replace: the record key is the axis name
            out.append((axis.name, list(axis.values)))
    return out


def _unique(name: str, taken: set[str]) -> str:
    if name in taken:
        name = f"axis_{name}"
    base, n = name, 2
    while name in taken:
        name = f"{base}_{n}"
        n += 1
    taken.add(name)
    return name
