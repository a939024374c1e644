"""Which names and settings a job uses, read from its plan without expanding it. Pure.

``job_requirements(plan)`` finds every checkpoint, sampler, scheduler, LoRA and VAE the job can
ask for, and every ``override_settings`` key any variant sets, from the plan's parts:

- fields: for each field, the values of the last axis that sets it (matrix/zip order), else per
  template its own override, else the default (so a default every axis replaces is not needed);
- LoRAs: the ``loras`` axis, ``<lora:...>`` tags in template literal text and in wildcard values
  (walked, never expanded), in replace-axis values and in prompt fields; only a template whose
  tag is split across its parts (``<lora:{a|b}:1>``, ``<lora:__names__:1>``) is expanded, and
  only that template;
- override keys: every ``override_settings.*`` key in defaults, overrides and axes.

``variant_needs(variant)`` gives the same for one expanded variant (capability routing).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline import expand, names
from pipeline import prompts as templates
from pipeline.job.fields import CHECKPOINT_KEY, MATRIX_ALIASES
from pipeline.model import Variant

KINDS = ("checkpoint", "sampler", "scheduler", "lora", "vae")
EXPAND_LIMIT = 100_000  # a template with a split tag is expanded up to this many texts
OVERRIDES = "override_settings."
VAE_KEY = "override_settings.sd_vae"
# payload field -> the kind of name it holds
NAME_FIELDS = {"sampler_name": "sampler", "hr_sampler_name": "sampler", "scheduler": "scheduler",
               "hr_scheduler": "scheduler", VAE_KEY: "vae"}
PROMPT_FIELDS = ("prompt", "hr_prompt")
NO_VAE = frozenset({"automatic", "none", ""})


@dataclass(frozen=True, slots=True)
class Requirements:
    """Every name the job uses, by kind, and every override key it sets.

    ``exact`` is False only when a template with a split LoRA tag was too large to expand; its
    other names are still found.
    """

    names: dict[str, frozenset[str]]
    exact: bool = True
    override_keys: frozenset[str] = field(default_factory=frozenset)

    def uses(self, kind: str) -> bool:
        return bool(self.names.get(kind))


def variant_needs(variant: Variant) -> dict[str, set[str]]:
    """The names one variant depends on, by kind."""
    return payload_needs(variant.payload)


def payload_needs(payload: dict[str, Any]) -> dict[str, set[str]]:
    needs: dict[str, set[str]] = {k: set() for k in KINDS}
    flat = _flat(payload)
    checkpoint = flat.get(CHECKPOINT_KEY)
    if checkpoint not in (None, ""):
        needs["checkpoint"].add(str(checkpoint))
    for key, kind in NAME_FIELDS.items():
        _add_name(needs, kind, flat.get(key))
    for key in PROMPT_FIELDS:
        text = payload.get(key)
        if isinstance(text, str) and "<" in text:
            needs["lora"].update(t.name for t in names.lora_tags(text))
    return needs


def job_requirements(plan: expand.Plan) -> Requirements:
    """Names and override keys the job uses, without expanding the job (see the module doc)."""
    found: dict[str, set[str]] = {k: set() for k in KINDS}
    found["checkpoint"].update(c for c in expand.checkpoints(plan) if c)
    defaults = _flat(plan.spec.defaults)
    per_template = [_flat(t.overrides) for t in plan.templates]
    axes = [rows for rows in (_axis_rows(a) for a in plan.axes) if rows is not None]
    for key, kind in NAME_FIELDS.items():
        for value in _field_values(key, defaults, per_template, axes):
            _add_name(found, kind, value)
    override_keys = {k[len(OVERRIDES):] for frag in [defaults, *per_template, *_all_rows(axes)]
                     for k in frag if k.startswith(OVERRIDES)}
    exact = True
    loras = found["lora"]
    if plan.spec.loras is not None:
        loras.update(v[0] for a in plan.axes if a.kind == "lora" for v in a.values if v)
    for axis in plan.axes:
        if axis.kind == "replace":
            for value in axis.values:
                loras.update(t.name for t in names.lora_tags(str(value)))
    for frag in [defaults, *per_template, *_all_rows(axes)]:
        for key in PROMPT_FIELDS:
            if isinstance(frag.get(key), str):
                loras.update(t.name for t in names.lora_tags(frag[key]))
    for template in plan.templates:
        tags, complete = template_tags(plan, template)
        loras.update(t.name for t in tags)
        exact = exact and complete
    return Requirements({k: frozenset(v) for k, v in found.items()}, exact,
                        frozenset(override_keys))


def template_tags(plan: expand.Plan, template: Any) -> tuple[list[names.NetworkTag], bool]:
    """Every LoRA tag a template can write (walked; expanded only when a tag is split across its
    parts), and whether that is complete (False: too large to expand)."""
    if template.node is None:
        return names.lora_tags(template.text), True
    pieces = list(_literals(template.node, plan.wildcards))
    tags = [t for piece in pieces for t in names.lora_tags(piece)]
    if not any(names.has_open_tag(p) for p in pieces):
        return tags, True
    if templates.count(template.node, plan.wildcards) > EXPAND_LIMIT:
        return tags, False
    for text in templates.expand(template.node, plan.wildcards):
        tags += names.lora_tags(text)
    return tags, True


NAME_KEYS = (CHECKPOINT_KEY, "sampler_name", "scheduler", VAE_KEY)


@dataclass(frozen=True, slots=True)
class NameCombo:
    """One combination of the names a request can use together (what ``check --probe`` tries)."""

    checkpoint: str | None = None
    sampler: str | None = None
    scheduler: str | None = None
    vae: str | None = None
    loras: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("checkpoint", self.checkpoint),
                                           ("sampler", self.sampler),
                                           ("scheduler", self.scheduler), ("VAE", self.vae)) if v]
        parts += [f"LoRA {n}" for n in self.loras]
        return ", ".join(parts) or "the backend's defaults"


def name_combinations(plan: expand.Plan) -> list[NameCombo]:
    """The distinct checkpoint/sampler/scheduler/VAE/LoRA combinations the job uses, from the
    plan: per template, the product of only the axes that set one of those names. A template's
    own LoRA tags (those with a non-zero weight) go into every one of its combinations."""
    defaults = _flat(plan.spec.defaults)
    dims: list[list[tuple[dict[str, Any], tuple[str, ...]]]] = []
    for axis in plan.axes:
        if axis.kind == "lora":
            dims.append([({}, ()) if v is None else ({}, (v[0],) if float(v[1] or 0) else ())
                         for v in axis.values])
        elif axis.kind == "replace":
            rows = [({}, tuple(t.name for t in names.lora_tags(str(v)) if t.active))
                    for v in axis.values]
            if any(r[1] for r in rows):
                dims.append(rows)
        else:
            axis_rows = _axis_rows(axis) or []
            projected = [{k: r[k] for k in NAME_KEYS if k in r} for r in axis_rows]
            if any(projected):
                dims.append([(p, ()) for p in projected])
    out: dict[NameCombo, None] = {}
    for template, overrides in zip(plan.templates, (_flat(t.overrides) for t in plan.templates)):
        base = {k: overrides.get(k, defaults.get(k)) for k in NAME_KEYS}
        own = tuple(dict.fromkeys(t.name for t in template_tags(plan, template)[0] if t.active))
        for choice in itertools.product(*dims):
            values = dict(base)
            loras = list(own)
            for fields, tagged in choice:
                values.update(fields)
                loras += tagged
            vae = values.get(VAE_KEY)
            out[NameCombo(_text(values.get(CHECKPOINT_KEY)), _text(values.get("sampler_name")),
                          _text(values.get("scheduler")),
                          None if vae is None or str(vae).lower() in NO_VAE else str(vae),
                          tuple(sorted(set(loras))))] = None
    return list(out)


def _text(value: Any) -> str | None:
    return None if value in (None, "") or isinstance(value, (dict, list)) else str(value)


# --- plan parts --------------------------------------------------------------------------------

def _flat(fragment: dict[str, Any]) -> dict[str, Any]:
    """Job-level field names (aliases, dotted keys, nested override dicts) -> dotted payload keys."""
    out: dict[str, Any] = {}
    for key, value in fragment.items():
        key = MATRIX_ALIASES.get(key, key)
        if key == "override_settings" and isinstance(value, dict):
            for inner, inner_value in value.items():
                out[OVERRIDES + str(inner)] = inner_value
        else:
            out[key] = value
    return out


def _axis_rows(axis: expand.Axis) -> list[dict[str, Any]] | None:
    if axis.kind == "matrix":
        return [_flat({axis.name: v}) for v in axis.values]
    if axis.kind == "zip":
        return [_flat(row) for row in axis.values]
    return None


def _all_rows(axes: list[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for rows in axes:
        yield from rows


def _field_values(key: str, defaults: dict[str, Any], per_template: list[dict[str, Any]],
                  axes: list[list[dict[str, Any]]]) -> list[Any]:
    """The values ``key`` takes in some variant: the last axis setting it wins everywhere."""
    for rows in reversed(axes):
        if any(key in row for row in rows):
            return [row[key] for row in rows if key in row]
    return [t.get(key, defaults.get(key)) for t in per_template] or [defaults.get(key)]


def _add_name(found: dict[str, set[str]], kind: str, value: Any) -> None:
    if value in (None, "") or isinstance(value, (dict, list)):
        return
    if kind == "vae" and str(value).lower() in NO_VAE:
        return
    found[kind].add(str(value))


def _literals(node: templates.Node, store: Any) -> Iterable[str]:
    """Every literal piece of text a template can produce, through wildcard options, once each."""
    seen: set[str] = set()
    stack: list[Any] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, templates.Literal):
            yield current.text
        elif isinstance(current, templates.Sequence):
            stack.extend(current.parts)
        elif isinstance(current, templates.Alternatives):
            stack.extend(o.node for o in current.options)
        elif isinstance(current, templates.Wildcard) and current.name not in seen:
            seen.add(current.name)
            stack.extend(store.options(current.name))
