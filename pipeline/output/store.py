"""The writer's side of the output directory: image files, sidecars, manifest and failure lines.

Write order for a variant: each image to ``.tmp-*`` then rename; each sidecar the same way; then
all its manifest lines in one append. Only then is the variant done. A kill at any point leaves
either no manifest line (the variant is redone, the same names are overwritten) or a partial last
line (dropped and repaired on the next open, see ``resume``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import aiofiles
import orjson

from pipeline.imagebytes import EXTENSIONS
from pipeline.job.naming import Namer
from pipeline.model import Failed, Generated
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import FAILURES, IMAGES_DIR, MANIFEST, TMP_PREFIX, now_iso
from pipeline.output.resume import DUMP as _DUMP, ResumeState, repair_manifest

log = logging.getLogger(__name__)


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
        self.resume = repair_manifest(self.root)
        return self.resume

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
