"""Hugging Face ``imagefolder``: ``OUT/metadata.jsonl`` beside the ``images/`` folder.

Each line is one generated image::

    {"file_name": "images/000001_a_red_cube_s1_<id>_0.png", "prompt": "...", "seed": 1, ...}

``file_name`` is relative to OUT (``datasets`` resolves it against the folder holding
``metadata.jsonl`` and accepts sub-folders), so ``load_dataset("imagefolder", data_dir=OUT)``
loads the images with their columns. Image files without a line (extras such as ControlNet
maps, sidecar ``.json`` and caption ``.txt`` files) are ignored by ``datasets``. Every line
carries every column, each with one fixed type (see ``pipeline.outputs.columns``).

``datasets`` takes the schema from the first 10 MB of the file; a column that is null all
through them but has values later fails to load ("its type in this file is null"). So a missing
text value is written as ``""``, never null; a number column that is null that long (e.g. an
axis added to a job that already made many images) is logged at rebuild with the fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from pipeline.outputs.columns import Column
from pipeline.outputs.exporter import (
    Exporter,
    Record,
    append_file,
    dataset_records,
    is_dataset_record,
)
from pipeline.output.atomic import replace_file

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
FILE_NAME = "file_name"
# How much of metadata.jsonl ``datasets`` reads to infer the schema (its JSON chunk size).
SCHEMA_WINDOW_BYTES = 10 << 20


class ImageFolderExporter(Exporter):
    """Keeps ``OUT/metadata.jsonl`` in step with the manifest."""

    name = "imagefolder"

    def __init__(self, out_dir: Path, columns: list[Column]) -> None:
        super().__init__(out_dir)
        self.columns = [c for c in columns if c.name != FILE_NAME]
        self.path = self.out_dir / METADATA

    def row(self, record: Record) -> dict[str, object]:
        row: dict[str, object] = {FILE_NAME: record["file"]}
        for column in self.columns:
            value = column.value(record)
            row[column.name] = "" if value is None and column.type == "str" else value
        return row

    def _lines(self, records: Iterable[Record]) -> Iterator[bytes]:
        for record in records:
            yield orjson.dumps(self.row(record)) + b"\n"

    def _checked_lines(self, records: Iterable[Record]) -> Iterator[bytes]:
        """``_lines``, warning about number columns null for the whole schema window."""
        unseen = {c.name for c in self.columns if c.type != "str"}
        written_bytes = 0
        for record in records:
            row = self.row(record)
            for name in [n for n in unseen if row[n] is not None]:
                unseen.discard(name)
                if written_bytes >= SCHEMA_WINDOW_BYTES:
                    log.warning(
                        "%s: column %r is null in the first %d MB, which datasets reads for "
                        "the schema, so load_dataset fails on it; pass features= to "
                        "load_dataset, or drop the column with 'columns:'", self.path, name,
                        SCHEMA_WINDOW_BYTES >> 20)
            line = orjson.dumps(row) + b"\n"
            written_bytes += len(line)
            yield line

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await asyncio.to_thread(append_file, self.path, b"".join(self._lines(rows)))

    def rebuild(self) -> None:
        replace_file(self.path, self._checked_lines(dataset_records(self.out_dir)))
        log.debug("rebuilt %s", self.path)
