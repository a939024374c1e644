"""Parquet files written as a stream: typed columns from ``columns.Column``, row groups flushed as
they fill, so memory is one row group whatever the file's size.

``pyarrow`` is an optional dependency (``pip install 'sdbatch[parquet]'``), imported only when a
parquet or webdataset output is asked for; ``require_pyarrow`` turns its absence into a
``JobError`` before the run starts.

The schema carries the Hugging Face ``datasets`` features in its ``huggingface`` metadata (as
``datasets.Features.arrow_schema`` writes them), so an ``image`` column of ``{bytes, path}``
structs loads (and shows in the Hub's viewer) as images, not as raw structs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import JobError
from pipeline.outputs.columns import Column
from pipeline.outputs.exporter import Record
from pipeline.output.atomic import output_error

IMAGE = "image"
_ARROW = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}
META_KEY = "sdbatch"


def require_pyarrow(output: str, *, source_path: str = "") -> None:
    """Raise ``JobError`` when ``pyarrow`` (needed to write ``output``) is not installed."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise JobError(f"outputs: {output} writes Parquet files, which needs pyarrow ({exc})",
                       path=source_path, where="outputs",
                       hint="pip install 'sdbatch[parquet]' (or pip install pyarrow)") from None


@dataclass(frozen=True, slots=True)
class Table:
    """A file's columns: optionally ``image`` (struct of bytes and path) first, then ``columns``
    (each value read from the record and coerced to its type), then ``extra`` text columns whose
    values the writer passes in (``key``, ``caption``)."""

    columns: tuple[Column, ...]
    extra: tuple[str, ...] = ()
    image: bool = False

    @property
    def names(self) -> list[str]:
        return [*([IMAGE] if self.image else []), *self.extra, *(c.name for c in self.columns)]

    def signature(self) -> list[list[str]]:
        """What decides the file's content besides the records (for fingerprints)."""
        return [[IMAGE, "image"]] * self.image + [[n, "str"] for n in self.extra] + [
            [c.name, c.type] for c in self.columns]

    def features(self) -> dict[str, Any]:
        """The ``datasets`` features of this schema, as ``Features.to_dict()`` gives them."""
        out: dict[str, Any] = {}
        if self.image:
            out[IMAGE] = {"_type": "Image"}
        for name in self.extra:
            out[name] = {"dtype": "string", "_type": "Value"}
        for column in self.columns:
            out[column.name] = {"dtype": _ARROW[column.type], "_type": "Value"}
        return out

    def arrow_schema(self) -> Any:
        import pyarrow as pa

        types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
        fields = []
        if self.image:
            fields.append(pa.field(IMAGE, pa.struct([("bytes", pa.binary()),
                                                     ("path", pa.string())])))
        fields += [pa.field(name, pa.string()) for name in self.extra]
        fields += [pa.field(c.name, types[c.type]) for c in self.columns]
        metadata = {"huggingface": orjson.dumps({"info": {"features": self.features()}})}
        return pa.schema(fields, metadata=metadata)


class ParquetStream:
    """One Parquet file written row by row to ``path`` (a temporary name: the caller renames
    it). A row group is written every ``group_rows`` rows or ``group_bytes`` image bytes."""

    def __init__(self, path: Path, table: Table, *, group_rows: int = 1000,
                 group_bytes: int = 64 << 20) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.table = table
        self.group_rows = group_rows
        self.group_bytes = group_bytes
        self.rows = 0
        self._schema = table.arrow_schema()
        self._columns: list[list[Any]] = [[] for _ in self._schema.names]
        self._pending_bytes = 0
        leaves = [c for c in self._column_paths() if c != f"{IMAGE}.bytes"]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(
                str(path), self._schema, compression={c: "zstd" for c in leaves} | (
                    {f"{IMAGE}.bytes": "none"} if table.image else {}),
                use_dictionary=leaves, write_statistics=leaves)
        except OSError as exc:
            raise output_error(exc, path) from None

    def _column_paths(self) -> list[str]:
        paths = []
        for field in self._schema:
            if field.name == IMAGE and self.table.image:
                paths += [f"{IMAGE}.bytes", f"{IMAGE}.path"]
            else:
                paths.append(field.name)
        return paths

    def add(self, record: Record, extra: Sequence[str] = (), image: bytes | None = None,
            image_path: str | None = None) -> None:
        values: list[Any] = []
        if self.table.image:
            values.append({"bytes": image, "path": image_path})
            self._pending_bytes += len(image or b"")
        values += extra
        values += [c.value(record) for c in self.table.columns]
        for column, value in zip(self._columns, values):
            column.append(value)
        self.rows += 1
        if len(self._columns[0]) >= self.group_rows or self._pending_bytes >= self.group_bytes:
            self._flush()

    def write_table(self, table: Any) -> None:
        """Append whole rows read from another file of the same schema (as row groups)."""
        self._flush()
        try:
            self._writer.write_table(table.replace_schema_metadata(self._schema.metadata))
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self.rows += table.num_rows

    def _flush(self) -> None:
        if not self._columns[0]:
            return
        import pyarrow as pa

        batch = pa.record_batch([pa.array(values, type=field.type)
                                 for values, field in zip(self._columns, self._schema)],
                                schema=self._schema)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self._columns = [[] for _ in self._schema.names]
        self._pending_bytes = 0

    def close(self, metadata: dict[str, Any], *, fsync: bool = True) -> int:
        """Write what is buffered and the footer (with ``metadata`` under ``sdbatch``), fsync;
        returns the file's size."""
        self._flush()
        try:
            self._writer.add_key_value_metadata({META_KEY: orjson.dumps(metadata).decode()})
            self._writer.close()
            if fsync:
                with self.path.open("rb+") as handle:
                    os.fsync(handle.fileno())
            return self.path.stat().st_size
        except OSError as exc:
            raise output_error(exc, self.path) from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def read_sdbatch_metadata(path: Path) -> dict[str, Any] | None:
    """The ``sdbatch`` footer metadata of a Parquet file, or None (missing, torn, foreign)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_metadata(str(path)).metadata or {}).get(META_KEY.encode())
        data = orjson.loads(raw) if raw else None
    except (OSError, ValueError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
