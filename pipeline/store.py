"""The output directory: crash-safe writes, the manifest, and what a resumed run may skip.

Layout::

    OUT/images/<name>.<ext>      image bytes exactly as the backend sent them
    OUT/images/<name>.json       sidecar: the image's manifest record
    OUT/manifest.jsonl           one record per saved image, appended after the files exist
    OUT/failures.jsonl           one record per variant that failed for good in the last run
    OUT/run.json                 job hash, sdbatch version, start/end, counts, status
    OUT/job.json                 the job as run, without credentials (for grid/reproduce)

Write order for a variant: each image to ``.tmp-*`` then rename; each sidecar the same way; then
all its manifest lines in one append. Only then is the variant done. A kill at any point leaves
either no manifest line (the variant is redone, the same names are overwritten) or a partial last
line (dropped and repaired on the next open). Records of a variant with fewer lines than images
are dropped on open, so ``(id, image_index)`` never appears twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import orjson

from pipeline.errors import OutputError
from pipeline.model import Failed, Generated
from pipeline.naming import Namer, inside
from pipeline.response import EXTENSIONS

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
RUN_FILE = "run.json"
JOB_COPY = "job.json"
_DUMP = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def output_error(exc: OSError, path: Path | str) -> OutputError:
    reason = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some disk space",
            errno.EACCES: "fix the permissions",
            errno.EPERM: "fix the permissions",
            errno.EROFS: "choose a writable --out"}.get(exc.errno or 0, "check the path")
    return OutputError(f"cannot write {path}: {reason}. {hint.capitalize()}, then rerun the same "
                       "command: finished images are kept and the run resumes")


def replace_file(path: Path, chunks: bytes | Iterable[bytes], *, fsync: bool = True) -> None:
    """Write ``path`` atomically: a ``.tmp-`` name beside it, (fsync,) rename over it.

    A failure leaves the old file (if any) and no temporary file; it raises ``OutputError``.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                handle.write(chunk)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from None


@dataclass(slots=True)
class ResumeState:
    """What the output directory already holds, read once at start."""

    complete: set[str] = field(default_factory=set)
    images: int = 0
    repaired_lines: int = 0
    dropped_partial: int = 0


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed record of a JSONL file; a torn or garbled line is skipped."""
    return (record for record in _scan_lines(path) if record is not None)


def _scan_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """One item per line of a JSONL file: its record, or None for a torn or garbled line."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith(b"\n"):
                yield None  # a torn last line from a killed run
                return
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            yield record if isinstance(record, dict) else None


class OutputStore:
    """Owns one output directory for one run. Only the writer task calls ``write``."""

    def __init__(self, root: Path, *, namer: Namer | None = None, fsync: bool = True) -> None:
        self.root = root
        self.images_dir = root / "images"
        self.namer = namer or Namer()
        self.fsync = fsync
        self.resume = ResumeState()
        self._manifest: Any = None
        self._failures: Any = None

    # --- start ------------------------------------------------------------------------------

    def prepare(self) -> ResumeState:
        """Create the layout, clean temp files, repair the manifest, learn what is done."""
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TMP_PREFIX}probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise output_error(exc, exc.filename or self.root) from None
        for folder in (self.root, self.images_dir):
            for tmp in folder.rglob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
        self.resume = self._repair_manifest()
        return self.resume

    def _repair_manifest(self) -> ResumeState:
        path = self.root / MANIFEST
        state = ResumeState()
        if not path.exists():
            return state
        counts: dict[str, int] = {}
        expected: dict[str, int] = {}
        valid: set[tuple[str, int]] = set()  # first record of each key, its file present
        total_lines = 0
        for record in _scan_lines(path):  # pass 1: what is complete (one stat per image)
            total_lines += 1
            if record is None:
                continue
            ident, index = record.get("id"), record.get("image_index")
            if not isinstance(ident, str) or not isinstance(index, int) or (ident, index) in valid:
                continue
            if record.get("kind", "generation") != "generation":
                valid.add((ident, index))
                continue
            file = record.get("file")
            if not isinstance(file, str) or not inside(file) or not (self.root / file).is_file():
                continue
            valid.add((ident, index))
            counts[ident] = counts.get(ident, 0) + 1
            expected[ident] = int(record.get("images_expected", 1))
        state.complete = {i for i, n in counts.items() if n >= expected[i]}
        drop = set(counts) - state.complete
        lines: list[bytes] = []
        for record in read_records(path):  # pass 2: keep each valid key of complete variants
            key = (record.get("id"), record.get("image_index"))
            if key in valid and key[0] in state.complete:
                valid.discard(key)  # so a repeated line is not kept twice
                lines.append(orjson.dumps(record, option=_DUMP) + b"\n")
        kept = len(lines)
        state.images = kept
        if kept != total_lines:
            state.repaired_lines = total_lines - kept
            state.dropped_partial = len(drop)
            replace_file(path, lines)
            log.info("repaired %s: dropped %d line(s) of %d unfinished variant(s) or torn writes",
                     path, state.repaired_lines, len(drop))
        return state

    async def open(self) -> None:
        try:
            self._manifest = await aiofiles.open(self.root / MANIFEST, "ab")
            self._failures = await aiofiles.open(self.root / FAILURES, "wb")
        except OSError as exc:
            raise output_error(exc, exc.filename or self.root) from None

    async def close(self) -> None:
        for handle in (self._manifest, self._failures):
            if handle is not None:
                await handle.close()
        self._manifest = self._failures = None

    # --- the writer stage ---------------------------------------------------------------------

    async def write(self, result: Generated) -> list[dict[str, Any]]:
        """Write a generated variant's files, then its manifest lines; returns the records.

        The files of one variant are written in one worker thread (one hop, not one per system
        call); the manifest append happens only after all of them are in place.
        """
        records, files = self._records_for(result)
        await asyncio.to_thread(self._write_files, files)
        blob = b"".join(orjson.dumps(r, option=_DUMP) + b"\n" for r in records)
        try:
            await self._manifest.write(blob)
            await self._manifest.flush()
        except OSError as exc:
            raise output_error(exc, self.root / MANIFEST) from None
        return records

    def _records_for(self, result: Generated) -> tuple[list[dict[str, Any]],
                                                       list[tuple[Path, bytes]]]:
        variant = result.variant
        axes = {k: v for k, v in variant.axes}
        records: list[dict[str, Any]] = []
        files: list[tuple[Path, bytes]] = []
        created = now_iso()
        for image in result.images:
            ext = EXTENSIONS.get(image.format, "bin")
            rel = self.namer.relative_path(
                ordinal=variant.ordinal, variant_id=variant.id, index=image.index,
                seed=image.seed if image.seed is not None else variant.seed,
                prompt=variant.axis("prompt", variant.prompt), axes=axes, extension=ext,
                extra=image.kind == "extra")
            record: dict[str, Any] = {
                "id": variant.id, "image_index": image.index, "kind": image.kind,
                "file": rel, "format": image.format,
                "prompt": image.prompt if image.prompt is not None else variant.prompt,
                "negative_prompt": (image.negative_prompt if image.negative_prompt is not None
                                    else variant.negative_prompt),
                "seed": image.seed, "subseed": image.subseed,
                "requested_seed": variant.seed,
                "backend": result.backend, "model": result.model,
                "sampler": result.info.get("sampler_name"),
                "ordinal": variant.ordinal, "axes": axes,
                "images_expected": variant.images_expected,
                "params": result.params,
                "infotext": image.infotext,
                "sha256": hashlib.sha256(image.data).hexdigest(),
                "bytes": len(image.data),
                "attempts": result.attempts, "elapsed_s": round(result.elapsed_s, 3),
                "created": created,
            }
            path = self.root / rel
            files.append((path, image.data))
            files.append((path.with_suffix(".json"),
                          orjson.dumps(record, option=_DUMP | orjson.OPT_INDENT_2)))
            records.append(record)
        return records, files

    def _write_files(self, files: list[tuple[Path, bytes]]) -> None:
        for path, data in files:
            replace_file(path, data, fsync=self.fsync)

    async def record_failure(self, failed: Failed) -> dict[str, Any]:
        record = {"id": failed.variant.id, "ordinal": failed.variant.ordinal,
                  "prompt": failed.variant.prompt, "seed": failed.variant.seed,
                  "axes": {k: v for k, v in failed.variant.axes},
                  "error": failed.error, "status": failed.status, "attempts": failed.attempts,
                  "backend": failed.backend, "at": now_iso()}
        try:
            await self._failures.write(orjson.dumps(record, option=_DUMP) + b"\n")
            await self._failures.flush()
        except OSError as exc:
            raise output_error(exc, self.root / FAILURES) from None
        return record

    # --- run bookkeeping ----------------------------------------------------------------------

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        replace_file(self.root / name, orjson.dumps(data, option=_DUMP | orjson.OPT_INDENT_2),
                     fsync=self.fsync)

    def read_run(self) -> dict[str, Any]:
        try:
            data = orjson.loads((self.root / RUN_FILE).read_bytes())
            return data if isinstance(data, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

