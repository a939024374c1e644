"""Expand a ``JobSpec`` into a lazy stream of ``Variant``: pure, no I/O beyond wildcard files.

A variant is one expanded prompt x one combination of the other axes x one seed. Axes, outermost
first: prompt text, replace (Prompt S/R), LoRA, zip groups, matrix keys in file order, seeds.
Nothing here holds the whole list: ``variants()`` is a generator over ``itertools.product`` of
small per-axis value lists and a lazy prompt expansion, and ``count()`` multiplies sizes.

Ids are the first 16 hex digits of the SHA-256 of what the variant asks for (endpoint, payload
and, when the server picks the seed, a replicate number), so editing one axis leaves the ids of
unchanged variants, and thus resume, intact.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline import inputs
from pipeline import prompts as templates
from pipeline.errors import JobError
from pipeline.fields import CHECKPOINT_KEY, MATRIX_ALIASES
from pipeline.jobspec import JobSpec, PromptSpec, SeedCount
from pipeline.model import Variant



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


def images_per_variant(payload: dict[str, Any]) -> int:
    return int(payload.get("batch_size", 1) or 1) * int(payload.get("n_iter", 1) or 1)


def checkpoints(plan: Plan) -> list[str | None]:
    """Every checkpoint value the job can ask for (None: the backend's current model)."""
    found: list[str | None] = []

    def add(value: Any) -> None:
        v = str(value) if value not in (None, "") else None
        if v not in found:
            found.append(v)

    default = _get_dotted(plan.spec.defaults, CHECKPOINT_KEY)
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
    per_prompt = [_get_dotted(t.overrides, CHECKPOINT_KEY) for t in plan.templates]
    if not axis_sets:
        for value in per_prompt:
            add(value if value is not None else default)
    return found or [None]


def variants(plan: Plan, *, checkpoint: Any = ..., shard: tuple[int, int] | None = None
             ) -> Iterator[Variant]:
    """Yield the job's variants lazily, in a stable order.

    ``checkpoint`` keeps only variants asking for that checkpoint (None: no override), cheaply
    when it is a matrix axis. ``shard=(i, n)`` keeps the i-th of n disjoint shares (1-based),
    split by id so every machine agrees without coordination.
    """
    axes = plan.axes
    if checkpoint is not ...:
        axes = tuple(_pin_checkpoint(a, checkpoint) for a in axes)
    ordinal = 0
    for template, text, draw in _prompt_texts(plan):
        for combo in itertools.product(*(a.values for a in axes)):
            base, axis_values, prompt_text = _apply(plan.spec, template, text, axes, combo)
            fixed = template.overrides.get("seed")
            seeds = [int(fixed)] if fixed is not None else _seeds_for(plan, base)
            for rep, seed in enumerate(seeds):
                payload = dict(base)
                payload["seed"] = seed
                replicate = rep if seed == -1 else None
                if draw is not None:  # random mode: equal draws are still separate variants
                    replicate = [draw, replicate]
                ident = variant_id(plan.spec.endpoint, payload, replicate)
                ordinal += 1
                if checkpoint is not ... and _checkpoint_of(payload) != checkpoint:
                    continue
                if shard is not None and not in_shard(ident, shard):
                    continue
                yield Variant(
                    id=ident, ordinal=ordinal - 1, prompt=payload["prompt"],
                    negative_prompt=payload.get("negative_prompt", ""), seed=seed,
                    payload=payload,
                    axes=(("prompt", prompt_text), ("template", template.index), *axis_values,
                          ("seed", seed if seed != -1 else f"random#{rep + 1}")),
                    endpoint=plan.spec.endpoint,
                )


def in_shard(ident: str, shard: tuple[int, int]) -> bool:
    index, total = shard
    return int(ident[:8], 16) % total == index - 1


def variant_id(endpoint: str, payload: dict[str, Any], replicate: Any) -> str:
    blob = orjson.dumps({"e": endpoint, "p": payload, "r": replicate},
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]


def _pin_checkpoint(axis: Axis, checkpoint: Any) -> Axis:
    if axis.kind == "matrix" and MATRIX_ALIASES.get(axis.name, axis.name) == CHECKPOINT_KEY:
        kept = tuple(v for v in axis.values if (str(v) if v not in (None, "") else None) == checkpoint)
        return Axis(axis.name, axis.kind, kept)
    return axis


def _checkpoint_of(payload: dict[str, Any]) -> str | None:
    value = _get_dotted(payload, CHECKPOINT_KEY)
    return str(value) if value not in (None, "") else None


def _prompt_texts(plan: Plan) -> Iterator[tuple[_Template, str, int | None]]:
    if plan.spec.mode == "random":
        assert plan.spec.random is not None
        for i in range(plan.spec.random.count):
            rng = random.Random(f"{plan.spec.seed}:prompt:{i}")
            template = plan.templates[rng.randrange(len(plan.templates))]
            text = template.text if template.node is None else templates.sample(
                template.node, rng, plan.wildcards)
            yield template, text, i
        return
    for template in plan.templates:
        if template.node is None:
            yield template, template.text, None
        else:
            for text in templates.expand(template.node, plan.wildcards):
                yield template, text, None


def _apply(spec: JobSpec, template: _Template, text: str, axes: tuple[Axis, ...],
           combo: tuple[Any, ...]) -> tuple[dict[str, Any], list[tuple[str, Any]], str]:
    payload: dict[str, Any] = dict(spec.defaults)
    for key, value in template.overrides.items():
        _set_dotted(payload, MATRIX_ALIASES.get(key, key), value)
    prompt = text
    negative = template.negative if template.negative is not None else spec.defaults.get(
        "negative_prompt", "")
    axis_values: list[tuple[str, Any]] = []
    for axis, value in zip(axes, combo):
        if axis.kind == "replace":
            prompt = prompt.replace(axis.values[0], value)
            axis_values.append((axis.name, value))
        elif axis.kind == "lora":
            if value is None:
                axis_values += [("lora", "baseline"), ("lora_name", None), ("lora_weight", 0)]
            else:
                name, weight = value
                prompt = f"{prompt} <lora:{name}:{weight}>"
                axis_values += [("lora", f"{name}:{weight}"), ("lora_name", name),
                                ("lora_weight", weight)]
        elif axis.kind == "zip":
            for key, v in value.items():
                _set_dotted(payload, key, v)
                axis_values.append((key, _label(v)))
        else:
            _set_dotted(payload, MATRIX_ALIASES.get(axis.name, axis.name), value)
            axis_values.append((axis.name, _label(value)))
    payload["prompt"] = prompt
    payload["negative_prompt"] = negative or ""
    if "mask" in payload:
        inputs.check_mask(payload, spec.source_path)
    if _checkpoint_of(payload) is not None:
        payload.setdefault("override_settings_restore_afterwards", False)
    return payload, axis_values, text


def _label(value: Any) -> Any:
    """An axis value as people read it: input images by file name."""
    if inputs.is_ref(value):
        return Path(value["$file"]).name
    if isinstance(value, list) and value and all(inputs.is_ref(v) for v in value):
        return ", ".join(Path(v["$file"]).name for v in value)
    return value


def _seeds_for(plan: Plan, payload: dict[str, Any]) -> Iterator[int]:
    if plan.seed_count is None:
        yield from plan.seeds
        return
    content = orjson.dumps({k: v for k, v in payload.items() if k != "seed"},
                           option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    for k in range(plan.seed_count):
        digest = hashlib.sha256(b"%d:%d:" % (plan.spec.seed, k) + content).digest()
        yield int.from_bytes(digest[:4], "big")


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key, copying each nested dict on the way so shared defaults stay untouched."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value
