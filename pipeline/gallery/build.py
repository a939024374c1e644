"""Collect the gallery's data from an output directory and write ``OUT/index.html``.

Data shape (one JSON object, embedded in the page)::

    title, status, updated, counts        the run (from run.json) and when the page was written
    axes:  [{name, title, values: [label, ...]}]    axes with 2..500 values, job order
    items: [{file, prompt, seed, v: [value index per axis, -1 if none], axes, params,
             infotext, ...}]                         one per saved image, manifest order
    failures: [{id, prompt, seed, axes, error, ...}]
    grids: [{file, page, done, failed, pending, ...}]   from grids/index.json

Every value is untrusted text (prompts come from job files and servers); the page inserts it
with ``textContent`` and DOM properties only, and the blob is escaped so it cannot end its
``<script>`` element.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from pipeline.errors import SdbatchError
from pipeline.gallery import infotext
from pipeline.gallery.page import embed_json, render_page
from pipeline.grid.labels import axis_title, label_for, ordered, value_key
from pipeline.grid.render import load_run_job, read_index
from pipeline.grid.spec import GridSpec
from pipeline.output.atomic import replace_file
from pipeline.output.layout import FAILURES, MANIFEST, RUN_FILE, inside, now_iso
from pipeline.output.resume import read_records

log = logging.getLogger(__name__)

GALLERY_FILE = "index.html"
MAX_FILTER_VALUES = 500
MAX_PARAM_CHARS = 2000
MAX_CACHED_INFOTEXTS = 20_000
_ITEMS_SLOT = "@@sdbatch-items@@"  # longer payload values (base64 init images, scripts) are elided
_OMITTED = "[omitted: {n} characters]"


class GalleryWriter:
    """Writes one directory's gallery; caches what is costly to read again (PNG infotexts)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._infotexts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._job: tuple[str | None, dict[str, dict[str, str]]] | None = None

    def write(self) -> Path:
        """Write ``OUT/index.html`` atomically; returns its path.

        Streamed: the manifest is read twice (axis values, then items) and each item is encoded
        and written on its own, so memory does not grow with the number of images.
        """
        path = self.out_dir / GALLERY_FILE
        replace_file(path, self._chunks(), fsync=False)
        return path

    def data(self) -> dict[str, Any]:
        """Everything the page shows, as plain JSON-able values (for tests and tools)."""
        head, catalog = self._head()
        head["items"] = [self._item(pos, r, catalog) for pos, r in enumerate(self._records())]
        return head

    def _head(self) -> tuple[dict[str, Any], list[_Axis]]:
        """The page's data without its items, and the filter catalog (one pass, bounded)."""
        name, labels = self._job_info()
        failures = [r for r in read_records(self.out_dir / FAILURES)
                    if isinstance(r.get("id"), str)]
        catalog = _catalog(itertools.chain((r.get("axes") for r in self._records()),
                                           (f.get("axes") for f in failures)), labels)
        run = _read_json(self.out_dir / RUN_FILE)
        return {
            "title": name or self.out_dir.resolve().name,
            "status": run.get("status") if isinstance(run.get("status"), str) else None,
            "counts": run.get("counts") if isinstance(run.get("counts"), dict) else {},
            "updated": now_iso(),
            "axes": [{"name": a.name, "title": axis_title(a.name), "values": list(a.labels)}
                     for a in catalog],
            "items": _ITEMS_SLOT,
            "failures": [_failure(f, catalog) for f in failures],
            "grids": [_grid(g) for g in read_index(self.out_dir) if _safe(g.get("file"))],
        }, catalog

    def _chunks(self) -> Iterator[bytes]:
        head, catalog = self._head()
        page = render_page(head).encode("utf-8")
        slot = embed_json(_ITEMS_SLOT).encode("utf-8")
        before, _, after = page.partition(slot)
        yield before + b"["
        for pos, record in enumerate(self._records()):
            yield (b"," if pos else b"") + embed_json(self._item(pos, record, catalog)).encode()
        yield b"]" + after

    # --- pieces ------------------------------------------------------------------------------

    def _job_info(self) -> tuple[str | None, dict[str, dict[str, str]]]:
        """The job's name and custom grid labels (best effort: the gallery works without)."""
        if self._job is None:
            name, labels = None, {}
            try:
                spec = load_run_job(self.out_dir)
                if spec is not None:
                    name = spec.name
                    grid = GridSpec.from_job(spec)
                    labels = dict(grid.labels) if grid is not None else {}
            except SdbatchError as exc:
                log.debug("gallery: job.json not usable (%s); default labels", exc)
            self._job = (name, labels)
        return self._job

    def _records(self) -> Iterator[dict[str, Any]]:
        """The manifest's usable records, streamed. (id, image_index) is already unique: the
        store repairs the manifest when a run opens it, so no set of every image is kept."""
        for record in read_records(self.out_dir / MANIFEST):
            ident, index, file = record.get("id"), record.get("image_index"), record.get("file")
            if isinstance(ident, str) and isinstance(index, int) and _safe(file):
                yield record

    def _item(self, pos: int, record: dict[str, Any], catalog: list[_Axis]) -> dict[str, Any]:
        axes = record.get("axes") if isinstance(record.get("axes"), dict) else {}
        params = record.get("params") if isinstance(record.get("params"), dict) else {}
        return {
            "pos": pos, "id": record["id"], "index": record["image_index"],
            "kind": record.get("kind", "generation"), "file": quote(record["file"]),
            "name": record["file"].rsplit("/", 1)[-1],
            "prompt": _str(record.get("prompt")), "negative": _str(record.get("negative_prompt")),
            "seed": record.get("seed"), "requested_seed": record.get("requested_seed"),
            "model": record.get("model"), "sampler": record.get("sampler"),
            "backend": record.get("backend"), "created": record.get("created"),
            "ordinal": record.get("ordinal"), "attempts": record.get("attempts"),
            "v": _positions(axes, catalog), "axes": _short(axes),
            "params": _short({k: v for k, v in params.items()
                              if k not in ("prompt", "negative_prompt")}),
            "infotext": self._infotext(record),
        }

    def _infotext(self, record: dict[str, Any]) -> str:
        text = record.get("infotext")
        if isinstance(text, str) and text:
            return text
        key = (record["file"], str(record.get("sha256")))
        cached = self._infotexts.get(key)
        if cached is None:
            from_png = None
            if record.get("format") == "png":
                from_png = infotext.png_parameters(self.out_dir / record["file"])
            cached = from_png or infotext.compose(record)
            self._infotexts[key] = cached
            if len(self._infotexts) > MAX_CACHED_INFOTEXTS:
                self._infotexts.popitem(last=False)
        return cached


@dataclass(frozen=True, slots=True)
class _Axis:
    """A filterable axis: its values' labels in job order, and value key -> position."""

    name: str
    labels: tuple[str, ...]
    position: dict[str, int] = field(hash=False, compare=False)


def _catalog(all_axes: Iterable[Any], labels: dict[str, dict[str, str]]) -> list[_Axis]:
    """The axes worth filtering by: 2..MAX_FILTER_VALUES distinct values, in job order."""
    values: dict[str, dict[str, Any]] = {}  # distinct values only, and a few past the limit
    for axes in all_axes:
        if isinstance(axes, dict):
            for name, value in axes.items():
                found = values.setdefault(str(name), {})
                if len(found) <= MAX_FILTER_VALUES:
                    found.setdefault(value_key(value), value)
    out: list[_Axis] = []
    for name, found in values.items():
        distinct = ordered(name, found.values())
        if 2 <= len(distinct) <= MAX_FILTER_VALUES:
            out.append(_Axis(name, tuple(label_for(name, v, labels) for v in distinct),
                             {value_key(v): i for i, v in enumerate(distinct)}))
    return out


def _positions(axes: dict[str, Any], catalog: list[_Axis]) -> list[int]:
    """Each catalog axis's value position for one image (-1: the image lacks the axis)."""
    return [axis.position.get(value_key(axes[axis.name]), -1) if axis.name in axes else -1
            for axis in catalog]


def _failure(record: dict[str, Any], catalog: list[_Axis]) -> dict[str, Any]:
    axes = record.get("axes") if isinstance(record.get("axes"), dict) else {}
    return {"id": record["id"], "prompt": _str(record.get("prompt")), "seed": record.get("seed"),
            "error": _str(record.get("error")), "status": record.get("status"),
            "attempts": record.get("attempts"), "backend": record.get("backend"),
            "ordinal": record.get("ordinal"), "v": _positions(axes, catalog),
            "axes": _short(axes)}


def _grid(sheet: dict[str, Any]) -> dict[str, Any]:
    keys = ("page", "title", "part", "parts", "cells", "done", "failed", "pending",
            "width_px", "height_px")
    return {"file": quote(sheet["file"]), **{k: sheet.get(k) for k in keys}}


def _safe(file: Any) -> bool:
    """A relative path inside the directory: no scheme, no absolute path, no ``..``."""
    return isinstance(file, str) and bool(file) and inside(file) and ":" not in file \
        and "\\" not in file


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _short(mapping: dict[str, Any]) -> dict[str, Any]:
    """Values too long for a details panel (base64 images) replaced by a note."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, (dict, list)):
            size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
            out[str(key)] = value if size <= MAX_PARAM_CHARS else _OMITTED.format(n=size)
        elif isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
            out[str(key)] = _OMITTED.format(n=len(value))
        else:
            out[str(key)] = value
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_gallery(out_dir: Path) -> Path:
    """Write ``OUT/index.html`` from the manifest, failures and grid sheets; returns its path."""
    return GalleryWriter(Path(out_dir)).write()
