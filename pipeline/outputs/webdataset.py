"""WebDataset tar shards, img2dataset's layout: ``OUT/webdataset/``::

    00000.tar        N samples: 000000000.png (the bytes as written), 000000000.txt (caption),
                     000000000.json (the manifest record, with "key" and "caption"; the request's
                     params without init_images/mask/script blobs), ...
    00000.parquet    one row per sample: key, caption and the record's fields (no image bytes)
    _stats.json      the dataset: count, shards, bytes (img2dataset's count/successes/... first)

Keys are ``SSSSSIIII``: the shard number (5 digits, more past 99,999) and the index in the shard
(as many digits as ``shard_size - 1`` has: 4 for the default 10,000), so they sort in manifest
order and never hold a dot (webdataset splits a member's name at the first dot). Samples are
the manifest's generations in order, ``shard_size`` to a shard (job key
``dataset: {shard_size: N}``), so a sample's key follows from its place in the manifest.

A shard is written to ``.tmp-00003.tar`` / ``.tmp-00003.parquet`` and renamed when full (the
tar first, then the parquet, whose footer holds the shard's fingerprint and tar size); the last,
partial shard at ``close()``. See ``pipeline.outputs.shards`` for resume after a crash.

Read it with ``webdataset.WebDataset("OUT/webdataset/{00000..00009}.tar")`` (``.decode("pil")``
for images), the records with ``pyarrow.dataset.dataset(sorted(glob("OUT/webdataset/*.parquet")),
format="parquet")`` (a list: the folder holds the tars too).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tarfile
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from pipeline.outputs.captions import CaptionTemplate
from pipeline.outputs.columns import BULKY_PARAMS, Column
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
from pipeline.output.atomic import output_error
from pipeline.output.resume import DUMP

FOLDER = "webdataset"
DEFAULT_SHARD_SIZE = 10_000
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_WRITE_BUFFER = 1 << 20


def shard_name(number: int) -> str:
    return f"{number:05d}"


def slim_params(record: Record) -> Any:
    """The request without input images and script blobs (they stay in the sidecar)."""
    params = record.get("params")
    if not isinstance(params, dict) or not BULKY_PARAMS & params.keys():
        return params
    return {k: v for k, v in params.items() if k not in BULKY_PARAMS}


# A POSIX ustar header for a regular file, mode 0644, owner 0:0, as tarfile writes it: only the
# name, size, mtime and checksum change between members (tarfile's generic header is ~5x slower).
_HEADER = bytearray(_BLOCK)
_HEADER[100:108] = b"0000644\0"
_HEADER[108:116] = _HEADER[116:124] = b"0000000\0"
_HEADER[148:156] = b" " * 8  # the checksum counts its own field as spaces
_HEADER[156:157] = tarfile.REGTYPE
_HEADER[257:265] = tarfile.POSIX_MAGIC
_HEADER_SUM = sum(_HEADER)
_MAX_OCTAL_11 = 8 ** 11 - 1


def ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    """The 512-byte header of one member (``name`` at most 100 ASCII bytes)."""
    if len(name) > 100 or size > _MAX_OCTAL_11 or not 0 <= mtime <= _MAX_OCTAL_11:
        raise ValueError(f"tar member {name!r} does not fit a ustar header")
    size_field = b"%011o\0" % size
    mtime_field = b"%011o\0" % mtime
    header = bytearray(_HEADER)
    header[0:len(name)] = name
    header[124:136] = size_field
    header[136:148] = mtime_field
    checksum = _HEADER_SUM + sum(name) + sum(size_field) + sum(mtime_field)
    header[148:155] = b"%06o\0" % checksum
    return bytes(header)


class WebDatasetExporter(ShardedExporter):
    """Keeps ``OUT/webdataset/`` in step with the manifest."""

    name = "webdataset"
    folder_name = FOLDER

    def __init__(self, out_dir: Path, *, caption: CaptionTemplate, columns: list[Column],
                 shard_size: int = DEFAULT_SHARD_SIZE, fsync: bool = True) -> None:
        self.caption = caption
        self.shard_size = shard_size
        self.index_digits = max(1, len(str(shard_size - 1)))
        self.table = Table(tuple(columns), extra=("key", "caption"))
        super().__init__(out_dir, ShardRule(max_samples=shard_size),
                         {"format": "webdataset/1", "shard_size": shard_size,
                          "caption": caption.template, "columns": self.table.signature()},
                         fsync=fsync)

    def key(self, number: int, index: int) -> str:
        return f"{shard_name(number)}{index:0{self.index_digits}d}"

    def open_writer(self, number: int) -> ShardWriter:
        return _TarShard(self, number)

    def shard_files(self, number: int) -> list[Path]:
        stem = shard_name(number)
        return [self.folder / f"{stem}.tar", self.folder / f"{stem}.parquet"]

    def published(self, number: int) -> Published | None:
        tar, parquet = self.shard_files(number)
        meta = read_sdbatch_metadata(parquet) if parquet.is_file() else None
        if meta is None:
            return None
        try:
            tar_bytes = tar.stat().st_size
            parquet_bytes = parquet.stat().st_size
        except OSError:
            return None
        if meta.get("tar_bytes") != tar_bytes:
            return None
        return published_from(meta, tar_bytes + parquet_bytes)

    def published_numbers(self) -> list[int]:
        return [*shard_numbers(self.folder, ".tar"), *shard_numbers(self.folder, ".parquet")]

    def stats_extra(self) -> dict[str, Any]:
        return {"shard_size": self.shard_size}


class _TarShard(ShardWriter):
    """One shard's ``.tmp-`` tar, written member by member, and its streamed parquet."""

    def __init__(self, exporter: WebDatasetExporter, number: int) -> None:
        self.exporter = exporter
        self.number = number
        self.tar, self.parquet = exporter.shard_files(number)
        self.tmp_tar, self.tmp_parquet = tmp_path(self.tar), tmp_path(self.parquet)
        self._mtime_of: tuple[Any, int] = (None, 0)
        try:
            self.handle = self.tmp_tar.open("wb", buffering=_WRITE_BUFFER)
        except OSError as exc:
            raise output_error(exc, self.tmp_tar) from None
        try:
            self.rows = ParquetStream(self.tmp_parquet, exporter.table)
        except BaseException:
            self.handle.close()
            self.tmp_tar.unlink(missing_ok=True)
            raise
        self.size = 0

    def add(self, index: int, record: Record, image: bytes) -> None:
        key = self.exporter.key(self.number, index)
        caption = self.exporter.caption.render(record)
        extension = PurePosixPath(record["file"]).suffix.lstrip(".").lower() or "bin"
        sample = orjson.dumps({**record, "params": slim_params(record), "key": key,
                               "caption": caption}, option=DUMP)
        mtime = self._mtime(record.get("created"))
        try:
            self._member(f"{key}.{extension}", image, mtime)
            self._member(f"{key}.txt", caption.encode("utf-8"), mtime)
            self._member(f"{key}.json", sample, mtime)
        except OSError as exc:
            raise output_error(exc, self.tmp_tar) from None
        self.rows.add(record, (key, caption))

    def reuse(self, published: Published) -> bool:
        """Copy the published tar's members (all but its end-of-archive blocks) in the kernel,
        so reopening the last shard reads no image again."""
        meta = read_sdbatch_metadata(self.parquet) or {}
        data_bytes = meta.get("tar_data_bytes")
        try:
            source = self.tar.open("rb")
        except OSError:
            return False
        with source:
            if (meta.get("count") != published.count or not isinstance(data_bytes, int)
                    or os.fstat(source.fileno()).st_size != meta.get("tar_bytes")):
                return False
            try:
                self.handle.flush()
                _copy_range(source, self.handle, data_bytes)
            except OSError as exc:
                raise output_error(exc, self.tmp_tar) from None
        self.size = data_bytes
        return True

    def add_reused(self, index: int, record: Record) -> None:
        key = self.exporter.key(self.number, index)
        self.rows.add(record, (key, self.exporter.caption.render(record)))

    def _member(self, name: str, data: bytes, mtime: int) -> None:
        header = ustar_header(name.encode("ascii"), len(data), mtime)
        padding = -len(data) % _BLOCK
        self.handle.write(header)
        self.handle.write(data)
        if padding:
            self.handle.write(b"\0" * padding)
        self.size += len(header) + len(data) + padding

    def _mtime(self, created: Any) -> int:
        if created == self._mtime_of[0]:
            return self._mtime_of[1]
        try:
            value = int(datetime.fromisoformat(created).timestamp())
        except (TypeError, ValueError, OverflowError):
            value = 0
        self._mtime_of = (created, max(0, value))
        return self._mtime_of[1]

    def publish(self, metadata: dict[str, Any]) -> int:
        end = 2 * _BLOCK + (-(self.size + 2 * _BLOCK) % _RECORD)  # end-of-archive, as tarfile
        try:
            self.handle.write(b"\0" * end)
            self.handle.flush()
            if self.exporter.fsync:
                os.fsync(self.handle.fileno())
            self.handle.close()
        except OSError as exc:
            self.abort()
            raise output_error(exc, self.tmp_tar) from None
        tar_bytes = self.size + end
        try:
            parquet_bytes = self.rows.close({**metadata, "tar_bytes": tar_bytes,
                                             "tar_data_bytes": self.size},
                                            fsync=self.exporter.fsync)
        except BaseException:
            self.abort()
            raise
        publish_file(self.tmp_tar, self.tar)
        publish_file(self.tmp_parquet, self.parquet)  # last: its footer says the shard is whole
        return tar_bytes + parquet_bytes

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        self.rows.abort()
        with contextlib.suppress(OSError):
            self.tmp_tar.unlink(missing_ok=True)


def _copy_range(source: Any, target: Any, count: int) -> None:
    """The first ``count`` bytes of ``source`` appended to ``target`` (both at offset 0 and
    unbuffered here), by ``copy_file_range`` where the system has it."""
    src, dst = source.fileno(), target.fileno()
    copied = 0
    try:
        while copied < count:
            n = os.copy_file_range(src, dst, count - copied)
            if n == 0:
                break
            copied += n
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS,
                                                           errno.EINVAL, errno.EOPNOTSUPP):
            raise
        source.seek(copied)
        os.lseek(dst, copied, os.SEEK_SET)
        while copied < count:
            block = source.read(min(_WRITE_BUFFER, count - copied))
            if not block:
                break
            os.write(dst, block)
            copied += len(block)
    if copied != count:
        raise OSError(errno.EIO, f"the published shard is shorter than {count} bytes")
    target.seek(count)
