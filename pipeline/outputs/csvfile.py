"""``OUT/manifest.csv``: the manifest's generations as a spreadsheet.

A fixed header::

    id, image_index, file, prompt, negative_prompt, seed, subseed, model, sampler, backend,
    sha256, <one column per axis of the job>, params

``params`` is the request as sorted JSON (without ``init_images``/``mask``/script blobs).
RFC 4180 quoting (the ``csv`` module's defaults), UTF-8 without a BOM, so prompts with commas,
quotes and newlines read back exactly with ``csv.reader``/``csv.DictReader``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.outputs.columns import BASE, RECORD_FIELDS, Column, to_text
from pipeline.outputs.exporter import (
    Exporter,
    Record,
    append_file,
    dataset_records,
    is_dataset_record,
    needs_header,
)
from pipeline.output.atomic import replace_file

log = logging.getLogger(__name__)

CSV_FILE = "manifest.csv"
LEADING = ("id", "image_index", "file", "prompt", "negative_prompt", "seed", "subseed", "model",
           "sampler", "backend", "sha256")
_ROWS_PER_CHUNK = 256


class CsvExporter(Exporter):
    """Keeps ``OUT/manifest.csv`` in step with the manifest."""

    name = "csv"

    def __init__(self, out_dir: Path, axes: Iterable[Column]) -> None:
        super().__init__(out_dir)
        leading = [BASE.get(name) or RECORD_FIELDS[name] for name in LEADING]
        self.columns: list[Column] = [*leading, *axes, RECORD_FIELDS["params"]]
        self.header = [c.name for c in self.columns]
        self.path = self.out_dir / CSV_FILE

    def cells(self, record: Record) -> list[str]:
        out = []
        for column in self.columns:
            value = column.value(record)
            out.append("" if value is None else to_text(value))
        return out

    def _encode(self, rows: Iterable[list[str]]) -> bytes:
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def _chunks(self, records: Iterable[Record], *, header: bool) -> Iterator[bytes]:
        batch: list[list[str]] = [self.header] if header else []
        for record in records:
            batch.append(self.cells(record))
            if len(batch) >= _ROWS_PER_CHUNK:
                yield self._encode(batch)
                batch = []
        if batch:
            yield self._encode(batch)

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await asyncio.to_thread(self._append, rows)

    def _append(self, rows: list[Record]) -> None:
        append_file(self.path, b"".join(self._chunks(rows, header=needs_header(self.path))))

    def rebuild(self) -> None:
        replace_file(self.path, self._chunks(dataset_records(self.out_dir), header=True))
        log.debug("rebuilt %s", self.path)
