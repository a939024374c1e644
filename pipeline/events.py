"""What the stages tell the world. Progress, the summary and the Python API all read these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.model import Failed, Generated, Variant


@dataclass(frozen=True, slots=True)
class RunStarted:
    total: int
    already_done: int
    backends: tuple[str, ...]
    output: str
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class VariantSkipped:
    """Already complete in the output directory (resume)."""

    count: int


@dataclass(frozen=True, slots=True)
class VariantWritten:
    result: Generated
    records: tuple[dict[str, Any], ...] = field(hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class VariantFailed:
    failed: Failed


@dataclass(frozen=True, slots=True)
class VariantRetrying:
    variant: Variant
    backend: str
    error: str
    attempt: int
    delay_s: float


@dataclass(frozen=True, slots=True)
class BackendChanged:
    backend: str
    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Stopping:
    reason: str
    grace_s: float
    in_flight: int


@dataclass(frozen=True, slots=True)
class RunFinished:
    status: str  # "complete" | "failed" | "interrupted" | "stalled" | "error"
    done: int
    failed: int
    skipped: int
    unfinished: int
    elapsed_s: float
    message: str = ""


Event = (RunStarted | VariantSkipped | VariantWritten | VariantFailed | VariantRetrying
         | BackendChanged | Stopping | RunFinished)
Listener = Callable[[Event], None]
