"""The views of an output directory: the job's sheets and the named views beside them.

    OUT/grids/index.json            the job's view (its grid: section, or the default grid)
    OUT/grids/<name>/index.json     a named view, added by ``sdbatch grid OUT --x ... [--name]``

``Views`` renders them all (the run's refresher and ``sdbatch grid OUT`` use it); no view ever
deletes another's files. ``output_files`` tells a caller (the run's summary, the CLI) which
sheets and which gallery a directory has.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.grid.render import (GRIDS_DIR, INDEX_FILE, GridRenderer, _read_index, _sheets_of,
                                  view_name)

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)

GALLERY_FILE = "index.html"


@dataclass(frozen=True, slots=True)
class ViewFiles:
    """One view's sheets: ``name`` None is the job's own view."""

    name: str | None
    sheets: tuple[Path, ...]
    x: str | None = None
    y: str | None = None
    page: str | None = None
    auto: bool = False


@dataclass(frozen=True, slots=True)
class OutputFiles:
    """What a reader opens in an output directory: the gallery and every grid sheet."""

    gallery: Path | None  # OUT/index.html, when written
    views: tuple[ViewFiles, ...]

    @property
    def sheets(self) -> tuple[Path, ...]:
        """Every sheet, the job's view first, then named views by name."""
        return tuple(p for v in self.views for p in v.sheets)


def saved_views(out_dir: Path) -> list[str]:
    """The named views under ``OUT/grids/`` (folders with an ``index.json``), by name."""
    folder = Path(out_dir) / GRIDS_DIR
    try:
        found = [p.name for p in folder.iterdir()
                 if p.is_dir() and (p / INDEX_FILE).is_file() and view_name(p.name) == p.name]
    except OSError:
        return []
    return sorted(found)


def remove_view(out_dir: Path, name: str) -> bool:
    """Delete the named view's folder; False when there is no such view."""
    name = view_name(name)
    if name not in saved_views(out_dir):
        return False
    shutil.rmtree(Path(out_dir) / GRIDS_DIR / name)
    return True


def read_views(out_dir: Path) -> list[dict[str, Any]]:
    """Every view's index (the job's first, then named views by name) that lists sheets."""
    folder = Path(out_dir) / GRIDS_DIR
    out = []
    for name in (None, *saved_views(out_dir)):
        index = _read_index(folder if name is None else folder / name)
        sheets = _sheets_of(index)
        if sheets:
            out.append({**index, "view": name, "sheets": list(sheets.values())})
    return out


def output_files(out_dir: Path) -> OutputFiles:
    """The gallery and the sheets of every view of ``out_dir``, as they are on disk now.

    Only sheets that exist are listed (an index may name one a crash never wrote)."""
    out_dir = Path(out_dir)
    views = []
    for index in read_views(out_dir):
        sheets = tuple(out_dir / s["file"] for s in index["sheets"]
                       if (out_dir / s["file"]).is_file())
        if sheets:
            views.append(ViewFiles(index["view"], sheets, index.get("x"), index.get("y"),
                                   index.get("page"), bool(index.get("auto"))))
    gallery = out_dir / GALLERY_FILE
    return OutputFiles(gallery if gallery.is_file() else None, tuple(views))


class Views:
    """Renders every view of one directory: the job's, then each named view on disk.

    One renderer per view is kept (they share the plan), so a refresh re-reads only what
    changed on disk. ``on_error(view, exc)`` is told of a view that cannot be rendered (an axis
    the edited job no longer has); the other views are still rendered.
    """

    def __init__(self, out_dir: Path, spec: JobSpec | None = None, *, plan: Plan | None = None,
                 on_error: Callable[[str, Exception], None] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self._spec = spec
        self._plan = plan
        self._renderers: dict[str | None, GridRenderer] = {}
        self._on_error = on_error

    def renderer(self, name: str | None, **options: Any) -> GridRenderer:
        """The renderer of view ``name`` (None: the job's); ``options`` (``grid``, ``infer``,
        ``fmt``, ``cell_px``, see ``GridRenderer``) make a new one with them."""
        renderer = self._renderers.get(name)
        if renderer is None or options:
            first = next(iter(self._renderers.values()), None)
            spec = self._spec if first is None else first.spec
            plan = self._plan if first is None else first.plan
            renderer = GridRenderer(self.out_dir, spec, plan=plan, view=name, **options)
            self._renderers[name] = renderer
        return renderer

    def render(self) -> list[Path]:
        """Render every view; the paths of all their sheets (the job's first)."""
        sheets: list[Path] = []
        for name in (None, *saved_views(self.out_dir)):
            try:
                sheets += self.renderer(name).render()
            except Exception as exc:  # noqa: BLE001 - one broken view must not stop the others
                if self._on_error is None:
                    raise
                self._on_error(name or "job", exc)
        return sheets
