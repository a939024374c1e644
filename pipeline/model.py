"""The values that pass between stages: frozen, slotted, no behaviour beyond derived views.

    JobSpec --expand--> Variant --generate--> Generated | Failed --write--> manifest records
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["txt2img", "img2img"]
ImageKind = Literal["generation", "extra"]


@dataclass(frozen=True, slots=True)
class Variant:
    """One request to make: one expanded prompt x one matrix combination x one seed.

    ``id`` is derived from what the variant asks for (its payload, plus a replicate number when
    the server picks the seed), so the same job file gives the same ids on every run.
    ``payload`` is the complete request body; treat it as read-only.
    """

    id: str
    ordinal: int
    prompt: str
    negative_prompt: str
    seed: int
    payload: dict[str, Any] = field(hash=False, compare=False)
    axes: tuple[tuple[str, Any], ...] = ()
    endpoint: Endpoint = "txt2img"

    @property
    def checkpoint(self) -> str | None:
        overrides = self.payload.get("override_settings") or {}
        value = overrides.get("sd_model_checkpoint")
        return str(value) if value else None

    @property
    def sampler(self) -> str | None:
        value = self.payload.get("sampler_name")
        return str(value) if value else None

    @property
    def images_expected(self) -> int:
        return int(self.payload.get("batch_size", 1) or 1) * int(self.payload.get("n_iter", 1) or 1)

    def axis(self, name: str, default: Any = None) -> Any:
        for key, value in self.axes:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Image:
    """One image as the backend sent it: ``data`` is the exact decoded bytes, never re-encoded."""

    index: int
    data: bytes
    format: str  # "png" | "jpeg" | "webp" | "gif" | "bin"
    kind: ImageKind = "generation"
    seed: int | None = None
    subseed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    infotext: str | None = None


@dataclass(frozen=True, slots=True)
class Generated:
    """A successful response, already checked: every generation present and labelled."""

    variant: Variant
    images: tuple[Image, ...]
    info: dict[str, Any] = field(hash=False, compare=False)
    backend: str  # the backend's label (its name, else its URL without credentials)
    model: str | None
    attempts: int
    elapsed_s: float
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    backend_url: str = ""  # always the URL, without credentials


@dataclass(frozen=True, slots=True)
class Failed:
    """A variant that failed for good (or, with ``final=False``, was given up for this run)."""

    variant: Variant
    error: str
    status: int | None
    attempts: int
    backend: str | None
    final: bool = True


Outcome = Generated | Failed
