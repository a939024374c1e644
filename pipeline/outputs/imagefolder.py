"""Hugging Face ``imagefolder``: ``OUT/imagefolder/``, within the Hub's limit of 10,000 files a
folder::

    OUT/imagefolder/metadata.jsonl           one line per image
    OUT/imagefolder/images/00000/<name>.png  the first 10,000 images (hard links to OUT/images/)
    OUT/imagefolder/images/00001/<name>.png  the next 10,000, ...

Each line::

    {"file_name": "images/00000/000001_a_red_cube_s1_<id>_0.png", "prompt": "...", "seed": 1}

The images are the manifest's generations in order, 10,000 to a folder, linked (copied where the
file system has no hard links) from ``OUT/images/``, so the folder is self-contained: upload it
as a dataset repo, or ``load_dataset("imagefolder", data_dir="OUT/imagefolder")``. ``file_name``
is relative to the metadata file, as ``datasets`` resolves it. Every line carries every column,
each with one fixed type (see ``pipeline.outputs.columns``).

``datasets`` takes the schema from the first 10 MB of the file; a column that is null all
through them but has values later fails to load ("its type in this file is null"). So a missing
text value is written as ``""``, never null; a number column that is null that long (e.g. an
axis added to a job that already made many images) is logged at rebuild with the fix.

``rebuild()`` rewrites ``metadata.jsonl`` from the manifest and brings each folder to exactly its
images (a link that is missing or no longer the same file is made again, others are removed),
holding one folder's names at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import orjson

from pipeline.outputs.columns import Column
from pipeline.outputs.exporter import (
    Exporter,
    Record,
    append_file,
    dataset_records,
    is_dataset_record,
    own_folder,
)
from pipeline.output.atomic import output_error, replace_file
from pipeline.output.layout import TMP_PREFIX

log = logging.getLogger(__name__)

FOLDER = "imagefolder"
METADATA = "metadata.jsonl"
IMAGES = "images"
FILE_NAME = "file_name"
# The Hub's limit: at most 10,000 entries in one folder of a repository.
FILES_PER_FOLDER = 10_000
# How much of metadata.jsonl ``datasets`` reads to infer the schema (its JSON chunk size).
SCHEMA_WINDOW_BYTES = 10 << 20
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP,
             errno.EACCES}


class ImageFolderExporter(Exporter):
    """Keeps ``OUT/imagefolder/`` in step with the manifest."""

    name = "imagefolder"

    def __init__(self, out_dir: Path, columns: list[Column]) -> None:
        super().__init__(out_dir)
        self.columns = [c for c in columns if c.name != FILE_NAME]
        self.root = self.out_dir / FOLDER
        self.path = self.root / METADATA
        self._position = 0  # images so far: the next one's place
        self._folder_names: set[str] = set()  # names taken in the current folder
        self._links = True
        self._made: Path | None = None  # the folder last created

    # --- names ------------------------------------------------------------------------------------

    def _place(self, record: Record) -> str:
        """The next image's path under OUT/imagefolder (and take that place)."""
        folder, index = divmod(self._position, FILES_PER_FOLDER)
        if index == 0:
            self._folder_names = set()
        name = PurePosixPath(record["file"]).name
        if name in self._folder_names:  # only with a naming: template that reuses names
            name = f"{index:05d}_{name}"
        self._folder_names.add(name)
        self._position += 1
        return f"{IMAGES}/{folder:05d}/{name}"

    def row(self, record: Record, file_name: str) -> dict[str, object]:
        row: dict[str, object] = {FILE_NAME: file_name}
        for column in self.columns:
            value = column.value(record)
            row[column.name] = "" if value is None and column.type == "str" else value
        return row

    # --- the exporter ----------------------------------------------------------------------------

    async def on_variant(self, records: list[Record]) -> None:
        rows = [r for r in records if is_dataset_record(r, self.out_dir)]
        if rows:
            await asyncio.to_thread(self._append, rows)

    def _append(self, rows: list[Record]) -> None:
        lines = []
        for record in rows:
            place = self._place(record)
            self._link(record["file"], place)
            lines.append(orjson.dumps(self.row(record, place)) + b"\n")
        append_file(self.path, b"".join(lines))

    def rebuild(self) -> None:
        self._position, self._folder_names = 0, set()
        own_folder(self.root)
        legacy = self.out_dir / METADATA  # where sdbatch wrote it before the folder had its own
        if legacy.is_file() and not legacy.is_symlink():
            legacy.unlink()
            log.info("removed %s: the imagefolder dataset is now %s", legacy, self.root)
        replace_file(self.path, self._checked_lines(self._linked(dataset_records(self.out_dir))),
                     fsync=False)
        self._prune_folders()
        log.debug("rebuilt %s", self.path)

    def _linked(self, records: Iterable[Record]) -> Iterator[tuple[Record, str]]:
        """Each record with its place, its link made; each folder left with just its images."""
        for record in records:
            if self._position % FILES_PER_FOLDER == 0 and self._position:
                self._prune(self._position // FILES_PER_FOLDER - 1, self._folder_names)
            place = self._place(record)
            self._link(record["file"], place, check=True)
            yield record, place
        if self._position:
            self._prune((self._position - 1) // FILES_PER_FOLDER, self._folder_names)

    def _checked_lines(self, placed: Iterable[tuple[Record, str]]) -> Iterator[bytes]:
        """Metadata lines, warning about number columns null for the whole schema window."""
        unseen = {c.name for c in self.columns if c.type != "str"}
        written_bytes = 0
        for record, place in placed:
            row = self.row(record, place)
            for name in [n for n in unseen if row[n] is not None]:
                unseen.discard(name)
                if written_bytes >= SCHEMA_WINDOW_BYTES:
                    log.warning(
                        "%s: column %r is null in the first %d MB, which datasets reads for "
                        "the schema, so load_dataset fails on it; pass features= to "
                        "load_dataset, or drop the column with 'columns:'", self.path, name,
                        SCHEMA_WINDOW_BYTES >> 20)
            line = orjson.dumps(row) + b"\n"
            written_bytes += len(line)
            yield line

    # --- files ----------------------------------------------------------------------------------

    def _link(self, source_rel: str, place: str, *, check: bool = False) -> None:
        """Make ``OUT/imagefolder/<place>`` the same file as ``OUT/<source_rel>``."""
        source, target = self.out_dir / source_rel, self.root / place
        if check:
            with contextlib.suppress(OSError):
                if os.path.samefile(source, target) or (
                        not self._links and _same_bytes(source, target)):
                    return
        try:
            if target.parent != self._made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made = target.parent
            if self._links:
                try:
                    os.link(source, target)  # a new name: atomic as it is
                    return
                except FileExistsError:
                    pass  # replaced below, atomically
                except OSError as exc:
                    if exc.errno not in _NO_LINKS:
                        raise
                    log.info("%s: no hard links here (%s); copying the images instead",
                             self.root, exc.strerror)
                    self._links = False
        except OSError as exc:
            raise output_error(exc, target) from None
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
        try:
            tmp.unlink(missing_ok=True)
            if self._links:
                os.link(source, tmp)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise output_error(exc, target) from None

    def _prune(self, folder: int, names: set[str]) -> None:
        """Remove what folder ``folder`` holds besides ``names``."""
        path = self.root / IMAGES / f"{folder:05d}"
        try:
            entries = os.listdir(path)
        except FileNotFoundError:
            return
        for name in entries:
            if name not in names:
                _remove(path / name)

    def _prune_folders(self) -> None:
        """Remove folders past the last image's (a manifest that shrank)."""
        images = self.root / IMAGES
        last = (self._position - 1) // FILES_PER_FOLDER if self._position else -1
        try:
            entries = os.listdir(images)
        except FileNotFoundError:
            return
        for name in entries:
            if not (name.isdigit() and int(name) <= last):
                _remove(images / name)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(exc, path) from None


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
