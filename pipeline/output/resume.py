"""The resume filter's facts: what the output directory already holds complete.

Read once at start: a variant is complete when every image it expects has a manifest record whose
file exists. Unfinished variants' lines and torn lines are dropped (the manifest is rewritten
atomically), so ``(id, image_index)`` never appears twice and a rerun redoes only what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.output.atomic import replace_file
from pipeline.output.layout import MANIFEST, inside

log = logging.getLogger(__name__)

DUMP = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


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


def repair_manifest(root: Path) -> ResumeState:
    """Learn what is complete and rewrite the manifest without unfinished or torn records."""
    path = root / MANIFEST
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
        if not isinstance(file, str) or not inside(file) or not (root / file).is_file():
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
            lines.append(orjson.dumps(record, option=DUMP) + b"\n")
    kept = len(lines)
    state.images = kept
    if kept != total_lines:
        state.repaired_lines = total_lines - kept
        state.dropped_partial = len(drop)
        replace_file(path, lines)
        log.info("repaired %s: dropped %d line(s) of %d unfinished variant(s) or torn writes",
                 path, state.repaired_lines, len(drop))
    return state


class ResumeFilter:
    """Drops variants the output directory already holds complete (and repeats of a variant the
    job expands twice, e.g. ``{a|a}``), counting what it dropped. One filter serves every stream
    of a run; ``on_skip(total)`` is told the running total every ``report_every`` drops."""

    def __init__(self, complete: set[str], *, on_skip: Any = None, report_every: int = 256) -> None:
        self.complete = complete
        self.skipped = 0
        self._seen: set[int | str] = set()  # ids as ints where they are hex: a third the memory
        self._on_skip = on_skip
        self._report_every = report_every

    def wrap(self, stream: Iterator[Any]) -> Iterator[Any]:
        for variant in stream:
            try:
                key: int | str = int(variant.id, 16)
            except ValueError:
                key = variant.id
            if variant.id in self.complete or key in self._seen:
                self.skipped += 1
                if self._on_skip is not None and self.skipped % self._report_every == 0:
                    self._on_skip(self.skipped)
                continue
            self._seen.add(key)
            yield variant
        if self._on_skip is not None and self.skipped:
            self._on_skip(self.skipped)
