"""Expand a ``Plan`` into a lazy stream of ``Variant``: pure, no I/O beyond wildcard files.

A variant is one expanded prompt x one combination of the other axes x one seed. Axes, outermost
first: prompt text, replace (Prompt S/R), LoRA, zip groups, matrix keys in file order, seeds.
Nothing here holds the whole list: ``variants()`` walks ``itertools.product`` of small per-axis
value lists and a lazy prompt expansion, and ``count()`` multiplies sizes.

Ids are the first 16 hex digits of the SHA-256 of what the variant asks for (endpoint, payload
and, when the server picks the seed, a replicate number), so editing one axis leaves the ids of
unchanged variants, and thus resume, intact.

Ordinals are 1-based positions in the whole job's order, computed from the axis positions (not
counted), so they are the same in every per-checkpoint stream and shard: ``ordinal`` is unique
per variant and tells where it sits in the job, whichever stream yields it.

Seeds of ``seeds: {count: N}``: seed k (0-based) of a prompt text is the first 4 bytes, big-endian,
of SHA-256 of ``"<job seed>:<k>:" + <prompt text>`` (UTF-8), where the prompt text is the
template's expansion before replace and LoRA axes are applied. Nothing else enters, so the seeds
stay the same when any other parameter changes (steps, CFG, size, sampler, checkpoint, replace
values, LoRA weights, negative prompt, other prompts), and every cell of a sweep over those
parameters shares the prompt's seeds, as the WebUI's X/Y/Z plot shares one seed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline import prompts as templates
from pipeline.expand import inputs
from pipeline.errors import JobError
from pipeline.expand.plan import (MAX_PROMPT_CHARS, Axis, Plan, _Template, checkpoint_of,
                                  combination_count, seeds_of, set_dotted)
from pipeline.job.fields import payload_key
from pipeline.model import Variant


def variants(plan: Plan, *, checkpoint: Any = ..., shard: tuple[int, int] | None = None,
             on_repeat: Callable[[Variant], None] | None = None) -> Iterator[Variant]:
    """Yield the job's variants lazily, in a stable order.

    ``checkpoint`` keeps only variants asking for that checkpoint (None: no override) without
    building the others: the axis that sets the checkpoint is pinned to its matching values,
    and prompts whose own checkpoint differs are skipped unexpanded, so the streams of all
    checkpoints together cost one pass. ``shard=(i, n)`` keeps the i-th of n disjoint shares
    (1-based), split by id so every machine agrees without coordination. ``on_repeat``: a variant
    with the id of one yielded before (``{a|a}`` expands a text twice; two derived seeds can
    coincide) is not yielded, ``on_repeat(variant)`` is called instead (see ``_Repeats``).
    """
    pinned = checkpoint is not ...
    axes = plan.axes
    choices: list[list[tuple[int, Any]]] = [list(enumerate(a.values)) for a in axes]
    if pinned and plan.checkpoint_axis is not None:
        n = plan.checkpoint_axis
        choices[n] = [(j, v) for j, v in choices[n] if plan.axis_checkpoints[j] == checkpoint]
        if not choices[n]:
            return
    strides = _strides(axes)
    combos = combination_count(plan)
    template_pinned = pinned and plan.checkpoint_axis is None
    start = 0  # variants of the whole job before the current prompt text
    repeats = _Repeats(plan) if on_repeat is not None else None
    for template, text, draw in _prompt_texts(plan, checkpoint if template_pinned else ...):
        per_text = combos * seeds_of(plan, template)
        if text is None:  # a prompt of another checkpoint: skipped, but counted
            start += per_text * (template.texts if draw is None else 1)
            continue
        seeds = _seeds_for(plan, template, text)
        repeated: Container[int] = ()  # positions in ``seeds`` that repeat an earlier one
        if repeats is not None:
            repeated = repeats.of_text(template, text, seeds, random_mode=draw is not None)
        for picked in itertools.product(*choices):
            position = sum(j * stride for (j, _), stride in zip(picked, strides))
            payload_base, axis_values = _apply(plan, template, text, axes,
                                               [v for _, v in picked])
            for rep, seed in enumerate(seeds):
                payload = dict(payload_base)
                payload["seed"] = seed
                replicate = rep if seed == -1 else None
                if draw is not None:  # random mode: equal draws are still separate variants
                    replicate = [draw, replicate]
                ident = variant_id(plan.spec.endpoint, payload, replicate)
                if pinned and checkpoint_of(payload) != checkpoint:
                    continue
                if shard is not None and not in_shard(ident, shard):
                    continue
                variant = Variant(
                    id=ident, ordinal=start + position * len(seeds) + rep + 1,
                    prompt=payload["prompt"],
                    negative_prompt=payload.get("negative_prompt", ""), seed=seed,
                    payload=payload,
                    axes=(("prompt", text), ("template", template.index), *axis_values,
                          ("seed", seed if seed != -1 else f"random#{rep + 1}")),
                    endpoint=plan.spec.endpoint,
                )
                if repeats is not None and (rep in repeated or repeats.seen_id(ident)):
                    on_repeat(variant)  # type: ignore[misc]  # repeats is set with on_repeat
                    continue
                yield variant
        start += per_text


class _Repeats:
    """Which variants of one stream repeat an earlier one (the same id), remembering as little
    as the job's shape allows: per prompt text, not per variant.

    Ids hash the payload, so two variants are the same only when their payloads are. Axis values
    are distinct (the job's checks refuse duplicates) and, unless noted below, each sets keys no
    other axis sets, so within one prompt text only two derived seeds that coincide (32 bits
    each) repeat; across texts, only the same text again under the same settings (``{a|a}``,
    a wildcard listing a line twice, two prompts alike). Both are found with a set of prompt-text
    digests and a pass over each text's seed list. Where the shape allows other coincidences
    (a replace axis can leave a text unchanged, a LoRA tag may already be in a text, axes that
    set the same key, input images, mapping values, prompts alike but for their seed), every
    id is kept instead, as ints.
    """

    def __init__(self, plan: Plan) -> None:
        self._groups = _settings_groups(plan)
        self._ids: set[int] | None = None if self._groups is not None else set()
        self._texts: set[bytes] = set()
        self._derived = plan.seed_count is not None

    def of_text(self, template: _Template, text: str, seeds: Any, *, random_mode: bool
                ) -> Container[int]:
        """Positions in ``seeds`` whose variants repeat earlier ones, for every combination:
        all of them when the text came before under the same settings."""
        if self._groups is None:
            return ()
        if not random_mode:  # a random draw is its own variant even when its text is not
            key = hashlib.blake2b(self._groups[template.index] + b"\0"
                                  + text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key in self._texts:
                return range(len(seeds))
            self._texts.add(key)
        if not self._derived or template.seed is not None or len(set(seeds)) == len(seeds):
            return ()  # seed lists are checked for duplicates when the job is read
        first: set[int] = set()
        again: set[int] = set()
        for rep, seed in enumerate(seeds):
            if seed in first:
                again.add(rep)
            first.add(seed)
        return again

    def seen_id(self, ident: str) -> bool:
        """Only where the job's shape needs it: has this id been yielded before?"""
        if self._ids is None:
            return False
        key = int(ident, 16)
        if key in self._ids:
            return True
        self._ids.add(key)
        return False


def _settings_groups(plan: Plan) -> dict[int, bytes] | None:
    """Per template, the settings its variants share once the axes have set theirs (equal bytes:
    equal payloads for equal texts); None when coincidences beyond those ``_Repeats`` describes
    are possible."""
    keys: list[str] = []
    for axis in plan.axes:
        if axis.kind == "replace":
            return None
        if axis.kind == "lora":
            if any("<" in t.text or (t.node is not None and templates.wildcard_names(t.node))
                   for t in plan.templates):
                return None
        elif axis.kind == "zip":
            keys += list(axis.values[0])
        else:
            keys.append(payload_key(axis.name))
        if axis.kind in ("zip", "matrix") and any(_nested(v) for v in axis.values):
            return None
    for i, key in enumerate(keys):
        if key.split(".")[0] in inputs.IMAGE_FIELDS:
            return None
        for other in keys[i + 1:]:
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                return None
    groups: dict[int, bytes] = {}
    seed_rules: dict[bytes, int | None] = {}
    for template in plan.templates:
        base = dict(template.base or {})
        for key in (*keys, "prompt", "seed"):
            _drop_dotted(base, key)
        group = orjson.dumps(base, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        if seed_rules.setdefault(group, template.seed) != template.seed:
            return None  # alike but for a per-prompt seed: a derived seed may equal it
        groups[template.index] = group
    return groups


def _nested(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and any(_nested(v) for v in value)


def _drop_dotted(data: dict[str, Any], dotted: str) -> None:
    """Remove a dotted key an axis sets, copying each nested dict on the way; a dict left empty
    goes too (``set_dotted`` makes it again for every variant)."""
    head, _, rest = dotted.partition(".")
    if head not in data:
        return
    if not rest:
        del data[head]
    elif isinstance(data[head], dict):
        child = dict(data[head])
        _drop_dotted(child, rest)
        if child:
            data[head] = child
        else:
            del data[head]
    else:  # not a mapping: set_dotted replaces it with one
        del data[head]


def in_shard(ident: str, shard: tuple[int, int]) -> bool:
    index, total = shard
    return int(ident[:8], 16) % total == index - 1


def variant_id(endpoint: str, payload: dict[str, Any], replicate: Any) -> str:
    blob = orjson.dumps({"e": endpoint, "p": payload, "r": replicate},
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]


def _strides(axes: tuple[Axis, ...]) -> list[int]:
    """Mixed-radix place values: the last axis varies fastest, as in ``itertools.product``."""
    sizes = [len(a) for a in axes]
    return [math.prod(sizes[i + 1:]) for i in range(len(sizes))]


def _prompt_texts(plan: Plan, checkpoint: Any = ...
                  ) -> Iterator[tuple[_Template, str | None, int | None]]:
    """(template, text, draw) in job order; text None for a template (or draw) whose own
    checkpoint is not ``checkpoint``, which is then not expanded at all."""
    if plan.spec.mode == "random":
        assert plan.spec.random is not None
        for i in range(plan.spec.random.count):
            rng = random.Random(f"{plan.spec.seed}:prompt:{i}")
            template = plan.templates[rng.randrange(len(plan.templates))]
            if checkpoint is not ... and template.checkpoint != checkpoint:
                yield template, None, i
                continue
            text = template.text if template.node is None else templates.sample(
                template.node, rng, plan.wildcards)
            yield template, text, i
        return
    for template in plan.templates:
        if checkpoint is not ... and template.checkpoint != checkpoint:
            yield template, None, None
        elif template.node is None:
            yield template, template.text, None
        else:
            for text in templates.expand(template.node, plan.wildcards):
                yield template, text, None


def _apply(plan: Plan, template: _Template, text: str, axes: tuple[Axis, ...],
           combo: list[Any]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The payload of one combination: the template's base, then each axis in order."""
    payload: dict[str, Any] = dict(template.base or {})
    prompt = text
    axis_values: list[tuple[str, Any]] = []
    for axis, value in zip(axes, combo):
        if axis.kind == "replace":
            search = axis.values[0]
            if len(prompt) + prompt.count(search) * (len(value) - len(search)) > MAX_PROMPT_CHARS:
                raise JobError(f"replacing {search!r} makes a prompt longer than "
                               f"{MAX_PROMPT_CHARS} characters", path=plan.spec.source_path,
                               where=axis.name, hint="use shorter replacements, or search for "
                               "text that occurs less often")
            prompt = prompt.replace(search, value)
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
            set_dotted(payload, payload_key(axis.name), value)
            axis_values.append((axis.name, _label(value)))
    payload["prompt"] = prompt
    if "mask" in payload:
        inputs.check_mask(payload, plan.spec.source_path)
    if checkpoint_of(payload) is not None:
        payload.setdefault("override_settings_restore_afterwards", False)
    return payload, axis_values


def _label(value: Any) -> Any:
    """An axis value as people read it: input images by file name."""
    if inputs.is_ref(value):
        return Path(value["$file"]).name
    if isinstance(value, list) and value and all(inputs.is_ref(v) for v in value):
        return ", ".join(Path(v["$file"]).name for v in value)
    return value


def _seeds_for(plan: Plan, template: _Template, text: str) -> list[int] | tuple[int, ...] | _Repeat:
    """The seeds of one prompt text (see the module docstring for the derivation rule)."""
    if template.seed is not None:
        return [template.seed]
    if plan.seed_count is not None:
        prefix = text.encode("utf-8", "surrogatepass")
        return [int.from_bytes(hashlib.sha256(b"%d:%d:" % (plan.spec.seed, k) + prefix)
                               .digest()[:4], "big") for k in range(plan.seed_count)]
    if plan.server_seeds is not None:
        return _Repeat(-1, plan.server_seeds)
    return plan.seeds


class _Repeat:
    """``seeds: N``: N times -1 without a list of N items."""

    __slots__ = ("value", "n")

    def __init__(self, value: int, n: int) -> None:
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return itertools.repeat(self.value, self.n)


# The expansion's own rules, for views that walk the same order without building payloads
# (``pipeline.grid.expected``): the prompt texts in job order, the seeds of one prompt text,
# and how an axis value is labelled.
prompt_texts = _prompt_texts
seeds_for = _seeds_for
axis_label = _label
