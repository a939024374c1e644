"""Cheap, seed-dependent pictures and their encoding as the WebUI sends them.

A generation is a palette image: a two-colour gradient (its index plane cached per size and
orientation, its colours from the seed), a few seeded shapes and a caption band holding the
prompt and ``seed N``, so a grid of them is readable and two seeds never look alike. Palette
mode keeps PNG encoding to about a millisecond at 512x512 (RGB would spend 5 ms filtering).
Realistic profiles pass a ``variant`` (a number standing for everything else that changes the
pixels on a real server: checkpoint, sampler, LoRAs, clip skip, VAE) that shifts the colours,
and ``progress`` < 1 for an image an interrupt or skip cut short (darker, washed out).
Encoding follows the WebUI's ``samples_format``: PNG carries the infotext in a tEXt chunk
``parameters``; JPEG and WebP carry it in EXIF UserComment, prefixed ``UNICODE\\0`` and
UTF-16-BE encoded, as piexif writes it for A1111.
"""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Sequence

import pybase64
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 80
WEBP_QUALITY = 80
EXIF_IFD_POINTER = 0x8769
EXIF_USER_COMMENT = 0x9286
USER_COMMENT_UNICODE_PREFIX = b"UNICODE\x00"
TIFF_LONG = 4
TIFF_UNDEFINED = 7

# palette layout: gradient levels, then shape colours, then the caption's colours
GRADIENT_LEVELS = 200
SHAPE_BASE, SHAPE_COLOURS = 200, 8
BAND, TEXT, LABEL = 250, 251, 252
_CAPTION_RGB = {BAND: (16, 16, 16), TEXT: (240, 240, 240), LABEL: (255, 215, 0)}

_CACHE_PIXELS_MAX = 32 * 1024 * 1024  # index planes, one byte per pixel
_plane_cache: OrderedDict[tuple[int, int, int], Image.Image] = OrderedDict()
_cache_pixels = 0
_cache_lock = threading.Lock()  # rendering may run in worker threads


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _gradient_plane(width: int, height: int, rotation: int) -> Image.Image:
    """Gradient palette indices (0..GRADIENT_LEVELS-1) as an "L" image; cached, do not draw
    on it."""
    global _cache_pixels
    key = (width, height, rotation)
    with _cache_lock:
        cached = _plane_cache.get(key)
        if cached is not None:
            _plane_cache.move_to_end(key)
            return cached
    ramp = Image.linear_gradient("L").rotate(90 * rotation)
    plane = ramp.resize((width, height), Image.Resampling.BILINEAR).point(
        [v * GRADIENT_LEVELS // 256 for v in range(256)])
    with _cache_lock:
        if key not in _plane_cache:
            _plane_cache[key] = plane
            _cache_pixels += width * height
        while _cache_pixels > _CACHE_PIXELS_MAX and len(_plane_cache) > 1:
            (w, h, _), _old = _plane_cache.popitem(last=False)
            _cache_pixels -= w * h
    return plane


def _palette(start: tuple[int, int, int], end: tuple[int, int, int],
             shapes: list[tuple[int, int, int]]) -> list[int]:
    last = GRADIENT_LEVELS - 1
    channels = [[a + (b - a) * i // last for i in range(GRADIENT_LEVELS)]
                for a, b in zip(start, end, strict=True)]
    palette = [0] * 768
    palette[0:GRADIENT_LEVELS * 3:3] = channels[0]
    palette[1:GRADIENT_LEVELS * 3:3] = channels[1]
    palette[2:GRADIENT_LEVELS * 3:3] = channels[2]
    for i, colour in enumerate(shapes):
        palette[(SHAPE_BASE + i) * 3:(SHAPE_BASE + i + 1) * 3] = colour
    for index, colour in _CAPTION_RGB.items():
        palette[index * 3:index * 3 + 3] = colour
    return palette


def render_generation(width: int, height: int, seed: int, prompt: str, *, variant: int = 0,
                      progress: float = 1.0) -> Image.Image:
    """One 'generated' picture ("P" mode): seeded gradient and shapes, prompt and seed on it.

    Drawing happens on palette indices (an "L" plane, text not anti-aliased so no index is
    blended); the palette, seeded, gives the colours last; ``variant`` and ``progress`` only
    change the palette, so they cost nothing.
    """
    rng = random.Random(seed)
    image = _gradient_plane(width, height, rng.randrange(4)).copy()
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    short = min(width, height)
    for n in range(3 + rng.randrange(3)):
        size = rng.randrange(max(2, short // 8), max(3, short // 2))
        x0, y0 = rng.randrange(-size // 2, width), rng.randrange(-size // 2, height)
        box = (x0, y0, x0 + size, y0 + size)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=SHAPE_BASE + n)
        else:
            draw.rectangle(box, fill=SHAPE_BASE + n)
    _caption(image, draw, prompt, f"seed {seed}")
    palette = _palette(_colour(rng), _colour(rng), [_colour(rng) for _ in range(SHAPE_COLOURS)])
    if variant:
        shift = random.Random(variant)
        offsets = [shift.randrange(8, 40) * shift.choice((-1, 1)) for _ in range(3)]
        limit = SHAPE_BASE + SHAPE_COLOURS  # the caption keeps its colours
        palette[:limit * 3] = [min(255, max(0, v + offsets[i % 3]))
                               for i, v in enumerate(palette[:limit * 3])]
    if progress < 1.0:
        keep = 0.35 + 0.5 * max(0.0, progress)
        palette = [int(96 + (v - 96) * keep) for v in palette]
    image.putpalette(palette)
    return image


def _caption(image: Image.Image, draw: ImageDraw.ImageDraw, text: str, label: str) -> None:
    """The prompt band (cached: the same for every seed of a prompt) and the label under it."""
    width, height = image.size
    band, font_px = _caption_band(width, height, text)
    top = height - band.height
    image.paste(band, (0, top))
    draw.text((3, height - font_px - 4), label, font=_font(font_px), fill=LABEL)


@functools.lru_cache(maxsize=64)
def _caption_band(width: int, height: int, text: str) -> tuple[Image.Image, int]:
    font_px = max(8, min(width, height) // 20)
    chars_per_line = max(4, int(width / (font_px * 0.55)))
    max_lines = max(1, min(4, (height // 3) // (font_px + 2) - 1))
    lines = textwrap.wrap(text.replace("\n", " "), chars_per_line, max_lines=max_lines,
                          placeholder="…") if text.strip() else []
    line_px = font_px + 2
    band = Image.new("L", (width, min(height, line_px * (len(lines) + 1) + 4)), BAND)
    draw = ImageDraw.Draw(band)
    draw.fontmode = "1"
    for n, line in enumerate(lines):
        draw.text((3, 2 + n * line_px), line, font=_font(font_px), fill=TEXT)
    return band, font_px


def render_grid(images: Sequence[Image.Image]) -> Image.Image:
    """All generations tiled as the WebUI's default grid: round(sqrt(n)) rows."""
    count = len(images)
    rows = min(count, max(1, round(math.sqrt(count))))
    cols = math.ceil(count / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), (0, 0, 0))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * width, (i // cols) * height))
    return grid


@functools.lru_cache(maxsize=16)
def _detect_map(width: int, height: int) -> Image.Image:
    plane = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(plane)
    step = max(4, min(width, height) // 8)
    for x in range(0, width, step):
        draw.line((x, 0, x, height), fill=1)
    for y in range(0, height, step):
        draw.line((0, y, width, y), fill=1)
    return plane


def render_extra(width: int, height: int, index: int) -> Image.Image:
    """A non-generation image (a grey 'detect map', like ControlNet appends)."""
    image = _detect_map(width, height).copy()
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    _caption(image, draw, "", f"detect map {index}")
    palette = _palette((128, 128, 128), (128, 128, 128), [])
    palette[3:6] = [200, 200, 200]  # index 1: the lines
    image.putpalette(palette)
    return image


def encode(image: Image.Image, samples_format: str, infotext: str | None) -> bytes:
    """Encode as the WebUI API does; ``infotext`` goes to PNG tEXt or EXIF UserComment."""
    buf = io.BytesIO()
    if samples_format == "png":
        pnginfo = None
        if infotext:
            pnginfo = PngImagePlugin.PngInfo()
            pnginfo.add_text("parameters", infotext)
        image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=pnginfo)
    else:
        exif = exif_with_user_comment(infotext or "")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if samples_format == "jpg":
            image.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif)
        else:
            image.save(buf, "WEBP", quality=WEBP_QUALITY, method=0, exif=exif)
    return buf.getvalue()


def exif_with_user_comment(text: str) -> bytes:
    """EXIF holding only UserComment, typed UNDEFINED as piexif writes it (A1111 reads it with
    piexif, which rejects the BYTE type Pillow's ``Image.Exif`` would give raw bytes).

    Layout (little-endian TIFF): header, IFD0 with one entry pointing at the Exif IFD, the Exif
    IFD with one UserComment entry, then the comment bytes.
    """
    comment = USER_COMMENT_UNICODE_PREFIX + text.encode("utf-16-be")
    exif_ifd_offset = 8 + 2 + 12 + 4
    data_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"".join((
        b"II*\x00", struct.pack("<I", 8),
        struct.pack("<HHHII", 1, EXIF_IFD_POINTER, TIFF_LONG, 1, exif_ifd_offset),
        struct.pack("<I", 0),
        struct.pack("<HHHII", 1, EXIF_USER_COMMENT, TIFF_UNDEFINED, len(comment), data_offset),
        struct.pack("<I", 0),
        comment,
    ))
    return b"Exif\x00\x00" + tiff


def encode_b64(image: Image.Image, samples_format: str, infotext: str | None) -> str:
    return pybase64.b64encode(encode(image, samples_format, infotext)).decode("ascii")


def read_user_comment(data: bytes) -> str | None:
    """The infotext in a JPEG/WebP's EXIF UserComment (for tests and tools)."""
    with Image.open(io.BytesIO(data)) as image:
        raw = image.getexif().get_ifd(EXIF_IFD_POINTER).get(EXIF_USER_COMMENT)
    if not isinstance(raw, bytes):
        return None
    if raw.startswith(USER_COMMENT_UNICODE_PREFIX):
        return raw[len(USER_COMMENT_UNICODE_PREFIX):].decode("utf-16-be")
    return raw[8:].decode("ascii", "replace")
