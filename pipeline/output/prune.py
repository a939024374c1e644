"""Images in an output directory that the job no longer makes (after an edit), and moving them
aside: out of the manifest, into ``OUT/pruned/<time>/`` (never deleted)."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import MANIFEST, inside
from pipeline.output.resume import DUMP, read_records

PRUNED_DIR = "pruned"


@dataclass(slots=True)
class PruneReport:
    stale_images: int = 0
    stale_variants: int = 0
    kept_images: int = 0
    moved_to: Path | None = None
    examples: list[str] = field(default_factory=list)


def job_ids(plan: Any) -> set[str]:
    """Every variant id the job makes (one expansion pass)."""
    from pipeline import expand

    return {v.id for v in expand.variants(plan)}


def stale(out_dir: Path, ids: Container[str]) -> Iterator[dict[str, Any]]:
    for record in read_records(out_dir / MANIFEST):
        if record.get("id") not in ids:
            yield record


def count_stale(out_dir: Path, ids: Container[str]) -> PruneReport:
    report = PruneReport()
    variants: set[str] = set()
    for record in read_records(out_dir / MANIFEST):
        if record.get("id") in ids:
            report.kept_images += 1
            continue
        report.stale_images += 1
        variants.add(str(record.get("id")))
        if len(report.examples) < 5 and isinstance(record.get("file"), str):
            report.examples.append(record["file"])
    report.stale_variants = len(variants)
    return report


def prune(out_dir: Path, ids: Container[str], *, dry_run: bool = False) -> PruneReport:
    """Move the images of variants the job no longer makes aside and drop their manifest lines.

    The caller holds the directory's lock. Files move (rename) into ``pruned/<time>/``, keeping
    their relative paths and sidecars; the manifest is rewritten atomically afterwards, so a kill
    midway leaves records whose files are gone, which the next run's repair drops.
    """
    report = count_stale(out_dir, ids)
    if dry_run or not report.stale_images:
        return report
    target = out_dir / PRUNED_DIR / time.strftime("%Y%m%d-%H%M%S")
    report.moved_to = target
    for record in stale(out_dir, ids):
        file = record.get("file")
        if not isinstance(file, str) or not inside(file):
            continue
        image = out_dir / file
        # the image, its sidecar and the dataset files beside it (captions): names carry the id
        for src in list(image.parent.glob(glob.escape(image.stem) + ".*")):
            dst = target / src.relative_to(out_dir)
            if src.is_file() and not src.is_symlink():
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                except OSError as exc:
                    raise output_error(exc, src) from exc
    replace_file(out_dir / MANIFEST, (orjson.dumps(r, option=DUMP) + b"\n"
                                      for r in read_records(out_dir / MANIFEST)
                                      if r.get("id") in ids))
    return report

