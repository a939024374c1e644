"""Render an output directory's grid sheets: manifest + failures + job -> OUT/grids/*.

    OUT/grids/<x>_by_<y>[_<page>][_part<i>].png|jpg|webp    the job's view: its grid: section,
    OUT/grids/index.json                                    or the default grid (``auto``)
    OUT/grids/<view>/*.png, OUT/grids/<view>/index.json     a named view (``sdbatch grid --x``)

Works at any time, on finished or unfinished runs: cells not generated yet are hatched grey
placeholders, failed ones red with the error. Each sheet's content signature is kept in its
view's ``index.json``; a refresh redraws only sheets whose cells changed, and removes sheets
*that view* wrote earlier that no longer exist (another format, fewer pages). A view never
touches another's files: the job's sheets and every named view live side by side, and a run
re-renders them all (``render_views``) without deleting any.

The cells a job expects come from its plan's axes (``expected``), never from a second expansion
of the job, and are regenerated per render rather than held.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from pipeline.errors import UsageError
from pipeline.grid import cells as grid_cells
from pipeline.grid.auto import AutoGrid, default_grid, units_of
from pipeline.grid.cells import Entry, GridData, Outcomes, Page
from pipeline.grid.draw import EXTENSIONS, CellView, draw_sheet, font_for, save_atomic
from pipeline.grid.expected import plan_axes
from pipeline.grid.labels import axis_title, header_label, size_text, title_label, value_key
from pipeline.grid.layout import MAX_SIDE_PX, GridShape, SheetLayout, plan_sheets
from pipeline.job.grid import GridSpec, canonical, job_axes, split_axis
from pipeline.job.naming import slugify
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.runfiles import load_run_job
from pipeline.output.layout import JOB_COPY, now_iso

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)

GRIDS_DIR = "grids"
INDEX_FILE = "index.json"
_RENDER_VERSION = 2  # bump when drawing changes, so old sheets are redrawn
_INDEX_VERSION = 2
_MAX_PROMPT_CHARS = 300
_MAX_VIEW_NAME = 120
NAME_FROM_AXES = "<from axes>"
# Payload fields worth a place in the title when the whole sheet shares them.
_TITLE_PARAMS = ("sampler_name", "scheduler", "steps", "cfg_scale", "denoising_strength")


@dataclass(frozen=True, slots=True)
class SheetInfo:
    """One written sheet, as listed in its view's ``index.json``."""

    file: str  # relative to the output directory
    title: str
    page: str
    subtitle: str  # the title's other lines: prompt, shared and held values, progress
    part: int
    parts: int
    cells: int
    done: int
    failed: int
    pending: int
    width_px: int
    height_px: int
    signature: str


def view_name(text: str) -> str:
    """A view's folder name under ``grids/``: a slug, never ``.``/``..`` or a sheet name."""
    return slugify(text, _MAX_VIEW_NAME)


def default_view_name(grid: GridSpec) -> str:
    """``cfg_scale_by_seed``, with what is held: ``..._where_checkpoint_dreamshaper_8``."""
    text = f"{grid.x}_by_{grid.y}" if grid.y else grid.x
    if grid.page:
        text += f"_per_{grid.page}"
    for axis, value in grid.where.items():
        text += f"_where_{axis}_{value}"
    return view_name(text.replace("+", "_and_"))


class GridRenderer:
    """Renders one view of one output directory: the job's (``view=None``) or a named one.

    ``grid`` overrides the job's grid: section; ``infer`` picks a default grid when there is
    none; a named view without ``grid`` re-renders what its ``index.json`` recorded. ``plan``
    is the run's plan when the caller has it (built once from the job otherwise).
    """

    def __init__(self, out_dir: Path, spec: JobSpec | None = None, *,
                 grid: GridSpec | None = None, fmt: str | None = None,
                 cell_px: int | None = None, infer: bool = False, plan: Plan | None = None,
                 view: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self._spec = spec
        self._spec_loaded = spec is not None
        self._plan = plan
        self._grid = grid
        self._overrides = {k: v for k, v in (("format", fmt), ("cell_px", cell_px)) if v}
        self._infer = infer
        # NAME_FROM_AXES: a named view called after its resolved axes (cfg_scale_by_seed)
        self._name_from_axes = view == NAME_FROM_AXES
        self.view = view_name(view) if view is not None and not self._name_from_axes else None
        self.last_sheets: list[SheetInfo] = []
        self.last_grid: GridSpec | None = None
        self.held: tuple[tuple[str, int], ...] = ()  # units the default grid held
        self.auto = False

    @property
    def spec(self) -> JobSpec | None:
        if not self._spec_loaded:
            self._spec = load_run_job(self.out_dir)
            self._spec_loaded = True
        return self._spec

    @property
    def plan(self) -> Plan | None:
        if self._plan is None and self.spec is not None:
            from pipeline import expand

            self._plan = expand.build_plan(self.spec)
        return self._plan

    @property
    def folder(self) -> Path:
        base = self.out_dir / GRIDS_DIR
        return base if self.view is None else base / self.view

    def render(self) -> list[Path]:
        """Write every sheet of this view that changed; return the paths of all its sheets."""
        prepared = self._prepare(read_directory=True)
        if prepared is None:
            self.last_sheets = []
            return []
        data, grid, outcomes = prepared
        return self._write(data, grid, outcomes, self.spec, _read_index(self.folder))

    def planned(self) -> list[str]:
        """The sheets a run of the job will write (relative paths), reading nothing on disk."""
        prepared = self._prepare(read_directory=False)
        if prepared is None:
            return []
        data, grid, outcomes = prepared
        return [rel for rel, *_ in self._layouts(data, grid, outcomes, self.spec)]

    def _prepare(self, *, read_directory: bool) -> tuple[GridData, GridSpec, Outcomes] | None:
        previous = _read_index(self.folder) if read_directory and self._grid is None else {}
        grid, auto = self._wanted(previous)
        if grid is None:
            return None
        spec, plan = self.spec, self.plan if self.spec is not None else None
        outcomes = grid_cells.read_outcomes(self.out_dir) if read_directory else Outcomes({}, {})
        names = job_axes(spec) if spec is not None else {}
        if plan is not None:
            entries = None
        else:
            entries = grid_cells.entries_from_outcomes(outcomes)
            names = {**names, **{n: "" for e in entries for n in e.axes}}
            names.update({g: "zip group" for g in _size_groups(entries)})
        if auto is not None:
            grid, self.held = self._default(auto, plan, entries or [], names)
        grid = self._finish_grid(grid, names, spec)
        _check_where(grid, _unit_axes(plan, entries or [], names) if grid.where else [])
        if self._name_from_axes:
            self.view = default_view_name(grid)
        if plan is not None:
            entries = grid_cells.expected_entries(plan, where=grid.where)
            by_axes = grid_cells.keyed(outcomes)
        else:
            assert entries is not None
            entries = grid_cells.entries_from_outcomes(outcomes, grid.where)
            by_axes = None
        if not entries:
            return None
        groups = [n for n, kind in names.items() if kind == "zip group"]
        data = grid_cells.assemble(entries, outcomes, grid, by_axes=by_axes, groups=groups)
        self.auto = auto is not None
        self.last_grid = grid
        return data, grid, outcomes

    # --- which grid ----------------------------------------------------------------------------

    def _wanted(self, previous: dict[str, Any]) -> tuple[GridSpec | None, bool | None]:
        """(grid, None) for a given or recorded grid; (None, True) for the default grid."""
        if self._grid is not None:
            return self._grid, None
        recorded = previous.get("grid") if isinstance(previous.get("grid"), dict) else None
        if self.view is not None:
            if recorded is None:
                return None, None
            return GridSpec.model_validate(recorded), None
        spec = self.spec
        if spec is not None and spec.grid is not None:
            return GridSpec.from_job(spec), None
        if self._infer or previous.get("auto"):  # a default view asked for once stays current
            return GridSpec(x="seed"), True
        return None, None

    def _default(self, auto: bool, plan: Plan | None, entries: list[Entry],
                 names: dict[str, str]) -> tuple[GridSpec, tuple[tuple[str, int], ...]]:
        axes = _unit_axes(plan, entries, names)
        chosen: AutoGrid = default_grid(units_of([(n, k, len(v)) for n, k, v in axes]))
        values = {n: v for n, _, v in axes}
        where = {name: value_text(values[name][0]) for name, _ in chosen.held}
        grid = chosen.grid.model_copy(update={"where": where})
        return grid, chosen.held

    def _finish_grid(self, grid: GridSpec, names: dict[str, str],
                     spec: JobSpec | None) -> GridSpec:
        if spec is not None and spec.grid is not None:
            # the job's labels and look carry over to other views of it
            own = GridSpec.from_job(spec)
            if own is not None and grid is not own:
                extra = {k: v for k, v in own.model_dump().items()
                         if k in ("labels", "cell_px", "format", "quality", "baseline",
                                  "max_sheet_pixels") and k not in grid.model_fields_set}
                grid = grid.model_copy(update=extra)
        grid = grid.resolved(names, path=str(self.out_dir / JOB_COPY))
        if self._overrides:
            try:
                grid = GridSpec.model_validate({**grid.model_dump(), **self._overrides})
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"]
                raise UsageError(f"grid: {', '.join(self._overrides)}: {msg}") from exc
        return grid

    # --- writing ---------------------------------------------------------------------------------

    def _layouts(self, data: GridData, grid: GridSpec, outcomes: Outcomes,
                 spec: JobSpec | None) -> Iterator[tuple[str, SheetLayout, Page, str]]:
        """(file, layout, page, page text) of every sheet, in order."""
        params = _fixed_params(data, outcomes, spec)
        name = self._name(grid, spec)
        base = slugify(f"{grid.x}_by_{grid.y}" if grid.y else grid.x, 60)
        col_labels = tuple(header_label(grid.x, v, grid.labels) for v in data.x_values)
        row_labels = tuple(header_label(grid.y, v, grid.labels) for v in data.y_values) \
            if grid.y else ()
        default_aspect = _default_aspect(spec)
        prefix = f"{GRIDS_DIR}/" if self.view is None else f"{GRIDS_DIR}/{self.view}/"
        for n, page in enumerate(data.pages, 1):
            page_text = " · ".join(title_label(a, v, grid.labels) for a, v in page.values)
            sizes = {c.size for c in page.cells.values() if c.size}
            shape = GridShape(
                col_labels=tuple(col_labels[c] for c in page.cols),
                row_labels=tuple(row_labels[r] for r in page.rows) if grid.y else (),
                title=_title(name, page_text, data, page, grid, params, sizes),
                corner=axis_title(grid.y) if grid.y else "",
                cell_px=grid.cell_px, cell_aspect=_aspect(sizes) or default_aspect,
                max_sheet_pixels=grid.max_sheet_pixels, max_side_px=MAX_SIDE_PX[grid.format])
            stem = base if len(data.pages) == 1 else f"{base}_{n:02d}_{slugify(page_text, 40)}"
            for layout in plan_sheets(shape, font_for):
                suffix = f"_part{layout.part}" if layout.parts > 1 else ""
                yield f"{prefix}{stem}{suffix}.{EXTENSIONS[grid.format]}", layout, page, page_text

    def _write(self, data: GridData, grid: GridSpec, outcomes: Outcomes,
               spec: JobSpec | None, previous: dict[str, Any]) -> list[Path]:
        old_sheets = _sheets_of(previous)
        sheets = [self._sheet(rel, layout, page, grid, page_text, old_sheets)
                  for rel, layout, page, page_text in self._layouts(data, grid, outcomes, spec)]
        self._write_index(sheets, grid, old_sheets)
        self.last_sheets = sheets
        return [self.out_dir / s.file for s in sheets]

    def _sheet(self, rel: str, layout: SheetLayout, page: Page, grid: GridSpec, page_text: str,
               previous: dict[str, dict[str, Any]]) -> SheetInfo:
        here = [page.cell(page.rows[r], page.cols[c]) for r in layout.rows for c in layout.cols]
        signature = _signature(layout, here, grid)
        counts = {s: sum(1 for c in here if c.state == s) for s in ("ok", "failed", "pending")}
        path = self.out_dir / rel
        old = previous.get(rel)
        if old is None or old.get("signature") != signature or not path.is_file():
            width = len(layout.cols)

            def view(row_pos: int, col_pos: int) -> CellView:
                return _view(here[row_pos * width + col_pos], self.out_dir)

            image = draw_sheet(layout, view)
            save_atomic(image, path, grid.format, quality=grid.quality)
            log.info("grid: wrote %s (%dx%d)", path, layout.width_px, layout.height_px)
        return SheetInfo(file=rel, title=" ".join(layout.heading_lines), page=page_text,
                         subtitle=" / ".join(layout.title_lines), part=layout.part,
                         parts=layout.parts,
                         cells=len(here), done=counts["ok"], failed=counts["failed"],
                         pending=counts["pending"], width_px=layout.width_px,
                         height_px=layout.height_px, signature=signature)

    def _write_index(self, sheets: list[SheetInfo], grid: GridSpec,
                     previous: dict[str, dict[str, Any]]) -> None:
        current = {s.file for s in sheets}
        for rel in previous:  # only this view's own old sheets, only inside its folder
            if rel not in current and _own(rel, self.view):
                (self.out_dir / rel).unlink(missing_ok=True)
        index = {"version": _INDEX_VERSION, "view": self.view, "updated": now_iso(),
                 "auto": self.auto, "grid": grid.view(),
                 "held": [{"axis": a, "values": n} for a, n in self.held],
                 "x": grid.x, "y": grid.y, "page": grid.page,
                 "sheets": [dataclasses.asdict(s) for s in sheets]}
        path = self.folder / INDEX_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, path) from exc
        replace_file(path, orjson.dumps(index, option=orjson.OPT_INDENT_2), fsync=False)

    def _name(self, grid: GridSpec, spec: JobSpec | None) -> str:
        if grid.title:
            return grid.title
        if spec is not None and spec.name:
            return spec.name
        return self.out_dir.resolve().name


def planned_sheets(spec: JobSpec, plan: Plan | None = None) -> list[str]:
    """The sheets (paths relative to OUT) a run of ``spec`` writes for its ``grid:`` section;
    [] without one (the gallery's grid explorer still shows every axis)."""
    if spec.grid is None:
        return []
    return GridRenderer(Path("/nonexistent-sdbatch-plan"), spec, plan=plan).planned()


def render_grids(out_dir: Path, spec: JobSpec | None = None, *, fmt: str | None = None,
                 cell_px: int | None = None) -> list[Path]:
    """Render the sheets the job's ``grid:`` section asks for; [] when it has none."""
    return GridRenderer(Path(out_dir), spec, fmt=fmt, cell_px=cell_px).render()


def read_index(out_dir: Path, view: str | None = None) -> list[dict[str, Any]]:
    """The sheets one view lists (the job's by default); [] when none."""
    folder = Path(out_dir) / GRIDS_DIR
    return list(_sheets_of(_read_index(folder if view is None else folder / view)).values())


# --- helpers -------------------------------------------------------------------------------------

def value_text(value: Any) -> str:
    """An axis value as ``where`` text: ``512x768`` for a size, JSON for other mappings."""
    if isinstance(value, dict):
        return size_text(value) if size_text(value) and len(value) == 2 else value_key(value)
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _check_where(grid: GridSpec, axes: list[tuple[str, str, tuple[Any, ...]]]) -> None:
    """Every held value must be one the axis has; the hint lists them (never the typed one)."""
    from pipeline.grid.labels import label_for, matches_text
    from pipeline.job.grid import suggest

    known = {n: v for n, _, v in axes}
    for axis, wanted in grid.where.items():
        values = known.get(axis)
        if values is None and "+" in axis:  # a composite: its parts' values, combined
            continue
        if values is None or any(matches_text(axis, v, wanted) for v in values):
            continue
        texts = [value_text(v) for v in values]
        shown = ", ".join(texts[:20]) + (f", ... ({len(texts)} in all)" if len(texts) > 20 else "")
        close = suggest(wanted, [t for t in texts if t != wanted] +
                        [label_for(axis, v, {}) for v in values])
        hint = (f"did you mean {close!r}? " if close else "") \
            + f"{axis_title(axis)} is one of: {shown}"
        raise UsageError(f"grid: where {axis}={wanted!r} matches no value of {axis!r}"
                         f"\n  fix: {hint}")


def _unit_axes(plan: Plan | None, entries: list[Entry], names: dict[str, str]
               ) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(name, kind, values in order) of every axis, from the plan or the records."""
    if plan is not None:
        return [(a.name, a.kind, a.values) for a in plan_axes(plan)]
    values: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for name in list(entry.axes) + [g for g, k in names.items() if k == "zip group"]:
            value = grid_cells.axis_value(entry.axes, name)
            values.setdefault(name, {}).setdefault(value_key(value), value)
    return [(n, names.get(n) or ("lora" if n.startswith("lora") else ""), tuple(v.values()))
            for n, v in values.items()]


def _size_groups(entries: list[Entry]) -> list[str]:
    """``width+height`` when both vary in records alone (no job to say they are a zip)."""
    keys = {n for e in entries[:1] for n in e.axes}
    return ["width+height"] if {"width", "height"} <= keys else []


def _own(rel: str, view: str | None) -> bool:
    parts = rel.split("/")
    if ".." in parts or any(not p for p in parts) or parts[0] != GRIDS_DIR:
        return False
    return len(parts) == 2 if view is None else (len(parts) == 3 and parts[1] == view)


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        index = orjson.loads((folder / INDEX_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return index if isinstance(index, dict) else {}


def _sheets_of(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sheets = index.get("sheets")
    if not isinstance(sheets, list):
        return {}
    return {s["file"]: s for s in sheets if isinstance(s, dict) and isinstance(s.get("file"), str)}


def _view(cell: grid_cells.Cell, out_dir: Path) -> CellView:
    if cell.state == "ok" and cell.file:
        return CellView("ok", out_dir / cell.file)
    if cell.state == "failed":
        return CellView("failed", headline="FAILED", detail=cell.error or "")
    if cell.state == "pending":
        return CellView("pending", headline="not generated yet",
                        detail=f"seed {cell.seed}" if isinstance(cell.seed, int) else "")
    return CellView("absent", headline="—", detail="not in this job")


def _signature(layout: SheetLayout, cells: list[grid_cells.Cell], grid: GridSpec) -> str:
    blob = orjson.dumps({
        "v": _RENDER_VERSION, "layout": dataclasses.asdict(layout),
        "cells": [(c.state, c.file, c.digest, c.error) for c in cells],
        "format": grid.format, "quality": grid.quality,
    }, option=orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(blob).hexdigest()[:32]


def _aspect(sizes: set[tuple[int, int]]) -> float | None:
    """Cell height / width that holds every image of a sheet: their bounding box."""
    sizes = {s for s in sizes if 0.2 <= s[1] / s[0] <= 5}
    if not sizes:
        return None
    return max(h for _, h in sizes) / max(w for w, _ in sizes)


def _default_aspect(spec: JobSpec | None) -> float:
    if spec is not None:
        w, h = spec.defaults.get("width"), spec.defaults.get("height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 and 0.2 <= h / w <= 5:
            return h / w
    return 1.0


def _fixed_params(data: GridData, outcomes: Outcomes, spec: JobSpec | None) -> list[str]:
    """Parameters every image of the grid shares and no axis sets, as texts for the title."""
    shown = {canonical(p) for a in (data.x_axis, data.y_axis, *data.page_axes) if a
             for p in split_axis(a)}
    shown |= {canonical(p) for n, _ in data.fixed for p in split_axis(n)}
    ids = {c.variant_id for p in data.pages for c in p.cells.values() if c.state == "ok"}
    records = [outcomes.done[i] for i in ids if i in outcomes.done]
    sources = [r.get("params") if isinstance(r.get("params"), dict) else {} for r in records]
    if not sources and spec is not None:
        sources = [spec.defaults]
    out: list[str] = []
    models = {r.get("model") for r in records if r.get("model")}
    if len(models) == 1 and "override_settings.sd_model_checkpoint" not in shown:
        out.append(f"model {models.pop()}")
    for key in _TITLE_PARAMS:
        values = {orjson.dumps(s.get(key)) for s in sources}
        if key not in shown and len(values) == 1 and sources and sources[0].get(key) is not None:
            out.append(f"{axis_title(key)} {sources[0][key]}")
    return out


def _title(name: str, page_text: str, data: GridData, page: Page, grid: GridSpec,
           params: list[str], sizes: set[tuple[int, int]]) -> str:
    """Title paragraphs: what the sheet is, the prompt, fixed parameters, progress."""
    head = f"{name} — {page_text}" if page_text else name
    lines = [head]
    fixed = dict(data.fixed)
    prompt = fixed.pop("prompt", None)
    if isinstance(prompt, str):
        shown = prompt if len(prompt) <= _MAX_PROMPT_CHARS else prompt[:_MAX_PROMPT_CHARS] + "…"
        lines.append(f"prompt: {shown}")
    placed = {p for a in (data.x_axis, data.y_axis, *data.page_axes) if a for p in split_axis(a)}
    size = []
    if len(sizes) == 1 and not placed & {"width", "height"}:
        w, h = next(iter(sizes))
        size = [f"{w}x{h}"]
    extras = [title_label(a, v, grid.labels) + (" (held)" if a in grid.where else "")
              for a, v in fixed.items()
              if not (size and set(split_axis(a)) & {"width", "height"})]
    if params or extras or size:
        lines.append(" · ".join([*size, *params, *extras]))
    states = [c.state for c in page.cells.values()]
    total = len(page.rows) * len(page.cols)
    done, failed = states.count("ok"), states.count("failed")
    pending = states.count("pending")
    progress = f"{done} of {total} done" + (f", {failed} failed" if failed else "") \
        + (f", {pending} pending" if pending else "")
    axes = f"columns: {axis_title(grid.x)}" + (f", rows: {axis_title(grid.y)}" if grid.y else "")
    lines.append(f"{axes} · {progress}")
    return "\n".join(lines)
