"""Plan a job: parse its templates, lay out its axes and seeds, count without expanding.

Pure: no I/O beyond wildcard files and input images named by the job. ``build_plan`` is the one
place templates and wildcards are checked, so ``variants()`` never meets a malformed one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import prompts as templates
from pipeline.errors import JobError
from pipeline.expand import inputs
from pipeline.job.fields import CHECKPOINT_KEY, MATRIX_ALIASES
from pipeline.job.schema import JobSpec, PromptSpec, SeedCount

@dataclass(frozen=True, slots=True)
class Axis:
    """One dimension of the sweep: a name and its values; ``settings`` says what each value sets."""

    name: str
    kind: str  # "replace" | "lora" | "zip" | "matrix"
    values: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class _Template:
    index: int
    text: str
    negative: str | None
    overrides: dict[str, Any]
    node: Any  # parsed template, or None for raw prompts
    name: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``variants()`` needs, derived once from the spec (parsing, axes, seeds)."""

    spec: JobSpec
    templates: tuple[_Template, ...]
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]  # -1 = server picks; only for list/int forms
    seed_count: int | None  # SeedCount form: derived seeds
    wildcards: Any


def build_plan(spec: JobSpec) -> Plan:
    """Parse templates and lay out the axes; raises ``JobError`` for anything malformed."""
    spec = _resolve_input_images(spec)
    store = templates.WildcardStore(spec.wildcards_dir)
    parsed: list[_Template] = []
    for i, item in enumerate(spec.prompts):
        p = item if isinstance(item, PromptSpec) else PromptSpec(prompt=item)
        node = None
        if not p.raw:
            try:
                node = templates.parse(p.prompt)
                for name in sorted(templates.wildcard_names(node)):
                    store.options(name)  # a missing wildcard is an error now, not mid-run
                templates.count(node, store)  # so is a choose-k larger than a wildcard
            except JobError as exc:
                raise JobError(exc.detail, path=spec.source_path, where=f"prompts[{i}]",
                               hint=exc.hint) from None
        overrides = _image_fields(p.overrides, spec, f"prompts[{i}]")
        parsed.append(_Template(i, p.prompt, p.negative_prompt, overrides, node, p.name))
    axes = _axes(spec, parsed)
    if isinstance(spec.seeds, SeedCount):
        seeds, seed_count = (), spec.seeds.count
    elif isinstance(spec.seeds, int):
        seeds, seed_count = (-1,) * spec.seeds, None
    else:
        seeds, seed_count = tuple(spec.seeds), None
    return Plan(spec, tuple(parsed), axes, seeds, seed_count, store)


def _image_fields(fields: dict[str, Any], spec: JobSpec, where: str) -> dict[str, Any]:
    """``init_images``/``mask`` paths in a mapping of fields -> checked file references."""
    if not any(f in fields for f in inputs.IMAGE_FIELDS):
        return fields
    base = Path(spec.base_dir or ".")
    out = dict(fields)
    if "init_images" in out:
        out["init_images"] = inputs.refs(out["init_images"], base, spec.source_path,
                                         f"{where}.init_images")
    if "mask" in out:
        masks = inputs.refs(out["mask"], base, spec.source_path, f"{where}.mask")
        if len(masks) != 1:
            raise JobError(f"{where}.mask names {len(masks)} files; a request takes one mask",
                           path=spec.source_path, where=f"{where}.mask",
                           hint="make mask an axis in 'matrix' for one variant per mask")
        out["mask"] = masks[0]
    return out


def _resolve_input_images(spec: JobSpec) -> JobSpec:
    """Turn img2img input paths/globs into file references, and check the endpoint fits."""
    uses = (any(f in spec.defaults or f in spec.matrix for f in inputs.IMAGE_FIELDS)
            or any(f in g for g in spec.zip for f in inputs.IMAGE_FIELDS)
            or any(isinstance(p, PromptSpec) and "init_images" in p.overrides
                   for p in spec.prompts))
    if uses and spec.endpoint != "img2img":
        raise JobError("init_images are set but the endpoint is txt2img", path=spec.source_path,
                       where="endpoint", hint="add 'endpoint: img2img' to the job")
    if spec.endpoint == "img2img" and not uses:
        raise JobError("endpoint img2img needs input images", path=spec.source_path,
                       where="endpoint", hint="set init_images in defaults, a prompt, or as a "
                       "matrix axis (paths or globs relative to the job file)")
    if not uses:
        return spec
    base = Path(spec.base_dir or ".")
    matrix = dict(spec.matrix)
    for field in inputs.IMAGE_FIELDS:
        if field in matrix:
            values = inputs.axis_values(matrix[field], base, spec.source_path, f"matrix.{field}")
            matrix[field] = values if field == "init_images" else [v[0] for v in values]
    groups = []
    for n, group in enumerate(spec.zip):
        group = dict(group)
        for field in inputs.IMAGE_FIELDS:
            if field in group:
                resolved = [inputs.refs(v, base, spec.source_path, f"zip[{n}].{field}")
                            for v in group[field]]
                group[field] = resolved if field == "init_images" else [r[0] for r in resolved]
        groups.append(group)
    return spec.model_copy(update={"defaults": _image_fields(spec.defaults, spec, "defaults"),
                                   "matrix": matrix, "zip": groups})


def _axes(spec: JobSpec, parsed: list[_Template]) -> tuple[Axis, ...]:
    axes: list[Axis] = []
    for n, values in enumerate(spec.replace):
        search = values[0]
        for t in parsed:
            if search not in t.text:
                raise JobError(f"replace axis {n + 1} searches for {search!r}, which prompt "
                               f"{t.index + 1} ({t.text[:60]!r}) does not contain",
                               path=spec.source_path, where=f"replace[{n}]",
                               hint="the first value of a replace axis must appear in every prompt")
        axes.append(Axis(f"replace:{search}", "replace", tuple(values)))
    if spec.loras is not None:
        values: list[Any] = []
        if spec.loras.baseline or any(w == 0 or w == "baseline" for w in spec.loras.weights):
            values.append(None)
        values.extend((name, w) for name in spec.loras.names for w in spec.loras.weights
                      if w != 0 and w != "baseline")
        axes.append(Axis("lora", "lora", tuple(values)))
    for n, group in enumerate(spec.zip):
        keys = [MATRIX_ALIASES.get(k, k) for k in group]
        rows = tuple(dict(zip(keys, row)) for row in zip(*group.values()))
        axes.append(Axis("+".join(group), "zip", rows))
    for key, values in spec.matrix.items():
        axes.append(Axis(key, "matrix", tuple(values)))
    return tuple(axes)


def count(plan: Plan) -> int:
    """How many variants ``variants(plan)`` yields, without expanding anything."""
    combos = combination_count(plan)
    if plan.spec.mode == "random" or not any("seed" in t.overrides for t in plan.templates):
        return prompt_count(plan) * combos * seed_count(plan)
    return sum(_texts(plan, t) * combos * (1 if "seed" in t.overrides else seed_count(plan))
               for t in plan.templates)


def _texts(plan: Plan, template: _Template) -> int:
    return 1 if template.node is None else templates.count(template.node, plan.wildcards)


def prompt_count(plan: Plan) -> int:
    if plan.spec.mode == "random":
        assert plan.spec.random is not None
        return plan.spec.random.count
    return sum(_texts(plan, t) for t in plan.templates)


def combination_count(plan: Plan) -> int:
    return math.prod(len(a) for a in plan.axes)


def seed_count(plan: Plan) -> int:
    return plan.seed_count if plan.seed_count is not None else len(plan.seeds)


def checkpoints(plan: Plan) -> list[str | None]:
    """Every checkpoint value the job can ask for (None: the backend's current model)."""
    found: list[str | None] = []

    def add(value: Any) -> None:
        v = str(value) if value not in (None, "") else None
        if v not in found:
            found.append(v)

    default = get_dotted(plan.spec.defaults, CHECKPOINT_KEY)
    sources = [a for a in plan.axes if a.kind in ("matrix", "zip")]
    axis_sets = False
    for axis in sources:
        for value in axis.values:
            if axis.kind == "matrix" and MATRIX_ALIASES.get(axis.name, axis.name) == CHECKPOINT_KEY:
                add(value)
                axis_sets = True
            elif axis.kind == "zip" and CHECKPOINT_KEY in value:
                add(value[CHECKPOINT_KEY])
                axis_sets = True
    per_prompt = [get_dotted(t.overrides, CHECKPOINT_KEY) for t in plan.templates]
    if not axis_sets:
        for value in per_prompt:
            add(value if value is not None else default)
    return found or [None]


def get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key, copying each nested dict on the way so shared defaults stay untouched."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def checkpoint_of(payload: dict[str, Any]) -> str | None:
    value = get_dotted(payload, CHECKPOINT_KEY)
    return str(value) if value not in (None, "") else None
