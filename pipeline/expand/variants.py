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
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline import prompts as templates
from pipeline.expand import inputs
from pipeline.expand.plan import (Axis, Plan, _Template, checkpoint_of, get_dotted,
                                  set_dotted)
from pipeline.job.fields import CHECKPOINT_KEY, MATRIX_ALIASES
from pipeline.job.schema import JobSpec
from pipeline.model import Variant


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
                if checkpoint is not ... and checkpoint_of(payload) != checkpoint:
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
        set_dotted(payload, MATRIX_ALIASES.get(key, key), value)
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
                set_dotted(payload, key, v)
                axis_values.append((key, _label(v)))
        else:
            set_dotted(payload, MATRIX_ALIASES.get(axis.name, axis.name), value)
            axis_values.append((axis.name, _label(value)))
    payload["prompt"] = prompt
    payload["negative_prompt"] = negative or ""
    if "mask" in payload:
        inputs.check_mask(payload, spec.source_path)
    if checkpoint_of(payload) is not None:
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

