"""The resume filter's facts: what the output directory already holds complete.

Read once at start: a variant is complete when every image it expects has a manifest record whose
file exists. Unfinished variants' lines and torn lines are dropped (the manifest is rewritten
atomically), so ``(id, image_index)`` never appears twice and a rerun redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import stat
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


def repair_manifest(root: Path, *, verify: bool = False) -> ResumeState:
    """Learn what is complete and rewrite the manifest without unfinished or torn records.

    A record counts only when its file is still the recorded one: the size must match (one
    ``stat``), and with ``verify`` its sha256 too. A line that is torn, not an object, or has
    values of the wrong type is set aside (dropped; its variant is redone), never a crash.
    """
    path = root / MANIFEST
    state = ResumeState()
    if not path.exists():
        return state
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    valid: set[tuple[str, int]] = set()  # first record of each key, its file present
    bad_lines = total_lines = 0
    for record in _scan_lines(path):  # pass 1: what is complete (one stat per image)
        total_lines += 1
        key = _usable(record, root, valid, verify)
        if key is None:
            bad_lines += 1
            continue
        valid.add(key)
        if record.get("kind", "generation") == "generation":
            counts[key[0]] = counts.get(key[0], 0) + 1
            expected[key[0]] = record["images_expected"]
    state.complete = {i for i, n in counts.items() if n >= expected[i]}
    drop = set(counts) - state.complete
    state.images = sum(counts[i] for i in state.complete)
    if bad_lines or drop:
        written = 0

        def kept() -> Iterator[bytes]:  # pass 2: each valid key of complete variants, streamed
            nonlocal written
            for record in read_records(path):
                key = (record.get("id"), record.get("image_index"))
                if key in valid and key[0] in state.complete:
                    valid.discard(key)  # so a repeated line is not kept twice
                    written += 1
                    yield orjson.dumps(record, option=DUMP) + b"\n"

        replace_file(path, kept())
        state.repaired_lines = total_lines - written
        state.dropped_partial = len(drop)
        log.info("repaired %s: dropped %d line(s) of %d unfinished variant(s) or torn writes",
                 path, state.repaired_lines, len(drop))
    return state


def _usable(record: dict[str, Any] | None, root: Path, valid: set[tuple[str, int]],
            verify: bool) -> tuple[str, int] | None:
    """The record's (id, image_index) when it is well-typed, new, and its file is intact."""
    if record is None:
        return None
    ident, index = record.get("id"), record.get("image_index")
    if not isinstance(ident, str) or not isinstance(index, int) or isinstance(index, bool) \
            or (ident, index) in valid:
        return None
    if record.get("kind", "generation") != "generation":
        return ident, index
    file, size = record.get("file"), record.get("bytes")
    expected = record.setdefault("images_expected", 1)
    if not isinstance(expected, int) or isinstance(expected, bool) or expected < 1:
        return None
    if not isinstance(file, str) or not inside(file):
        return None
    target = root / file
    try:
        st = target.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (isinstance(size, int) and st.st_size != size):
        return None
    if verify:
        digest = record.get("sha256")
        if not isinstance(digest, str) or _sha256(target) != digest:
            return None
    return ident, index


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class ResumeFilter:
    """Drops variants the output directory already holds complete, counting what it dropped;
    repeats of a variant the job expands twice (e.g. ``{a|a}``) are dropped where they arise,
    by ``expand.variants(..., on_repeat=filter.repeat)``, and counted here too. One filter serves
    every stream of a run; ``on_skip(total)`` is told the running total every ``report_every``
    drops. It keeps nothing per variant beyond ``complete``."""

    def __init__(self, complete: set[str], *, on_skip: Any = None, report_every: int = 256) -> None:
        self.complete = complete
        self.skipped = 0
        self._on_skip = on_skip
        self._report_every = report_every

    def repeat(self, variant: Any = None) -> None:
        """A variant the stream did not yield because it repeats one it did."""
        self._count()

    def _count(self) -> None:
        self.skipped += 1
        if self._on_skip is not None and self.skipped % self._report_every == 0:
            self._on_skip(self.skipped)

    def wrap(self, stream: Iterator[Any]) -> Iterator[Any]:
        complete = self.complete
        for variant in stream:
            if complete and variant.id in complete:
                self._count()
                continue
            yield variant
        if self._on_skip is not None and self.skipped:
            self._on_skip(self.skipped)
