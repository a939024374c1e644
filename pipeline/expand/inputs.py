"""Input images for img2img: paths and globs in the job, file references in the payload.

A job names ``init_images`` (and ``mask``) as paths or globs relative to the job file. At plan
time each file is checked (it must be an image Pillow can read; a mask must match its image's
size) and becomes a reference ``{"$file": "<absolute path>", "sha256": "..."}`` in the payload,
so variant ids change when an image's content does and the manifest records which file was used
instead of megabytes of base64. The client turns references into base64 only when sending.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import io
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image as PILImage, UnidentifiedImageError

from pipeline.errors import InputError, JobError

IMAGE_FIELDS = ("init_images", "mask")
MAX_SIDE_PX = 8192
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and "$file" in value


def file_ref(path: str, source: str) -> tuple[tuple[str, Any], ...]:
    """Check one image file and return its reference (as a hashable tuple of items); a file
    that changed since it was last read is read again."""
    try:
        st = Path(path).stat()
        stamp: tuple[int, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = ()
    return _file_ref(path, source, stamp)


@lru_cache(maxsize=4096)
def _file_ref(path: str, source: str, stamp: tuple[int, ...]) -> tuple[tuple[str, Any], ...]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise JobError(f"cannot read input image {path} ({exc.strerror})", path=source,
                       hint="check the path; it is relative to the job file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                width, height = image.size
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise JobError(f"{path} has more than {PILImage.MAX_IMAGE_PIXELS:,} pixels (Pillow "
                       "refuses it as a possible decompression bomb); the most is "
                       f"{MAX_SIDE_PX} per side", path=source, hint="downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise JobError(f"{path} is not an image Pillow can read", path=source,
                       hint="use PNG, JPEG or WebP files") from None
    if width > MAX_SIDE_PX or height > MAX_SIDE_PX:
        raise JobError(f"{path} is {width}x{height}; the most is {MAX_SIDE_PX} per side",
                       path=source, hint="downscale it first")
    return (("$file", str(p)), ("sha256", hashlib.sha256(data).hexdigest()),
            ("width", width), ("height", height))


def resolve_paths(value: Any, base_dir: Path, source: str, field: str) -> list[Path]:
    """Paths or globs (a string or a list of them) -> existing image files, sorted per glob."""
    items = value if isinstance(value, list) else [value]
    found: list[Path] = []
    for item in items:
        if is_ref(item):
            found.append(Path(item["$file"]))
            continue
        if not isinstance(item, str) or not item:
            raise JobError(f"{field}: {item!r} is not a path", path=source, where=field,
                           hint="write a path or glob relative to the job file, e.g. inputs/*.png")
        pattern = item if Path(item).is_absolute() else str(base_dir / item)
        matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True)
                         if Path(m).suffix.lower() in _IMAGE_SUFFIXES and Path(m).is_file())
        if not matches:
            raise JobError(f"{field}: {item!r} matches no image file (looked in {base_dir})",
                           path=source, where=field,
                           hint="paths and globs are relative to the job file")
        found.extend(matches)
    return found


def refs(value: Any, base_dir: Path, source: str, field: str) -> list[dict[str, Any]]:
    return [dict(file_ref(str(p), source)) for p in resolve_paths(value, base_dir, source, field)]


def axis_values(values: list[Any], base_dir: Path, source: str, field: str) -> list[Any]:
    """A matrix axis over images: one value (a one-image list) per file a glob matches."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, list):
            out.append(refs(value, base_dir, source, field))
        else:
            out.extend([ref] for ref in refs(value, base_dir, source, field))
    return out


def check_mask(payload: dict[str, Any], source: str) -> None:
    mask, images = payload.get("mask"), payload.get("init_images")
    if is_ref(mask) and images and is_ref(images[0]):
        if (mask["width"], mask["height"]) != (images[0]["width"], images[0]["height"]):
            raise JobError(f"mask {mask['$file']} is {mask['width']}x{mask['height']} but "
                           f"{images[0]['$file']} is {images[0]['width']}x{images[0]['height']}",
                           path=source, where="mask", hint="a mask must match its image's size")


def encode_refs(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload to send: file references replaced by base64 of the files, read now.

    Each file is read once, and the bytes read are hashed and sent: when they are not the bytes
    the plan hashed (the file changed or disappeared since), ``InputError`` says so and nothing
    is sent, so what the manifest records as this variant's input is always what was used."""
    if not any(is_ref(payload.get(f)) or (isinstance(payload.get(f), list) and
               any(is_ref(x) for x in payload[f])) for f in IMAGE_FIELDS):
        return payload
    out = dict(payload)
    for field in IMAGE_FIELDS:
        value = out.get(field)
        if is_ref(value):
            out[field] = _b64(value, field)
        elif isinstance(value, list):
            out[field] = [_b64(v, field) if is_ref(v) else v for v in value]
    return out


def _b64(ref: dict[str, Any], field: str) -> str:
    path = str(ref["$file"])
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{field} {path} cannot be read now ({exc.strerror or exc}); it was "
                         "there when the run started. Put it back (or rerun: the plan then "
                         "uses what is there)") from exc
    expected = ref.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise InputError(f"{field} {path} changed since the run started (sha256 "
                         f"{str(expected)[:12]}... then, {hashlib.sha256(data).hexdigest()[:12]}"
                         "... now): not sent, so no image is recorded with an input it was not "
                         "made from. Rerun to use the new file (its variants get new ids)")
    return base64.b64encode(data).decode()
