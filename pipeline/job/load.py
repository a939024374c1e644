"""Load a job file (YAML or JSON) into a validated ``JobSpec``.

The one place untrusted job text enters. Every problem becomes a ``JobError`` that names the file,
the line (when the file has one for it) and the field, and says what to do: never a traceback.
YAML is read with the safe loader (no object construction); duplicate keys are errors.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from pydantic import ValidationError

from pipeline.errors import JobError
from pipeline.job import yamlsafe
from pipeline.job.fields import MATRIX_ALIASES, TXT2IMG_FIELDS
from pipeline.job.naming import Namer, job_axis_names
from pipeline.job.schema import JobSpec
from pipeline.job.values import FieldValueError

log = logging.getLogger(__name__)

MAX_JOB_BYTES = 16 * 1024 * 1024
_LOADER_FIELDS = {"source_path", "base_dir", "content_sha256"}
FILE_KEYS = sorted(set(JobSpec.model_fields) - _LOADER_FIELDS)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_job(path: str | Path, *, environ: dict[str, str] | None = None) -> JobSpec:
    """Read, parse and validate the job file at ``path``."""
    path = Path(path)
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JobError("no such file", path=shown,
                       hint="check the path; example jobs are in jobs/") from None
    except IsADirectoryError:
        raise JobError("is a directory, not a job file", path=shown,
                       hint="name a .yaml or .json file") from None
    except OSError as exc:
        raise JobError(f"cannot be read ({exc.strerror})", path=shown,
                       hint="check the file's permissions") from None
    if len(raw) > MAX_JOB_BYTES:
        raise JobError(f"is {len(raw)} bytes; a job file may be at most {MAX_JOB_BYTES}",
                       path=shown, hint="move long lists into wildcard files")
    return parse_job(raw, path=shown, base_dir=str(path.resolve().parent), environ=environ)


def parse_job(raw: bytes, *, path: str = "<job>", base_dir: str = ".",
              environ: dict[str, str] | None = None) -> JobSpec:
    """Parse job text already in memory (the Python API and tests use this)."""
    secrets: list[str] = []
    try:
        return _parse(raw, path, base_dir, os.environ if environ is None else environ, secrets)
    except JobError as exc:
        raise _masked(exc, secrets) from None


def _parse(raw: bytes, path: str, base_dir: str, environ: Any, secrets: list[str]) -> JobSpec:
    if b"\x00" in raw:
        raise JobError("contains NUL bytes; it is not a text file", path=path,
                       hint="a job file is YAML or JSON text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobError(f"is not UTF-8 text (bad byte at offset {exc.start})", path=path,
                       hint="save the file as UTF-8") from None
    node, data = _read_document(text, path)
    if data is None:
        raise JobError("is empty", path=path,
                       hint="a job needs at least 'prompts:'; see jobs/example.yaml")
    if not isinstance(data, dict):
        raise JobError(f"holds a {type(data).__name__}, not a mapping of settings", path=path,
                       where="line 1",
                       hint="start with keys like 'prompts:'; see jobs/example.yaml")
    secrets += _secrets(data)
    _check_top_keys(data, node, path)
    data = _expand_env_in_backends(data, node, path, environ)
    secrets += _secrets(data)
    _warn_unknown_fields(data, node, path)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, node, path) from None
    try:
        Namer(spec.naming, axes=job_axis_names(spec))
    except JobError as exc:
        line = line_of(node, ("naming",))
        raise JobError(exc.detail, path=path, where=f"line {line}, naming" if line else "naming",
                       hint=exc.hint) from None
    if spec.grid is not None:
        from pipeline.grid.spec import GridSpec

        try:
            GridSpec.from_job(spec.model_copy(update={"source_path": path}))
        except JobError as exc:
            line = line_of(node, tuple((exc.where or "grid").split(".")))
            raise JobError(exc.detail, path=path,
                           where=f"line {line}, {exc.where}" if line else exc.where,
                           hint=exc.hint) from None
    return spec.model_copy(update={
        "source_path": path,
        "base_dir": base_dir,
        "content_sha256": hashlib.sha256(raw).hexdigest(),
    })


# --- YAML and JSON with positions ------------------------------------------------------------

def _read_document(text: str, path: str) -> tuple[yaml.Node | None, Any]:
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
        raise JobError(message, path=path, where=_loc_text(loc) or None,
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


# --- credentials in messages -----------------------------------------------------------------

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]*@")


def _secrets(data: dict[str, Any]) -> list[str]:
    """Every credential the job holds, as written and percent-decoded, to keep out of messages."""
    found: list[str] = []
    backends = data.get("backends")
    for backend in backends if isinstance(backends, list) else []:
        if isinstance(backend, str):
            backend = {"url": backend}
        if not isinstance(backend, dict):
            continue
        url = backend.get("url")
        if isinstance(url, str) and "@" in url:
            userinfo = url.partition("://")[2].rpartition("@")[0]
            found += [userinfo, userinfo.partition(":")[2]]
        auth = backend.get("auth")
        if isinstance(auth, str):
            found += [auth, auth.partition(":")[2]]
        headers = backend.get("headers")
        if isinstance(headers, dict):
            found += [v for v in headers.values() if isinstance(v, str)]
    out = {s for s in found if len(s) >= 3}
    out |= {unquote(s) for s in out}
    return sorted(out, key=len, reverse=True)


def _masked(exc: JobError, secrets: list[str]) -> JobError:
    def mask(text: str | None) -> str | None:
        if text is None:
            return None
        text = _USERINFO.sub(r"\1USER:PASS@", text)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    detail, where, hint = mask(exc.detail), mask(exc.where), mask(exc.hint)
    if (detail, where, hint) == (exc.detail, exc.where, exc.hint):
        return exc
    masked = JobError(detail or "", path=exc.path, where=where, hint=hint)
    return masked


# --- checks before the schema ----------------------------------------------------------------

def _check_top_keys(data: dict[str, Any], node: yaml.Node, path: str) -> None:
    for key in data:
        if not isinstance(key, str) or key not in FILE_KEYS:
            close = difflib.get_close_matches(str(key), FILE_KEYS, n=1, cutoff=0.6)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"the top-level keys are: {', '.join(FILE_KEYS)}")
            if isinstance(key, str) and key in TXT2IMG_FIELDS:
                hint = f"txt2img fields go under 'defaults:' (defaults: {{{key}: ...}})"
            line = line_of(node, (key,))
            raise JobError(f"unknown key {key!r}", path=path,
                           where=f"line {line}" if line else None, hint=hint)


def _expand_env(value: str, environ: dict[str, str], field: str, path: str, line: int | None) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise JobError(f"{field} uses ${{{name}}} but the environment has no {name}",
                       path=path, where=f"line {line}" if line else field,
                       hint=f"export {name}=... before running, or write ${{{name}:-default}}")
    return _ENV.sub(sub, value)


def _expand_env_in_backends(data: dict[str, Any], node: yaml.Node, path: str,
                            environ: dict[str, str]) -> dict[str, Any]:
    """``${VAR}`` expands from the environment in backend url, auth and headers only."""
    backends = data.get("backends")
    if not isinstance(backends, list):
        return data
    out = []
    for i, backend in enumerate(backends):
        if isinstance(backend, str):
            backend = {"url": backend}
        if isinstance(backend, dict):
            backend = dict(backend)
            for key in ("url", "auth"):
                if isinstance(backend.get(key), str):
                    backend[key] = _expand_env(backend[key], environ, f"backends[{i}].{key}",
                                               path, line_of(node, ("backends", i, key)))
            if isinstance(backend.get("headers"), dict):
                backend["headers"] = {
                    k: _expand_env(v, environ, f"backends[{i}].headers.{k}", path,
                                   line_of(node, ("backends", i, "headers", k)))
                    if isinstance(v, str) else v
                    for k, v in backend["headers"].items()}
        out.append(backend)
    return {**data, "backends": out}


def _warn_unknown_fields(data: dict[str, Any], node: yaml.Node, path: str) -> None:
    sections: list[tuple[str, Any]] = [("defaults", data.get("defaults")),
                                       ("matrix", data.get("matrix"))]
    zips = data.get("zip")
    for i, group in enumerate(zips if isinstance(zips, list) else []):
        sections.append((f"zip[{i}]", group))
    prompts = data.get("prompts")
    for i, prompt in enumerate(prompts if isinstance(prompts, list) else []):
        if isinstance(prompt, dict):
            sections.append((f"prompts[{i}]", {k: v for k, v in prompt.items()
                                                if k not in ("prompt", "raw", "name")}))
    for section, fields in sections:
        if not isinstance(fields, dict):
            continue
        for key in fields:
            top = str(key).split(".", 1)[0]
            if top not in TXT2IMG_FIELDS and key not in MATRIX_ALIASES:
                close = difflib.get_close_matches(top, sorted(TXT2IMG_FIELDS), n=1, cutoff=0.7)
                head, _, index = section.partition("[")
                loc = (head, int(index[:-1]), key) if index else (head, key)
                line = line_of(node, loc)
                log.warning("%s: line %s: %s.%s is not a WebUI txt2img field; the WebUI ignores "
                            "unknown fields silently%s", path, line, section, key,
                            f" (did you mean {close[0]!r}?)" if close else "")


# --- schema errors ---------------------------------------------------------------------------

_TYPE_HINTS = {
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "string_type": "write text (quote it if it looks like a number)",
    "list_type": "write a list, e.g. [a, b] or one '- item' per line",
    "dict_type": "write a mapping of key: value lines",
    "missing": "add it",
    "greater_than_equal": "use a larger value",
    "greater_than": "use a larger value",
    "less_than_equal": "use a smaller value",
    "too_short": "give at least one item",
    "literal_error": "use one of the allowed values",
    "extra_forbidden": "remove it, or check its spelling",
}


def _validation_error(exc: ValidationError, node: yaml.Node | None, path: str) -> JobError:
    errors = exc.errors(include_url=False)

    def loc_of(e: Any) -> tuple[Any, ...]:
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        cause = (e.get("ctx") or {}).get("error")
        return (*loc, *cause.loc) if isinstance(cause, FieldValueError) else loc

    # For a union (e.g. a prompt as text or as an object) the deepest error is the telling one.
    err = max(errors, key=lambda e: len(loc_of(e)))
    loc = loc_of(err)
    field = _loc_text(loc)
    line = line_of(node, loc)
    msg = err["msg"].removeprefix("Value error, ")
    hint = _TYPE_HINTS.get(err["type"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldValueError):
        msg, hint = cause.message, cause.hint
    if err["type"] == "extra_forbidden" and loc:
        parent = _model_fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), parent, n=1, cutoff=0.6) if parent else []
        hint = f"did you mean {close[0]!r}?" if close else (
            f"allowed here: {', '.join(parent)}" if parent else hint)
        msg = f"unknown key {loc[-1]!r}"
    if err["type"] == "missing":
        msg = f"'{loc[-1]}' is required" if loc else msg
        hint = "add it; see jobs/example.yaml"
    if err["type"] == "finite_number":
        hint = "write a finite number (.inf and .nan are not allowed)"
    hint = _FIELD_HINTS.get(loc[0] if loc else "", hint) if err["type"] != "value_error" else hint
    where = f"line {line}, {field}" if line and field else (f"line {line}" if line else field)
    return JobError(msg, path=path, where=where or None, hint=hint)


_FIELD_HINTS = {
    "seeds": "write a list of seeds like [1, 2, 3], a count N (the server picks), "
             "or {count: N} (derived from 'seed')",
}

_UNION_TAGS = {"str", "PromptSpec", "list[int]", "int", "SeedCount", "float", "function-after",
               "function-before"}


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_fields_at(loc: tuple[Any, ...]) -> list[str]:
    from pipeline.job import schema as jobspec

    models = {(): JobSpec, ("retry",): jobspec.RetrySpec, ("loras",): jobspec.LoraAxis,
              ("random",): jobspec.RandomMode, ("seeds",): jobspec.SeedCount}
    key = tuple(p for p in loc if not isinstance(p, int))
    if key and key[0] == "backends":
        return sorted(jobspec.BackendSpec.model_fields)
    model = models.get(key)
    if model is None:
        return []
    return sorted(set(model.model_fields) - _LOADER_FIELDS)
