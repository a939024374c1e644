"""The simulated server's mutable state: counters, the loaded model, the running job.

Two checkpoints are tracked, as in the WebUI: ``option_model`` is what ``/options`` reports
(``sd_model_checkpoint``) and ``weights_model`` what sits in VRAM. A request's override loads
its model; with ``override_settings_restore_afterwards`` the *option* goes back afterwards but
the weights stay, so the next request without an override loads the default again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from pipeline.sim.config import Catalogue, Checkpoint, SimConfig
from pipeline.sim.faults import FAULT_KINDS, FaultDrawer

log = logging.getLogger(__name__)


@dataclass
class SimStats:
    """Live counters (never lists: a long benchmark must not grow memory).

    ``requests`` counts generation requests (txt2img, img2img) that passed authentication;
    ``in_flight``/``max_in_flight`` count them from arrival, before the one-at-a-time lock.
    """

    requests: int = 0
    generations: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    checkpoint_loads: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    interrupts: int = 0
    other_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    """The generation running now, as ``/sdapi/v1/progress`` reports it."""

    total_images: int
    steps: int
    n_iter: int
    job_timestamp: str
    per_image_s: float
    name: str = "scripts_txt2img"
    started_s: float = field(default_factory=time.monotonic)
    done_images: int = 0
    image_started_s: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    skipped: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def fraction_done(self) -> float:
        if self.total_images <= 0:
            return 0.0
        current = 0.0
        if self.per_image_s > 0:
            current = min(1.0, (time.monotonic() - self.image_started_s) / self.per_image_s)
        return min(1.0, (self.done_images + current) / self.total_images)


class SimState:
    """Everything the handlers share. One per running server."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.catalogue = Catalogue.from_config(config)
        initial = self.catalogue.initial(config)
        self.weights_model: Checkpoint | None = initial
        self.option_model: Checkpoint | None = initial or self._default_option(config)
        self.stats = SimStats()
        self.lock = asyncio.Lock()  # the WebUI's FIFO queue lock: one generation at a time
        self.faults = FaultDrawer(config.fault_seed)
        self.seed_rng = random.Random()
        self.job: Job | None = None
        self.stopping = asyncio.Event()
        self.active: dict[int, web.BaseRequest] = {}  # generation requests not yet answered
        self.started_s = time.monotonic()

    def _default_option(self, config: SimConfig) -> Checkpoint | None:
        """With no model loaded, A1111 still names its default; SD.Next names none."""
        return None if config.flavor == "sdnext" else self.catalogue.checkpoints[0]

    def replace_config(self, config: SimConfig) -> None:
        """Swap in a new config (``POST /sim/config``); the loaded model follows
        ``loaded_model`` when it changed, or falls back when its checkpoint is gone.
        Raises ``ValueError`` (and changes nothing) for a ``loaded_model`` it does not have."""
        catalogue = Catalogue.from_config(config)
        weights, option = self.weights_model, self.option_model
        if config.loaded_model != self.config.loaded_model:
            weights = catalogue.initial(config)
            option = weights
        else:
            if weights and weights.name not in config.models:
                weights = None
            if option and option.name not in config.models:
                option = None
        self.config, self.catalogue = config, catalogue
        self.weights_model = weights
        self.option_model = option or self._default_option(config)

    async def pause(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep ``seconds``; False when woken early by ``wake`` or by the server stopping."""
        if seconds <= 0:
            return not self.stopping.is_set() and not (wake and wake.is_set())
        waiters = [asyncio.ensure_future(self.stopping.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            done, _ = await asyncio.wait(waiters, timeout=seconds)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not done

    async def load_weights(self, model: Checkpoint) -> None:
        """Make ``model`` the one in VRAM, paying ``switch_cost_s`` if it is not already."""
        if self.weights_model == model:
            return
        log.info("loading checkpoint %s", model.title)
        await self.pause(self.config.switch_cost_s)
        self.weights_model = model
        self.stats.checkpoint_loads += 1

    def count_arrival(self) -> None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)

    def snapshot(self) -> dict[str, Any]:
        """``GET /sim/stats``: the counters plus what is loaded and queued."""
        out = self.stats.as_dict()
        out.update({
            "loaded_model": self.weights_model.title if self.weights_model else None,
            "option_model": self.option_model.title if self.option_model else None,
            "queued": max(0, self.stats.in_flight - (1 if self.job else 0)),
            "busy": self.job is not None,
            "uptime_s": round(time.monotonic() - self.started_s, 3),
        })
        return out
