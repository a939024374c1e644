"""The job file schema: pydantic models at the trust boundary.

Everything a job file may say is declared here; ``pipeline.job.load`` reads the file, maps errors to
``JobError`` with file and line, and hands back a validated ``JobSpec``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pipeline.job import checks
from pipeline.job.checks import no_duplicates as _no_duplicates
from pipeline.job.fields import SEED_MAX
from pipeline.job.values import (MAX_RANGE_VALUES, FieldValueError, expand_values,  # noqa: F401
                                 parse_range)

MAX_SEEDS = 1_000_000
MAX_REQUEST_TIMEOUT_S = 86_400.0
MAX_WAIT_S = 30 * 86_400.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def mask_url(url: str) -> str:
    """``url`` as it may be shown: user info replaced, a port that is not a number hidden."""
    try:
        parts = urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            host = "USER:PASS@" + host
        name, colon, port = host.rpartition(":")
        if colon and port and not port.isdigit() and "]" not in port:
            host = f"{name}:***"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "the URL"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackendSpec(_Strict):
    """One backend server. Credentials live in ``auth`` only, never in ``url``.

    ``kind`` says which API it speaks: ``webui`` (AUTOMATIC1111, Forge, reForge, SD.Next) or
    ``comfyui``; a ComfyUI backend needs a ``workflow`` (here or at job level).
    """

    url: str
    name: str | None = None
    kind: Literal["webui", "comfyui"] = "webui"
    workflow: str | None = None
    concurrency: int = Field(1, ge=1, le=64)
    auth: SecretStr | None = None
    timeout_s: float = Field(600.0, gt=0, le=MAX_REQUEST_TIMEOUT_S)
    verify_tls: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """``http://user:p%40ss@host`` -> url ``http://host`` and auth ``user:p@ss`` (decoded)."""
        if isinstance(data, str):
            data = {"url": data}
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            try:
                parts = urlsplit(data["url"].strip())
                has_userinfo = "@" in parts.netloc
                host = parts.netloc.rpartition("@")[2]
            except ValueError:
                return data  # _check_url says what is wrong
            if has_userinfo:
                userinfo = parts.netloc.rpartition("@")[0]
                user, _, password = userinfo.partition(":")
                data = dict(data)
                data["url"] = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
                if not data.get("auth"):
                    data["auth"] = f"{unquote(user)}:{unquote(password)}"
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        shown = mask_url(url)
        if _CONTROL.search(url) or " " in url.strip():
            raise FieldValueError(f"{shown!r} contains spaces or control characters",
                                  hint="write the URL on one line, without spaces")
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:
            raise FieldValueError(f"{shown!r} is not a URL ({exc})",
                                  hint="write it like http://127.0.0.1:7861") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FieldValueError(f"{shown!r} is not a backend URL",
                                  hint="write it like http://127.0.0.1:7861 (http or https)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise FieldValueError(f"{shown!r} has a bad port number",
                                  hint="a port is a number up to 65535; credentials go before "
                                       "the host: http://user:password@host:port") from None
        return url.strip().rstrip("/")

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and (_CONTROL.search(name) or not name.strip()):
            raise FieldValueError("the backend name is empty or has control characters",
                                  hint="write a short label such as gpu1")
        return name

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, auth: SecretStr | None) -> SecretStr | None:
        if auth is not None and ":" not in auth.get_secret_value():
            raise FieldValueError("auth must look like user:password",
                                  hint="write auth: \"user:password\" (as for the WebUI's "
                                       "--api-auth), or ${VAR} to read it from the environment")
        if auth is not None and _CONTROL.search(auth.get_secret_value()):
            raise FieldValueError("auth contains a line break or control character",
                                  hint="write user:password on one line")
        return auth

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise FieldValueError(f"header name {name[:40]!r} is not a valid HTTP header "
                                      "name", loc=(name,), hint="use letters, digits and - "
                                      "only, e.g. X-Token")
            if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value.get_secret_value()):
                raise FieldValueError(f"header {name} has a line break or control character "
                                      "in its value", loc=(name,),
                                      hint="a header value is one line of text")
        return headers

    @property
    def label(self) -> str:
        """How the backend is named in output and logs: never with credentials."""
        return self.name or self.url


def check_backend_labels(backends: list[BackendSpec]) -> None:
    """Each backend is told apart by its label (name, else URL): two alike would share a lane."""
    seen: dict[str, int] = {}
    for i, backend in enumerate(backends):
        if backend.label in seen:
            raise FieldValueError(f"backends {seen[backend.label] + 1} and {i + 1} are both "
                                  f"{mask_url(backend.label)!r}", loc=(i,),
                                  hint="list each server once (raise its concurrency for more "
                                       "requests in flight), or give them different names")
        seen[backend.label] = i


class RetrySpec(_Strict):
    """How hard to try. Attempts and time both bound a variant; health decides a backend's bench."""

    max_attempts: int = Field(8, ge=1, le=100)
    max_time_s: float = Field(3600.0, gt=0, le=MAX_WAIT_S)
    backoff_initial_s: float = Field(1.0, ge=0, le=MAX_WAIT_S)
    backoff_max_s: float = Field(60.0, ge=0, le=MAX_WAIT_S)
    max_backends_per_variant: int = Field(3, ge=1, le=1000)
    bench_after_failures: int = Field(3, ge=1, le=1000)
    cooldown_s: float = Field(5.0, ge=0, le=MAX_WAIT_S)
    cooldown_max_s: float = Field(300.0, ge=0, le=MAX_WAIT_S)
    patience_s: float = Field(900.0, ge=0, le=MAX_WAIT_S)


class PromptSpec(BaseModel):
    """A prompt template; other keys are txt2img fields that override ``defaults`` for it."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    prompt: str
    negative_prompt: str | None = None
    raw: bool = False
    name: str | None = None

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the prompt is empty; write the text to generate from")
        return text

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LoraAxis(_Strict):
    """LoRA names x weights; each variant's prompt gets ``<lora:name:weight>`` appended.

    A weight of 0 (or ``baseline: true``) is the prompt without any tag.
    """

    names: list[str] = Field(min_length=1)
    weights: list[float | str] = Field(default_factory=lambda: [1.0])
    baseline: bool = False

    @field_validator("names", mode="after")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            if not name.strip() or re.search(r"[<>:\x00-\x1f]", name):
                raise FieldValueError(f"LoRA name {name[:60]!r} is empty or holds <, > or :",
                                      loc=(i,), hint="write the LoRA's file name without its "
                                      "extension, as in <lora:NAME:0.8>")
        _no_duplicates(names, "loras.names")
        return names

    @field_validator("weights", mode="after")
    @classmethod
    def _ranges(cls, weights: list[float | str]) -> list[float | str]:
        out: list[float | str] = []
        for w in expand_values(weights):
            if isinstance(w, str) and w != "baseline":
                raise ValueError(f"weight {w!r} is not a number, a range like 0.2..1.0 step 0.2, "
                                 "or 'baseline'")
            out.append(w)
        _no_duplicates(out, "loras.weights")
        return out


class SeedCount(_Strict):
    count: int = Field(ge=1, le=MAX_SEEDS)


class RandomMode(_Strict):
    count: int = Field(ge=1, le=10_000_000)


class ConvertSpec(_Strict):
    """Re-encode images on write (the A1111 infotext is carried over); off by default."""

    format: Literal["webp", "jpeg", "png"]
    quality: int = Field(90, ge=1, le=100)


class DatasetSpec(_Strict):
    """Options of the dataset formats in ``outputs`` (see ``pipeline.outputs``)."""

    shard_size: int = Field(10_000, ge=1, le=1_000_000)  # webdataset: samples per .tar shard
    parquet_shard_mb: int = Field(500, ge=1, le=50_000)  # parquet: image MB per file, at most
    tags: str | None = None  # kohya: meta_cap.json "tags" template (the caption's fields)


class JobSpec(_Strict):
    """A validated job file."""

    name: str | None = None
    output: str | None = None
    endpoint: Literal["txt2img", "img2img"] = "txt2img"
    backends: list[BackendSpec] = Field(default_factory=list)
    defaults: dict[str, Any] = Field(default_factory=dict)
    prompts: list[str | PromptSpec] = Field(min_length=1)
    matrix: dict[str, Any] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    replace: list[list[str]] = Field(default_factory=list)
    loras: LoraAxis | None = None
    seeds: list[int] | int | SeedCount = Field(default_factory=lambda: [-1])
    seed: int = Field(0, ge=-2**63, le=2**63 - 1)
    mode: Literal["combinatorial", "random"] = "combinatorial"
    random: RandomMode | None = None
    wildcards: str | None = None
    dynamic_prompts: Literal["disable", "refuse"] = "disable"
    retry: RetrySpec = Field(default_factory=RetrySpec)
    grid: dict[str, Any] | None = None
    outputs: list[Literal["imagefolder", "captions", "csv", "webdataset", "parquet",
                          "kohya"]] = Field(default_factory=list)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    workflow: str | None = None  # a ComfyUI API-format workflow for comfyui backends
    columns: list[str] | None = None
    naming: str | None = None
    caption: str | None = None
    convert: ConvertSpec | None = None

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @field_validator("prompts", mode="after")
    @classmethod
    def _check_prompts(cls, prompts: list[str | PromptSpec]) -> list[str | PromptSpec]:
        out: list[str | PromptSpec] = []
        for i, p in enumerate(prompts):
            if isinstance(p, str) and not p.strip():
                raise ValueError(f"prompt {i + 1} is empty; write the text to generate from")
            if isinstance(p, PromptSpec) and p.overrides:
                try:
                    checked = checks.check_overrides(p.overrides)
                except checks.FieldValueError as exc:
                    raise exc.at(i) from None
                p = PromptSpec(prompt=p.prompt, negative_prompt=p.negative_prompt, raw=p.raw,
                               name=p.name, **checked)
            out.append(p)
        return out

    @field_validator("defaults", mode="after")
    @classmethod
    def _check_defaults(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        return checks.check_defaults(defaults)

    @field_validator("matrix", mode="after")
    @classmethod
    def _matrix_axes(cls, matrix: dict[str, Any]) -> dict[str, Any]:
        return checks.check_matrix(matrix)

    @field_validator("zip", mode="after")
    @classmethod
    def _zip_groups(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        return checks.check_zip(groups)

    @field_validator("replace", mode="after")
    @classmethod
    def _replace_axes(cls, axes: list[list[str]]) -> list[list[str]]:
        for n, values in enumerate(axes, 1):
            if len(values) < 1 or not values[0]:
                raise ValueError(f"replace axis {n}: the first value is the text to search for, "
                                 "and cannot be empty")
            _no_duplicates(values, f"replace axis {n} (the first value is also the first "
                                   "replacement)")
        return axes

    @field_validator("seeds", "seed", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool)
                                                                       for v in value)):
            raise FieldValueError("true/false is not a seed", hint="write whole numbers, e.g. "
                                  "seeds: [1, 2, 3]")
        return value

    @field_validator("backends", mode="after")
    @classmethod
    def _distinct_backends(cls, backends: list[BackendSpec]) -> list[BackendSpec]:
        check_backend_labels(backends)
        return backends

    @field_validator("seeds", mode="after")
    @classmethod
    def _seeds(cls, seeds: list[int] | int | SeedCount) -> list[int] | int | SeedCount:
        if isinstance(seeds, int) and not isinstance(seeds, bool) and not 1 <= seeds <= MAX_SEEDS:
            raise FieldValueError(f"{seeds} is outside 1..{MAX_SEEDS}",
                                  hint=f"seeds: N makes N variants (the server picks each seed); "
                                       f"N is 1..{MAX_SEEDS}")
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("seeds is an empty list; give at least one seed, or -1")
            if len(seeds) > MAX_SEEDS:
                raise ValueError(f"seeds lists {len(seeds)} seeds; the most is {MAX_SEEDS}")
            for s in seeds:
                if s < -1 or s > SEED_MAX:
                    raise ValueError(f"seed {s} is outside 0..{SEED_MAX} (or -1 for random)")
            _no_duplicates([s for s in seeds if s != -1], "seeds")
        return seeds

    @model_validator(mode="after")
    def _random_mode(self) -> JobSpec:
        if self.mode == "random" and self.random is None:
            raise ValueError("mode: random needs 'random: {count: N}' (how many prompts to draw)")
        for i, p in enumerate(self.prompts):
            if self.mode == "random" and isinstance(p, PromptSpec) and "seed" in p.overrides:
                raise FieldValueError("a per-prompt 'seed' does not combine with mode: random "
                                      "(a draw picks the prompt)", loc=("prompts", i, "seed"),
                                      hint="give the seeds with 'seeds:' instead")
        checks.check_conflicts(self.matrix, self.zip, [
            p.overrides if isinstance(p, PromptSpec) else None for p in self.prompts])
        return self

    # Set by the loader, not by the file.
    source_path: str = ""
    base_dir: str = ""
    content_sha256: str = ""

    @property
    def wildcards_dir(self) -> Path:
        base = Path(self.base_dir or ".")
        return base / (self.wildcards or "wildcards")
