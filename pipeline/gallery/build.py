"""Collect the gallery's data from an output directory and write ``OUT/index.html``.

Data shape (one JSON object, embedded in the page)::

    title, status, updated, counts        the run (as the run says now, else run.json) and
                                          when the page was written
    axes:  [{name, title, values: [label, ...], any, baseline}]   axes with 2..500 values, job
             order (from the job's plan, so values not generated yet are there too); ``any``:
             the explorer does not hold it by default (it follows from another axis);
             ``baseline``: the value index of the no-LoRA value, shown under every LoRA name
    items: [{file, prompt, seed, v: [value index per axis, -1 if none], axes, params,
             infotext, ...}]                         one per saved image, manifest order
    failures: [{id, prompt, seed, axes, error, v, ...}]
    grids: [{file, page, done, failed, pending, view, ...}]   every view's sheets
    views: [{name, auto, x, y, page, sheets: [index into grids]}]   the job's view first

Every value is untrusted text (prompts come from job files and servers); the page inserts it
with ``textContent`` and DOM properties only, and the blob is escaped so it cannot end its
``<script>`` element.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from pipeline.errors import SdbatchError
from pipeline.gallery import infotext
from pipeline.gallery.page import embed_json, render_page
from pipeline.grid.expected import plan_axes
from pipeline.grid.labels import axis_title, is_baseline, label_for, ordered, value_key
from pipeline.output.runfiles import load_run_job
from pipeline.job.grid import GridSpec, split_axis
from pipeline.grid.views import GALLERY_FILE, read_views
from pipeline.output.atomic import replace_file
from pipeline.output.layout import FAILURES, MANIFEST, RUN_FILE, inside, now_iso
from pipeline.output.resume import read_records

if TYPE_CHECKING:
    from pipeline.expand.plan import Plan
    from pipeline.job.schema import JobSpec

log = logging.getLogger(__name__)

MAX_FILTER_VALUES = 500
MAX_PARAM_CHARS = 2000
MAX_CACHED_INFOTEXTS = 20_000
_ITEMS_SLOT = "@@sdbatch-items@@"  # longer payload values (base64 init images, scripts) are elided
_OMITTED = "[omitted: {n} characters]"


class GalleryWriter:
    """Writes one directory's gallery; caches what is costly to read again (PNG infotexts).

    ``spec`` and ``plan`` are the run's, when the caller has them (else ``job.json`` is read).
    """

    def __init__(self, out_dir: Path, *, spec: JobSpec | None = None,
                 plan: Plan | None = None) -> None:
        self.out_dir = Path(out_dir)
        self._infotexts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._job: _Job | None = None
        self._spec = spec
        self._plan = plan

    def write(self, *, status: str | None = None,
              counts: Mapping[str, Any] | None = None) -> Path:
        """Write ``OUT/index.html`` atomically; returns its path.

        ``status`` and ``counts`` are the run's as of now (see ``LiveOutputs``); without them
        the page shows what ``run.json`` says. Streamed: the manifest is read twice (axis
        values, then items) and each item is encoded and written on its own, so memory does
        not grow with the number of images.
        """
        path = self.out_dir / GALLERY_FILE
        replace_file(path, self._chunks(status, counts), fsync=False)
        return path

    def data(self, *, status: str | None = None,
             counts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything the page shows, as plain JSON-able values (for tests and tools)."""
        head, catalog = self._head(status, counts)
        head["items"] = [self._item(pos, r, catalog) for pos, r in enumerate(self._records())]
        return head

    def _head(self, status: str | None, counts: Mapping[str, Any] | None
              ) -> tuple[dict[str, Any], list[_Axis]]:
        """The page's data without its items, and the axis catalog (one pass, bounded)."""
        job = self._job_info()
        failures = [r for r in read_records(self.out_dir / FAILURES)
                    if isinstance(r.get("id"), str)]
        catalog = _catalog(job, itertools.chain((_axes_of(r) for r in self._records()),
                                                (_axes_of(f) for f in failures)))
        if status is None or counts is None:
            run = _read_json(self.out_dir / RUN_FILE)
            if status is None and isinstance(run.get("status"), str):
                status = run["status"]
            if counts is None and isinstance(run.get("counts"), dict):
                counts = run["counts"]
        grids, views = _views(self.out_dir)
        return {
            "title": job.name or self.out_dir.resolve().name,
            "status": status,
            "counts": dict(counts or {}),
            "updated": now_iso(),
            "axes": [{"name": a.name, "title": axis_title(a.name), "values": list(a.labels),
                      "any": a.any, "baseline": a.baseline} for a in catalog],
            "items": _ITEMS_SLOT,
            "failures": [_failure(f, catalog) for f in failures],
            "grids": grids,
            "views": views,
        }, catalog

    def _chunks(self, status: str | None, counts: Mapping[str, Any] | None) -> Iterator[bytes]:
        head, catalog = self._head(status, counts)
        page = render_page(head).encode("utf-8")
        slot = embed_json(_ITEMS_SLOT).encode("utf-8")
        before, _, after = page.partition(slot)
        yield before + b"["
        for pos, record in enumerate(self._records()):
            yield (b"," if pos else b"") + embed_json(self._item(pos, record, catalog)).encode()
        yield b"]" + after

    # --- pieces ------------------------------------------------------------------------------

    def _job_info(self) -> _Job:
        """The job's name, custom grid labels and axes (best effort: the gallery works
        without a job)."""
        if self._job is None:
            job = _Job()
            try:
                spec = self._spec if self._spec is not None else load_run_job(self.out_dir)
                if spec is not None:
                    job.name = spec.name
                    grid = GridSpec.from_job(spec)
                    job.labels = dict(grid.labels) if grid is not None else {}
                    plan = self._plan
                    if plan is None:
                        from pipeline import expand

                        plan = expand.build_plan(spec)
                    job.axes = [(a.name, a.kind, a.values)
                                for a in plan_axes(plan, max_values=MAX_FILTER_VALUES + 1)]
            except SdbatchError as exc:
                log.debug("gallery: job.json not usable (%s); default labels", exc)
            self._job = job
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
            "v": _positions(_axes_of(record), catalog), "axes": _short(axes),
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


@dataclass(slots=True)
class _Job:
    name: str | None = None
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    axes: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Axis:
    """An axis to filter and lay grids out by: its values' labels in job order, and value key
    -> position. ``any``: not held by default (it follows from another axis); ``baseline``: the
    position of the no-LoRA value of ``lora_name`` (it belongs under every LoRA name)."""

    name: str
    labels: tuple[str, ...]
    position: dict[str, int] = field(hash=False, compare=False)
    any: bool = False
    baseline: int = -1


def _axes_of(record: dict[str, Any]) -> dict[str, Any]:
    axes = record.get("axes")
    return axes if isinstance(axes, dict) else {}


def _catalog(job: _Job, all_axes: Iterable[Any]) -> list[_Axis]:
    """The axes worth filtering by: 2..MAX_FILTER_VALUES distinct values, in job order (the
    plan's values first, then any the records add, e.g. from an earlier version of the job)."""
    values: dict[str, dict[str, Any]] = {}  # distinct values only, and a few past the limit
    kinds: dict[str, str] = {}
    for name, kind, known in job.axes:
        kinds[name] = kind
        found = values.setdefault(name, {})
        for value in known:
            if len(found) <= MAX_FILTER_VALUES:
                found.setdefault(value_key(value), value)
    groups = [n for n, k in kinds.items() if k == "zip group"]
    for axes in all_axes:
        if isinstance(axes, dict):
            for name, value in itertools.chain(axes.items(), _grouped(axes, groups)):
                found = values.setdefault(str(name), {})
                if len(found) <= MAX_FILTER_VALUES:
                    found.setdefault(value_key(value), value)
    names = set(values)
    in_group = {p for g in groups for p in split_axis(g)}
    out: list[_Axis] = []
    for name, found in values.items():
        distinct = ordered(name, found.values())
        if 2 <= len(distinct) <= MAX_FILTER_VALUES:
            follows = (name == "template" or name in in_group
                       or (name == "lora" and {"lora_name", "lora_weight"} <= names))
            baseline = next((i for i, v in enumerate(distinct)
                             if name == "lora_name" and is_baseline(name, v)), -1)
            out.append(_Axis(name, tuple(label_for(name, v, job.labels) for v in distinct),
                             {value_key(v): i for i, v in enumerate(distinct)}, follows,
                             baseline))
    return out


def _grouped(axes: dict[str, Any], groups: list[str]) -> Iterator[tuple[str, Any]]:
    for group in groups:
        parts = split_axis(group)
        if all(p in axes for p in parts):
            yield group, {p: axes[p] for p in parts}


def _positions(axes: dict[str, Any], catalog: list[_Axis]) -> list[int]:
    """Each catalog axis's value position for one image (-1: the image lacks the axis)."""
    out = []
    for axis in catalog:
        if axis.name in axes:
            out.append(axis.position.get(value_key(axes[axis.name]), -1))
        elif "+" in axis.name and all(p in axes for p in split_axis(axis.name)):
            value = {p: axes[p] for p in split_axis(axis.name)}
            out.append(axis.position.get(value_key(value), -1))
        else:
            out.append(-1)
    return out


def _failure(record: dict[str, Any], catalog: list[_Axis]) -> dict[str, Any]:
    axes = record.get("axes") if isinstance(record.get("axes"), dict) else {}
    return {"id": record["id"], "prompt": _str(record.get("prompt")), "seed": record.get("seed"),
            "error": _str(record.get("error")), "status": record.get("status"),
            "attempts": record.get("attempts"), "backend": record.get("backend"),
            "ordinal": record.get("ordinal"), "v": _positions(_axes_of(record), catalog),
            "axes": _short(axes)}


def _views(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every view's sheets as one list (``grids``), and the views naming their sheets."""
    grids: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []
    keys = ("page", "title", "part", "parts", "cells", "done", "failed", "pending",
            "width_px", "height_px")
    for index in read_views(out_dir):
        first = len(grids)
        for sheet in index["sheets"]:
            if _safe(sheet.get("file")):
                grids.append({"file": quote(sheet["file"]), "view": index["view"],
                              **{k: sheet.get(k) for k in keys}})
        held = index.get("grid", {}).get("where") if isinstance(index.get("grid"), dict) else {}
        views.append({"name": index["view"], "auto": bool(index.get("auto")),
                      "x": index.get("x"), "y": index.get("y"), "page": index.get("page"),
                      "where": held if isinstance(held, dict) else {},
                      "sheets": list(range(first, len(grids)))})
    return grids, views


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
