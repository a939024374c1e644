"""What the stages tell the world. Progress, the summary, ``run --json`` and the Python API all
read these and nothing else: an event carries everything a listener needs."""

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
    patience_s: float = 0.0
    notices: tuple[str, ...] = ()  # things the user should know before the run goes


@dataclass(frozen=True, slots=True)
class VariantSkipped:
    """Variants found complete in the output directory so far (resume); a running total."""

    count: int


@dataclass(frozen=True, slots=True)
class VariantStarted:
    variant_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class VariantWritten:
    result: Generated
    records: tuple[dict[str, Any], ...] = field(hash=False, compare=False)

    @property
    def images(self) -> int:
        return sum(1 for r in self.records if r.get("kind") == "generation")


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
    state: str  # "ok" | "down" | "benched" | "probing"
    detail: str = ""
    model: str | None = None  # what the server says it has loaded, when known
    retry_in_s: float | None = None  # benched: when it is probed again


@dataclass(frozen=True, slots=True)
class AllBackendsDown:
    """No backend can take work; the run gives up after ``give_up_in_s`` (patience_s)."""

    give_up_in_s: float
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CheckpointSwitched:
    backend: str
    checkpoint: str
    load_s: float  # this load's estimated cost
    loads_waiting: int  # checkpoints with work left that no backend has loaded


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
    images: int = 0
    output: str = ""
    per_backend: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False,
                                                    compare=False)
    views: tuple[str, ...] = ()  # gallery and grid sheets written, relative to the output


Event = (RunStarted | VariantSkipped | VariantStarted | VariantWritten | VariantFailed
         | VariantRetrying | BackendChanged | AllBackendsDown | CheckpointSwitched | Stopping
         | RunFinished)
Listener = Callable[[Event], None]
