"""kohya sd-scripts: ``images/<stem>.caption`` and the fine-tuning metadata ``OUT/meta_cap.json``.

``.caption`` is the extension kohya's scripts default to (``--caption_extension``); the
``captions`` output writes the same caption as ``.txt``. ``meta_cap.json`` is what kohya's
``merge_captions_to_metadata.py`` / ``merge_dd_tags_to_metadata.py`` make and its fine-tuning
datasets read (``--in_json``, or ``metadata_file`` in a dataset config)::

    {
    "000001_a_red_cube_s1_<id>_0": {"caption": "a red cube"},
    "sub/000002_a_cone_s2_<id>_0": {"caption": "a cone", "tags": "detail"}
    }

Keys are the image's path under ``images/`` without its extension (kohya finds the image as
``image_dir/<key>.<ext>``; for the default flat naming that is the stem, as kohya's own scripts
write it). ``caption`` is the ``caption:`` template, ``tags`` the ``dataset: {tags: ...}``
template when given (kohya appends the tags to the caption). A dataset config::

    [[datasets.subsets]]
    image_dir = "OUT/images"
    metadata_file = "OUT/meta_cap.json"

The JSON is written whole by ``rebuild()`` (streamed) and extended in place by ``on_variant``:
the closing brace is overwritten by the new entries and written again, so the file is valid JSON
between variants; a torn extension (a crash mid-write) is repaired by the next ``rebuild()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import orjson

from pipeline.outputs.captions import CaptionExporter, CaptionTemplate
from pipeline.outputs.exporter import Exporter, Record, dataset_records, is_dataset_record
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import IMAGES_DIR

log = logging.getLogger(__name__)

METADATA = "meta_cap.json"
CAPTION_SUFFIX = ".caption"
_OPEN = b"{\n"
_CLOSE = b"\n}\n"


def image_key(file: str) -> str:
    """``images/a/b.png`` -> ``a/b``: the path under ``images/`` without the extension."""
    path = PurePosixPath(file)
    parts = path.parts[1:] if path.parts and path.parts[0] == IMAGES_DIR else path.parts
    return str(PurePosixPath(*parts).with_suffix(""))


class KohyaExporter(Exporter):
    """``.caption`` files beside the images and ``OUT/meta_cap.json``."""

    name = "kohya"

    def __init__(self, out_dir: Path, caption: CaptionTemplate,
                 tags: CaptionTemplate | None = None) -> None:
        super().__init__(out_dir)
        self.caption = caption
        self.tags = tags
        self.captions = CaptionExporter(out_dir, caption, suffix=CAPTION_SUFFIX)
        self.path = self.out_dir / METADATA
        self._size = -1  # of meta_cap.json as last written (-1: unknown, rebuild first)
        self._entries = 0
        self._handle: BinaryIO | None = None  # meta_cap.json, open between variants

    def entry(self, record: Record) -> bytes:
        value = {"caption": self.caption.render(record)}
        if self.tags is not None:
            value["tags"] = self.tags.render(record)
        return orjson.dumps(image_key(record["file"])) + b": " + orjson.dumps(value)

    def _document(self, records: Iterable[Record]) -> Iterator[bytes]:
        yield _OPEN
        entries = 0
        size = len(_OPEN)
        for record in records:
            chunk = (b",\n" if entries else b"") + self.entry(record)
            entries += 1
            size += len(chunk)
            yield chunk
        yield _CLOSE if entries else b"}\n"
        self._entries = entries
        self._size = size + (len(_CLOSE) if entries else 2)

    def rebuild(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.captions.rebuild()
        replace_file(self.path, self._document(dataset_records(self.out_dir)), fsync=False)
        log.debug("rebuilt %s (%d entries)", self.path, self._entries)

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await self.captions.on_variant(rows)
            await asyncio.to_thread(self._extend, rows)

    def _extend(self, rows: list[Record]) -> None:
        if self._size < 0:
            self.rebuild()  # not rebuilt yet this run: the file may be anything
            return
        body = b",\n".join(self.entry(r) for r in rows)
        if self._entries:
            at, data = self._size - len(_CLOSE), b",\n" + body + _CLOSE
        else:
            at, data = len(_OPEN), body + _CLOSE
        try:
            if self._handle is None:
                self._handle = self.path.open("r+b", buffering=0)
            self._handle.seek(at)
            self._handle.write(data)
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self._size = at + len(data)
        self._entries += len(rows)

    async def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
