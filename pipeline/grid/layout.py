"""Sheet layout maths: where every header, cell and title goes, and how a grid meets the budget.

Pure: no Pillow. Text is measured through a ``Measure`` the caller supplies (the real font when
drawing, a fixed-width fake in tests), so wrapping and sizes are exact for the font that draws.

A sheet, top to bottom::

    +-----------------------------------------------------+
    | heading: what the sheet shows (a size larger)       |
    | the prompt, fixed parameters, progress              |
    +--------+-----------+-----------+-----------+--------+
    | corner | col label | col label | col label |
    +--------+-----------+-----------+-----------+
    | row    |   cell    |   cell    |   cell    |
    | label  |           |           |           |
    +--------+-----------+-----------+-----------+

The budget (``max_sheet_pixels``, and the format's largest side) is met in two steps: first the
cells shrink, but not below ``min_cell_fraction`` of the asked size so faces stay recognisable;
past that the grid is split into parts (rows first, then columns), each a complete sheet with
its own headers. Only a single cell that cannot fit shrinks further, down to ``ABS_MIN_CELL_PX``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

ABS_MIN_CELL_PX = 16
MAX_COL_LABEL_LINES = 4
MAX_ROW_LABEL_LINES = 10
MAX_TITLE_LINES = 6
ELLIPSIS = "…"
# The largest side each output format can store.
MAX_SIDE_PX = {"png": 65_535, "jpeg": 65_500, "webp": 16_383}


class Measure(Protocol):
    """Text metrics of one font at one size."""

    font_px: int
    line_h_px: int

    def width_px(self, text: str) -> float: ...


FontFor = Callable[[int], Measure]


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in sheet pixels; ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True)
class GridShape:
    """What to lay out: the labels along each side, the title, the cell size and the budget.

    ``row_labels`` empty means the grid has no y axis: one row, no row-header column.
    ``title`` may hold several paragraphs separated by newlines.
    """

    col_labels: tuple[str, ...]
    row_labels: tuple[str, ...]
    title: str
    corner: str = ""
    cell_px: int = 256
    cell_aspect: float = 1.0  # cell height / width, from the images
    max_sheet_pixels: int = 40_000_000
    max_side_px: int = MAX_SIDE_PX["png"]
    min_cell_fraction: float = 0.5

    @property
    def n_cols(self) -> int:
        return max(1, len(self.col_labels))

    @property
    def n_rows(self) -> int:
        return max(1, len(self.row_labels))


@dataclass(frozen=True, slots=True)
class SheetLayout:
    """One output sheet: its size, its part of the grid and every position on it."""

    width_px: int
    height_px: int
    cell_w_px: int
    cell_h_px: int
    gap_px: int
    pad_px: int
    font_px: int
    line_h_px: int
    heading_lines: tuple[str, ...]  # the title's first paragraph, in the heading font
    heading_font_px: int
    heading_line_h_px: int
    title_lines: tuple[str, ...]  # the rest of the title
    title_h_px: int
    col_header_h_px: int
    row_header_w_px: int
    cols: tuple[int, ...]  # indexes into GridShape.col_labels
    rows: tuple[int, ...]  # indexes into GridShape.row_labels (or (0,) without a y axis)
    col_lines: tuple[tuple[str, ...], ...]  # wrapped label per entry of ``cols``
    row_lines: tuple[tuple[str, ...], ...]
    corner_lines: tuple[str, ...]
    part: int = 1
    parts: int = 1
    downscaled: bool = False

    @property
    def pixels(self) -> int:
        return self.width_px * self.height_px

    @property
    def _grid_x0(self) -> int:
        return self.pad_px + (self.row_header_w_px + self.gap_px if self.row_header_w_px else 0)

    @property
    def _grid_y0(self) -> int:
        return self.title_h_px + self.col_header_h_px + self.gap_px

    def title_box(self) -> Box:
        return Box(self.pad_px, 0, self.width_px - self.pad_px, self.title_h_px)

    def cell_box(self, row_pos: int, col_pos: int) -> Box:
        """The cell at position (row_pos, col_pos) of this sheet (positions, not indexes)."""
        x0 = self._grid_x0 + col_pos * (self.cell_w_px + self.gap_px)
        y0 = self._grid_y0 + row_pos * (self.cell_h_px + self.gap_px)
        return Box(x0, y0, x0 + self.cell_w_px, y0 + self.cell_h_px)

    def col_header_box(self, col_pos: int) -> Box:
        x0 = self._grid_x0 + col_pos * (self.cell_w_px + self.gap_px)
        return Box(x0, self.title_h_px, x0 + self.cell_w_px,
                   self.title_h_px + self.col_header_h_px)

    def row_header_box(self, row_pos: int) -> Box:
        y0 = self._grid_y0 + row_pos * (self.cell_h_px + self.gap_px)
        return Box(self.pad_px, y0, self.pad_px + self.row_header_w_px, y0 + self.cell_h_px)

    def corner_box(self) -> Box:
        return Box(self.pad_px, self.title_h_px, self.pad_px + self.row_header_w_px,
                   self.title_h_px + self.col_header_h_px)


def font_px_for(cell_w_px: int) -> int:
    """Label font size for a cell width: readable at a glance, never tiny."""
    return max(12, min(30, round(cell_w_px * 0.07)))


def wrap_text(text: str, width_px: float, measure: Measure, max_lines: int) -> tuple[str, ...]:
    """Word-wrap ``text`` to ``width_px``; words too long for a line are broken; paragraphs
    (newlines) are kept; past ``max_lines`` the last line ends with an ellipsis."""
    lines: list[str] = []
    width_px = max(width_px, measure.width_px("M") + 1)
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if measure.width_px(candidate) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while measure.width_px(word) > width_px:  # break a long word
                cut = _fit_chars(word, width_px, measure)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
        if len(lines) > max_lines:
            break
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], width_px, measure)
    return tuple(lines)


def _fit_chars(word: str, width_px: float, measure: Measure) -> int:
    lo, hi = 1, len(word)
    while lo < hi:  # the longest prefix that fits (at least one character)
        mid = (lo + hi + 1) // 2
        if measure.width_px(word[:mid]) <= width_px:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _with_ellipsis(line: str, width_px: float, measure: Measure) -> str:
    while line and measure.width_px(line + ELLIPSIS) > width_px:
        line = line[:-1]
    return line.rstrip() + ELLIPSIS


@dataclass(frozen=True, slots=True)
class _Frame:
    """Everything that depends only on the cell width, measured once per candidate width."""

    cell_w_px: int
    cell_h_px: int
    gap_px: int
    pad_px: int
    measure: Measure
    heading: Measure  # the title's first paragraph, a size up
    col_lines: tuple[tuple[str, ...], ...]
    row_lines: tuple[tuple[str, ...], ...]
    col_header_h_px: int
    row_header_w_px: int
    corner_lines: tuple[str, ...]

    def width_px(self, n_cols: int) -> int:
        row = self.row_header_w_px + self.gap_px if self.row_header_w_px else 0
        return 2 * self.pad_px + row + n_cols * self.cell_w_px + (n_cols - 1) * self.gap_px

    def title_lines(self, title: str, width_px: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(heading lines, other lines) of the title wrapped to the sheet width."""
        head, _, rest = title.partition("\n")
        inner = width_px - 2 * self.pad_px
        heading = wrap_text(head, inner, self.heading, 2)
        body = wrap_text(rest, inner, self.measure, MAX_TITLE_LINES) if rest else ()
        return heading, body

    def title_h_px(self, lines: tuple[tuple[str, ...], tuple[str, ...]]) -> int:
        heading, body = lines
        return (2 * self.pad_px + len(heading) * self.heading.line_h_px
                + len(body) * self.measure.line_h_px)

    def height_px(self, n_rows: int, title_h_px: int) -> int:
        return (title_h_px + self.col_header_h_px + self.gap_px
                + n_rows * self.cell_h_px + (n_rows - 1) * self.gap_px + self.pad_px)


def _frame(shape: GridShape, cell_w_px: int, font_for: FontFor) -> _Frame:
    measure = font_for(font_px_for(cell_w_px))
    heading = font_for(round(measure.font_px * 1.35))
    pad = max(4, measure.font_px // 2)
    gap = max(2, cell_w_px // 64)
    cell_h = max(1, round(cell_w_px * shape.cell_aspect))
    line_h = measure.line_h_px
    col_lines = tuple(wrap_text(t, cell_w_px - 2 * pad, measure, MAX_COL_LABEL_LINES)
                      for t in shape.col_labels)
    col_h = 2 * pad + line_h * max([1, *(len(lines) for lines in col_lines)])
    if shape.row_labels:
        natural = max(measure.width_px(line) for t in shape.row_labels
                      for line in t.split("\n"))
        least = measure.width_px("M" * 6)
        most = max(float(cell_w_px), measure.width_px("M" * 12))
        row_w = math.ceil(min(max(natural, least), most)) + 2 * pad
        max_lines = max(1, min(MAX_ROW_LABEL_LINES, (cell_h - 2 * pad) // line_h))
        row_lines = tuple(wrap_text(t, row_w - 2 * pad, measure, max_lines)
                          for t in shape.row_labels)
        corner = wrap_text(shape.corner, row_w - 2 * pad, measure,
                           max(1, (col_h - 2 * pad) // line_h))
    else:
        row_w, row_lines, corner = 0, ((),), ()
    return _Frame(cell_w_px, cell_h, gap, pad, measure, heading, col_lines, row_lines, col_h,
                  row_w, corner)


def _fits(shape: GridShape, frame: _Frame, n_cols: int, n_rows: int, title: str) -> bool:
    width = frame.width_px(n_cols)
    height = frame.height_px(n_rows, frame.title_h_px(frame.title_lines(title, width)))
    return width * height <= shape.max_sheet_pixels and max(width, height) <= shape.max_side_px


def _sheet(shape: GridShape, frame: _Frame, cols: range, rows: range, title: str,
           part: int, parts: int, downscaled: bool) -> SheetLayout:
    width = frame.width_px(len(cols))
    heading, body = frame.title_lines(title, width)
    title_h = frame.title_h_px((heading, body))
    return SheetLayout(
        width_px=width, height_px=frame.height_px(len(rows), title_h),
        cell_w_px=frame.cell_w_px, cell_h_px=frame.cell_h_px, gap_px=frame.gap_px,
        pad_px=frame.pad_px, font_px=frame.measure.font_px, line_h_px=frame.measure.line_h_px,
        heading_lines=heading, heading_font_px=frame.heading.font_px,
        heading_line_h_px=frame.heading.line_h_px, title_lines=body, title_h_px=title_h,
        col_header_h_px=frame.col_header_h_px,
        row_header_w_px=frame.row_header_w_px, cols=tuple(cols), rows=tuple(rows),
        col_lines=tuple(frame.col_lines[c] for c in cols),
        row_lines=tuple(frame.row_lines[r] for r in rows) if shape.row_labels else ((),),
        corner_lines=frame.corner_lines, part=part, parts=parts, downscaled=downscaled)


def plan_sheets(shape: GridShape, font_for: FontFor) -> list[SheetLayout]:
    """Lay ``shape`` out on one sheet, shrinking cells or splitting as the budget requires."""
    n_cols, n_rows = shape.n_cols, shape.n_rows
    full = _frame(shape, shape.cell_px, font_for)
    if _fits(shape, full, n_cols, n_rows, shape.title):
        return [_sheet(shape, full, range(n_cols), range(n_rows), shape.title, 1, 1, False)]
    floor_px = max(ABS_MIN_CELL_PX, math.ceil(shape.cell_px * shape.min_cell_fraction))
    cell_px = shape.cell_px
    while cell_px > floor_px:  # shrink in small steps: label wrapping makes size non-linear
        cell_px = max(floor_px, min(cell_px - 1, int(cell_px * 0.97)))
        frame = _frame(shape, cell_px, font_for)
        if _fits(shape, frame, n_cols, n_rows, shape.title):
            return [_sheet(shape, frame, range(n_cols), range(n_rows), shape.title, 1, 1, True)]
    return _split(shape, font_for, floor_px)


def _split(shape: GridShape, font_for: FontFor, cell_px: int) -> list[SheetLayout]:
    n_cols, n_rows = shape.n_cols, shape.n_rows
    worst_title = _with_part(shape.title, 99, 99)
    frame = _frame(shape, cell_px, font_for)
    while not _fits(shape, frame, 1, 1, worst_title) and cell_px > ABS_MIN_CELL_PX:
        cell_px = max(ABS_MIN_CELL_PX, int(cell_px * 0.9))  # not even one cell fits: shrink it
        frame = _frame(shape, cell_px, font_for)
    cols_per = _largest(n_cols, lambda c: _fits(shape, frame, c, 1, worst_title))
    col_chunks = _chunks(n_cols, cols_per)
    widest = max(len(c) for c in col_chunks)
    rows_per = _largest(n_rows, lambda r: _fits(shape, frame, widest, r, worst_title))
    row_chunks = _chunks(n_rows, rows_per)
    parts = len(col_chunks) * len(row_chunks)
    sheets = []
    for n, (rows, cols) in enumerate(((r, c) for r in row_chunks for c in col_chunks), 1):
        title = _with_part(shape.title, n, parts) if parts > 1 else shape.title
        sheets.append(_sheet(shape, frame, cols, rows, title, n, parts,
                             cell_px < shape.cell_px))
    return sheets


def _with_part(title: str, part: int, parts: int) -> str:
    """The title with "(part i of n)" after its first paragraph."""
    head, newline, rest = title.partition("\n")
    return f"{head} (part {part} of {parts}){newline}{rest}"


def _largest(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 1..limit with ``fits(n)`` (monotonic), at least 1."""
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _chunks(total: int, most: int) -> list[range]:
    """Split ``range(total)`` into the fewest chunks of at most ``most``, sizes balanced."""
    count = math.ceil(total / max(1, most))
    size = math.ceil(total / count)
    return [range(i, min(total, i + size)) for i in range(0, total, size)]
