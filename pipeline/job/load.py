"""Load a job file (YAML or JSON) into a validated ``JobSpec``.

The one place untrusted job text enters. Every problem becomes a ``JobError`` that names the file,
the line (when the file has one for it) and the field, and says what to do: never a traceback.
YAML is read with the safe loader (no object construction); duplicate keys are errors.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import JobError
from pipeline.job.document import line_of, loc_text, read_document
from pipeline.job.fields import MATRIX_ALIASES, TXT2IMG_FIELDS
from pipeline.job.masking import job_secrets, masked
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
        raise masked(exc, secrets) from None


def _parse(raw: bytes, path: str, base_dir: str, environ: Any, secrets: list[str]) -> JobSpec:
    if b"\x00" in raw:
        raise JobError("contains NUL bytes; it is not a text file", path=path,
                       hint="a job file is YAML or JSON text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobError(f"is not UTF-8 text (bad byte at offset {exc.start})", path=path,
                       hint="save the file as UTF-8") from None
    node, data = read_document(text, path)
    if data is None:
        raise JobError("is empty", path=path,
                       hint="a job needs at least 'prompts:'; see jobs/example.yaml")
    if not isinstance(data, dict):
        raise JobError(f"holds a {type(data).__name__}, not a mapping of settings", path=path,
                       where="line 1",
                       hint="start with keys like 'prompts:'; see jobs/example.yaml")
    secrets += job_secrets(data)
    _check_top_keys(data, node, path)
    data = _expand_env_in_backends(data, node, path, environ)
    secrets += job_secrets(data)
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
        from pipeline.job.grid import GridSpec

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
    field = loc_text(loc)
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
