"""Render an output directory's grid sheets: manifest + failures + job -> OUT/grids/*.

    OUT/grids/<x>_by_<y>[_<page>][_part<i>].png|jpg|webp    the sheets
    OUT/grids/index.json                                    what is there (the gallery links it)

Works at any time, on finished or unfinished runs: cells not generated yet are hatched grey
placeholders, failed ones red with the error. Each sheet's content signature is kept in
``index.json``; a refresh redraws only sheets whose cells changed, and removes sheets an earlier
render wrote that no longer exist (another format, fewer pages).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from pipeline.errors import UsageError
from pipeline.grid import cells as grid_cells
from pipeline.grid.cells import Entry, GridData, Outcomes, Page
from pipeline.grid.draw import EXTENSIONS, CellView, draw_sheet, font_for, save_atomic
from pipeline.grid.labels import axis_title, described_label, label_for
from pipeline.grid.layout import MAX_SIDE_PX, GridShape, SheetLayout, plan_sheets
from pipeline.grid.spec import GridSpec, canonical, job_axes
from pipeline.job.naming import slugify
from pipeline.output.layout import JOB_COPY, RUN_FILE, TMP_PREFIX, now_iso
from pipeline.output.atomic import output_error

if TYPE_CHECKING:
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)

GRIDS_DIR = "grids"
INDEX_FILE = "index.json"
_RENDER_VERSION = 1  # bump when drawing changes, so old sheets are redrawn
_MAX_PROMPT_CHARS = 300
# Payload fields worth a place in the title when the whole sheet shares them.
_TITLE_PARAMS = ("sampler_name", "scheduler", "steps", "cfg_scale", "denoising_strength")


@dataclass(frozen=True, slots=True)
class SheetInfo:
    """One written sheet, as listed in ``grids/index.json``."""

    file: str  # relative to the output directory
    title: str
    page: str
    part: int
    parts: int
    cells: int
    done: int
    failed: int
    pending: int
    width_px: int
    height_px: int
    signature: str


def load_run_job(out_dir: Path) -> JobSpec | None:
    """The job an output directory was made with (``job.json``), or None when it has none."""
    from pipeline.job.load import parse_job

    path = out_dir / JOB_COPY
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise output_error(exc, path) from None
    base_dir = str(out_dir)
    try:
        run = orjson.loads((out_dir / RUN_FILE).read_bytes())
        if isinstance(run, dict) and isinstance(run.get("job_base_dir"), str):
            base_dir = run["job_base_dir"] or base_dir
    except (OSError, orjson.JSONDecodeError):
        pass
    return parse_job(raw, path=str(path), base_dir=base_dir)


def default_grid(entries: list[Entry]) -> GridSpec:
    """A sensible grid when the job names none: the first varying axis across, seeds down."""
    values: dict[str, set[str]] = {}
    for entry in entries:
        for name, value in entry.axes.items():
            values.setdefault(name, set()).add(orjson.dumps(value, option=orjson.OPT_SORT_KEYS
                                                            | orjson.OPT_NON_STR_KEYS).decode())
    skip = {"template", "lora_name", "lora_weight", "prompt", "seed"}
    varying = [n for n, v in values.items() if len(v) > 1 and n not in skip]
    seeds = len(values.get("seed", ())) > 1
    prompts = len(values.get("prompt", ())) > 1
    if prompts:
        varying.insert(0, "prompt")
    if not varying:
        return GridSpec(x="seed")
    if seeds:
        return GridSpec(x=varying[0], y="seed")
    return GridSpec(x=varying[0], y=varying[1] if len(varying) > 1 else None)


class GridRenderer:
    """Renders one output directory's sheets; keep one alive to cache the job's expansion."""

    def __init__(self, out_dir: Path, spec: JobSpec | None = None, *,
                 grid: GridSpec | None = None, fmt: str | None = None,
                 cell_px: int | None = None, infer: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self._spec = spec
        self._spec_loaded = spec is not None
        self._grid = grid
        self._overrides = {k: v for k, v in (("format", fmt), ("cell_px", cell_px)) if v}
        self._infer = infer
        self._entries: list[Entry] | None = None
        self.last_sheets: list[SheetInfo] = []

    @property
    def spec(self) -> JobSpec | None:
        if not self._spec_loaded:
            self._spec = load_run_job(self.out_dir)
            self._spec_loaded = True
        return self._spec

    def render(self) -> list[Path]:
        """Write every sheet that changed; return the paths of all current sheets."""
        spec = self.spec
        if self._grid is None and not self._infer and (spec is None or spec.grid is None):
            self.last_sheets = []  # no grid asked for: read nothing, hold nothing
            return []
        outcomes = grid_cells.read_outcomes(self.out_dir)
        if spec is not None and self._entries is None:
            self._entries = grid_cells.expected_entries(spec)
        entries = self._entries if spec is not None else grid_cells.entries_from_outcomes(outcomes)
        grid = self._grid_for(spec, entries or []) if entries else None
        if grid is None:
            self.last_sheets = []
            return []
        data = grid_cells.assemble(entries or [], outcomes, grid)
        return self._write(data, grid, outcomes, spec)

    def _grid_for(self, spec: JobSpec | None, entries: list[Entry]) -> GridSpec | None:
        names = {name: "" for entry in entries for name in entry.axes}
        if spec is not None:
            names = {**job_axes(spec), **names}
        grid = self._grid
        if grid is None and spec is not None and spec.grid is not None:
            grid = GridSpec.from_job(spec)
        elif grid is not None:
            grid = grid.resolved(names, path=str(self.out_dir / JOB_COPY))
        if grid is None and self._infer:
            grid = default_grid(entries).resolved(names)
        if grid is not None and self._overrides:
            try:
                grid = GridSpec.model_validate({**grid.model_dump(), **self._overrides})
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"]
                raise UsageError(f"grid: {', '.join(self._overrides)}: {msg}") from None
        return grid

    # --- writing ---------------------------------------------------------------------------------

    def _write(self, data: GridData, grid: GridSpec, outcomes: Outcomes,
               spec: JobSpec | None) -> list[Path]:
        folder = self.out_dir / GRIDS_DIR
        previous = _read_index(folder)
        aspect = _cell_aspect(outcomes, spec)
        params = _fixed_params(data, outcomes, spec)
        name = self._name(grid, spec)
        base = slugify(f"{grid.x}_by_{grid.y}" if grid.y else grid.x, 60)
        col_labels = tuple(label_for(grid.x, v, grid.labels) for v in data.x_values)
        row_labels = tuple(label_for(grid.y, v, grid.labels) for v in data.y_values) \
            if grid.y else ()
        sheets: list[SheetInfo] = []
        for n, page in enumerate(data.pages, 1):
            page_text = " · ".join(described_label(a, v, grid.labels) for a, v in page.values)
            shape = GridShape(
                col_labels=tuple(col_labels[c] for c in page.cols),
                row_labels=tuple(row_labels[r] for r in page.rows) if grid.y else (),
                title=_title(name, page_text, data, page, grid, params),
                corner=axis_title(grid.y) if grid.y else "",
                cell_px=grid.cell_px, cell_aspect=aspect,
                max_sheet_pixels=grid.max_sheet_pixels, max_side_px=MAX_SIDE_PX[grid.format])
            stem = base if len(data.pages) == 1 else f"{base}_{n:02d}_{slugify(page_text, 40)}"
            for layout in plan_sheets(shape, font_for):
                suffix = f"_part{layout.part}" if layout.parts > 1 else ""
                rel = f"{GRIDS_DIR}/{stem}{suffix}.{EXTENSIONS[grid.format]}"
                sheets.append(self._sheet(rel, layout, page, grid, page_text, previous))
        self._write_index(folder, sheets, grid, previous)
        self.last_sheets = sheets
        return [self.out_dir / s.file for s in sheets]

    def _sheet(self, rel: str, layout: SheetLayout, page: Page, grid: GridSpec, page_text: str,
               previous: dict[str, dict[str, Any]]) -> SheetInfo:
        grid_cells_here = [page.cell(page.rows[r], page.cols[c])
                           for r in layout.rows for c in layout.cols]
        signature = _signature(layout, grid_cells_here, grid)
        counts = {s: sum(1 for c in grid_cells_here if c.state == s)
                  for s in ("ok", "failed", "pending")}
        path = self.out_dir / rel
        old = previous.get(rel)
        if old is None or old.get("signature") != signature or not path.is_file():
            width = len(layout.cols)

            def view(row_pos: int, col_pos: int) -> CellView:
                return _view(grid_cells_here[row_pos * width + col_pos], self.out_dir)

            image = draw_sheet(layout, view)
            save_atomic(image, path, grid.format, quality=grid.quality)
            log.info("grid: wrote %s (%dx%d)", path, layout.width_px, layout.height_px)
        return SheetInfo(file=rel, title=" ".join(layout.heading_lines),
                         page=page_text, part=layout.part, parts=layout.parts,
                         cells=len(grid_cells_here), done=counts["ok"], failed=counts["failed"],
                         pending=counts["pending"], width_px=layout.width_px,
                         height_px=layout.height_px, signature=signature)

    def _write_index(self, folder: Path, sheets: list[SheetInfo], grid: GridSpec,
                     previous: dict[str, dict[str, Any]]) -> None:
        current = {s.file for s in sheets}
        for rel in previous:
            if rel not in current and rel.startswith(f"{GRIDS_DIR}/") and rel.count("/") == 1 \
                    and ".." not in rel:
                (self.out_dir / rel).unlink(missing_ok=True)
        index = {"version": 1, "updated": now_iso(), "x": grid.x, "y": grid.y,
                 "page": grid.page, "sheets": [dataclasses.asdict(s) for s in sheets]}
        path = folder / INDEX_FILE
        tmp = folder / f"{TMP_PREFIX}{INDEX_FILE}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(index, option=orjson.OPT_INDENT_2))
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(exc, path) from None

    def _name(self, grid: GridSpec, spec: JobSpec | None) -> str:
        if grid.title:
            return grid.title
        if spec is not None and spec.name:
            return spec.name
        return self.out_dir.resolve().name


def render_grids(out_dir: Path, spec: JobSpec | None = None, *, fmt: str | None = None,
                 cell_px: int | None = None) -> list[Path]:
    """Render the sheets the job's ``grid:`` section asks for; [] when it has none."""
    return GridRenderer(Path(out_dir), spec, fmt=fmt, cell_px=cell_px).render()


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    """The sheets listed in ``OUT/grids/index.json`` (for the gallery); [] when none."""
    return list(_read_index(Path(out_dir) / GRIDS_DIR).values())


# --- helpers -------------------------------------------------------------------------------------

def _read_index(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        index = orjson.loads((folder / INDEX_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    sheets = index.get("sheets") if isinstance(index, dict) else None
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
                        detail=f"variant {cell.variant_id}" if cell.variant_id else "")
    return CellView("absent", headline="—", detail="not in this job")


def _signature(layout: SheetLayout, cells: list[grid_cells.Cell], grid: GridSpec) -> str:
    blob = orjson.dumps({
        "v": _RENDER_VERSION, "layout": dataclasses.asdict(layout),
        "cells": [(c.state, c.file, c.digest, c.error) for c in cells],
        "format": grid.format, "quality": grid.quality,
    }, option=orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(blob).hexdigest()[:32]


def _cell_aspect(outcomes: Outcomes, spec: JobSpec | None) -> float:
    """Cell height / width: from the images' requested size (the first done one)."""
    for record in outcomes.done.values():
        params = record.get("params") if isinstance(record.get("params"), dict) else {}
        size = _size(params)
        if size:
            return size[1] / size[0]
    if spec is not None:
        size = _size(spec.defaults)
        if size:
            return size[1] / size[0]
    return 1.0


def _size(params: dict[str, Any]) -> tuple[int, int] | None:
    w, h = params.get("width"), params.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 and 0.2 <= h / w <= 5:
        return w, h
    return None


def _fixed_params(data: GridData, outcomes: Outcomes, spec: JobSpec | None) -> list[str]:
    """Parameters every image of the grid shares, as short texts for the title."""
    shown = {canonical(a) for a in (data.x_axis, data.y_axis, *data.page_axes) if a}
    shown |= {canonical(n) for n, _ in data.fixed}
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
    sizes = {_size(s) for s in sources}
    if len(sizes) == 1 and None not in sizes and not shown & {"width", "height"}:
        w, h = sizes.pop()  # type: ignore[misc]
        out.append(f"{w}×{h}")
    return out


def _title(name: str, page_text: str, data: GridData, page: Page, grid: GridSpec,
           params: list[str]) -> str:
    """Title paragraphs: what the sheet is, the prompt, fixed parameters, progress."""
    head = f"{name} — {page_text}" if page_text else name
    lines = [head]
    fixed = dict(data.fixed)
    prompt = fixed.pop("prompt", None)
    if isinstance(prompt, str):
        shown = prompt if len(prompt) <= _MAX_PROMPT_CHARS else prompt[:_MAX_PROMPT_CHARS] + "…"
        lines.append(f"prompt: {shown}")
    extras = [described_label(a, v, grid.labels) for a, v in fixed.items()]
    if params or extras:
        lines.append(" · ".join([*params, *extras]))
    states = [c.state for c in page.cells.values()]
    total = len(page.rows) * len(page.cols)
    done, failed = states.count("ok"), states.count("failed")
    pending = states.count("pending")
    progress = f"{done} of {total} done" + (f", {failed} failed" if failed else "") \
        + (f", {pending} pending" if pending else "")
    axes = f"columns: {axis_title(grid.x)}" + (f", rows: {axis_title(grid.y)}" if grid.y else "")
    lines.append(f"{axes} · {progress}")
    return "\n".join(lines)
