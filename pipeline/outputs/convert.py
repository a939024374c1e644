"""Re-encode images on write (WebP, JPEG, PNG) without losing the A1111 infotext.

Where the WebUI keeps the generation parameters, and where its PNG Info tab and image sites
look for them (``modules/images.py``: ``save_image_with_geninfo`` / ``read_info_from_image``):

- PNG: a text chunk named ``parameters`` (tEXt, or iTXt when the text is not Latin-1);
- JPEG and WebP: the EXIF ``UserComment`` tag (0x9286) in the Exif IFD, written by
  ``piexif.helper.UserComment.dump(text, encoding="unicode")``: the 8-byte character-code
  prefix ``UNICODE\\0`` followed by the text in UTF-16 **big-endian**, with the tag typed
  UNDEFINED (7). piexif reads a BYTE-typed tag as a tuple and the WebUI then fails on it, so the
  type matters: Pillow types an unknown bytes tag as BYTE, and ``_exif_user_comment`` corrects
  that one type field in the bytes Pillow builds.

When both are present the WebUI prefers a non-empty EXIF comment; ``read_infotext`` does too.

Conversion is CPU work and synchronous: call it through ``asyncio.to_thread``. Without a
``ConvertSpec`` nothing here touches the bytes (``convert_for_write`` returns the same object).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct

import PIL.Image
from PIL import ExifTags, PngImagePlugin, UnidentifiedImageError

from pipeline.job.schema import ConvertSpec
from pipeline.model import Image

log = logging.getLogger(__name__)

INFOTEXT_KEY = "parameters"
UNICODE_PREFIX = b"UNICODE\x00"
ASCII_PREFIX = b"ASCII\x00\x00\x00"
JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
_PREFIX_BYTES = 8
_TIFF_UNDEFINED = 7
_EXIF_HEADER = b"Exif\x00\x00"
# JPEG keeps EXIF in one APP1 segment of at most 64 KiB.
MAX_JPEG_EXIF_BYTES = 65_533
_PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}
_ALIASES = {"jpg": "jpeg"}


def encode_user_comment(text: str) -> bytes:
    """The EXIF UserComment value the WebUI writes: ``UNICODE\\0`` + UTF-16-BE text."""
    return UNICODE_PREFIX + text.encode("utf-16-be", errors="surrogatepass")


def decode_user_comment(raw: bytes | tuple[int, ...] | str | None) -> str | None:
    """Text of an EXIF UserComment value in any of its character codes; None when empty.

    ``UNICODE`` is UTF-16; the WebUI writes big-endian, a few other tools little-endian, so the
    byte order is guessed from which half of each code unit holds the zero bytes of ASCII text.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw
    else:
        data = bytes(raw)
        prefix, body = data[:_PREFIX_BYTES], data[_PREFIX_BYTES:]
        if prefix == UNICODE_PREFIX:
            text = body.decode(_utf16_order(body), errors="replace")
        elif prefix == ASCII_PREFIX:
            text = body.decode("utf-8", errors="replace")
        elif prefix == JIS_PREFIX:
            text = body.decode("shift_jis", errors="replace")
        elif prefix == b"\x00" * _PREFIX_BYTES:
            text = body.decode("utf-8", errors="ignore")
        else:  # no character-code prefix at all: what the WebUI's fallback does
            text = data.decode("utf-8", errors="ignore")
    text = text.rstrip("\x00")
    return text or None


def _utf16_order(body: bytes) -> str:
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    return "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"


def read_infotext(data: bytes) -> str | None:
    """The A1111 infotext embedded in image bytes (PNG text chunk or EXIF UserComment)."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return _infotext_of(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        log.debug("no infotext: the bytes are not a readable image (%s)", exc)
        return None


def _infotext_of(image: PIL.Image.Image) -> str | None:
    text = image.info.get(INFOTEXT_KEY)
    parameters = str(text) if text else None
    try:
        exif_ifd = image.getexif().get_ifd(ExifTags.IFD.Exif)
    except (OSError, ValueError, SyntaxError, struct.error):
        exif_ifd = {}
    comment = decode_user_comment(exif_ifd.get(ExifTags.Base.UserComment))
    return comment or parameters


def convert_image(data: bytes, *, to: str, quality: int, infotext: str | None = None
                  ) -> tuple[bytes, str]:
    """Re-encode ``data`` as ``to`` ("webp" | "jpeg" | "png"); returns (bytes, format).

    ``infotext`` defaults to the one embedded in ``data``; it is written where the WebUI puts
    it for the target format. ``quality`` (1-100) applies to JPEG and WebP. Raises ValueError
    for an unknown target and PIL's errors for bytes it cannot decode.
    """
    fmt = _ALIASES.get(to.lower(), to.lower())
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"cannot convert to {to!r}; choose webp, jpeg or png")
    with PIL.Image.open(io.BytesIO(data)) as source:
        source.load()
        if infotext is None:
            infotext = _infotext_of(source)
        icc_profile = source.info.get("icc_profile")
        image = _target_mode(source, fmt)
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if fmt == "png":
        if infotext:
            chunks = PngImagePlugin.PngInfo()
            chunks.add_text(INFOTEXT_KEY, infotext)  # iTXt by itself when not Latin-1
            options["pnginfo"] = chunks
    else:
        options["quality"] = quality
        if infotext:
            exif = _exif_user_comment(encode_user_comment(infotext))
            if fmt == "jpeg" and len(exif) > MAX_JPEG_EXIF_BYTES:
                log.warning("infotext of %d characters does not fit in JPEG EXIF (64 KiB); "
                            "the image is written without it (the manifest keeps it)",
                            len(infotext))
            else:
                options["exif"] = exif
    out = io.BytesIO()
    image.save(out, format=_PIL_FORMATS[fmt], **options)
    return out.getvalue(), fmt


def _target_mode(image: PIL.Image.Image, fmt: str) -> PIL.Image.Image:
    """A copy in a mode the target format stores (JPEG: no alpha, as the WebUI does)."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if fmt == "jpeg":
        return image.copy() if image.mode in ("RGB", "L") else image.convert("RGB")
    if fmt == "webp":
        if image.mode in ("RGB", "RGBA"):
            return image.copy()
        return image.convert("RGBA" if has_alpha else "RGB")
    return image.copy()


def _exif_user_comment(comment: bytes) -> bytes:
    """EXIF bytes (``Exif\\0\\0`` + TIFF) holding one UserComment, typed UNDEFINED."""
    exif = PIL.Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    blob = bytearray(exif.tobytes())
    _set_tag_type(blob, ExifTags.IFD.Exif, ExifTags.Base.UserComment, _TIFF_UNDEFINED)
    return bytes(blob)


def _set_tag_type(blob: bytearray, ifd_pointer: int, tag: int, type_code: int) -> None:
    """Rewrite the type field of ``tag`` inside the sub-IFD that ``ifd_pointer`` points to.

    BYTE and UNDEFINED are both one byte per unit, so count and data stay valid.
    """
    tiff = len(_EXIF_HEADER) if blob.startswith(_EXIF_HEADER) else 0
    order = ">" if blob[tiff:tiff + 2] == b"MM" else "<"

    def entries(ifd_offset: int) -> list[tuple[int, int]]:
        start = tiff + ifd_offset
        (count,) = struct.unpack_from(order + "H", blob, start)
        found = []
        for i in range(count):
            position = start + 2 + 12 * i
            found.append((position, struct.unpack_from(order + "H", blob, position)[0]))
        return found

    (ifd0,) = struct.unpack_from(order + "L", blob, tiff + 4)
    for position, entry_tag in entries(ifd0):
        if entry_tag != ifd_pointer:
            continue
        (sub_ifd,) = struct.unpack_from(order + "L", blob, position + 8)
        for sub_position, sub_tag in entries(sub_ifd):
            if sub_tag == tag:
                struct.pack_into(order + "H", blob, sub_position + 2, type_code)
                return
    raise ValueError(f"EXIF tag {tag:#06x} not found under IFD pointer {ifd_pointer:#06x}")


def convert_for_write(image: Image, spec: ConvertSpec | None) -> Image:
    """The image to write: the same object without ``spec`` or when already in that format,
    else a copy with re-encoded ``data``/``format``. Bytes Pillow cannot decode are kept as
    they are (logged), so one odd image never costs a variant."""
    if spec is None or image.format == spec.format:
        return image
    try:
        data, fmt = convert_image(image.data, to=spec.format, quality=spec.quality,
                                  infotext=image.infotext)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            PIL.Image.DecompressionBombError) as exc:
        log.warning("image %d (%s) could not be converted to %s and is kept as it is: %s",
                    image.index, image.format, spec.format, exc)
        return image
    return dataclasses.replace(image, data=data, format=fmt)
