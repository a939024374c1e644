"""Pillow drawing of a laid-out sheet: fonts, headers, cells, placeholders, atomic save.

Everything positional comes from ``layout.SheetLayout``; this module only paints. Cell images
are decoded at reduced size where the format allows (JPEG draft, Pillow's reducing gap), pasted
centred in their cell, and anything unreadable becomes a labelled placeholder, never an error.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.grid.layout import Box, SheetLayout, wrap_text
from pipeline.output.layout import TMP_PREFIX
from pipeline.output.atomic import output_error

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
HEADER_FILL = (236, 238, 242)
TEXT = (20, 22, 28)
MUTED = (95, 100, 112)
PENDING_FILL = (226, 228, 232)
PENDING_HATCH = (208, 211, 217)
FAILED_FILL = (253, 226, 226)
FAILED_EDGE = (200, 40, 40)
FAILED_TEXT = (150, 20, 20)
ABSENT_FILL = (246, 247, 249)
_FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
               "LiberationSans-Regular.ttf", "Arial.ttf")
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True, slots=True)
class FontMeasure:
    """A real font at one size, with the ``layout.Measure`` interface."""

    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    font_px: int
    line_h_px: int

    def width_px(self, text: str) -> float:
        return float(self.font.getlength(text))


@functools.lru_cache(maxsize=64)
def font_for(font_px: int) -> FontMeasure:
    """A sans-serif font at ``font_px``: DejaVu Sans when installed, else Pillow's own."""
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None
    for name in _FONT_FILES:
        try:
            font = ImageFont.truetype(name, font_px)
            break
        except OSError:
            continue
    if font is None:
        font = ImageFont.load_default(size=font_px)
    return FontMeasure(font, font_px, round(font_px * 1.3))


@dataclass(frozen=True, slots=True)
class CellView:
    """What to paint in one cell: an image file, or a placeholder with a headline and detail."""

    state: str  # "ok" | "failed" | "pending" | "absent"
    path: Path | None = None
    headline: str = ""
    detail: str = ""


def draw_sheet(layout: SheetLayout, cells: Callable[[int, int], CellView]) -> Image.Image:
    """Paint one sheet; ``cells(row_pos, col_pos)`` says what each cell of this part holds."""
    sheet = Image.new("RGB", (layout.width_px, layout.height_px), BACKGROUND)
    pen = ImageDraw.Draw(sheet)
    measure = font_for(layout.font_px)
    font = measure.font
    heading = font_for(layout.heading_font_px)
    x0, y = layout.title_box().x0, layout.pad_px
    for line in layout.heading_lines:
        pen.text((x0, y), line, font=heading.font, fill=TEXT, anchor="la")
        y += layout.heading_line_h_px
    for line in layout.title_lines:
        pen.text((x0, y), line, font=font, fill=MUTED, anchor="la")
        y += layout.line_h_px
    if layout.row_header_w_px:
        box = layout.corner_box()
        _text_block(pen, box, layout.corner_lines, font, measure.line_h_px, layout.pad_px,
                    align="left", fill=MUTED)
    for col_pos, lines in enumerate(layout.col_lines):
        box = layout.col_header_box(col_pos)
        pen.rectangle(_rect(box), fill=HEADER_FILL)
        _text_block(pen, box, lines, font, measure.line_h_px, layout.pad_px, align="center")
    for row_pos in range(len(layout.rows)):
        if layout.row_header_w_px:
            box = layout.row_header_box(row_pos)
            pen.rectangle(_rect(box), fill=HEADER_FILL)
            _text_block(pen, box, layout.row_lines[row_pos], font, measure.line_h_px,
                        layout.pad_px, align="left")
        for col_pos in range(len(layout.cols)):
            box = layout.cell_box(row_pos, col_pos)
            view = cells(row_pos, col_pos)
            if view.state == "ok" and view.path is not None and _paste_image(sheet, box, view.path):
                continue
            if view.state == "ok":
                view = CellView("failed", headline="unreadable image",
                                detail=view.path.name if view.path else "")
            _placeholder(pen, box, view, layout)
    return sheet


def _rect(box: Box) -> tuple[int, int, int, int]:
    return box.x0, box.y0, box.x1 - 1, box.y1 - 1


def _text_block(pen: ImageDraw.ImageDraw, box: Box, lines: Sequence[str], font: object,
                line_h_px: int, pad_px: int, *, align: str, fill: tuple[int, int, int] = TEXT,
                ) -> None:
    """Lines vertically centred in ``box``, left-aligned or centred horizontally."""
    if not lines:
        return
    top = box.y0 + max(pad_px, (box.height - len(lines) * line_h_px) // 2)
    for n, line in enumerate(lines):
        y = top + n * line_h_px
        if y + line_h_px > box.y1 + 1:
            break
        if align == "center":
            pen.text(((box.x0 + box.x1) / 2, y), line, font=font, fill=fill, anchor="ma")
        else:
            pen.text((box.x0 + pad_px, y), line, font=font, fill=fill, anchor="la")


def _paste_image(sheet: Image.Image, box: Box, path: Path) -> bool:
    """Scale the image to fit ``box`` (keeping its aspect) and paste it centred."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (box.width, box.height))  # JPEG: decode at reduced scale
            fitted = ImageOps.contain(image, (box.width, box.height),
                                      method=Image.Resampling.LANCZOS)
            if fitted.mode in ("RGBA", "LA", "P"):
                fitted = fitted.convert("RGBA")
                flat = Image.new("RGB", fitted.size, BACKGROUND)
                flat.paste(fitted, mask=fitted.getchannel("A"))
                fitted = flat
            elif fitted.mode != "RGB":
                fitted = fitted.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        log.warning("grid: cannot read %s (%s); drawn as a placeholder", path, exc)
        return False
    x = box.x0 + (box.width - fitted.width) // 2
    y = box.y0 + (box.height - fitted.height) // 2
    sheet.paste(fitted, (x, y))
    return True


def _placeholder(pen: ImageDraw.ImageDraw, box: Box, view: CellView, layout: SheetLayout) -> None:
    """A cell without an image: grey and hatched (pending), red-edged (failed), faint (absent)."""
    fill = {"failed": FAILED_FILL, "pending": PENDING_FILL}.get(view.state, ABSENT_FILL)
    pen.rectangle(_rect(box), fill=fill)
    if view.state == "pending":
        step = max(8, layout.cell_w_px // 12)
        for offset in range(-box.height, box.width, step):  # diagonal hatch, clipped to the box
            x0, y0 = box.x0 + max(0, offset), box.y0 + max(0, -offset)
            length = min(box.x1 - x0, box.y1 - y0)
            if length > 0:
                pen.line((x0, y0, x0 + length - 1, y0 + length - 1), fill=PENDING_HATCH,
                         width=max(1, step // 6))
    if view.state == "failed":
        pen.rectangle(_rect(box), outline=FAILED_EDGE, width=max(2, layout.cell_w_px // 96))
    measure = font_for(max(12, layout.font_px - 2))
    inner = box.width - 2 * layout.pad_px
    headline = wrap_text(view.headline, inner, measure, 2)
    room = max(0, (box.height - 2 * layout.pad_px) // measure.line_h_px - len(headline))
    detail = wrap_text(view.detail, inner, measure, room) if view.detail and room else ()
    head_color, detail_color = (FAILED_TEXT, TEXT) if view.state == "failed" else (TEXT, MUTED)
    lines = (*headline, *detail)
    top = box.y0 + max(layout.pad_px, (box.height - len(lines) * measure.line_h_px) // 2)
    for n, line in enumerate(lines):
        pen.text(((box.x0 + box.x1) / 2, top + n * measure.line_h_px), line, font=measure.font,
                 fill=head_color if n < len(headline) else detail_color, anchor="ma")


def save_atomic(image: Image.Image, path: Path, fmt: str, *, quality: int = 90) -> None:
    """Encode to a temporary name beside ``path``, then rename over it."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    options: dict[str, object] = {}
    if fmt == "jpeg":
        options = {"quality": quality, "optimize": True, "subsampling": 0 if quality >= 90 else 2}
    elif fmt == "webp":
        options = {"quality": quality, "method": 4}
    else:
        options = {"compress_level": 6}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format=PIL_FORMATS[fmt], **options)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from exc
    except Exception:
        tmp.unlink(missing_ok=True)
        raise

