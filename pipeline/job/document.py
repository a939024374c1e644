"""A job file's text -> (YAML node tree for line numbers, plain data), or a ``JobError``.

JSON (text starting with ``{`` or ``[``) is read as JSON, so tabs, exponents and ``\\ud83d\\udc19``
surrogate pairs mean what they mean in JSON (a lone surrogate is an error); its node tree comes
from YAML when YAML can read the same text, else line numbers are left out. Everything else is
YAML, read within ``pipeline.job.yamlsafe``'s limits. Duplicate keys are errors in both.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from pipeline.errors import JobError
from pipeline.job import yamlsafe


def read_document(text: str, path: str) -> tuple[yaml.Node | None, Any]:
    """(node tree for line numbers, or None; the data). JSON is read as JSON (tabs, exponents,
    surrogate pairs), and its node tree comes from YAML when YAML can also read it."""
    if text.lstrip().startswith(("{", "[")):
        data = _read_json(text, path)
        try:
            yamlsafe.scan(text)
            node = yaml.compose(text, Loader=yamlsafe.base_loader())
        except (yaml.YAMLError, RecursionError, ValueError):
            node = None
        if node is not None:
            _check_duplicate_keys(node, path)
        return node, data
    try:
        node, data = yamlsafe.load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except RecursionError:
        raise JobError("is nested too deeply to read", path=path,
                       hint=f"a job nests at most {yamlsafe.MAX_DEPTH} levels") from None
    if node is not None:
        _check_duplicate_keys(node, path)
    return node, data


def _read_json(text: str, path: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise JobError(f"key {key!r} appears twice in one object", path=path,
                               hint="keep one of them; a later one would silently win")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise JobError(f"{name} is not a number a request can carry", path=path,
                       hint="write a finite number")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise JobError(f"is not valid JSON: {exc.msg}", path=path,
                       where=f"line {exc.lineno}, column {exc.colno}",
                       hint="check the commas, quotes and brackets there") from None
    except RecursionError:
        raise JobError("is nested too deeply to read", path=path,
                       hint=f"a job nests at most {yamlsafe.MAX_DEPTH} levels") from None
    except ValueError as exc:  # an integer with thousands of digits
        raise JobError(f"cannot be read: {exc}", path=path, hint="write shorter numbers") from None
    problem = _json_problem(data)
    if problem is not None:
        loc, message = problem
        raise JobError(message, path=path, where=loc_text(loc) or None,
                       hint="write the character itself, or both halves of its \\u escape pair")
    return data


def _json_problem(data: Any) -> tuple[tuple[Any, ...], str] | None:
    """Depth over the limit, or a string with a lone surrogate (JSON allows \\ud83d alone)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        if len(loc) > yamlsafe.MAX_DEPTH:
            return loc[:3], f"values are nested deeper than {yamlsafe.MAX_DEPTH} levels"
        if isinstance(item, str):
            try:
                yamlsafe.fix_surrogates(item)
            except yaml.YAMLError:
                return loc, "a \\u escape is half of a surrogate pair (a lone surrogate)"
        elif isinstance(item, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for key, value in item.items():
                if any("\ud800" <= c <= "\udfff" for c in key):
                    return loc, "a key holds a lone surrogate (half of a \\u escape pair)"
                stack.append(((*loc, key), value))
    return None


def _yaml_error(exc: yaml.YAMLError, path: str) -> JobError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, yamlsafe.YamlLimitError):
        return JobError(problem, path=path, where=where,
                        hint="a job file holds plain values, lists and mappings; write the "
                             "values out (no tags), and keep aliases and nesting small")
    hint = "check indentation and quoting there; quote prompts that contain ': ', '#', '{' or '['"
    return JobError(f"is not valid YAML/JSON: {problem}", path=path, where=where, hint=hint)


def _check_duplicate_keys(root: yaml.Node, path: str) -> None:
    stack = [root]
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias: checked once
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key != "<<" and key in seen:
                    raise JobError(f"key {key!r} appears twice (first on line {seen[key]})",
                                   path=path, where=f"line {key_node.start_mark.line + 1}",
                                   hint="keep one of them; a later one would silently win")
                if key is not None:
                    seen[key] = key_node.start_mark.line + 1
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the value at ``loc`` (keys and list indexes), or of its nearest parent."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    node = value_node
                    best = key_node.start_mark.line + 1
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
                best = node.start_mark.line + 1
            else:
                return best
        else:
            return best
    return best


def loc_text(loc: tuple[Any, ...]) -> str:
    """``("prompts", 0, "seed")`` -> ``prompts[0].seed``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
