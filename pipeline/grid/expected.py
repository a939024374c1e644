"""The cells a job expects, derived from its plan's axes: no payloads, no ids, no hashing.

A grid needs, for every variant the job makes, only its axis values (where it goes on a sheet);
the full expansion (payloads, derived seeds, SHA-256 ids) is the run's business. So this module
walks the same product the expansion walks (prompt texts x plan axes x seeds) and yields one
small axes mapping per variant, lazily, in job order, with axes held by ``where`` pinned before
the product is taken (a held axis costs nothing).

Seeds come from the expansion's own rule (``expand.variants._seeds_for``: a seed list, the
server's ``random#k``, or ``seeds: {count: N}`` derived from the prompt text alone, so every cell
of a prompt shares its seeds); costs one hash per seed per prompt text, not per variant.

Cells are matched to what the directory holds by their axis values (``identity``), not by id: a
later record of the same axes wins (a variant redone after the job changed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.errors import UsageError
from pipeline.grid.labels import matches_text, value_key
from pipeline.job.grid import split_axis

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan

MAX_GRID_VARIANTS = 200_000
_Pairs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class PlanAxis:
    """One grid-level axis of a plan: its name as variants carry it and its values in order."""

    name: str
    kind: str  # prompt | template | replace | lora | zip | zip group | matrix | seed
    values: tuple[Any, ...]


def identity(axes: Mapping[str, Any]) -> bytes:
    """The key a cell and a manifest record share when they are the same variant."""
    return orjson.dumps(axes, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _contributions(plan: Plan) -> list[list[_Pairs]]:
    """Per plan axis, the (name, value) pairs each of its values adds to a variant's axes."""
    from pipeline.expand.variants import _label  # the expansion's own labelling of values

    out: list[list[_Pairs]] = []
    for axis in plan.axes:
        values: list[_Pairs] = []
        for value in axis.values:
            if axis.kind == "replace":
                values.append(((axis.name, value),))
            elif axis.kind == "lora":
                values.append((("lora", "baseline"), ("lora_name", None), ("lora_weight", 0))
                              if value is None else
                              (("lora", f"{value[0]}:{value[1]}"), ("lora_name", value[0]),
                               ("lora_weight", value[1])))
            elif axis.kind == "zip":
                values.append(tuple((k, _label(v)) for k, v in value.items()))
            else:
                values.append(((axis.name, _label(value)),))
        out.append(values)
    return out


def _seed_values(plan: Plan, template: Any, text: str) -> list[Any]:
    """The seed axis values of one prompt text, as ``Variant.axes`` carries them."""
    from pipeline.expand.variants import _seeds_for  # the expansion's own seed rule

    return [s if s != -1 else f"random#{n + 1}"
            for n, s in enumerate(_seeds_for(plan, template, text))]


def _prompt_texts(plan: Plan) -> Iterator[tuple[Any, str]]:
    from pipeline.expand.variants import _prompt_texts as texts  # the expansion's own order

    for template, text, _draw in texts(plan):
        if text is not None:
            yield template, text


def _held(pairs: _Pairs, holds: list[tuple[str, str]]) -> bool:
    """True when ``pairs`` agree with every hold whose parts they all carry."""
    names = dict(pairs)
    for axis, wanted in holds:
        parts = split_axis(axis)
        if all(p in names for p in parts):
            value = names[axis] if len(parts) == 1 else {p: names[p] for p in parts}
            if not matches_text(axis, value, wanted):
                return False
    return True


def expected_axes(plan: Plan, *, where: Mapping[str, str] | None = None,
                  limit: int = MAX_GRID_VARIANTS) -> Iterator[dict[str, Any]]:
    """Every variant's axes (as ``Variant.axes`` has them), in job order; lazy.

    ``where`` holds axes at one value (text, as ``labels.matches_text`` reads it); the filter
    is applied per plan axis before the product, so held axes cost nothing. Refuses more than
    ``limit`` variants with a ``UsageError`` that says how to narrow the grid.
    """
    holds = list((where or {}).items())
    per_axis = [[c for c in values if _held(c, holds)] for values in _contributions(plan)]
    texts: list[tuple[Any, _Pairs, list[Any]]] = []
    for template, text in _prompt_texts(plan):
        pairs = (("prompt", text), ("template", template.index))
        if _held(pairs, holds):
            seeds = [s for s in _seed_values(plan, template, text)
                     if _held((("seed", s),), holds)]
            texts.append((template, pairs, seeds))
    combos = 1
    for values in per_axis:
        combos *= len(values)
    total = sum(combos * len(seeds) for _, _, seeds in texts)
    if total > limit:
        raise UsageError(f"the grid would cover {total:,} variants; it covers at most {limit:,}"
                         "\n  fix: hold some axes at one value (--where checkpoint=NAME, or "
                         "where: in the grid: section), or split the job")
    return _walk(texts, per_axis, holds)


def _walk(texts: list[tuple[Any, _Pairs, list[Any]]], per_axis: list[list[_Pairs]],
          holds: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    # Holds across several plan axes (a composite) are checked on the whole variant.
    late = [(a, w) for a, w in holds if len(split_axis(a)) > 1]
    for _template, pairs, seeds in texts:
        for combo in itertools.product(*per_axis):
            base = dict(pairs)
            for part in combo:
                base.update(part)
            for seed in seeds:
                axes = {**base, "seed": seed}
                if late and not _held(tuple(axes.items()), late):
                    continue
                yield axes


def plan_axes(plan: Plan, *, max_values: int = 500) -> list[PlanAxis]:
    """The axes a plan's variants carry, each with its values in job order (at most
    ``max_values`` kept per axis: prompt texts of a big wildcard job are many)."""
    prompts: dict[str, Any] = {}
    templates: dict[int, None] = {}
    seeds: list[Any] = []
    for template, text in itertools.islice(_prompt_texts(plan), max_values * 4):
        if len(prompts) < max_values:
            prompts.setdefault(text, text)
        templates.setdefault(template.index, None)
        if len(seeds) <= max_values:
            seeds += _seed_values(plan, template, text)
    out = [PlanAxis("prompt", "prompt", tuple(prompts)),
           PlanAxis("template", "template", tuple(templates))]
    for axis, values in zip(plan.axes, _contributions(plan)):
        names = [n for n, _ in values[0]] if values else []
        for i, name in enumerate(names):
            kind = "zip" if axis.kind == "zip" else axis.kind
            out.append(PlanAxis(name, kind, _distinct(v[i][1] for v in values)))
        if axis.kind == "zip" and len(names) > 1:
            out.append(PlanAxis("+".join(names), "zip group",
                                _distinct({n: v for n, v in pairs} for pairs in values)))
    out.append(PlanAxis("seed", "seed", _distinct(seeds)))
    return out


def _distinct(values: Iterable[Any]) -> tuple[Any, ...]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(value_key(value), value)
    return tuple(seen.values())
