"""Dataset formats written beside the images, for training tools to read as they are.

Chosen in the job file, any combination::

    outputs: [imagefolder, captions, csv, webdataset, parquet, kohya]
    dataset: {shard_size: 10000, parquet_shard_mb: 500, tags: "{lora_name}"}   # options

- ``imagefolder``: ``OUT/imagefolder/`` for ``datasets.load_dataset("imagefolder", ...)``, at
  most 10,000 images a folder (``pipeline.outputs.imagefolder``; ``columns:`` or defaults);
- ``captions``: ``images/<stem>.txt`` for kohya-style trainers (``caption:`` template);
- ``csv``: ``OUT/manifest.csv``;
- ``webdataset``: ``OUT/webdataset/NNNNN.tar`` + ``.parquet`` shards and ``_stats.json``;
- ``parquet``: ``OUT/parquet/train-NNNNN.parquet`` with the images inside (the Hub's layout);
- ``kohya``: ``images/<stem>.caption`` and ``OUT/meta_cap.json`` (fine-tuning ``in_json``).

``build_exporters`` checks the job's ``columns``/``caption``/``dataset`` (and that pyarrow is
installed when a format needs it) and raises ``JobError`` before anything runs. The writer
stage calls ``rebuild()`` once at start (after the store's manifest repair), ``await
on_variant(records)`` after each variant's manifest lines, and ``await close()`` once after the
last (the sharded formats publish their last, partial shard then). Re-encoding on write
(``convert:``) is ``pipeline.outputs.convert.convert_for_write``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import expand
from pipeline.errors import JobError
from pipeline.job.schema import JobSpec
from pipeline.outputs.captions import CaptionExporter, CaptionTemplate
from pipeline.outputs.columns import Column, ColumnSet
from pipeline.outputs.csvfile import CsvExporter
from pipeline.outputs.exporter import Exporter
from pipeline.outputs.imagefolder import ImageFolderExporter
from pipeline.outputs.kohya import KohyaExporter
from pipeline.outputs.table import require_pyarrow

__all__ = ["Exporter", "build_exporters", "imagefolder_columns", "record_columns"]

_CAPTIONED = ("captions", "webdataset", "kohya")
_COLUMNED = ("imagefolder", "parquet")
# The webdataset parquet's columns: the record's identity, the imagefolder defaults, the rest.
_RECORD_LEADING = ("id", "image_index", "file", "format", "sha256", "bytes")
_RECORD_TRAILING = ("subseed", "requested_seed", "backend", "created", "attempts", "elapsed_s",
                    "infotext", "params")

log = logging.getLogger(__name__)


def build_exporters(spec: JobSpec, out_dir: Path, *, plan: expand.Plan | None = None,
                    fsync: bool = True) -> list[Exporter]:
    """The exporters ``spec.outputs`` asks for, in that order (each once).

    ``plan`` (the run's ``expand.build_plan(spec)``) is built here when not given. ``fsync``:
    the sharded formats fsync each shard once before publishing it (the run's ``--no-fsync``
    turns it off). Raises ``JobError`` for an unknown ``columns`` entry, a bad ``caption`` or
    ``dataset.tags`` template, or a format that needs pyarrow when it is not installed.
    """
    out_dir = Path(out_dir)
    wanted = list(dict.fromkeys(spec.outputs))
    where = spec.source_path or "job"
    if spec.caption is not None and not any(n in wanted for n in _CAPTIONED):
        log.warning("%s: 'caption' is set but 'outputs' has none of %s; it is unused", where,
                    ", ".join(_CAPTIONED))
    if spec.columns is not None and not any(n in wanted for n in _COLUMNED):
        log.warning("%s: 'columns' is set but 'outputs' has none of %s; it is unused", where,
                    ", ".join(_COLUMNED))
    if spec.dataset.tags is not None and "kohya" not in wanted:
        log.warning("%s: 'dataset.tags' is set but 'outputs' has no 'kohya'; it is unused", where)
    if not wanted:
        return []
    for name in ("webdataset", "parquet"):
        if name in wanted:
            require_pyarrow(name, source_path=spec.source_path)
    columns = ColumnSet(spec, plan or expand.build_plan(spec))
    caption: CaptionTemplate | None = None
    if any(n in wanted for n in _CAPTIONED):
        caption = CaptionTemplate(spec.caption, columns, source_path=spec.source_path)
    exporters: list[Exporter] = []
    for name in wanted:
        if name == "imagefolder":
            exporters.append(ImageFolderExporter(out_dir, imagefolder_columns(spec, columns)))
        elif name == "captions":
            assert caption is not None
            exporters.append(CaptionExporter(out_dir, caption))
        elif name == "csv":
            exporters.append(CsvExporter(out_dir, columns.axes))
        elif name == "webdataset":
            from pipeline.outputs.webdataset import WebDatasetExporter

            assert caption is not None
            exporters.append(WebDatasetExporter(out_dir, caption=caption,
                                                columns=record_columns(columns),
                                                shard_size=spec.dataset.shard_size,
                                                fsync=fsync))
        elif name == "parquet":
            from pipeline.outputs.parquet import ParquetExporter

            exporters.append(ParquetExporter(out_dir, columns=imagefolder_columns(spec, columns),
                                             shard_mb=spec.dataset.parquet_shard_mb,
                                             fsync=fsync))
        elif name == "kohya":
            tags = None if spec.dataset.tags is None else CaptionTemplate(
                spec.dataset.tags, columns, source_path=spec.source_path, where="dataset.tags")
            assert caption is not None
            exporters.append(KohyaExporter(out_dir, caption, tags))
        else:  # the schema's Literal keeps this unreachable
            raise JobError(f"unknown output format {name!r}", path=spec.source_path,
                           where="outputs", hint="choose from imagefolder, captions, csv, "
                                                 "webdataset, parquet, kohya")
    return exporters


def record_columns(columns: ColumnSet) -> list[Column]:
    """Every field of a record worth a column: identity, the imagefolder defaults, the rest."""
    chosen = [columns.lookup(name) for name in _RECORD_LEADING]
    chosen += columns.default()
    chosen += [columns.lookup(name) for name in _RECORD_TRAILING]
    out: list[Column] = []
    for column in chosen:
        if column is not None and all(c.name != column.name for c in out):
            out.append(column)
    return out


def imagefolder_columns(spec: JobSpec, columns: ColumnSet) -> list[Column]:
    """``spec.columns`` resolved in order, or the default columns."""
    if spec.columns is None:
        return columns.default()
    chosen: list[Column] = []
    for i, name in enumerate(spec.columns):
        if name == "file_name":
            continue  # always the first key of every line
        column = columns.lookup(name)
        if column is None:
            raise JobError(f"column {name!r} is not a field of the records",
                           path=spec.source_path, where=f"columns[{i}]",
                           hint="use a record field or axis name: "
                                + ", ".join(columns.known_names()))
        if all(c.name != column.name for c in chosen):
            chosen.append(column)
    return chosen
