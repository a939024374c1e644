"""The grid a job gets when it names none: a handful of readable sheets. Pure.

Every axis with more than one value is a *unit* (a zip group is one unit, ``width+height``;
LoRAs are ``lora_weight`` and ``lora_name``). Units go where people compare them:

- rows: the prompt, then the seed beside it (a composite ``prompt+seed``), up to ``MAX_ROWS``;
- columns: generation parameters (CFG, steps, sampler, LoRA weight, ...) in job order, combined
  while there are at most ``MAX_COLS`` columns;
- pages: what changes the whole picture (checkpoint, VAE, image size, Prompt S/R, LoRA name),
  and whatever did not fit, as one composite page axis, up to ``MAX_PAGES`` sheets;
- past that, the last units are held at their first value (``where``), and the caller says so:
  a default view stays a handful of sheets, and every other combination is one ``--where`` (or
  one click in the gallery's grid explorer) away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.job.grid import CHECKPOINT_KEY, GridSpec, canonical, split_axis

MAX_COLS = 8
MAX_ROWS = 12
MAX_PAGES = 8
HARD_COLS = 12  # how far columns and rows may grow to keep pages within MAX_PAGES
HARD_ROWS = 16
_PAGE_KEYS = {CHECKPOINT_KEY, "override_settings.sd_vae", "lora_name"}
_ROW_KEYS = {"prompt", "seed"}


@dataclass(frozen=True, slots=True)
class Unit:
    """An axis of the job as the default grid sees it."""

    name: str
    kind: str
    count: int  # distinct values


@dataclass(frozen=True, slots=True)
class AutoGrid:
    grid: GridSpec
    held: tuple[tuple[str, int], ...] = ()  # (unit, its number of values) held at the first


def units_of(axes: Sequence[tuple[str, str, int]]) -> list[Unit]:
    """Units from (name, kind, distinct values) in job order; see the module docstring."""
    names = {n for n, _, _ in axes}
    groups = [n for n, k, _ in axes if k == "zip group"]
    in_group = {p for g in groups for p in split_axis(g)}
    out: list[Unit] = []
    for name, kind, count in axes:
        if count < 2 or name == "template" or name in in_group or name == "lora":
            continue
        if name in ("lora_name", "lora_weight") or "lora" not in names or kind != "lora":
            out.append(Unit(name, kind, count))
    return out


def _prefers(unit: Unit) -> str:
    parts = {canonical(p) for p in split_axis(unit.name)}
    if parts & {"width", "height"} or unit.kind == "replace" or parts & _PAGE_KEYS:
        return "page"
    if parts & _ROW_KEYS:
        return "row"
    return "col"


def default_grid(units: Sequence[Unit]) -> AutoGrid:
    """Rows, columns, pages and held units for ``units`` (see the module docstring)."""
    if not units:
        return AutoGrid(GridSpec(x="seed"))
    left = list(units)
    rows: list[Unit] = []
    cols: list[Unit] = []

    def take(into: list[Unit], unit: Unit, limit: int) -> bool:
        if _size(into) * unit.count <= limit:
            into.append(unit)
            left.remove(unit)
            return True
        return False

    for unit in [u for u in left if canonical(u.name) == "prompt"]:
        take(rows, unit, max(MAX_ROWS, unit.count))
    for unit in [u for u in left if canonical(u.name) == "seed"]:
        take(rows, unit, MAX_ROWS)
    for unit in [u for u in left if _prefers(u) == "col"]:
        take(cols, unit, MAX_COLS)
    if not cols:  # nothing to compare across yet: the seed, else any unit that fits
        for unit in sorted(left, key=lambda u: (_prefers(u) != "row", _prefers(u) == "page")):
            if take(cols, unit, HARD_COLS):
                break
        if not cols and rows:  # only a prompt (and seeds): prompts across
            cols, rows = rows[:1], rows[1:]
    if not rows:
        for unit in sorted(left, key=lambda u: (_prefers(u) == "page", -u.count)):
            if take(rows, unit, MAX_ROWS):
                break
    # Too many pages: widen columns and rows a little, then hold the last units.
    for unit in [u for u in left if _prefers(u) != "page"]:
        if _size(left) > MAX_PAGES:
            take(cols, unit, HARD_COLS) or take(rows, unit, HARD_ROWS)
    held: list[Unit] = []
    while _size(left) > MAX_PAGES:
        held.append(left.pop())
    pages = "+".join(u.name for u in left) or None
    x = "+".join(u.name for u in cols) if cols else "seed"
    y = "+".join(u.name for u in rows) or None
    grid = GridSpec(x=x, y=y, page=pages)
    return AutoGrid(grid, tuple((u.name, u.count) for u in held))


def _size(units: Sequence[Unit]) -> int:
    return math.prod(u.count for u in units)
