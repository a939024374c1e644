"""Sharded dataset formats (webdataset, parquet): which sample goes in which shard, and resume.

A shard's content is a pure function of the manifest: samples are the manifest's generations in
order, cut into consecutive runs by the format's rule (``ShardRule``: at most N samples, or at
most B image bytes). So after a crash the same samples land in the same shards under the same
keys, and a sample is in exactly one shard, once.

Each published shard carries a fingerprint: a hash of the format's settings and of its samples'
``(id, image_index, file, sha256)`` in order. ``rebuild()`` streams the manifest once, keeping
only the current shard's running hash: a shard whose published fingerprint matches is kept as it
is, any other is written again, shards past the end are removed. The last, partial shard is
published too (after a crash it never was), so after ``rebuild()`` alone the published shards
hold exactly the manifest's samples. When the next sample arrives the last shard is reopened:
its samples are read again into a new temporary file (a format may copy the published shard's
bulk instead, as the webdataset tar is), which is published when the shard is full or at
``close()``, replacing the smaller one. Temporary files of a killed run are deleted by
``rebuild()`` (the exporter's folder is its own).

A shard in progress is only ever ``.tmp-`` files; publishing it is ``os.replace``, the file
holding the fingerprint last. The format supplies a ``ShardWriter`` (add samples, then publish
or abort) and reads fingerprints back. Memory is the current shard's writer buffer and a few
counters, whatever the size of the job.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import OutputError
from pipeline.outputs.exporter import (
    Exporter,
    Record,
    is_dataset_record,
    manifest_samples,
    own_folder,
)
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import TMP_PREFIX, now_iso

log = logging.getLogger(__name__)

STATS_FILE = "_stats.json"


@dataclass(frozen=True, slots=True)
class ShardRule:
    """Where one shard ends: at ``max_samples`` samples, or before the sample that would take
    its image bytes past ``max_bytes`` (a shard always takes at least one sample)."""

    max_samples: int | None = None
    max_bytes: int | None = None

    def fits(self, count: int, nbytes: int, record: Record) -> bool:
        if count == 0:
            return True
        if self.max_samples is not None and count >= self.max_samples:
            return False
        return self.max_bytes is None or nbytes + record_bytes(record) <= self.max_bytes

    def full(self, count: int, nbytes: int) -> bool:
        return self.max_samples is not None and count >= self.max_samples


def record_bytes(record: Record) -> int:
    size = record.get("bytes")
    return size if isinstance(size, int) and size > 0 else 0


@dataclass(frozen=True, slots=True)
class Published:
    """What a published shard's files say of it."""

    fingerprint: str
    count: int
    image_bytes: int
    size: int  # of its files, in bytes


@dataclass(slots=True)
class Chunk:
    """One shard's worth of consecutive samples, as far as it has got."""

    number: int
    start: int  # manifest byte offset of its first sample (-1: unknown, started mid-run)
    salt: bytes
    count: int = 0
    nbytes: int = 0
    _hash: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._hash = hashlib.blake2b(self.salt, digest_size=16)

    def add(self, record: Record) -> None:
        self._hash.update(orjson.dumps([record.get("id"), record.get("image_index"),
                                        record.get("file"), record.get("sha256")]))
        self.count += 1
        self.nbytes += record_bytes(record)

    @property
    def fingerprint(self) -> str:
        return f"{self.count}:{self._hash.hexdigest()}"


class ShardWriter(abc.ABC):
    """One shard being written to temporary files."""

    @abc.abstractmethod
    def add(self, index: int, record: Record, image: bytes) -> None:
        """Add the shard's ``index``-th sample (0-based)."""

    @abc.abstractmethod
    def publish(self, metadata: dict[str, Any]) -> int:
        """Finish the files, recording ``metadata`` (fingerprint, count, image_bytes) where
        ``published`` reads it, and rename them to their final names (that file last). Returns
        the shard's size in bytes."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close and delete the temporary files."""

    def reuse(self, published: Published) -> bool:
        """Start from the published version's first ``published.count`` samples without their
        images being read again (True), or not at all (False: every sample is ``add``-ed)."""
        return False

    def add_reused(self, index: int, record: Record) -> None:
        """The ``index``-th sample, whose bulk ``reuse`` took: what else it needs."""
        raise NotImplementedError


class ShardedExporter(Exporter):
    """The shard bookkeeping shared by the sharded formats; see the module docstring."""

    folder_name: str  # under OUT

    def __init__(self, out_dir: Path, rule: ShardRule, settings: Any, *,
                 fsync: bool = True) -> None:
        super().__init__(out_dir)
        self.fsync = fsync  # each shard's files, once, before they are renamed
        self.folder = self.out_dir / self.folder_name
        self.rule = rule
        # Changing a setting (shard size, caption template, columns) rewrites every shard.
        self.salt = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS, default=str)
        self._chunk: Chunk | None = None  # the last shard, being added to
        self._writer: ShardWriter | None = None  # its temporary files (None: not reopened yet)
        self._chunk_published: Published | None = None  # its published version, if any
        self._next_number = 0
        self._closed = False
        self._published = {"shards": 0, "count": 0, "bytes": 0, "shard_bytes": 0}

    # --- what a format provides -----------------------------------------------------------------

    @abc.abstractmethod
    def open_writer(self, number: int) -> ShardWriter:
        """A writer for shard ``number`` (its temporary files created)."""

    @abc.abstractmethod
    def published(self, number: int) -> Published | None:
        """What published shard ``number`` holds, if it is whole (else None)."""

    @abc.abstractmethod
    def shard_files(self, number: int) -> list[Path]:
        """The final names of shard ``number``'s files."""

    @abc.abstractmethod
    def published_numbers(self) -> Iterable[int]:
        """Numbers of every shard with at least one file under its final name."""

    def stats_extra(self) -> dict[str, Any]:
        return {}

    # --- the exporter -----------------------------------------------------------------------------

    def rebuild(self) -> None:
        self._abort_writer()
        self._chunk, self._chunk_published = None, None
        self._next_number, self._closed = 0, False
        self._published = {"shards": 0, "count": 0, "bytes": 0, "shard_bytes": 0}
        own_folder(self.folder)
        rewritten = 0
        chunk: Chunk | None = None
        for offset, record in manifest_samples(self.out_dir):
            if chunk is not None and not self.rule.fits(chunk.count, chunk.nbytes, record):
                rewritten += self._settle(chunk)
                chunk = None
            if chunk is None:
                chunk = Chunk(self._next_number, offset, self.salt)
                self._next_number += 1
            chunk.add(record)
            if self.rule.full(chunk.count, chunk.nbytes):
                rewritten += self._settle(chunk)
                chunk = None
        if chunk is not None:  # the last, partial shard: reopened when the next sample arrives
            rewritten += self._settle(chunk)
            self._chunk = chunk
            self._chunk_published = self.published(chunk.number)
        for number in sorted(set(self.published_numbers())):
            if number >= self._next_number:
                self._remove(number)
        self._write_stats()
        log.info("%s: %d shard(s) hold the manifest's samples; %d written again", self.folder,
                 self._next_number, rewritten)

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await asyncio.to_thread(self._add_all, rows)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # --- internals (in one worker thread at a time) -----------------------------------------------

    def _add_all(self, rows: list[Record]) -> None:
        if self._closed:
            raise OutputError(f"{self.folder}: samples arrived after the dataset was closed")
        for record in rows:
            chunk = self._chunk
            if chunk is not None and not self.rule.fits(chunk.count, chunk.nbytes, record):
                if self._writer is not None:
                    self._publish()
                chunk = self._chunk = None
            if chunk is None:
                chunk = self._chunk = Chunk(self._next_number, -1, self.salt)
                self._next_number += 1
                self._chunk_published = None
                self._writer = self.open_writer(chunk.number)
            elif self._writer is None:  # the published last shard grows: write it again
                self._writer = self._refill(chunk, self._chunk_published)
            self._writer.add(chunk.count, record, self._read_image(record))
            chunk.add(record)
            if self.rule.full(chunk.count, chunk.nbytes):
                self._publish()

    def _close(self) -> None:
        if self._closed:
            return
        if self._writer is not None:
            self._publish()
        self._closed = True
        self._write_stats()

    def _settle(self, chunk: Chunk) -> int:
        """Publish ``chunk``'s shard unless it already is; 1 when it was written."""
        published = self.published(chunk.number)
        if published is not None and published.fingerprint == chunk.fingerprint:
            self._count(published)
            return 0
        writer = self._refill(chunk, published)
        self._count(self._finish(writer, chunk))
        return 1

    def _refill(self, chunk: Chunk, published: Published | None) -> ShardWriter:
        """A writer for ``chunk``'s shard holding its samples, read again from the manifest.
        When the published version holds the first of them, the writer may take its bulk
        (``ShardWriter.reuse``) rather than read those images again."""
        if chunk.start < 0:
            raise OutputError(f"{self.folder}: shard {chunk.number} cannot be read again")
        reused = 0
        if published is not None and 0 < published.count <= chunk.count:
            head = Chunk(chunk.number, chunk.start, self.salt)
            for _, record in _take(manifest_samples(self.out_dir, chunk.start), published.count):
                head.add(record)
            if head.fingerprint == published.fingerprint:
                reused = published.count
        check = Chunk(chunk.number, chunk.start, self.salt)
        writer = self.open_writer(chunk.number)
        try:
            if reused and not writer.reuse(published):
                reused = 0
            for _, record in _take(manifest_samples(self.out_dir, chunk.start), chunk.count):
                if check.count < reused:
                    writer.add_reused(check.count, record)
                else:
                    writer.add(check.count, record, self._read_image(record))
                check.add(record)
            if check.fingerprint != chunk.fingerprint:
                raise OutputError(f"{self.folder}: the manifest changed while shard "
                                  f"{chunk.number} was written again; rerun the same command")
        except BaseException:
            writer.abort()
            raise
        return writer

    def _finish(self, writer: ShardWriter, chunk: Chunk) -> Published:
        size = writer.publish({"fingerprint": chunk.fingerprint, "count": chunk.count,
                               "image_bytes": chunk.nbytes})
        return Published(chunk.fingerprint, chunk.count, chunk.nbytes, size)

    def _publish(self) -> None:
        """Publish the last shard, in progress (its writer's files under their final names)."""
        assert self._chunk is not None and self._writer is not None
        writer, chunk = self._writer, self._chunk
        self._writer = None
        published = self._finish(writer, chunk)
        if self._chunk_published is not None:  # it replaced a smaller published version
            self._count(self._chunk_published, sign=-1)
        self._count(published)
        self._chunk_published = published
        if self.rule.full(chunk.count, chunk.nbytes):
            self._chunk, self._chunk_published = None, None
        self._write_stats()

    def _abort_writer(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _count(self, published: Published, sign: int = 1) -> None:
        self._published["shards"] += sign
        self._published["count"] += sign * published.count
        self._published["bytes"] += sign * published.image_bytes
        self._published["shard_bytes"] += sign * published.size


    def _remove(self, number: int) -> None:
        for path in self.shard_files(number):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise output_error(exc, path) from None
        log.info("%s: removed shard %d (not the manifest's)", self.folder, number)

    def _read_image(self, record: Record) -> bytes:
        path = self.out_dir / record["file"]
        try:
            return path.read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read {path} for the {self.name} dataset: "
                              f"{exc.strerror or exc}. Rerun the same command: the store "
                              "redoes variants whose images are missing") from None

    def _write_stats(self) -> None:
        """``_stats.json``: what the published shards hold (img2dataset's fields first);
        written when a shard is published, at rebuild and at close."""
        p = self._published
        stats = {"count": p["count"], "successes": p["count"], "failed_to_download": 0,
                 "failed_to_resize": 0, "status_dict": {"success": p["count"]},
                 "shards": p["shards"], "image_bytes": p["bytes"],
                 "shard_bytes": p["shard_bytes"], "format": self.name, "updated": now_iso(),
                 **self.stats_extra()}
        replace_file(self.folder / STATS_FILE,
                     orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n", fsync=False)


def published_from(meta: dict[str, Any], size: int) -> Published | None:
    """``Published`` from a shard's recorded metadata, or None when it is not ours/whole."""
    fingerprint, count, image_bytes = (meta.get(k) for k in ("fingerprint", "count",
                                                               "image_bytes"))
    if not (isinstance(fingerprint, str) and isinstance(count, int)
            and isinstance(image_bytes, int)):
        return None
    return Published(fingerprint, count, image_bytes, size)


def _take(items: Iterator[Any], n: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}")


def publish_file(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise output_error(exc, final) from None


def shard_numbers(folder: Path, suffix: str) -> Iterator[int]:
    """Numbers of ``folder``'s files named ``<digits><suffix>`` (``00012.tar``) or
    ``train-<digits><suffix>``."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if not name.endswith(suffix) or name.startswith(TMP_PREFIX):
            continue
        stem = name[: -len(suffix)].removeprefix("train-")
        if stem.isdigit():
            yield int(stem)
