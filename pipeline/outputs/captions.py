"""kohya-style captions: ``images/<stem>.txt`` beside each generated image.

The caption is a template (job key ``caption``), by default ``{prompt}``: the prompt with its
extra-network tags (``<lora:name:0.8>``, ``<lyco:...>``, ``<hypernet:...>``) removed and the
commas and spaces they leave behind tidied. Fields: ``prompt``, ``raw_prompt`` (as sent),
``negative_prompt``, ``seed``, ``model``, ``sampler``, ``steps``, ``cfg_scale``, ``width``,
``height`` and every axis column (``{lora_name}``, ``{checkpoint}``, ...). Fields only: no
format specs or conversions, so a template that builds cannot fail mid-run.

kohya's trainers read the first line of a caption file and refuse an empty file, so a caption
is written on one line (all whitespace runs become one space) followed by a newline. Each file
is written atomically (``.tmp-<name>``, then ``os.replace``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import string
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from pipeline.errors import JobError
from pipeline.outputs.columns import Column, ColumnSet, to_text
from pipeline.outputs.exporter import (
    Exporter,
    Record,
    dataset_records,
    is_dataset_record,
)
from pipeline.output.layout import TMP_PREFIX
from pipeline.output.atomic import replace_file

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{prompt}"
CAPTION_SUFFIX = ".txt"
SIDECAR_SUFFIX = ".json"
_NETWORK_TAG = re.compile(r"<\s*(?:lora|lyco|hypernet)\s*:[^>]*>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")
_EMPTY_ITEMS = re.compile(r"(?:,\s*){2,}")


def clean_prompt(prompt: str) -> str:
    """The prompt without extra-network tags, on one line, with no empty comma items."""
    text = _NETWORK_TAG.sub(" ", prompt)
    text = _SPACE.sub(" ", text)
    text = _COMMA.sub(", ", text)
    text = _EMPTY_ITEMS.sub(", ", text)
    return text.strip(" ,")


def caption_path(out_dir: Path, file: str, suffix: str = CAPTION_SUFFIX) -> Path:
    """``images/a/b.png`` -> ``OUT/images/a/b.txt`` (or ``b.caption``)."""
    return out_dir / PurePosixPath(file).with_suffix(suffix)


class CaptionTemplate:
    """A checked caption template; ``render(record)`` gives one caption line."""

    def __init__(self, template: str | None, columns: ColumnSet, *, source_path: str = "",
                 where: str = "caption") -> None:
        self.template = DEFAULT_TEMPLATE if template is None else template
        self.fields: dict[str, Column | None] = {}
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise JobError(f"caption template {self.template!r} is malformed ({exc})",
                           path=source_path, where=where,
                           hint="write fields in braces, e.g. 'photo of sks person, {prompt}'; "
                                "double a literal brace: {{ }}") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if spec or conversion:
                raise JobError(f"caption field {{{name}...}} has a format spec or conversion",
                               path=source_path, where=where,
                               hint=f"write the plain field {{{name}}}")
            if name in ("prompt", "raw_prompt"):
                self.fields[name] = None
                continue
            column = columns.lookup(name) if name.isidentifier() else None
            if column is None:
                known = ["prompt", "raw_prompt", "negative_prompt", "seed", "model", "sampler",
                         "steps", "cfg_scale", "width", "height", *(c.name for c in columns.axes)]
                raise JobError(f"caption field {{{name}}} is not a known field",
                               path=source_path, where=where,
                               hint="use one of " + ", ".join(f"{{{k}}}" for k in known))
            self.fields[name] = column

    def render(self, record: Record) -> str:
        raw = record.get("prompt")
        raw = raw if isinstance(raw, str) else ""
        values: dict[str, str] = {}
        for name, column in self.fields.items():
            if name == "prompt":
                values[name] = clean_prompt(raw)
            elif name == "raw_prompt":
                values[name] = raw
            else:
                assert column is not None
                value = column.value(record)
                values[name] = "" if value is None else to_text(value)
        return _SPACE.sub(" ", self.template.format_map(values)).strip()


class CaptionExporter(Exporter):
    """Writes a ``.txt`` (or ``suffix``) caption beside every generated image."""

    name = "captions"

    def __init__(self, out_dir: Path, template: CaptionTemplate, *,
                 suffix: str = CAPTION_SUFFIX) -> None:
        super().__init__(out_dir)
        self.template = template
        self.suffix = suffix

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await asyncio.to_thread(self._write_all, rows, compare=False)

    def _write_all(self, records: Iterable[Record], *, compare: bool = True) -> set[Path]:
        written: set[Path] = set()
        for record in records:
            path = caption_path(self.out_dir, record["file"], self.suffix)
            self._write(path, self.template.render(record), record, compare=compare)
            written.add(path)
        return written

    def _write(self, path: Path, caption: str, record: Record, *, compare: bool) -> None:
        if not caption:
            log.warning("empty caption for %s (template %r)", record.get("file"),
                        self.template.template)
        data = (caption + "\n").encode("utf-8")
        if compare:  # a rebuild leaves alone what is already right
            try:
                if path.read_bytes() == data:
                    return
            except OSError:
                pass
        replace_file(path, data, fsync=False)

    def rebuild(self) -> None:
        """Write every caption that is missing or differs; remove captions of images the
        manifest no longer lists (only beside a store sidecar, so no user file is touched)."""
        expected = self._write_all(dataset_records(self.out_dir))
        removed = 0
        images_dir = self.out_dir / "images"
        if images_dir.is_dir():
            for path in images_dir.rglob(f"*{self.suffix}"):
                if path.name.startswith(TMP_PREFIX) or path in expected:
                    continue
                if path.with_suffix(SIDECAR_SUFFIX).is_file():
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d caption(s) of images no longer in the manifest", removed)
