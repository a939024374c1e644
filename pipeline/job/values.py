r"""Values in a job: the range/list grammar for axes, and the type check of every request field.

Range and list strings (matrix axis values; grid-style lists a WebUI user types)::

    values := item ( "," item )*                  "5, 7, 9"       -> 5, 7, 9
    item   := NUMBER                              "7"
            | NUMBER ".." NUMBER [ "step" NUMBER ]  "20..40 step 10" -> 20, 30, 40     (sdbatch)
            | NUMBER "-" NUMBER [ "(" SIGN NUMBER ")" ]   "5-9 (+2)" -> 5, 7, 9       (X/Y/Z)
            | NUMBER "-" NUMBER "[" COUNT "]"     "1-10 [5]"      -> 1, 3, 5, 7, 10  (X/Y/Z)
    NUMBER := [+-] digits [ "." digits ]

- Both ends are included when a step lands on them; without a step the step is 1. An end below
  the start needs a negative X/Y/Z step (``10-4 (-3)`` -> 10, 7, 4); otherwise it is an error.
- ``[N]`` gives N evenly spaced values from start to end; with whole-number ends they are cut to
  whole numbers as the WebUI's X/Y/Z plot does (``1-10 [5]`` -> 1, 3, 5, 7, 10).
- Any number with a decimal point makes the item's values floats, rounded to the decimals written.
- A string is read this way only for fields that are not text (``sampler_name: "DPM++ 2M, x"``
  stays one value), and only when it is a range or a comma list: ``"7"`` stays text for an
  unknown field, and is the number 7 for a numeric one. A string that a numeric field cannot
  read (``"5-9 (+2"``) is an error, never sent as text. At most ``MAX_RANGE_VALUES`` values.

Field values (``check_field``): the types in ``pipeline.job.fields.FIELD_TYPES``. Whole-number
fields take ints (or floats that are whole, or numeric strings), within their bounds; number
fields take finite ints or floats; bools take true/false; ``null`` is the server's default. Every
value that goes into a request (known field or not) must be JSON a server can read: string keys,
ints within 64 bits, finite floats (``check_json``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline.job.fields import FIELD_TYPES, FieldType, payload_key

MAX_RANGE_VALUES = 100_000
INT64_MAX = 2**63 - 1

_NUM = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_DOTS = re.compile(rf"^\s*({_NUM})\s*\.\.\s*({_NUM})\s*(?:step\s+({_NUM}))?\s*$")
_XYZ = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*([+-]?\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\)"
                  rf"|\[\s*(\d+)\s*\])?\s*$")
_PLAIN = re.compile(rf"^\s*{_NUM}\s*$")


class FieldValueError(ValueError):
    """A bad value at ``loc`` (keys and list indexes inside the job), with the fix."""

    def __init__(self, message: str, *, loc: tuple[Any, ...] = (), hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    def at(self, *prefix: Any) -> FieldValueError:
        return FieldValueError(self.message, loc=(*prefix, *self.loc), hint=self.hint)


# --- the range/list grammar ------------------------------------------------------------------

def parse_number(text: str) -> int | float | None:
    """``"7"`` -> 7, ``" -0.5 "`` -> -0.5; None when ``text`` is not a plain number."""
    if not _PLAIN.match(text):
        return None
    cleaned = text.replace(" ", "").strip()
    return float(cleaned) if "." in cleaned else int(cleaned)


def parse_range(text: str) -> list[int | float] | None:
    """One range (``"5..9"``, ``"5-9 (+2)"``, ``"1-10 [5]"``) -> its values; None if not a range.

    Raises ``ValueError`` for a range that cannot be read (zero step, backwards, too many values).
    """
    dots = _DOTS.match(text)
    if dots:
        start_s, stop_s, step_s = dots.groups()
        return _stepped(text, start_s, stop_s, step_s, backwards_ok=False)
    xyz = _XYZ.match(text)
    if xyz:
        start_s, stop_s, step_s, count_s = xyz.groups()
        if count_s is not None:
            return _spaced(text, start_s, stop_s, int(count_s))
        return _stepped(text, start_s, stop_s, step_s, backwards_ok=True)
    return None


def parse_values(text: str) -> list[int | float] | None:
    """A range or a comma list of numbers and ranges -> the values; None for anything else
    (including a single plain number, which is left to the field's type)."""
    if "," not in text:
        return parse_range(text)
    out: list[int | float] = []
    for piece in text.split(","):
        if not piece.strip():
            continue
        number = parse_number(piece)
        if number is not None:
            out.append(number)
            continue
        values = parse_range(piece)
        if values is None:
            return None
        out.extend(values)
        if len(out) > MAX_RANGE_VALUES:
            raise ValueError(f"{text!r} has more than {MAX_RANGE_VALUES} values")
    return out or None


def _decimals(*texts: str | None) -> int:
    return max((len(t.split(".")[1]) for t in texts if t and "." in t), default=0)


def _num(text: str) -> float:
    return float(text.replace(" ", ""))


def _stepped(text: str, start_s: str, stop_s: str, step_s: str | None, *,
             backwards_ok: bool) -> list[int | float]:
    start, stop = _num(start_s), _num(stop_s)
    step = _num(step_s) if step_s else 1.0
    if step == 0 or (step < 0 and not backwards_ok):
        raise ValueError(f"range {text!r}: the step must be above 0")
    if (stop - start) * step < 0:
        if backwards_ok:
            raise ValueError(f"range {text!r} runs backwards; write the smaller number first, or "
                             "give a negative step such as (-1)")
        raise ValueError(f"range {text!r}: the end is below the start; write "
                         f"{stop_s.strip()}..{start_s.strip()}")
    n = int((stop - start) / step + 1e-9) + 1
    if n > MAX_RANGE_VALUES:
        raise ValueError(f"range {text!r} has {n} values; the most is {MAX_RANGE_VALUES}")
    values = [round(start + i * step, _decimals(start_s, stop_s, step_s)) for i in range(n)]
    is_float = any("." in s for s in (start_s, stop_s, step_s or ""))
    return values if is_float else [int(v) for v in values]


def _spaced(text: str, start_s: str, stop_s: str, count: int) -> list[int | float]:
    if count < 1 or count > MAX_RANGE_VALUES:
        raise ValueError(f"range {text!r}: the count in [N] must be 1..{MAX_RANGE_VALUES}")
    start, stop = _num(start_s), _num(stop_s)
    if count == 1:
        points = [start]
    else:
        points = [start + (stop - start) * i / (count - 1) for i in range(count)]
    if "." not in start_s and "." not in stop_s:
        return [int(p) for p in points]  # truncated, as the WebUI's X/Y/Z plot does
    decimals = max(_decimals(start_s, stop_s), 6)
    return [round(p, decimals) for p in points]


def expand_values(raw: Any, key: str | None = None) -> list[Any]:
    """An axis: a list, a single value, or range/list strings, flattened to a list of values.

    ``key`` (the payload key) keeps text fields from being read as ranges."""
    kind = FIELD_TYPES[key].kind if key in FIELD_TYPES else None
    items = raw if isinstance(raw, list) else [raw]
    out: list[Any] = []
    for item in items:
        values = parse_values(item) if isinstance(item, str) and kind in (None, "int", "float") \
            else None
        out.extend(values if values is not None else [item])
        if len(out) > MAX_RANGE_VALUES:
            raise ValueError(f"the axis has more than {MAX_RANGE_VALUES} values")
    return out


# --- field values ----------------------------------------------------------------------------

_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false",
               "str": "text", "str_list": "a list of text", "dict": "a mapping of key: value",
               "list": "a list"}


def check_field(name: str, value: Any, *, single: bool = True) -> Any:
    """``value`` for job field ``name`` (aliases allowed), normalised; raises ``FieldValueError``.

    Numeric strings become numbers and whole floats become ints for whole-number fields. With
    ``single``, a range string is refused (ranges make an axis: they belong under ``matrix:``).
    """
    key = payload_key(name)
    spec = FIELD_TYPES.get(key)
    if spec is not None and value is not None:
        value = _typed(key, spec, value, single)
    if spec is not None and spec.kind == "dict" and isinstance(value, dict):
        checked = {}
        for k, v in value.items():
            if isinstance(k, str) and f"{key}.{k}" in FIELD_TYPES:
                try:
                    v = check_field(f"{key}.{k}", v)
                except FieldValueError as exc:
                    raise exc.at(k) from None
            checked[k] = v
        value = checked
    problem = check_json(value)
    if problem is not None:
        where, text = problem
        raise FieldValueError(text, loc=where, hint=_JSON_HINT)
    return value


_JSON_HINT = ("request values are JSON: text keys, whole numbers within 64 bits, finite numbers "
              "(no .inf or .nan)")


def _typed(key: str, spec: FieldType, value: Any, single: bool) -> Any:
    field = key.rsplit(".", 1)[-1]
    want = _KIND_WORDS[spec.kind]
    example = {"int": "20", "float": "7.5", "bool": "true", "str": '"text"',
               "str_list": "[a, b]", "dict": "{key: value}", "list": "[1, 2]"}[spec.kind]
    hint = f"write {want}, e.g. {field}: {example}"
    if spec.kind in ("int", "float"):
        number = value
        if isinstance(value, str):
            number = parse_number(value)
            if number is None:
                if not single:
                    raise FieldValueError(f"{value!r} is not {want} or a range like 5..9",
                                          hint=hint)
                try:
                    values = parse_values(value)
                except ValueError as exc:
                    raise FieldValueError(str(exc), hint=hint) from None
                if values is not None:
                    raise FieldValueError(f"{value!r} is a range; a range makes an axis",
                                          hint=f"put it under matrix: (matrix: {{{field}: "
                                               f"{value!r}}}), or write one number")
                raise FieldValueError(f"{value!r} is not {want}", hint=hint)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise FieldValueError(f"{_shown(value)} is not {want}", hint=hint)
        if isinstance(number, float) and not math.isfinite(number):
            raise FieldValueError(f"{value!r} is not a finite number", hint=hint)
        if spec.kind == "int":
            if isinstance(number, float):
                if not number.is_integer():
                    raise FieldValueError(f"{value!r} is not a whole number", hint=hint)
                number = int(number)
        lo, hi = spec.min, spec.max
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = (f"{_fmt(lo)}..{_fmt(hi)}" if lo is not None and hi is not None else
                      f"at least {_fmt(lo)}" if lo is not None else f"at most {_fmt(hi)}")
            raise FieldValueError(f"{_shown(value)} is outside {bounds}",
                                  hint=f"{field} must be {bounds}")
        return number
    ok = {"bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "str_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
          "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list)}
    if not ok[spec.kind](value):
        if spec.kind == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = f"quote it: {field}: \"{value}\""
        raise FieldValueError(f"{_shown(value)} is not {want}", hint=hint)
    return value


def _fmt(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_json(value: Any) -> tuple[tuple[Any, ...], str] | None:
    """(where inside ``value``, what is wrong) for the first value a JSON request cannot carry."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    seen: set[int] = set()
    while stack:
        loc, item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not -INT64_MAX - 1 <= item <= INT64_MAX:
                return loc, f"{_shown(item)} does not fit in 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return loc, f"{item!r} is not a finite number"
        elif isinstance(item, (list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(((*loc, i), v) for i, v in enumerate(item))
        elif isinstance(item, dict):
            if id(item) in seen:
                continue
            seen.add(id(item))
            for k, v in item.items():
                if not isinstance(k, str):
                    return (*loc, k), f"key {_shown(k)} is not text"
                stack.append(((*loc, k), v))
        else:
            return loc, f"{type(item).__name__} values cannot be sent in a request"
    return None
