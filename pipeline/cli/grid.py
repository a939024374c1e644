"""``sdbatch grid OUT``: (re)render an output directory's grid sheets and gallery at any time.

    sdbatch grid OUT                               the job's sheets and every saved view
    sdbatch grid OUT --x cfg --y prompt+seed       add (or redo) a named view beside them
    sdbatch grid OUT --where checkpoint=dreamshaper_8 [--name ds8]
    sdbatch grid OUT --remove NAME                 delete a named view
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ExitStatus, JobError, UsageError

FORMATS = ("png", "jpeg", "webp")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "grid", help="render the grid sheets and the gallery (index.html) of an output directory",
        description="Render OUT's grid sheets from the manifest, the failures and the job as "
        "run, also for unfinished runs (cells not generated yet are grey placeholders, failed "
        "ones red), and rewrite the gallery OUT/index.html. Without axes: the job's own sheets "
        "(its grid: section, else a default of a few sheets) and every view added before. With "
        "--x/--y/--page/--where: a named view in OUT/grids/NAME/, next to the job's sheets, "
        "which later runs keep current and never delete.",
        epilog="An axis is seed, prompt, template, a matrix or zip key (cfg_scale, checkpoint, "
        "...), a zip group (width+height), replace:<text>, lora, lora_name, lora_weight; join "
        "several with + for one composite axis (--y prompt+seed: a row per prompt and seed).")
    p.add_argument("out", metavar="OUT", help="an output directory of 'sdbatch run'")
    p.add_argument("--format", choices=FORMATS, help="sheet format (default: the job's, else png)")
    p.add_argument("--cell-px", type=int, metavar="PX",
                   help="cell width in pixels, 32-2048 (default: the job's, else 256)")
    p.add_argument("--x", metavar="AXIS",
                   help="column axis (lora, lora_weight, seed, cfg_scale, checkpoint, a+b, ...)")
    p.add_argument("--y", metavar="AXIS", help="row axis (e.g. seed, or prompt+seed)")
    p.add_argument("--page", metavar="AXIS", help="one sheet per value of this axis")
    p.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE",
                   help="hold an axis at one value (repeat for several), e.g. "
                        "--where checkpoint=dreamshaper_8 --where size=512x768")
    p.add_argument("--name", metavar="NAME",
                   help="the view's name (default: from its axes, e.g. cfg_scale_by_seed)")
    p.add_argument("--remove", metavar="NAME", help="delete the named view and rewrite the "
                   "gallery")
    p.add_argument("--no-gallery", action="store_true", help="do not rewrite index.html")
    p.set_defaults(func=cmd_grid)


def cmd_grid(args: argparse.Namespace) -> int:
    from pipeline.gallery import write_gallery
    from pipeline.output.runfiles import load_run_job
    from pipeline.grid.views import Views, remove_view, saved_views
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
    if args.remove:
        if not remove_view(out, args.remove):
            views = saved_views(out)
            raise UsageError(f"sdbatch grid: {out} has no view {args.remove!r}\n  fix: "
                             + (f"its views are: {', '.join(views)}" if views
                                else "it has no named views"))
        print(f"removed view {args.remove}")
        if not args.no_gallery:
            print(write_gallery(out))
        return ExitStatus.OK
    spec = load_run_job(out)
    views = Views(out, spec)
    if args.x or args.y or args.page or args.where:
        renderers = [_named_view(args, views, spec)]
    else:
        # the job's sheets (the default grid when the job names none), then every saved view
        renderers = [views.renderer(None, infer=True, fmt=args.format, cell_px=args.cell_px)]
        renderers += [views.renderer(name) for name in saved_views(out)]
    wrote = 0
    for renderer in renderers:
        try:
            renderer.render()
        except JobError as exc:
            raise _usage(exc, args) from exc
        wrote += len(renderer.last_sheets)
        _report(out, renderer)
    if not wrote:
        print(f"sdbatch grid: no images or variants in {out} to put on a sheet", file=sys.stderr)
    if not args.no_gallery:
        print(write_gallery(out))
    return ExitStatus.OK


def _named_view(args: argparse.Namespace, views: Any, spec: Any) -> Any:
    from pydantic import ValidationError

    from pipeline.grid.render import NAME_FROM_AXES, view_name
    from pipeline.job.grid import GridSpec

    raw: dict[str, Any] = {}
    if spec is not None and spec.grid is not None:
        raw = dict(spec.grid) if isinstance(spec.grid, dict) else spec.grid.model_dump()
        if args.x or args.y or args.page:
            # the user's axes replace the job's (its page and holds belong to its own x and
            # y); labels and the look of the sheets carry over
            for key in ("x", "y", "page", "where", "title"):
                raw.pop(key, None)
    raw.update({k: v for k, v in (("x", args.x), ("y", args.y), ("page", args.page)) if v})
    where = dict(raw.get("where") or {})
    for item in args.where:
        axis, eq, value = item.partition("=")
        if not eq or not axis.strip() or not value.strip():
            raise UsageError(f"--where {item!r}: write AXIS=VALUE, e.g. "
                             "--where checkpoint=dreamshaper_8")
        where[axis.strip()] = value.strip()
    raw["where"] = where
    if "x" not in raw:
        raise UsageError("sdbatch grid: --y/--page/--where need --x too when the job has no "
                         "grid: section\n  fix: add --x AXIS (e.g. --x seed)")
    try:
        grid = GridSpec.model_validate(raw)
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise UsageError(f"sdbatch grid: {msg}") from exc
    return views.renderer(view_name(args.name) if args.name else NAME_FROM_AXES, grid=grid,
                          fmt=args.format, cell_px=args.cell_px)


def _usage(exc: JobError, args: argparse.Namespace) -> UsageError:
    """An axis error in a view the user typed: name the flag, not the job file."""
    where = (exc.where or "").removeprefix("grid.")
    field, _, rest = where.partition(".")
    if field in ("x", "y", "page") and getattr(args, field, None):
        return UsageError(f"sdbatch grid: --{field} {getattr(args, field)!r} is not an axis of "
                          f"this run\n  fix: {exc.hint}")
    if field == "where" and rest:
        return UsageError(f"sdbatch grid: --where {rest}=...: {exc.detail}\n  fix: {exc.hint}")
    if not (args.x or args.y or args.page or args.where):
        return UsageError(f"sdbatch grid: {exc.detail}\n  fix: {exc.hint}")
    raise exc


def _report(out: Path, renderer: Any) -> None:
    label = f"view {renderer.view}" if renderer.view else "job sheets"
    if renderer.last_sheets:
        grid = renderer.last_grid
        axes = f"x {grid.x}" + (f", y {grid.y}" if grid.y else "") \
            + (f", page {grid.page}" if grid.page else "")
        held = "".join(f", {a}={v}" for a, v in grid.where.items())
        print(f"{label} ({axes}{held}):")
    for sheet in renderer.last_sheets:
        state = f"{sheet.done} of {sheet.cells} done"
        if sheet.failed:
            state += f", {sheet.failed} failed"
        if sheet.pending:
            state += f", {sheet.pending} pending"
        print(f"  {out / sheet.file}  {sheet.width_px}x{sheet.height_px}  ({state})")
    if renderer.held:
        held = ", ".join(f"{a} (1 of {n})" for a, n in renderer.held)
        print(f"  the default view holds {held} at its first value, to stay a few sheets; "
              f"see the rest with --where AXIS=VALUE, or in {out / 'index.html'}")
