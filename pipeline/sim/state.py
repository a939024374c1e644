"""The simulated server's mutable state: counters, the loaded model, settings, the running job.

Two checkpoints are tracked, as in the WebUI: ``option_model`` is what ``/options`` reports
(``sd_model_checkpoint``) and ``weights_model`` what sits in VRAM. A request's override loads
its model; with ``override_settings_restore_afterwards`` the *option* goes back afterwards but
the weights stay, so the next request without an override loads the default again.

Realistic profiles also track which checkpoints the server has hashed (``hashed``: titles
carry " [hash]" only for those) and the option's text as the server keeps it
(``option_text``: Forge keeps the client's string, A1111 the title of what it loaded).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from pipeline.sim import forge_data
from pipeline.sim.config import Catalogue, Checkpoint, SimConfig
from pipeline.sim.faults import FAULT_KINDS, FaultDrawer
from pipeline.sim.options import ServerOptions
from pipeline.sim.ratelimit import RateBudget

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
    rate_limited: int = 0  # answers replaced by 429 (sdnext)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    """The generation running now, as ``/sdapi/v1/progress`` reports it.

    A job runs in units: one image (classic) or one batch of ``batch_size`` images (realistic
    profiles, as the WebUI samples a batch at once), each ``unit_s`` long, ``steps`` steps.
    Until ``steps_shown_from_s`` (the model load and the first half of ``prepare_s``)
    ``sampling_steps`` still shows the previous job's ``leftover_steps``, as the WebUI does.
    """

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
    unit_s: float = 0.0
    unit_no: int = 0
    sampling: bool = False  # a unit is being sampled (else loading or preparing)
    leftover_steps: int = 0
    steps_shown_from_s: float = float("inf")

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
        self.weights_model: Checkpoint | None = None
        self.option_model: Checkpoint | None = None
        self.option_text: str | None = None
        self.hashed: set[str] = set()
        self._reset_models(self.catalogue.initial(config))
        self.options = ServerOptions(initial_options(config), config.saved_options,
                                     leak=config.server.override_leak)
        self.stats = SimStats()
        self.lock = asyncio.Lock()  # the WebUI's FIFO queue lock: one generation at a time
        self.faults = FaultDrawer(config.fault_seed)
        self.seed_rng = random.Random()
        self.job: Job | None = None
        self.idle: dict[str, Any] = {"job_timestamp": "0", "job_no": 0, "sampling_steps": 0,
                                     "interrupted": False, "skipped": False}
        self.rate = RateBudget()
        self.stopping = asyncio.Event()
        self.active: dict[int, web.BaseRequest] = {}  # generation requests not yet answered
        self.started_s = time.monotonic()

    def _default_option(self, config: SimConfig) -> Checkpoint | None:
        """With no model loaded, A1111 still names its default; SD.Next names none."""
        return None if config.kind == "sdnext" else self.catalogue.checkpoints[0]

    def _reset_models(self, initial: Checkpoint | None) -> None:
        """The model state at start: loaded (A1111) or named but not loaded yet (Forge)."""
        config = self.config
        self.hashed = {name for name in config.hash_cache if name in config.models}
        loads = config.server.loads_at_start
        self.weights_model = initial if loads else None
        if initial is not None and loads:
            self.hashed.add(initial.name)
        self.option_model = initial or self._default_option(config)
        self.option_text = self._text_of(self.option_model)

    def _text_of(self, model: Checkpoint | None) -> str | None:
        """The option's text for a model named at start (its file name on Forge, as
        config.json holds it; its title on A1111)."""
        if model is None or not self.config.server.realistic:
            return None
        return model.name if self.config.server.option_echoes_request else self.title_of(model)

    def hash_view(self) -> set[str] | None:
        """What ``Catalogue.resolve`` may match hash spellings against (None: everything)."""
        return self.hashed if self.config.server.hashless_until_loaded else None

    def is_hashed(self, ckpt: Checkpoint) -> bool:
        return not self.config.server.hashless_until_loaded or ckpt.name in self.hashed

    def title_of(self, ckpt: Checkpoint) -> str:
        return ckpt.title if self.is_hashed(ckpt) else ckpt.name

    def checkpoint_option(self) -> str | None:
        """``sd_model_checkpoint`` as ``/options`` shows it."""
        if self.config.server.realistic:
            return self.option_text
        return self.option_model.title if self.option_model else None

    def set_checkpoint_option(self, model: Checkpoint, asked: str) -> None:
        self.option_model = model
        if self.config.server.realistic:
            self.option_text = (asked if self.config.server.option_echoes_request
                                else self.title_of(model))

    def replace_config(self, config: SimConfig) -> None:
        """Swap in a new config (``POST /sim/config``); the loaded model follows
        ``loaded_model`` when it changed (a new ``profile`` starts afresh, like a restart), or
        falls back when its checkpoint is gone. Raises ``ValueError`` (and changes nothing)
        for a ``loaded_model`` it does not have."""
        catalogue = Catalogue.from_config(config)
        old = self.config
        if config.loaded_model != old.loaded_model or config.profile != old.profile:
            initial = catalogue.initial(config)
            self.config, self.catalogue = config, catalogue
            self._reset_models(initial)
            if config.profile != old.profile:
                self.options = ServerOptions(initial_options(config), config.saved_options,
                                             leak=config.server.override_leak)
        else:
            weights, option = self.weights_model, self.option_model
            if weights and weights.name not in config.models:
                weights = None
            if option and option.name not in config.models:
                option = None
            self.config, self.catalogue = config, catalogue
            self.weights_model = weights
            self.hashed &= set(config.models)
            if option is None:
                option = self._default_option(config)
                self.option_text = self._text_of(option)
            self.option_model = option
        if config.samples_format != old.samples_format:
            self.options.set("samples_format", config.samples_format)

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
        """Make ``model`` the one in VRAM, paying ``switch_cost_s`` if it is not already, plus
        ``hash_cost_s`` the first time (the server hashes the file then)."""
        if self.weights_model == model:
            return
        log.info("loading checkpoint %s", model.title)
        cost_s = self.config.switch_cost_s
        if not self.is_hashed(model):
            cost_s += self.config.hash_cost_s
        await self.pause(cost_s)
        self.weights_model = model
        self.hashed.add(model.name)
        self.stats.checkpoint_loads += 1
        server = self.config.server
        if server.realistic and not server.option_echoes_request and self.option_model == model:
            self.option_text = model.title  # A1111 writes the loaded title into the option

    def count_arrival(self) -> None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)

    def end_job(self, job: Job) -> None:
        """The job is over: ``/progress`` keeps its leftovers (job_no, sampling_steps)."""
        self.idle = {"job_timestamp": job.job_timestamp, "job_no": job.unit_no,
                     "sampling_steps": job.steps, "interrupted": job.interrupted,
                     "skipped": job.skipped}
        self.job = None

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


def initial_options(config: SimConfig) -> dict[str, Any]:
    """The settings a fresh server starts with (``sd_model_checkpoint`` lives in the model
    state). Realistic profiles have the ~330 recorded ones (A1111: without Forge's own)."""
    server = config.server
    if server.realistic_options:
        values = {k: v for k, v in forge_data.OPTIONS.items()
                  if server.kind == "forge" or not k.startswith("forge_")}
        values.pop("sd_model_checkpoint", None)
    else:
        values = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1,
                  "forge_additional_modules": []}
    values["samples_format"] = config.samples_format
    return values
