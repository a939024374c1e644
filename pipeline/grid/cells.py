"""Which variant goes in which cell of which sheet, and what state it is in.

Inputs: the variants the job expects (rebuilt from the plan, so cells not yet generated still
have a place) and what the output directory holds (manifest: done; failures: failed). The
assignment itself (``assemble``) is pure.

Placement rules:
- x, y and page take their values in job order, the LoRA baseline first or last.
- Every other axis that still varies within one (x, y, page) cell splits the sheets further (one
  sheet per combination), so no variant is silently hidden behind another.
- With ``lora_name`` on the sheet, the baseline variant (no LoRA) is shown in every LoRA's
  column or row: it is the reference each LoRA is compared to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.grid.expected import MAX_GRID_VARIANTS, expected_axes, identity
from pipeline.grid.labels import is_baseline, matches_text, ordered, value_key
from pipeline.job.grid import GridSpec, canonical, split_axis
from pipeline.output.layout import FAILURES, MANIFEST, inside
from pipeline.output.resume import read_records

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)

__all__ = ["MAX_GRID_VARIANTS", "Cell", "Entry", "GridData", "Keyed", "Outcomes", "Page",
           "assemble", "axis_value", "entries_from_outcomes", "expected_entries", "keyed",
           "read_outcomes"]
CellState = Literal["ok", "failed", "pending", "absent"]
_PageValues = tuple[tuple[str, Any], ...]
_DERIVED = {"template", "lora_name", "lora_weight"}  # shown through prompt / lora instead


@dataclass(frozen=True, slots=True)
class Entry:
    """One variant the grid may show: its axis values, and its id when it came from a record
    (None: expected from the plan, matched to records by its axes)."""

    id: str | None
    axes: Mapping[str, Any] = field(hash=False, compare=False)
    # the axes the variant really has, when ``axes`` was changed to place it (the baseline
    # shown under every LoRA name); records are matched by these
    own_axes: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Cell:
    state: CellState
    variant_id: str | None = None
    file: str | None = None  # relative to the output directory, when state == "ok"
    error: str | None = None  # when state == "failed"
    seed: Any = None
    digest: str | None = None  # the image's sha256: a redone image re-renders its sheet
    size: tuple[int, int] | None = None  # the image's width and height, when known
    axes: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)  # its own


ABSENT = Cell("absent")


@dataclass(frozen=True, slots=True)
class Page:
    """One sheet's worth of cells: (row index, column index) -> cell."""

    values: tuple[tuple[str, Any], ...]  # the page axes and their values
    cells: Mapping[tuple[int, int], Cell] = field(hash=False, compare=False)
    rows: tuple[int, ...] = ()  # the rows and columns this page uses (others are all absent)
    cols: tuple[int, ...] = ()

    def cell(self, row: int, col: int) -> Cell:
        return self.cells.get((row, col), ABSENT)


@dataclass(frozen=True, slots=True)
class GridData:
    x_axis: str
    y_axis: str | None
    x_values: tuple[Any, ...]
    y_values: tuple[Any, ...]  # (None,) without a y axis
    page_axes: tuple[str, ...]
    pages: tuple[Page, ...]
    fixed: tuple[tuple[str, Any], ...]  # axes with one value in the whole job
    collisions: int = 0  # cells two variants with identical axes wanted


# --- what the job expects, and what the directory holds -----------------------------------------

def expected_entries(spec_or_plan: JobSpec | Plan, *, where: Mapping[str, str] | None = None,
                     limit: int = MAX_GRID_VARIANTS) -> list[Entry]:
    """Every variant the job makes, as axes only (see ``expected``); refuses huge grids."""
    from pipeline import expand

    plan = spec_or_plan if isinstance(spec_or_plan, expand.Plan) \
        else expand.build_plan(spec_or_plan)
    return [Entry(None, axes) for axes in expected_axes(plan, where=where, limit=limit)]


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What the output directory holds: done records and failures, by variant id."""

    done: Mapping[str, dict[str, Any]] = field(hash=False, compare=False)
    failed: Mapping[str, dict[str, Any]] = field(hash=False, compare=False)


def read_outcomes(out_dir: Path) -> Outcomes:
    """The first generation image of each done variant (whose file exists), and failures."""
    done: dict[str, dict[str, Any]] = {}
    for record in read_records(out_dir / MANIFEST):
        ident, index, file = record.get("id"), record.get("image_index"), record.get("file")
        if (not isinstance(ident, str) or not isinstance(index, int) or not isinstance(file, str)
                or record.get("kind", "generation") != "generation"
                or not inside(file)):
            continue
        current = done.get(ident)
        if (current is None or index < current["image_index"]) and (out_dir / file).is_file():
            done[ident] = record
    failed = {r["id"]: r for r in read_records(out_dir / FAILURES)
              if isinstance(r.get("id"), str) and r["id"] not in done}
    return Outcomes(done, failed)


def entries_from_outcomes(outcomes: Outcomes, where: Mapping[str, str] | None = None
                          ) -> list[Entry]:
    """Without the job: the variants the directory knows of, in job order."""
    rows = [*outcomes.done.values(), *outcomes.failed.values()]
    rows.sort(key=lambda r: r.get("ordinal") if isinstance(r.get("ordinal"), int) else 1 << 60)
    entries = [Entry(r["id"], r.get("axes") if isinstance(r.get("axes"), dict) else {})
               for r in rows]
    if where:
        entries = [e for e in entries
                   if all(matches_text(a, axis_value(e.axes, a), w) for a, w in where.items())]
    return entries


@dataclass(frozen=True, slots=True)
class Keyed:
    """Done and failed records by the axes they were made for (``expected.identity``)."""

    done: Mapping[bytes, dict[str, Any]] = field(hash=False, compare=False)
    failed: Mapping[bytes, dict[str, Any]] = field(hash=False, compare=False)


def keyed(outcomes: Outcomes) -> Keyed:
    """Index the records by axes; a later record of the same axes wins (a redo after an edit),
    and a failure counts only where no image of the same axes exists."""
    done = {identity(r["axes"]): r for r in outcomes.done.values()
            if isinstance(r.get("axes"), dict)}
    failed: dict[bytes, dict[str, Any]] = {}
    for record in outcomes.failed.values():
        if isinstance(record.get("axes"), dict):
            key = identity(record["axes"])
            if key not in done:
                failed[key] = record
    return Keyed(done, failed)


# --- the assignment -------------------------------------------------------------------------

def axis_value(axes: Mapping[str, Any], name: str) -> Any:
    """The value of axis ``name``; a zip group (``width+height``) gives a dict of its keys."""
    if name in axes or "+" not in name:
        return axes.get(name)
    return {part: axes.get(part) for part in name.split("+")}


def assemble(entries: Iterable[Entry], outcomes: Outcomes, grid: GridSpec, *,
             by_axes: Keyed | None = None, groups: Iterable[str] = ()) -> GridData:
    """Place every entry on a page, row and column; pure.

    Entries without an id are matched to records through ``by_axes`` (default: ``keyed``
    of ``outcomes``). ``groups`` names the job's zip groups (``width+height``): an axis that
    splits sheets is a whole group, never one of its keys alone.
    """
    entries = list(entries)
    if by_axes is None and any(e.id is None for e in entries):
        by_axes = keyed(outcomes)
    placed = grid.axes
    leftover = _leftover_axes(entries, placed, tuple(groups))
    entries = list(_broadcast_baseline(entries, (*placed, *leftover)))
    x_values = ordered(grid.x, (axis_value(e.axes, grid.x) for e in entries),
                       baseline=grid.baseline)
    y_values: list[Any] = [None]
    if grid.y is not None:
        y_values = ordered(grid.y, (axis_value(e.axes, grid.y) for e in entries),
                           baseline=grid.baseline)
    if leftover:
        log.info("grid: %s also vary; one sheet per combination", ", ".join(leftover))
    page_axes = ((grid.page,) if grid.page else ()) + tuple(leftover)
    page_order: dict[str, int] = {}
    if grid.page:
        page_values = ordered(grid.page, (axis_value(e.axes, grid.page) for e in entries),
                              baseline=grid.baseline)
        page_order = {value_key(v): i for i, v in enumerate(page_values)}
    col_of = {value_key(v): i for i, v in enumerate(x_values)}
    row_of = {value_key(v): i for i, v in enumerate(y_values)}
    pages: dict[tuple[str, ...], tuple[_PageValues, dict[tuple[int, int], Cell]]] = {}
    collisions = 0
    for entry in entries:
        values = tuple((a, axis_value(entry.axes, a)) for a in page_axes)
        key = tuple(value_key(v) for _, v in values)
        _, cells = pages.setdefault(key, (values, {}))
        col = col_of[value_key(axis_value(entry.axes, grid.x))]
        row = row_of[value_key(axis_value(entry.axes, grid.y))] if grid.y else 0
        if (row, col) in cells:
            collisions += 1
            continue
        cells[(row, col)] = _cell(entry, outcomes, by_axes)
    first_seen = {key: n for n, key in enumerate(pages)}
    keys = sorted(pages, key=lambda k: (page_order.get(k[0], 0) if grid.page else 0,
                                        first_seen[k]))
    if collisions:
        log.info("grid: %d variant(s) share a cell with another of identical axes; "
                    "the first is shown", collisions)
    return GridData(
        x_axis=grid.x, y_axis=grid.y, x_values=tuple(x_values), y_values=tuple(y_values),
        page_axes=page_axes,
        pages=tuple(_page(*pages[k], len(y_values), len(x_values)) for k in keys)
        or (_page((), {}, len(y_values), len(x_values)),),
        fixed=_fixed_axes(entries, {p for a in (*placed, *leftover) for p in split_axis(a)},
                          tuple(groups)),
        collisions=collisions)


def _page(values: _PageValues, cells: dict[tuple[int, int], Cell],
          n_rows: int, n_cols: int) -> Page:
    """A page keeps only the rows and columns it has variants in (all, when it has none)."""
    rows = tuple(sorted({r for r, _ in cells})) or tuple(range(n_rows))
    cols = tuple(sorted({c for _, c in cells})) or tuple(range(n_cols))
    return Page(values, cells, rows, cols)


def _cell(entry: Entry, outcomes: Outcomes, by_axes: Keyed | None) -> Cell:
    own = entry.own_axes if entry.own_axes is not None else entry.axes
    if entry.id is not None:
        record, failure = outcomes.done.get(entry.id), outcomes.failed.get(entry.id)
    else:
        assert by_axes is not None
        key = identity(own)
        record, failure = by_axes.done.get(key), by_axes.failed.get(key)
    if record is not None:
        return Cell("ok", record.get("id"), record["file"], seed=record.get("seed"),
                    digest=record.get("sha256"), size=_size_of(own, record), axes=own)
    if failure is not None:
        return Cell("failed", failure.get("id"), error=str(failure.get("error") or "failed"),
                    seed=failure.get("seed"), size=_size_of(own, None), axes=own)
    return Cell("pending", entry.id, seed=own.get("seed"), size=_size_of(own, None), axes=own)


def _size_of(axes: Mapping[str, Any], record: dict[str, Any] | None) -> tuple[int, int] | None:
    """The image's size: from the record's request, else from the axes (a size sweep)."""
    for source in (record.get("params") if record else None, axes):
        if isinstance(source, Mapping):
            w, h = source.get("width"), source.get("height")
            if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 \
                    and not isinstance(w, bool):
                return w, h
    return None


def _broadcast_baseline(entries: list[Entry], shown: tuple[str, ...]) -> Iterator[Entry]:
    """With ``lora_name`` on the sheet or splitting pages, repeat each baseline entry under
    every LoRA name."""
    name_axis = next((a for a in shown if canonical(a) == "lora_name"), None)
    if name_axis is None:
        yield from entries
        return
    names = ordered(name_axis, (e.axes.get(name_axis) for e in entries
                                if e.axes.get(name_axis) is not None))
    for entry in entries:
        if is_baseline(name_axis, entry.axes.get(name_axis)) and names:
            for name in names:
                yield Entry(entry.id, {**entry.axes, name_axis: name}, entry.axes)
        else:
            yield entry


def _leftover_axes(entries: list[Entry], placed: tuple[str, ...],
                   groups: tuple[str, ...] = ()) -> list[str]:
    """The fewest further axes that give every entry its own cell, in job order.

    Greedy: add the axis that leaves the fewest entries sharing a cell, preferring axes with
    fewer values (``lora_name`` over ``lora`` when the weight is on the sheet). A zip key is
    offered as its whole group (``width+height``), so a sheet says ``512x768``.
    """
    taken = {p for a in placed for p in split_axis(a)}
    group_of = {p: g for g in groups for p in split_axis(g)}
    names: dict[str, None] = {}
    for entry in entries:
        for name in entry.axes:
            if name in taken:
                continue
            group = group_of.get(name)
            if group is not None and not taken & set(split_axis(group)):
                names.setdefault(group, None)
            elif group is None:
                names.setdefault(name, None)
    keys = {name: [value_key(axis_value(e.axes, name)) for e in entries]
            for name in (*placed, *names)}
    distinct = {name: len(set(values)) for name, values in keys.items()}

    def shared(axes: list[str]) -> int:
        return len(entries) - len(set(zip(*(keys[a] for a in axes)))) if axes else 0

    chosen: list[str] = []
    left = shared(list(placed))
    candidates = [n for n in names if distinct[n] > 1]
    while left > 0 and candidates:
        best = min(candidates, key=lambda n: (shared([*placed, *chosen, n]), distinct[n]))
        after = shared([*placed, *chosen, best])
        if after >= left:
            break
        chosen.append(best)
        candidates.remove(best)
        left = after
    return [n for n in names if n in chosen]


def _fixed_axes(entries: list[Entry], shown: set[str], groups: tuple[str, ...] = ()
                ) -> tuple[tuple[str, Any], ...]:
    """Axes with a single value across the whole grid (for the title); a zip group whose
    keys are all fixed is one entry (``width+height``: ``512x768``)."""
    values: dict[str, str | None] = {}
    sample: dict[str, Any] = {}
    for entry in entries:
        for name, value in entry.axes.items():
            key = value_key(value)
            if name not in values:
                values[name], sample[name] = key, value
            elif values[name] != key:
                values[name] = None
    fixed = {n: sample[n] for n, k in values.items()
             if k is not None and n not in shown and n not in _DERIVED}
    out: list[tuple[str, Any]] = []
    grouped: set[str] = set()
    for group in groups:
        parts = split_axis(group)
        if all(p in fixed for p in parts):
            grouped.update(parts)
    for name, value in fixed.items():
        if name not in grouped:
            out.append((name, value))
            continue
        group = next(g for g in groups if name in split_axis(g))
        if name == split_axis(group)[0]:
            out.append((group, {p: fixed[p] for p in split_axis(group)}))
    return tuple(out)
