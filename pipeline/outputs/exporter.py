"""What every dataset exporter is, and how it writes files.

An exporter keeps one dataset format in step with ``OUT/manifest.jsonl``:

- ``rebuild()`` (sync, once at run start, after the store has repaired the manifest) regenerates
  the format from the manifest, so after a crash or a resume it holds exactly the manifest's
  generations: none twice, none missing, no torn last line;
- ``on_variant(records)`` (the writer stage, right after a variant's manifest lines were
  appended) adds that variant's generations;
- ``close()`` (once, after the writer's last ``on_variant``, on a normal end and on a graceful
  stop) publishes what is still in progress (the sharded formats' last, partial shard). A crash
  skips it; the next ``rebuild()`` covers that. Idempotent; formats without shards do nothing.

The manifest an exporter reads has been repaired by the store (``output.resume``), so it holds
each ``(id, image_index)`` once; exporters stream it and keep nothing per record.

Whole files are replaced atomically (``.tmp-<name>`` beside the target, fsync, ``os.replace``);
appends are plain appends, because a torn append is repaired by the next ``rebuild()``. Only
``kind == "generation"`` records become dataset rows; extras (e.g. ControlNet maps) never do.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson

from pipeline.errors import OutputError
from pipeline.output.layout import MANIFEST, TMP_PREFIX, inside
from pipeline.output.atomic import output_error

Record = dict[str, Any]


class Exporter(abc.ABC):
    """One dataset format in an output directory."""

    name: ClassVar[str]

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)

    @abc.abstractmethod
    async def on_variant(self, records: list[Record]) -> None:
        """Add one written variant's records (generations and extras, as in the manifest)."""

    @abc.abstractmethod
    def rebuild(self) -> None:
        """Regenerate this format's files from ``OUT/manifest.jsonl``."""

    async def close(self) -> None:
        """Publish whatever is still in progress (the run's writer has finished)."""


def is_dataset_record(record: Record, out_dir: Path) -> bool:
    """A generation whose file name is a relative path inside the output directory."""
    file = record.get("file")
    return (record.get("kind", "generation") == "generation" and isinstance(file, str)
            and bool(file) and inside(file))


def dataset_records(out_dir: Path) -> Iterator[Record]:
    """The manifest's generations in order."""
    return (record for _, record in manifest_samples(out_dir))


def manifest_samples(out_dir: Path, start: int = 0) -> Iterator[tuple[int, Record]]:
    """``(byte offset of its line, record)`` for each generation of the manifest, in order,
    from the line at byte ``start`` on (an offset this gave earlier). Torn or garbled lines are
    skipped, as ``output.resume.read_records`` does."""
    try:
        handle = (out_dir / MANIFEST).open("rb")
    except FileNotFoundError:
        return
    with handle:
        handle.seek(start)
        offset = start
        for line in handle:
            here, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                return  # a torn last line
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and is_dataset_record(record, out_dir):
                yield here, record


def own_folder(folder: Path) -> None:
    """Create ``folder`` (an exporter's own, under OUT) and delete its ``.tmp-`` files, the
    leftovers of a killed run. Refuses a symlink: sdbatch writes only inside OUT."""
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symlink; sdbatch writes only inside the output "
                          "directory. Remove it, then rerun")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(folder):
            path = folder / name
            if name.startswith(TMP_PREFIX) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(exc, folder) from None


def append_file(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created when missing)."""
    try:
        with path.open("ab") as handle:
            handle.write(data)
            handle.flush()
    except OSError as exc:
        raise output_error(exc, path) from None


def needs_header(path: Path) -> bool:
    """True when ``path`` is missing or empty (an append must start with a header)."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True
