"""The one interface every backend kind implements, and the values it hands back.

A backend kind (the WebUI API, ComfyUI) is a client behind ``Backend``: it generates one variant
and reports what the server really used; everything above it (schedule, run, output) is the same
for every kind. Clients map every foreign exception into the ``BackendError`` tree themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.model import Image, Variant


@dataclass(frozen=True, slots=True)
class Reply:
    """A checked generation: labelled images, parsed info, the model the server reports."""

    images: tuple[Image, ...]
    info: dict[str, Any]
    model: str | None
    params: dict[str, Any]
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Probe:
    """A cheap health check's answer: the backend is up, and what it has loaded (its own words)."""

    loaded_model: str | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class Backend(Protocol):
    """One backend server, one shared ``aiohttp.ClientSession`` per run."""

    label: str

    async def probe(self) -> Probe:
        """A cheap request that proves the server answers; raises ``BackendError``."""
        ...

    async def generate(self, variant: Variant) -> Reply:
        """Run one variant and return its checked images; raises ``BackendError``."""
        ...

    async def interrupt(self) -> None:
        """Ask the server to stop what it runs now (best effort; never raises)."""
        ...
