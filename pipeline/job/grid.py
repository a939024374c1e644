"""The ``grid:`` section of a job file: which axes go where, and how the sheets look.

    grid:
      x: lora                 # columns: a matrix key, seed, prompt, template, lora, lora_name,
      y: prompt+seed          #   lora_weight, replace:<search>, a zip key or group (width+height);
                              #   several joined with + make one composite axis (prompt+seed)
      page: cfg_scale         # optional: one sheet per value
      where: {checkpoint: dreamshaper_8}   # optional: hold other axes at one value
      labels:                 # optional: custom headers, per axis, per value
        lora: {baseline: "no LoRA", "detail:0.5": "detail, half"}
      title: "Detail LoRA sweep"
      cell_px: 256            # width of one cell; its height follows the images' aspect ratio
      max_sheet_pixels: 40000000   # past it, cells shrink (down to half) and then the sheet splits
      format: png             # png | jpeg | webp
      baseline: first         # where the no-LoRA row/column goes: first | last

Axis names are checked against the job's own axes at load time (``GridSpec.from_job``), with a
did-you-mean drawn only from the axes the job has (never the name typed); friendly aliases
(``checkpoint``, ``model``, ``cfg``, ``sampler``, ``weight``) resolve to the axis the job actually
has. A name joined with ``+`` that is not a zip group is a composite axis: each part is resolved
on its own, and its values are the combinations (``prompt+seed``: one row per prompt and seed).
It is part of the job file's schema (the loader checks it with line numbers), and imports
nothing from ``pipeline.job.schema`` at import time, so the schema may import it.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import JobError
from pipeline.job.fields import CHECKPOINT_KEY, MATRIX_ALIASES

if TYPE_CHECKING:
    from pipeline.job.schema import JobSpec

# Names a user may write for an axis the job spells differently (values: the canonical key):
# the job's field aliases, plus names people use for grid axes.
FRIENDLY_ALIASES = {
    **MATRIX_ALIASES, "sd_model_checkpoint": CHECKPOINT_KEY,
    "cfg": "cfg_scale", "sampler": "sampler_name", "weight": "lora_weight",
    "lora_strength": "lora_weight", "seeds": "seed", "prompts": "prompt",
    "size": "width+height", "resolution": "width+height",
}
GRID_AXIS_FIELDS = ("x", "y", "page")
VIEW_FIELDS = ("x", "y", "page", "where", "title", "cell_px", "format", "quality", "baseline")


class GridSpec(BaseModel):
    """A validated ``grid:`` section. After ``from_job`` the axis names are the job's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: str
    y: str | None = None
    page: str | None = None
    where: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    title: str | None = None
    cell_px: int = Field(256, ge=32, le=2048)
    max_sheet_pixels: int = Field(40_000_000, ge=1_000_000, le=400_000_000)
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(90, ge=1, le=100)
    baseline: Literal["first", "last"] = "first"

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify_labels(cls, labels: Any) -> Any:
        """YAML reads ``0.5: half`` with a float key; labels match values by their text."""
        if not isinstance(labels, dict):
            return labels
        out: dict[Any, Any] = {}
        for axis, mapping in labels.items():
            if isinstance(mapping, dict):
                mapping = {_text(k): _text(v) for k, v in mapping.items()}
            out[str(axis)] = mapping
        return out

    @field_validator("where", mode="before")
    @classmethod
    def _stringify_where(cls, where: Any) -> Any:
        """``where: {cfg_scale: 7}`` holds the axis at the value whose text is ``7``."""
        if not isinstance(where, dict):
            return where
        return {str(k).strip(): _text(v) for k, v in where.items()}

    @field_validator("x", "y", "page")
    @classmethod
    def _not_blank(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("an axis name cannot be empty")
        return name.strip() if name is not None else None

    @property
    def axes(self) -> tuple[str, ...]:
        """The axes placed on the sheet, in x, y, page order (None left out)."""
        return tuple(a for a in (self.x, self.y, self.page) if a is not None)

    @classmethod
    def from_job(cls, spec: JobSpec) -> GridSpec | None:
        """The job's grid section, validated and resolved against its axes; None without one.

        Raises ``JobError`` naming ``grid.<field>`` for a malformed section or an axis the job
        does not have, with a did-you-mean.
        """
        raw = spec.grid
        if raw is None:
            return None
        grid = raw if isinstance(raw, GridSpec) else _validate(raw, spec.source_path)
        return grid.resolved(job_axes(spec), path=spec.source_path)

    def resolved(self, axes: dict[str, str], *, path: str | None = None) -> GridSpec:
        """This spec with x/y/page/labels renamed to the names in ``axes`` (see ``job_axes``)."""
        names: dict[str, str | None] = {}
        for field in GRID_AXIS_FIELDS:
            wanted = getattr(self, field)
            if wanted is None:
                names[field] = None
                continue
            found = resolve_axis(wanted, axes)
            if found is None:
                raise JobError(f"{wanted!r} is not an axis of this job",
                               path=path, where=f"grid.{field}", hint=_axis_hint(wanted, axes))
            names[field] = found
        placed = [n for n in names.values() if n is not None]
        parts = [p for n in placed for p in split_axis(n)]
        if len(set(placed)) != len(placed) or len(set(parts)) != len(parts):
            raise JobError(f"grid puts the same axis on two sides ({', '.join(placed)})",
                           path=path, where="grid", hint="give x, y and page different axes")
        where: dict[str, str] = {}
        for axis, value in self.where.items():
            found = resolve_axis(axis, axes)
            if found is None:
                raise JobError(f"where: {axis!r} is not an axis of this job", path=path,
                               where=f"grid.where.{axis}", hint=_axis_hint(axis, axes))
            if set(split_axis(found)) & set(parts):
                raise JobError(f"where holds {found!r}, which the grid also places", path=path,
                               where=f"grid.where.{axis}",
                               hint="hold only axes that are not on x, y or page")
            where[found] = value
        labels: dict[str, dict[str, str]] = {}
        for axis, mapping in self.labels.items():
            found = resolve_axis(axis, axes)
            if found is None:
                raise JobError(f"labels for {axis!r}, which is not an axis of this job",
                               path=path, where=f"grid.labels.{axis}",
                               hint=_axis_hint(axis, axes))
            labels[found] = {**labels.get(found, {}), **mapping}
        return self.model_copy(update={**names, "where": where, "labels": labels})

    def view(self) -> dict[str, Any]:
        """What a saved view records to be rendered again (see ``render``)."""
        return {k: getattr(self, k) for k in VIEW_FIELDS}


def _validate(raw: Any, path: str | None) -> GridSpec:
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        hint = "see 'Grid sheets and the gallery' in README.md"
        if err["type"] == "extra_forbidden":
            allowed = sorted(GridSpec.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.6)
            msg = f"unknown key {err['loc'][-1]!r}"
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = f"'{loc}' is required"
            hint = "name the column axis, e.g. x: lora"
        elif err["type"] in ("model_type", "dict_type"):
            hint = "write grid: as a mapping, e.g. {x: lora, y: seed}"
        where = f"grid.{loc}" if loc else "grid"
        raise JobError(msg, path=path, where=where, hint=hint) from exc


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def job_axes(spec: JobSpec) -> dict[str, str]:
    """Every axis name a variant of ``spec`` carries (as in the manifest's ``axes``) -> its kind.

    Pure: read from the spec, nothing expanded. Zip groups are also offered whole, named by
    their keys joined with ``+`` (``width+height``).
    """
    from pipeline.job.fields import MATRIX_ALIASES

    axes: dict[str, str] = {"prompt": "prompt", "template": "template"}
    for values in spec.replace:
        axes[f"replace:{values[0]}"] = "replace"
    if spec.loras is not None:
        axes.update(lora="lora", lora_name="lora", lora_weight="lora")
    for group in spec.zip:
        for key in group:
            axes[MATRIX_ALIASES.get(key, key)] = "zip"
        if len(group) > 1:
            axes["+".join(MATRIX_ALIASES.get(k, k) for k in group)] = "zip group"
    for key in spec.matrix:
        axes[key] = "matrix"
    axes["seed"] = "seed"
    return axes


def canonical(name: str) -> str:
    """The payload key an axis name stands for (aliases folded)."""
    from pipeline.job.fields import MATRIX_ALIASES

    name = FRIENDLY_ALIASES.get(name, name)
    return MATRIX_ALIASES.get(name, name)


def resolve_axis(name: str, axes: dict[str, str] | list[str] | tuple[str, ...]) -> str | None:
    """The job's own spelling of axis ``name``, or None when the job has no such axis."""
    if name in axes:
        return name
    wanted = canonical(name)
    for axis in axes:
        if canonical(axis) == wanted:
            return axis
    if "+" in name:  # a zip group written with aliases (checkpoint+vae), or a composite
        parts = "+".join(canonical(p) for p in name.split("+"))
        for axis in axes:
            if "+" in axis and "+".join(canonical(p) for p in axis.split("+")) == parts:
                return axis
        found = [resolve_axis(p.strip(), axes) for p in name.split("+") if p.strip()]
        if len(found) >= 2 and all(found):
            return "+".join(f for f in found if f)
    return None


def split_axis(name: str) -> tuple[str, ...]:
    """The payload-level parts of an axis name: ``prompt+seed`` -> (prompt, seed)."""
    return tuple(name.split("+")) if "+" in name else (name,)


def _axis_hint(name: str, axes: dict[str, str] | list[str] | tuple[str, ...]) -> str:
    """The job's axes, and a did-you-mean drawn only from them (never ``name`` itself)."""
    choices = list(axes)
    listing = ", ".join(choices)
    close = suggest(name, choices)
    if close:
        return f"did you mean {close!r}? this job's axes are: {listing}"
    return f"this job's axes are: {listing}"


def suggest(typed: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest of ``choices`` to ``typed``, or None; never ``typed`` itself.

    Aliases count as spellings of the axis they stand for (``cfg`` finds ``cfg_scale``), but the
    suggestion is always one of ``choices`` as listed.
    """
    typed = typed.strip()
    spellings: dict[str, str] = {}
    for choice in choices:
        if choice == typed:
            continue
        spellings.setdefault(choice.lower(), choice)
        for alias, target in FRIENDLY_ALIASES.items():
            if canonical(choice) == target:
                spellings.setdefault(alias, choice)
    close = difflib.get_close_matches(typed.lower(), list(spellings), n=1, cutoff=0.6)
    return spellings[close[0]] if close else None
