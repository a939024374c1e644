"""``sdbatch grid OUT``: (re)render an output directory's grid sheets and gallery at any time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import JobError, UsageError

FORMATS = ("png", "jpeg", "webp")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "grid", help="render the grid sheets and the gallery (index.html) of an output directory",
        description="Render OUT/grids/* from the manifest, the failures and the job as run, "
        "also for unfinished runs (cells not generated yet are grey placeholders, failed ones "
        "red), and rewrite the gallery OUT/index.html. Axes come from the job's grid: section; "
        "--x/--y/--page override it (or pick axes when the job has none).")
    p.add_argument("out", metavar="OUT", help="an output directory of 'sdbatch run'")
    p.add_argument("--format", choices=FORMATS, help="sheet format (default: the job's, else png)")
    p.add_argument("--cell-px", type=int, metavar="PX",
                   help="cell width in pixels, 32-2048 (default: the job's, else 256)")
    p.add_argument("--x", metavar="AXIS",
                   help="column axis (lora, lora_weight, seed, cfg_scale, checkpoint, ...)")
    p.add_argument("--y", metavar="AXIS", help="row axis")
    p.add_argument("--page", metavar="AXIS", help="one sheet per value of this axis")
    p.add_argument("--no-gallery", action="store_true", help="do not rewrite index.html")
    p.set_defaults(func=cmd_grid)


def cmd_grid(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.gallery import write_gallery
    from pipeline.grid.render import GridRenderer, load_run_job
    from pipeline.grid.spec import GridSpec
    from pipeline.output.layout import JOB_COPY, MANIFEST

    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(f"sdbatch grid: {out} is not a directory\n  fix: give the output "
                         "directory of a run (its --out, e.g. out/<job name>)")
    if not (out / MANIFEST).exists() and not (out / JOB_COPY).exists():
        raise UsageError(f"sdbatch grid: {out} holds no sdbatch run (no {MANIFEST} or "
                         f"{JOB_COPY})\n  fix: run 'sdbatch run JOB --out {out}' first")
    if args.cell_px is not None and not 32 <= args.cell_px <= 2048:
        raise UsageError("--cell-px must be between 32 and 2048")
    spec = load_run_job(out)
    grid = None
    if args.x or args.y or args.page:
        raw: dict[str, Any] = {}
        if spec is not None and isinstance(spec.grid, dict):
            raw = dict(spec.grid)
        elif spec is not None and isinstance(spec.grid, GridSpec):
            raw = spec.grid.model_dump()
        if not args.page:
            raw.pop("page", None)  # the job's page axis belongs to the job's own x and y
        raw.update({k: v for k, v in (("x", args.x), ("y", args.y), ("page", args.page)) if v})
        if "x" not in raw:
            raise UsageError("--y/--page need --x too when the job has no grid: section")
        try:
            grid = GridSpec.model_validate(raw)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise UsageError(f"sdbatch grid: {msg}") from None
    renderer = GridRenderer(out, spec, grid=grid, fmt=args.format, cell_px=args.cell_px,
                            infer=True)
    try:
        sheets = renderer.render()
    except JobError as exc:
        field = (exc.where or "").removeprefix("grid.")
        given = getattr(args, field, None) if field in ("x", "y", "page") else None
        if not given:
            raise
        raise UsageError(f"sdbatch grid: --{field} {given!r} is not an axis of this run"
                         f"\n  fix: {exc.hint}") from None
    for sheet in renderer.last_sheets:
        state = f"{sheet.done} of {sheet.cells} done"
        if sheet.failed:
            state += f", {sheet.failed} failed"
        if sheet.pending:
            state += f", {sheet.pending} pending"
        print(f"{out / sheet.file}  {sheet.width_px}x{sheet.height_px}  ({state})")
    if not sheets:
        print(f"sdbatch grid: no images or variants in {out} to put on a sheet", file=sys.stderr)
    if not args.no_gallery:
        print(write_gallery(out))
    return 0
