"""Wildcard files: ``__name__`` in a template stands for one option of a file in the wildcards folder.

    root/colors.txt              __colors__        one option a line; blank and '#' lines skipped
    root/people/hair.txt         __people/hair__
    root/styles.yaml  (list)     __styles__
    root/styles.yaml  (mapping)  __styles/key__, __styles/key/sub__  (leaves: lists or one string)
    any pattern with '*'         __people/*__      every wildcard whose name matches (fnmatch over
                                                   ``names()``; '*' also crosses '/'), in name order

``__a/b/c__`` is looked up as ``a/b/c.txt``, ``.yaml``, ``.yml``, then key ``c`` of ``a/b.yaml``
(or ``.yml``), then key path ``b/c`` of ``a.yaml``; the first that exists wins. YAML is read
with PyYAML's ``BaseLoader``, so every scalar stays a string (``- yes`` is "yes", not True).

Options are templates themselves. ``options(name)`` also resolves every wildcard those options
use, transitively, so a missing nested wildcard or a cycle is reported as soon as the name is
first looked up (the job layer does that before a run starts), never in the middle of a run.
Files are read once and cached; the only I/O of the template language happens here.

Limits a real job never reaches (each an error naming the wildcard): a chain of wildcards
using wildcards at most ``MAX_CHAIN`` deep, groups and wildcard hops nested at most
``MAX_NESTING`` levels in all, files of at most ``MAX_FILE_BYTES``, and YAML files within the
job loader's limits (no tags, bounded nesting and aliases).
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import JobError, TemplateError
from pipeline.job import yamlsafe
from pipeline.prompts.nodes import Node, nesting, wildcard_names
from pipeline.prompts.parser import parse

MAX_CHAIN = 32
MAX_NESTING = 100
MAX_FILE_BYTES = 32 * 1024 * 1024

_Source = tuple[str, str]  # (file, "line N" / "key path item N"), for error messages


class WildcardStore:
    """Resolves wildcard names under ``root`` lazily and caches the parsed options."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None
        self._options: dict[str, tuple[Node, ...]] = {}
        self._sources: dict[str, tuple[_Source, ...]] = {}
        self._checked: set[str] = set()
        self._depth: dict[str, int] = {}
        self._yaml: dict[Path, Any] = {}
        self._names: list[str] | None = None

    def options(self, name: str) -> tuple[Node, ...]:
        """The parsed options of ``name``; raises ``JobError`` if it or anything it uses is bad."""
        if name not in self._checked:
            self._check(name, [], None)
        return self._options[name]

    def depth(self, name: str) -> int:
        """Levels of groups and wildcard hops inside ``name``'s options (checked names only)."""
        if name not in self._checked:
            self.options(name)
        return self._depth[name]

    def names(self) -> list[str]:
        """Every wildcard name the folder offers, sorted (files, YAML keys; not patterns)."""
        if self._names is None:
            found: set[str] = set()
            if self.root is not None and self.root.is_dir():
                for path in self.root.rglob("*"):
                    rel = path.relative_to(self.root)
                    if any(p.startswith(".") for p in rel.parts) or not path.is_file():
                        continue
                    stem = rel.with_suffix("").as_posix()
                    if path.suffix == ".txt":
                        found.add(stem)
                    elif path.suffix in (".yaml", ".yml"):
                        found.update(_leaves(stem, self._read_yaml(path)))
            self._names = sorted(found)
        return list(self._names)

    # -- resolution ---------------------------------------------------------------------------

    def _check(self, name: str, stack: list[str], used_in: _Source | None) -> None:
        """Load ``name`` and, depth first, everything its options use; detect cycles."""
        if name in self._checked:
            return
        self._load(name, used_in)
        stack.append(name)
        for node, source in zip(self._options[name], self._sources[name]):
            for ref in sorted(wildcard_names(node)):
                if ref in stack:
                    chain = " -> ".join(f"__{n}__" for n in [*stack[stack.index(ref):], ref])
                    raise JobError(f"wildcard cycle: {chain}", path=source[0], where=source[1],
                                   hint="a wildcard must not use itself, directly or through "
                                        "other wildcards; remove one link of the chain")
                if len(stack) >= MAX_CHAIN:
                    chain = " -> ".join(f"__{n}__" for n in [*stack[:3], "...", ref])
                    raise JobError(f"wildcards use wildcards more than {MAX_CHAIN} deep: {chain}",
                                   path=source[0], where=source[1],
                                   hint="flatten the chain: let a wildcard list its options "
                                        "instead of pointing at another wildcard")
                self._check(ref, stack, source)
        depth = max((nesting(node, self._depth.__getitem__) for node in self._options[name]),
                    default=0)
        if depth > MAX_NESTING:
            source = self._sources[name][0] if self._sources[name] else (None, None)
            raise JobError(f"__{name}__ nests {depth} levels of groups and wildcards; the most "
                           f"is {MAX_NESTING}", path=source[0], where=source[1],
                           hint="flatten the nesting of {...} groups and wildcards")
        self._depth[name] = depth
        stack.pop()
        self._checked.add(name)

    def _load(self, name: str, used_in: _Source | None) -> None:
        if name in self._options:
            return
        if self.root is None or not self.root.is_dir():
            where = "no wildcards directory was given" if self.root is None else (
                f"the wildcards directory {self.root} does not exist")
            raise JobError(f"wildcard __{name}__ is used, but {where}",
                           path=used_in[0] if used_in else None,
                           where=used_in[1] if used_in else None,
                           hint=f"create {Path(self.root or 'wildcards') / name}.txt with one "
                                "option a line, or set 'wildcards:' in the job to its folder")
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise JobError(f"bad wildcard name {name!r}", path=used_in[0] if used_in else None,
                           where=used_in[1] if used_in else None,
                           hint="a name is a path inside the wildcards folder, e.g. __people/hair__")
        if "*" in name:
            matches = [m for m in self.names() if fnmatch.fnmatchcase(m, name)]
            if not matches:
                raise self._missing(name, used_in)
            options: list[Node] = []
            sources: list[_Source] = []
            for match in matches:
                self._load(match, used_in)
                options += self._options[match]
                sources += self._sources[match]
            self._options[name], self._sources[name] = tuple(options), tuple(sources)
            return
        raw = self._raw_options(name)
        if raw is None:
            raise self._missing(name, used_in)
        parsed: list[Node] = []
        for text, source in raw:
            try:
                parsed.append(parse(text))
            except TemplateError as exc:
                raise JobError(exc.detail, path=source[0], where=source[1], hint=exc.hint) from None
        self._options[name] = tuple(parsed)
        self._sources[name] = tuple(source for _, source in raw)

    def _raw_options(self, name: str) -> list[tuple[str, _Source]] | None:
        assert self.root is not None
        parts = name.split("/")
        for cut in range(len(parts), 0, -1):
            base, keys = self.root.joinpath(*parts[:cut]), parts[cut:]
            txt = base.with_name(base.name + ".txt")
            if not keys and txt.is_file():
                return _read_txt(txt)
            for ext in (".yaml", ".yml"):
                path = base.with_name(base.name + ext)
                if path.is_file():
                    found = _lookup(self._read_yaml(path), keys)
                    if found is not _MISSING:
                        return _yaml_options(path, keys, found, name)
        return None

    def _missing(self, name: str, used_in: _Source | None) -> JobError:
        try:
            available = self.names()
        except JobError:
            available = []
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(f"__{c}__" for c in close) + "?"
        else:
            hint = f"create {self.root / name}.txt with one option a line" if "*" not in name \
                else "check the pattern"
            if available:
                shown = ", ".join(f"__{a}__" for a in available[:8])
                hint += f"; available: {shown}" + (", ..." if len(available) > 8 else "")
        return JobError(f"wildcard __{name}__ not found in {self.root}",
                        path=used_in[0] if used_in else None,
                        where=used_in[1] if used_in else None, hint=hint)

    def _read_yaml(self, path: Path) -> Any:
        if path not in self._yaml:
            try:
                text = _read_text(path)
                yamlsafe.scan(text)
                self._yaml[path] = yaml.load(text, Loader=yaml.BaseLoader)
            except OSError as exc:
                raise JobError(f"cannot read wildcard file: {exc.strerror}", path=str(path)) from exc
            except UnicodeDecodeError as exc:
                raise JobError("wildcard file is not UTF-8 text", path=str(path),
                               hint="save it as UTF-8") from exc
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                raise JobError(f"wildcard file is not valid YAML: {getattr(exc, 'problem', exc)}",
                               path=str(path), where=f"line {mark.line + 1}" if mark else None,
                               hint="a YAML wildcard file holds a list, or a mapping of lists"
                               ) from exc
        return self._yaml[path]


_MISSING = object()


def _read_text(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise JobError(f"wildcard file is {size} bytes; the most is {MAX_FILE_BYTES}",
                       path=str(path), hint="split it into several wildcard files")
    return path.read_text(encoding="utf-8-sig")


def _read_txt(path: Path) -> list[tuple[str, _Source]]:
    try:
        text = _read_text(path)
    except OSError as exc:
        raise JobError(f"cannot read wildcard file: {exc.strerror}", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise JobError("wildcard file is not UTF-8 text", path=str(path),
                       hint="save it as UTF-8") from exc
    options = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            options.append((stripped, (str(path), f"line {lineno}")))
    if not options:
        raise JobError("wildcard file has no options", path=str(path),
                       hint="write one option a line ('#' lines and blank lines are skipped)")
    return options


def _lookup(data: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _yaml_options(path: Path, keys: list[str], value: Any, name: str
                  ) -> list[tuple[str, _Source]]:
    where = "/".join(keys) or "top level"
    if isinstance(value, dict):
        inner = ", ".join(f"__{name}/{k}__" for k in list(value)[:5])
        raise JobError(f"__{name}__ is a group of wildcards, not a list of options",
                       path=str(path), where=where,
                       hint=f"use one of {inner}, or __{name}/*__ for all of them")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise JobError(f"__{name}__ has no options", path=str(path), where=where,
                       hint="give a list of options (or a mapping of lists)")
    options = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise JobError(f"item {i} of __{name}__ is a {type(item).__name__}, not text",
                           path=str(path), where=where,
                           hint="each option is one line of text; nest groups as mappings")
        options.append((item, (str(path), f"{where} item {i}")))
    return options


def _leaves(prefix: str, data: Any) -> list[str]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(f"{prefix}/{key}", value)]
    return [prefix] if isinstance(data, (list, str)) else []
