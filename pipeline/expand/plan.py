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
from pipeline.job.fields import CHECKPOINT_KEY, payload_key
from pipeline.job.schema import JobSpec, PromptSpec, SeedCount

MAX_PROMPT_CHARS = 100_000


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
    texts: int = 1  # how many prompt texts it expands to
    base: dict[str, Any] | None = None  # defaults + overrides + negative, before the axes
    checkpoint: str | None = None  # the checkpoint ``base`` asks for
    seed: int | None = None  # a per-prompt fixed seed
    chars: int = 0  # the longest text it expands to


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``variants()`` needs, derived once from the spec (parsing, axes, seeds).

    ``checkpoint_axis`` is the index of the one axis that sets the checkpoint (None: the
    templates' own ``checkpoint`` decides), and ``axis_checkpoints`` the checkpoint each of its
    values asks for, so a per-checkpoint stream pins that axis instead of filtering.
    """

    spec: JobSpec
    templates: tuple[_Template, ...]
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]  # the list form (-1 = server picks); () for the other forms
    seed_count: int | None  # SeedCount form: derived seeds
    wildcards: Any
    server_seeds: int | None = None  # ``seeds: N``: N variants, the server picks each seed
    checkpoint_axis: int | None = None
    axis_checkpoints: tuple[str | None, ...] = ()


def build_plan(spec: JobSpec) -> Plan:
    """Parse templates and lay out the axes; raises ``JobError`` for anything malformed."""
    spec = _resolve_input_images(spec)
    store = templates.WildcardStore(spec.wildcards_dir)
    defaults: dict[str, Any] = {}
    for key, value in spec.defaults.items():
        set_dotted(defaults, payload_key(key), value)
    default_negative = spec.defaults.get("negative_prompt")
    parsed: list[_Template] = []
    for i, item in enumerate(spec.prompts):
        p = item if isinstance(item, PromptSpec) else PromptSpec(prompt=item)
        node, texts, chars = None, 1, len(p.prompt)
        try:
            if not p.raw:
                node = templates.parse(p.prompt)
                for name in sorted(templates.wildcard_names(node)):
                    store.options(name)  # a missing wildcard is an error now, not mid-run
                chars = _check_size(node, store)
                texts = templates.count(node, store)  # so is a choose-k larger than a wildcard
            elif len(p.prompt) > MAX_PROMPT_CHARS:
                raise JobError(f"the prompt has {len(p.prompt)} characters; the most is "
                               f"{MAX_PROMPT_CHARS}", hint="shorten it")
        except JobError as exc:
            raise JobError(exc.detail, path=spec.source_path, where=f"prompts[{i}]",
                           hint=exc.hint) from None
        overrides = _image_fields(p.overrides, spec, f"prompts[{i}]")
        base = dict(defaults)
        for key, value in overrides.items():
            set_dotted(base, payload_key(key), value)
        negative = p.negative_prompt if p.negative_prompt is not None else default_negative
        base["negative_prompt"] = negative or ""
        seed = overrides.get("seed")
        parsed.append(_Template(i, p.prompt, p.negative_prompt, overrides, node, p.name, texts,
                                base, checkpoint_of(base), None if seed is None else int(seed),
                                chars))
    axes = _axes(spec, parsed)
    server_seeds = None
    if isinstance(spec.seeds, SeedCount):
        seeds, seed_count = (), spec.seeds.count
    elif isinstance(spec.seeds, int):
        seeds, seed_count, server_seeds = (), None, spec.seeds
    else:
        seeds, seed_count = tuple(spec.seeds), None
    ckpt_axis, ckpt_values = _checkpoint_axis(axes)
    return Plan(spec, tuple(parsed), axes, seeds, seed_count, store, server_seeds, ckpt_axis,
                ckpt_values)


def _check_size(node: Any, store: Any) -> int:
    """Nesting and expanded length within bounds, before anything recursive walks the tree;
    returns the length of the longest expansion."""
    depth = templates.nesting(node, store.depth)
    limit = templates.wildcards.MAX_NESTING
    if depth > limit:
        raise JobError(f"the prompt nests {depth} levels of groups and wildcards; the most is "
                       f"{limit}", hint="flatten the nesting of {...} groups and wildcards")
    longest = templates.max_chars(node, store)
    if longest > MAX_PROMPT_CHARS:
        raise JobError(f"the prompt can expand to {longest} characters; the most is "
                       f"{MAX_PROMPT_CHARS}", hint="wildcards that use wildcards several times "
                       "multiply the length; shorten the chain or choose fewer options")
    return longest


def _checkpoint_axis(axes: tuple[Axis, ...]) -> tuple[int | None, tuple[str | None, ...]]:
    """The axis that sets the checkpoint, and the checkpoint each of its values asks for."""
    for n, axis in enumerate(axes):
        if axis.kind == "matrix" and _touches_checkpoint(payload_key(axis.name)):
            key = payload_key(axis.name)
            return n, tuple(_implied(key, v) for v in axis.values)
        if axis.kind == "zip" and any(_touches_checkpoint(k) for k in axis.values[0]):
            found = []
            for row in axis.values:
                probe: dict[str, Any] = {}
                for key, value in row.items():
                    set_dotted(probe, key, value)
                found.append(checkpoint_of(probe))
            return n, tuple(found)
    return None, ()


def _touches_checkpoint(key: str) -> bool:
    return key == CHECKPOINT_KEY or CHECKPOINT_KEY.startswith(key + ".")


def _implied(key: str, value: Any) -> str | None:
    probe: dict[str, Any] = {}
    set_dotted(probe, key, value)
    return checkpoint_of(probe)


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
    grown = {t.index: t.chars for t in parsed}
    for n, values in enumerate(spec.replace):
        search = values[0]
        longest = max(len(v) for v in values)
        for t in parsed:
            if search not in t.text:
                raise JobError(f"replace axis {n + 1} searches for {search!r}, which prompt "
                               f"{t.index + 1} ({t.text[:60]!r}) does not contain",
                               path=spec.source_path, where=f"replace[{n}]",
                               hint="the first value of a replace axis must appear in every prompt")
            grown[t.index] += t.text.count(search) * max(0, longest - len(search))
            if grown[t.index] > MAX_PROMPT_CHARS:
                raise JobError(f"replace axis {n + 1} can make prompt {t.index + 1} longer than "
                               f"{MAX_PROMPT_CHARS} characters", path=spec.source_path,
                               where=f"replace[{n}]", hint="use shorter replacements")
        axes.append(Axis(f"replace:{search}", "replace", tuple(values)))
    if spec.loras is not None:
        values: list[Any] = []
        if spec.loras.baseline or any(w == 0 or w == "baseline" for w in spec.loras.weights):
            values.append(None)
        values.extend((name, w) for name in spec.loras.names for w in spec.loras.weights
                      if w != 0 and w != "baseline")
        axes.append(Axis("lora", "lora", tuple(values)))
    for n, group in enumerate(spec.zip):
        keys = [payload_key(k) for k in group]
        rows = tuple(dict(zip(keys, row)) for row in zip(*group.values()))
        axes.append(Axis("+".join(group), "zip", rows))
    for key, values in spec.matrix.items():
        axes.append(Axis(key, "matrix", tuple(values)))
    return tuple(axes)


def count(plan: Plan) -> int:
    """How many variants ``variants(plan)`` yields, without expanding anything."""
    combos = combination_count(plan)
    if plan.spec.mode == "random":
        return prompt_count(plan) * combos * seed_count(plan)
    return sum(t.texts * combos * seeds_of(plan, t) for t in plan.templates)


def seeds_of(plan: Plan, template: _Template) -> int:
    """Seeds per prompt text of ``template``: 1 with a per-prompt seed, else the job's."""
    return 1 if template.seed is not None else seed_count(plan)


def prompt_count(plan: Plan) -> int:
    if plan.spec.mode == "random":
        assert plan.spec.random is not None
        return plan.spec.random.count
    return sum(t.texts for t in plan.templates)


def combination_count(plan: Plan) -> int:
    return math.prod(len(a) for a in plan.axes)


def seed_count(plan: Plan) -> int:
    if plan.seed_count is not None:
        return plan.seed_count
    if plan.server_seeds is not None:
        return plan.server_seeds
    return len(plan.seeds)


def checkpoints(plan: Plan) -> list[str | None]:
    """Every checkpoint value the job can ask for, in job order (None: the backend's model)."""
    if plan.checkpoint_axis is not None:
        found = plan.axis_checkpoints
    else:
        found = tuple(t.checkpoint for t in plan.templates)
    return list(dict.fromkeys(found)) or [None]


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
