"""What every case gets: the mode, repetitions, a scratch directory and a measured-run helper."""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.harness import Farm, Farms, Measured, measured_run

T = TypeVar("T")


@dataclass
class Ctx:
    quick: bool
    reps: int
    workdir: Path
    keep: bool = False
    pipeline_root: str | None = None  # measure a scratch copy of pipeline/ (A/B a fix)
    memory_variants: int = 1_000_000  # the memory case's large run (full mode)

    def say(self, message: str) -> None:
        sys.stderr.write(f"  {time.strftime('%H:%M:%S')} {message}\n")
        sys.stderr.flush()

    def run(self, farm: Farm | Farms, mode: str, job: dict[str, Any], *,
            keep_output: bool = False, **kwargs: Any) -> Measured:
        """One client run in its own process; its output directory is removed afterwards
        unless ``keep_output`` (the caller then removes it) or ``--keep``."""
        measured = measured_run(farm, mode, job, self.workdir, pipeline_root=self.pipeline_root,
                                **kwargs)
        if not (keep_output or self.keep):
            self.discard(measured)
        return measured

    def discard(self, measured: Measured) -> None:
        out = measured.report.get("out")
        if out and not self.keep:
            shutil.rmtree(out, ignore_errors=True)

    def alternate(self, labels: Sequence[T]) -> Iterator[tuple[int, T]]:
        """(repetition, label) for every repetition, A B then B A ... so drift cancels out."""
        for rep in range(self.reps):
            order = list(labels) if rep % 2 == 0 else list(reversed(labels))
            for label in order:
                yield rep, label


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> list[float]:
    return [round(v, 4) for v in values]


def med_of(runs: Sequence[Measured], key: Callable[[Measured], float]) -> float:
    return median([key(r) for r in runs])
