"""The writer's side of the output directory: image files, sidecars, manifest and failure lines.

Write order for a variant: each image to ``.tmp-*`` then rename; each sidecar the same way; then
all its manifest lines in one append. Only then is the variant done. A kill at any point leaves
either no manifest line (the variant is redone, the same names are overwritten) or a partial last
line (dropped and repaired on the next open, see ``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from pipeline.imagebytes import EXTENSIONS
from pipeline.job.naming import Namer
from pipeline.errors import OutputError, OutputInUse
from pipeline.model import Failed, Generated
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import FAILURES, IMAGES_DIR, MANIFEST, TMP_PREFIX, now_iso
from pipeline.output.lock import LOCK_FILE, DirectoryLock
from pipeline.output.resume import DUMP as _DUMP, ResumeState, repair_manifest

log = logging.getLogger(__name__)

def check_output_dir(root: Path) -> None:
    """Refuse a directory that exists, is not empty, and is not an sdbatch output."""
    if root.is_symlink() and not root.exists():
        raise OutputInUse(f"--out {root} is a dangling symlink\n  fix: choose another --out")
    if not root.exists():
        return
    if not root.is_dir():
        raise OutputInUse(f"--out {root} is a file, not a directory\n  fix: choose another --out")
    try:
        names = {p.name for p in root.iterdir()}
    except OSError as exc:
        raise output_error(exc, root) from exc
    for name in (IMAGES_DIR, MANIFEST, FAILURES, "run.json", "job.json", LOCK_FILE):
        if name in names and (root / name).is_symlink():
            raise OutputError(f"{root / name} is a symlink; sdbatch writes only inside the "
                              "output directory. Remove it, then rerun")
    if names and not names & {MANIFEST, "run.json", LOCK_FILE}:
        shown = ", ".join(sorted(names)[:5])
        raise OutputInUse(f"--out {root} is not empty and holds no sdbatch output ({shown}"
                          f"{'...' if len(names) > 5 else ''}); sdbatch will not write into it\n"
                          "  fix: choose a new or empty directory, e.g. --out "
                          f"{root / 'sdbatch'}")


class OutputStore:
    """Owns one output directory for one run. Only the writer task calls ``write``."""

    def __init__(self, root: Path, *, namer: Namer | None = None, fsync: bool = True) -> None:
        self.root = root
        self.images_dir = root / IMAGES_DIR
        self.namer = namer or Namer()
        self.fsync = fsync
        self.resume = ResumeState()
        self._manifest: Any = None
        self._failures: Any = None
        self._lock = DirectoryLock(root)
        self._safe_dirs: set[Path] = set()

    # --- start ------------------------------------------------------------------------------

    def prepare(self, *, verify: bool = False, lock_wait_s: float = 0.0) -> ResumeState:
        """Check the directory is ours, lock it, clean our temp files, repair the manifest,
        learn what is done. ``verify``: check every recorded image's sha256, not just its size."""
        check_output_dir(self.root)
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, exc.filename or self.root) from exc
        self._lock.acquire(wait_s=lock_wait_s)
        try:
            probe = self.root / f"{TMP_PREFIX}probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self._lock.release()
            raise output_error(exc, exc.filename or self.root) from exc
        # Only our own temp names, only in our own folders (never through a user's tree).
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
        for tmp in self.images_dir.rglob(f"{TMP_PREFIX}*"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
        self.resume = repair_manifest(self.root, verify=verify)
        return self.resume

    async def open(self) -> None:
        try:
            for name in (MANIFEST, FAILURES):
                if (self.root / name).is_symlink():
                    raise OutputError(f"{self.root / name} is a symlink; sdbatch writes only "
                                      "inside the output directory. Remove it, then rerun")
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._manifest = os.open(self.root / MANIFEST, flags | os.O_APPEND, 0o644)
            self._failures = os.open(self.root / FAILURES, flags | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise output_error(exc, exc.filename or self.root) from exc

    async def close(self) -> None:
        """Close the files and release the directory; never raises (the run already knows)."""
        for fd in (self._manifest, self._failures):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._manifest = self._failures = None
        self._lock.release()

    # --- the writer stage ---------------------------------------------------------------------

    async def write(self, result: Generated) -> list[dict[str, Any]]:
        """Write a generated variant's files, then its manifest lines; returns the records.

        The files of one variant are written in one worker thread (one hop, not one per system
        call); the manifest append happens only after all of them are in place.
        """
        records, files = self._records_for(result)
        blob = b"".join(orjson.dumps(r, option=_DUMP) + b"\n" for r in records)
        await asyncio.to_thread(self._write_variant, files, blob)
        return records

    def _write_variant(self, files: list[tuple[Path, bytes]], lines: bytes) -> None:
        self._write_files(files)
        append_whole(self._manifest, lines, self.root / MANIFEST)

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
                "backend": result.backend, "backend_url": result.backend_url or result.backend,
                "model": result.model,
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
            self._check_parent(path.parent)
            replace_file(path, data, fsync=self.fsync)

    def _check_parent(self, folder: Path) -> None:
        """Never write through a symlinked folder out of the output directory."""
        if folder in self._safe_dirs:
            return
        folder.mkdir(parents=True, exist_ok=True)
        real, root = os.path.realpath(folder), os.path.realpath(self.root)
        if real != root and not real.startswith(root + os.sep):
            raise OutputError(f"{folder} leads outside the output directory (a symlink?); "
                              "sdbatch writes only inside it. Remove the link, then rerun")
        if len(self._safe_dirs) < 100_000:
            self._safe_dirs.add(folder)

    async def record_failure(self, failed: Failed) -> dict[str, Any]:
        record = {"id": failed.variant.id, "ordinal": failed.variant.ordinal,
                  "prompt": failed.variant.prompt, "seed": failed.variant.seed,
                  "axes": {k: v for k, v in failed.variant.axes},
                  "error": failed.error, "status": failed.status, "attempts": failed.attempts,
                  "backend": failed.backend, "at": now_iso()}
        append_whole(self._failures, orjson.dumps(record, option=_DUMP) + b"\n",
                     self.root / FAILURES)
        return record

    # --- run bookkeeping ----------------------------------------------------------------------

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        replace_file(self.root / name, orjson.dumps(data, option=_DUMP | orjson.OPT_INDENT_2),
                     fsync=self.fsync)


def append_whole(fd: int, data: bytes, path: Path) -> None:
    """Append ``data`` to an O_APPEND file: all of it or, on failure, none (the file is cut back
    to where it was), so a full disk never leaves half a manifest line."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise output_error(exc, path) from exc
