"""What image bytes are: the format from the magic numbers, and the file extension for it."""

from __future__ import annotations


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif", "avif": "avif"}


def structure_problem(data: bytes, fmt: str) -> str | None:
    """Why ``data`` is not a whole image of format ``fmt`` (None when it is).

    Checks structure, not pixels, and costs next to nothing: PNG chunks from the signature
    through ``IEND`` (each chunk's length must fit), JPEG from SOI to EOI, WebP's RIFF length.
    A bare signature or half a file is a failed attempt, never an image on disk.
    """
    if fmt == "png":
        return _png_problem(data)
    if fmt == "jpeg":
        if len(data) < 4 or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "the JPEG has no end-of-image marker (cut short)"
        return None
    if fmt == "webp":
        if len(data) < 12:
            return "the WebP is cut short"
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            return f"the WebP declares {declared} bytes but has {len(data)} (cut short)"
        return None
    return None


def _png_problem(data: bytes) -> str | None:
    pos, size = 8, len(data)
    seen_ihdr = seen_idat = False
    while pos + 12 <= size:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > size:
            return f"PNG chunk {kind!r} needs {length} bytes but the file ends first (cut short)"
        if kind == b"IHDR":
            seen_ihdr = True
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            if not (seen_ihdr and seen_idat):
                return "the PNG has no IHDR or no IDAT chunk"
            return None
        pos = end
    return "the PNG has no IEND chunk (cut short)"
