"""Parquet with the images inside, the layout the Hugging Face Hub's viewer reads:
``OUT/parquet/``::

    train-00000.parquet   image: {bytes, path} (the bytes as written, the file's name), then the
    train-00001.parquet   columns (those of imagefolder: ``columns:`` or the defaults)
    _stats.json

Each file holds at most ``dataset: {parquet_shard_mb: M}`` MB of images (default 500, as
``datasets.push_to_hub`` shards) and 20,000 rows, in row groups of at most 100 rows or 64 MB, so
the viewer
and streaming readers fetch little at a time. The schema's ``huggingface`` metadata declares
``image`` an ``Image`` feature, so ``datasets.load_dataset("parquet", data_dir=OUT/parquet)``
(or the Hub, with the folder uploaded as a dataset repo) gives PIL images. File names carry the
``train`` split.

Samples are the manifest's generations in order; a file ends before the image that would take it
past the bound, so its content follows from the manifest alone (resume: ``shards``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import OutputError
from pipeline.outputs.columns import Column
from pipeline.outputs.exporter import Record
from pipeline.outputs.shards import (
    Published,
    ShardedExporter,
    ShardRule,
    ShardWriter,
    publish_file,
    published_from,
    shard_numbers,
    tmp_path,
)
from pipeline.outputs.table import ParquetStream, Table, read_sdbatch_metadata

FOLDER = "parquet"
DEFAULT_SHARD_MB = 500
MAX_ROWS = 20_000  # with small images, so that reopening the last file stays quick
GROUP_ROWS = 100
GROUP_BYTES = 64 << 20


def file_name(number: int) -> str:
    return f"train-{number:05d}.parquet"


class ParquetExporter(ShardedExporter):
    """Keeps ``OUT/parquet/`` in step with the manifest."""

    name = "parquet"
    folder_name = FOLDER

    def __init__(self, out_dir: Path, *, columns: list[Column],
                 shard_mb: int = DEFAULT_SHARD_MB, fsync: bool = True) -> None:
        self.table = Table(tuple(columns), image=True)
        self.shard_mb = shard_mb
        super().__init__(out_dir, ShardRule(max_samples=MAX_ROWS, max_bytes=shard_mb << 20),
                         {"format": "parquet/1", "shard_mb": shard_mb,
                          "columns": self.table.signature()}, fsync=fsync)

    def open_writer(self, number: int) -> ShardWriter:
        return _ParquetShard(self, number)

    def shard_files(self, number: int) -> list[Path]:
        return [self.folder / file_name(number)]

    def published(self, number: int) -> Published | None:
        (path,) = self.shard_files(number)
        meta = read_sdbatch_metadata(path) if path.is_file() else None
        return None if meta is None else published_from(meta, path.stat().st_size)

    def published_numbers(self) -> list[int]:
        return list(shard_numbers(self.folder, ".parquet"))

    def stats_extra(self) -> dict[str, Any]:
        return {"shard_mb": self.shard_mb}


class _ParquetShard(ShardWriter):
    def __init__(self, exporter: ParquetExporter, number: int) -> None:
        (self.final,) = exporter.shard_files(number)
        self.fsync = exporter.fsync
        self.tmp = tmp_path(self.final)
        self.rows = ParquetStream(self.tmp, exporter.table, group_rows=GROUP_ROWS,
                                  group_bytes=GROUP_BYTES)

    def add(self, index: int, record: Record, image: bytes) -> None:
        self.rows.add(record, image=image, image_path=PurePosixPath(record["file"]).name)

    def reuse(self, published: Published) -> bool:
        """Start from the published file's rows, row group by row group (no image reads)."""
        import pyarrow.parquet as pq

        try:
            source = pq.ParquetFile(str(self.final))
        except (OSError, ValueError):
            return False
        if source.metadata.num_rows != published.count:
            return False
        try:  # from here on a failure cannot fall back: rows are already written
            for group in range(source.num_row_groups):
                self.rows.write_table(source.read_row_group(group))
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read {self.final} again ({exc}); delete it and rerun "
                              "the same command") from None
        return True

    def add_reused(self, index: int, record: Record) -> None:
        pass  # the row came whole from the published file

    def publish(self, metadata: dict[str, Any]) -> int:
        try:
            size = self.rows.close(metadata, fsync=self.fsync)
        except BaseException:
            self.rows.abort()
            raise
        publish_file(self.tmp, self.final)
        return size

    def abort(self) -> None:
        self.rows.abort()
