"""The job file schema: pydantic models at the trust boundary.

Everything a job file may say is declared here; ``pipeline.job.load`` reads the file, maps errors to
``JobError`` with file and line, and hands back a validated ``JobSpec``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_RANGE = re.compile(
    r"^\s*(-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)\s*(?:step\s+(\d+(?:\.\d+)?))?\s*$")
MAX_RANGE_VALUES = 100_000


def parse_range(text: str) -> list[int | float] | None:
    """``"5..9"`` -> [5, 6, 7, 8, 9]; ``"0.2..1.0 step 0.2"`` -> [0.2, 0.4, 0.6, 0.8, 1.0].

    Inclusive on both ends; returns None when ``text`` is not a range.
    """
    match = _RANGE.match(text)
    if not match:
        return None
    start_s, stop_s, step_s = match.groups()
    is_float = any("." in s for s in (start_s, stop_s, step_s or ""))
    start, stop = float(start_s), float(stop_s)
    step = float(step_s) if step_s else 1.0
    if step <= 0:
        raise ValueError(f"range {text!r}: step must be positive")
    if stop < start:
        raise ValueError(f"range {text!r}: the end is below the start; write {stop_s}..{start_s}")
    n = int((stop - start) / step + 1e-9) + 1
    if n > MAX_RANGE_VALUES:
        raise ValueError(f"range {text!r} has {n} values; the most is {MAX_RANGE_VALUES}")
    decimals = max((len(s.split(".")[1]) for s in (start_s, stop_s, step_s or "") if "." in s),
                   default=0)
    values = [round(start + i * step, decimals) for i in range(n)]
    return values if is_float else [int(v) for v in values]


def expand_values(raw: Any) -> list[Any]:
    """A matrix axis: a list, a single value, or range strings, flattened to a list of values."""
    items = raw if isinstance(raw, list) else [raw]
    out: list[Any] = []
    for item in items:
        rng = parse_range(item) if isinstance(item, str) else None
        out.extend(rng if rng is not None else [item])
    return out


def _no_duplicates(values: list[Any], what: str) -> None:
    """Two equal values would make two identical variants (and the same images twice)."""
    seen: set[str] = set()
    for value in values:
        key = repr(value)
        if key in seen:
            raise ValueError(f"{what} lists {value!r} twice; each value makes its own variants, "
                             "so keep one")
        seen.add(key)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    timeout_s: float = Field(600.0, gt=0)
    verify_tls: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"url": data}
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            parts = urlsplit(data["url"].strip())
            if parts.username is not None or parts.password is not None:
                netloc = parts.hostname or ""
                if parts.port:
                    netloc += f":{parts.port}"
                data = dict(data)
                data["url"] = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
                if not data.get("auth"):
                    data["auth"] = f"{parts.username or ''}:{parts.password or ''}"
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{url!r} is not a backend URL; write it like http://127.0.0.1:7861")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{url!r} has a bad port number") from None
        return url.strip().rstrip("/")

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, auth: SecretStr | None) -> SecretStr | None:
        if auth is not None and ":" not in auth.get_secret_value():
            raise ValueError("auth must look like user:password (as for --api-auth)")
        return auth

    @property
    def label(self) -> str:
        """How the backend is named in output and logs: never with credentials."""
        return self.name or self.url


class RetrySpec(_Strict):
    """How hard to try. Attempts and time both bound a variant; health decides a backend's bench."""

    max_attempts: int = Field(8, ge=1, le=100)
    max_time_s: float = Field(3600.0, gt=0)
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_backends_per_variant: int = Field(3, ge=1)
    bench_after_failures: int = Field(3, ge=1)
    cooldown_s: float = Field(5.0, ge=0)
    cooldown_max_s: float = Field(300.0, ge=0)
    patience_s: float = Field(900.0, ge=0)


class PromptSpec(BaseModel):
    """A prompt template; other keys are txt2img fields that override ``defaults`` for it."""

    model_config = ConfigDict(extra="allow", frozen=True)

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
    count: int = Field(ge=1, le=1_000_000)


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
    seed: int = 0
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
    def _plain_not_blank(cls, prompts: list[str | PromptSpec]) -> list[str | PromptSpec]:
        for i, p in enumerate(prompts):
            if isinstance(p, str) and not p.strip():
                raise ValueError(f"prompt {i + 1} is empty; write the text to generate from")
        return prompts

    @field_validator("matrix", mode="after")
    @classmethod
    def _matrix_axes(cls, matrix: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, raw in matrix.items():
            if not key or key.startswith(".") or key.endswith(".") or ".." in key:
                raise ValueError(f"matrix key {key!r} is not a field name or dotted path")
            if key in ("prompt", "seed"):
                raise ValueError(f"matrix key {key!r}: use the top-level 'prompts' / 'seeds' "
                                 "instead")
            values = expand_values(raw)
            if not values:
                raise ValueError(f"matrix axis {key!r} has no values; give at least one")
            _no_duplicates(values, f"matrix axis {key!r}")
            out[key] = values
        return out

    @field_validator("zip", mode="after")
    @classmethod
    def _zip_groups(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for n, group in enumerate(groups, 1):
            if not group:
                raise ValueError(f"zip group {n} is empty")
            lengths = {key: len(values) for key, values in group.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"zip group {n}: values move together, so every list needs the "
                                 f"same length; got {lengths}")
            if 0 in lengths.values():
                raise ValueError(f"zip group {n} has empty lists")
            _no_duplicates([tuple(map(repr, row)) for row in zip(*group.values())],
                           f"zip group {n}")
        return groups

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

    @field_validator("seeds", mode="after")
    @classmethod
    def _seeds(cls, seeds: list[int] | int | SeedCount) -> list[int] | int | SeedCount:
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds < 1:
            raise ValueError("seeds: N must be at least 1 (N variants, the server picks seeds)")
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("seeds is an empty list; give at least one seed, or -1")
            for s in seeds:
                if s < -1 or s > 2**32 - 1:
                    raise ValueError(f"seed {s} is outside 0..4294967295 (or -1 for random)")
            _no_duplicates([s for s in seeds if s != -1], "seeds")
        return seeds

    @model_validator(mode="after")
    def _random_mode(self) -> JobSpec:
        if self.mode == "random" and self.random is None:
            raise ValueError("mode: random needs 'random: {count: N}' (how many prompts to draw)")
        return self

    # Set by the loader, not by the file.
    source_path: str = ""
    base_dir: str = ""
    content_sha256: str = ""

    @property
    def wildcards_dir(self) -> Path:
        base = Path(self.base_dir or ".")
        return base / (self.wildcards or "wildcards")
