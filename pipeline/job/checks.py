"""Checks of the request fields a job sets, wherever it sets them: defaults, matrix, zip, prompts.

Called by the ``JobSpec`` validators; each raises ``FieldValueError`` whose ``loc`` is relative to
the section it checks (``("steps",)`` inside ``defaults``), so the loader can name the line.

Rules beyond each field's type (``pipeline.job.values.check_field``):
- ``prompt`` and ``seed`` come from ``prompts:`` and ``seeds:`` (or a per-prompt ``seed:``), so
  ``defaults``, ``matrix`` and ``zip`` may not set them (they would be overwritten, or make
  variants that are not what they say).
- A request key is varied by at most one axis (a matrix key or a zip key; ``checkpoint`` and
  ``override_settings.sd_model_checkpoint`` are the same key), and a prompt may not override a key
  an axis varies: one of the two would silently win.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.job.fields import payload_key
from pipeline.job.values import FieldValueError, check_field, expand_values

RESERVED = {
    "prompt": "prompts come from 'prompts:' (use 'replace:' to vary a word)",
    "seed": "seeds come from 'seeds:' (a list, N, or {count: N}), or a per-prompt 'seed:'",
}


def no_duplicates(values: Iterable[Any], what: str) -> None:
    """Two equal values would make two identical variants (and the same images twice)."""
    seen: set[str] = set()
    for value in values:
        key = repr(value)
        if key in seen:
            raise ValueError(f"{what} lists {value!r} twice; each value makes its own variants, "
                             "so keep one")
        seen.add(key)


def _key_name(key: Any, section: str) -> str:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") \
            or ".." in key:
        raise FieldValueError(f"{section} key {key!r} is not a field name or dotted path",
                              loc=(key,), hint="write a field such as cfg_scale, or a dotted "
                                               "path such as override_settings.sd_vae")
    if payload_key(key) in RESERVED:
        raise FieldValueError(f"{section} may not set {key!r}", loc=(key,),
                              hint=RESERVED[payload_key(key)])
    return key


def check_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in defaults.items():
        _key_name(key, "defaults")
        out[key] = _field(key, value, (key,))
    return out


def check_matrix(matrix: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in matrix.items():
        _key_name(key, "matrix")
        try:
            values = expand_values(raw, payload_key(key))
        except ValueError as exc:
            raise FieldValueError(str(exc), loc=(key,), hint="see the range forms in the "
                                  "README: 5..9, 0.2..1.0 step 0.2, 5-9 (+2), 1-10 [5], 5, 7, 9"
                                  ) from None
        if not values:
            raise FieldValueError(f"matrix axis {key!r} has no values; give at least one",
                                  loc=(key,), hint="write a list such as [5, 7]")
        same_shape = isinstance(raw, list) and len(raw) == len(values)
        checked = [_field(key, v, (key, i) if same_shape else (key,), single=False)
                   for i, v in enumerate(values)]
        _no_duplicates_at(checked, f"matrix axis {key!r}", (key,))
        out[key] = checked
    return out


def check_zip(groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
    out = []
    for n, group in enumerate(groups):
        if not group:
            raise FieldValueError(f"zip group {n + 1} is empty", loc=(n,),
                                  hint="give keys with lists of equal length")
        checked: dict[str, list[Any]] = {}
        for key, values in group.items():
            try:
                _key_name(key, "zip")
            except FieldValueError as exc:
                raise exc.at(n) from None
            checked[key] = [_field(key, v, (n, key, i)) for i, v in enumerate(values)]
        lengths = {key: len(values) for key, values in checked.items()}
        if len(set(lengths.values())) != 1:
            raise FieldValueError(f"zip group {n + 1}: values move together, so every list "
                                  f"needs the same length; got {lengths}", loc=(n,),
                                  hint="give each key as many values as the others")
        if 0 in lengths.values():
            raise FieldValueError(f"zip group {n + 1} has empty lists", loc=(n,),
                                  hint="give at least one value per key")
        _no_duplicates_at([tuple(map(repr, row)) for row in zip(*checked.values())],
                          f"zip group {n + 1}", (n,))
        out.append(checked)
    return out


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A prompt's field overrides (the keys of its object form other than prompt, raw, name)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") \
                or ".." in key:
            raise FieldValueError(f"prompt key {key!r} is not a field name or dotted path",
                                  loc=(key,), hint="write a field such as cfg_scale")
        out[key] = _field(key, value, (key,))
    return out


def check_conflicts(matrix: dict[str, Any], groups: list[dict[str, list[Any]]],
                    prompt_overrides: list[dict[str, Any] | None]) -> None:
    """At most one axis per request key; no prompt override of a key an axis varies."""
    axes: list[tuple[str, tuple[Any, ...]]] = []
    for n, group in enumerate(groups):
        axes += [(payload_key(k), ("zip", n, k)) for k in group]
    axes += [(payload_key(k), ("matrix", k)) for k in matrix]
    for i, (key, loc) in enumerate(axes):
        for other, other_loc in axes[:i]:
            if _overlap(key, other):
                raise FieldValueError(
                    f"{_name(loc)} and {_name(other_loc)} both set {min(key, other, key=len)}",
                    loc=loc, hint="vary a field in one place only (one matrix key or one zip "
                                  "group); to move two fields together, zip them")
    for p, overrides in enumerate(prompt_overrides):
        for leaf in _leaves(overrides or {}):
            for key, loc in axes:
                if _overlap(leaf, key):
                    raise FieldValueError(
                        f"prompt {p + 1} sets {leaf}, which {_name(loc)} varies",
                        loc=("prompts", p, leaf.split(".")[0]),
                        hint=f"remove it from the prompt, or from {_name(loc)}; the axis would "
                             "silently win")


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _name(loc: tuple[Any, ...]) -> str:
    return f"matrix.{loc[1]}" if loc[0] == "matrix" else f"zip[{loc[1]}].{loc[2]}"


def _leaves(fields: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in fields.items():
        dotted = prefix + payload_key(str(key)) if not prefix else prefix + str(key)
        if isinstance(value, dict) and value:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted


def _field(key: str, value: Any, loc: tuple[Any, ...], *, single: bool = True) -> Any:
    try:
        return check_field(key, value, single=single)
    except FieldValueError as exc:
        raise exc.at(*loc) from None


def _no_duplicates_at(values: list[Any], what: str, loc: tuple[Any, ...]) -> None:
    try:
        no_duplicates(values, what)
    except ValueError as exc:
        raise FieldValueError(str(exc), loc=loc, hint="keep one of them") from None
