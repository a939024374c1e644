"""The job file schema: pydantic models at the trust boundary.

Everything a job file may say is declared here (backends in ``pipeline.job.backends``); the request
fields a job sets are checked by ``pipeline.job.checks`` (types from ``pipeline.job.fields``, the
value grammar in ``pipeline.job.values``). ``pipeline.job.load`` reads the file, maps errors to
``JobError`` with file and line, and hands back a validated ``JobSpec``.

Limits a real job never reaches: ``seeds: N`` and ``{count: N}`` up to ``MAX_SEEDS``; a request
``timeout_s`` up to a day; every retry time up to ``MAX_WAIT_S`` (30 days); no .inf or .nan.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.job import checks
from pipeline.job.backends import BackendSpec, check_backend_labels  # noqa: F401
from pipeline.job.backends import StrictModel as _Strict
from pipeline.job.checks import no_duplicates as _no_duplicates
from pipeline.job.fields import SEED_MAX
from pipeline.job.masking import mask_url  # noqa: F401
from pipeline.job.values import (MAX_RANGE_VALUES, FieldValueError, expand_values,  # noqa: F401
                                 parse_range)

MAX_SEEDS = 1_000_000
MAX_WAIT_S = 30 * 86_400.0


class RetrySpec(_Strict):
    """How hard to try. Attempts and time both bound a variant; health decides a backend's bench.

    Defaults (BENCHMARKS.md, case 6): a retried variant usually goes to another backend, so the
    first wait is short (0.25 s, doubling to 60 s); a backend is benched after 5 failures in a
    row, since 3 happen by chance to a healthy one that fails 10% of requests; and a variant may
    fail on 6 backends before it fails for good, since failing on 3 by chance loses 1 variant in
    3,000 at that rate (attempts still stop at 8).
    """

    max_attempts: int = Field(8, ge=1, le=100)
    max_time_s: float = Field(3600.0, gt=0, le=MAX_WAIT_S)
    backoff_initial_s: float = Field(0.25, ge=0, le=MAX_WAIT_S)
    backoff_max_s: float = Field(60.0, ge=0, le=MAX_WAIT_S)
    max_backends_per_variant: int = Field(6, ge=1, le=1000)
    bench_after_failures: int = Field(5, ge=1, le=1000)
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
