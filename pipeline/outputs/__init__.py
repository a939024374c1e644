"""Dataset formats written beside the images, for training tools to read as they are.

Chosen in the job file, any combination::

    outputs: [imagefolder, captions, csv]

- ``imagefolder``: ``OUT/metadata.jsonl`` for ``datasets.load_dataset("imagefolder", ...)``
  (``pipeline.outputs.imagefolder``; columns from ``columns:`` or the defaults);
- ``captions``: ``images/<stem>.txt`` for kohya-style trainers (``caption:`` template);
- ``csv``: ``OUT/manifest.csv``.

``build_exporters`` checks the job's ``columns``/``caption`` and raises ``JobError`` before
anything runs. The writer stage calls ``rebuild()`` once at start (after the store's manifest
repair) and ``await on_variant(records)`` after each variant's manifest lines. Re-encoding on
write (``convert:``) is ``pipeline.outputs.convert.convert_for_write``.
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

__all__ = ["Exporter", "build_exporters", "imagefolder_columns"]

log = logging.getLogger(__name__)


def build_exporters(spec: JobSpec, out_dir: Path, *, plan: expand.Plan | None = None
                    ) -> list[Exporter]:
    """The exporters ``spec.outputs`` asks for, in that order (each once).

    ``plan`` (the run's ``expand.build_plan(spec)``) is built here when not given. Raises
    ``JobError`` for an unknown ``columns`` entry or a bad ``caption`` template.
    """
    out_dir = Path(out_dir)
    wanted = list(dict.fromkeys(spec.outputs))
    if spec.caption is not None and "captions" not in wanted:
        log.warning("%s: 'caption' is set but 'outputs' has no 'captions'; no captions are "
                    "written", spec.source_path or "job")
    if spec.columns is not None and "imagefolder" not in wanted:
        log.warning("%s: 'columns' is set but 'outputs' has no 'imagefolder'; it is unused",
                    spec.source_path or "job")
    if not wanted:
        return []
    columns = ColumnSet(spec, plan or expand.build_plan(spec))
    exporters: list[Exporter] = []
    for name in wanted:
        if name == "imagefolder":
            exporters.append(ImageFolderExporter(out_dir, imagefolder_columns(spec, columns)))
        elif name == "captions":
            template = CaptionTemplate(spec.caption, columns, source_path=spec.source_path)
            exporters.append(CaptionExporter(out_dir, template))
        elif name == "csv":
            exporters.append(CsvExporter(out_dir, columns.axes))
        else:  # the schema's Literal keeps this unreachable
            raise JobError(f"unknown output format {name!r}", path=spec.source_path,
                           where="outputs", hint="choose from imagefolder, captions, csv")
    return exporters


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
