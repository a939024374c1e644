"""One life of a simulated ComfyUI server (until it stops or restarts), and its counters.

``ComfyState`` is what a real process holds in memory: the prompt counter, queue, history,
cache, open websockets and the worker running prompts one at a time in ``number`` order. A
restart throws it away and makes a new one; :class:`ComfySimStats` and the files in the
output folder belong to the handle and survive, as a real server's disk does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.sim.comfy.config import ComfySimConfig
from pipeline.sim.comfy.executor import Executor
from pipeline.sim.comfy.faults import FaultDice
from pipeline.sim.comfy.images import Folders
from pipeline.sim.comfy.nodes import node_classes
from pipeline.sim.comfy.queue import Hub, PromptQueue

log = logging.getLogger(__name__)

SIM: web.AppKey[Any] = web.AppKey("comfy_sim")  # the app's ComfySimServer handle


@dataclass
class ComfySimStats:
    """Counters over the handle's whole life (restarts included).

    ``prompts_posted`` counts every ``POST /prompt`` that reached the handler;
    ``running``/``max_running`` are prompts executing at once (measured, so a test can see
    that it never exceeds 1); ``max_queue_remaining`` the most prompts queued or running at
    once (what a per-host limit of queued prompts bounds); ``cache_hits`` are prompts whose
    every node came from the cache; ``posts_per_id`` and ``runs_per_id`` count accepted
    POSTs and executions per prompt id (how a test sees that nothing was requested twice).
    """

    prompts_posted: int = 0
    prompts_accepted: int = 0
    prompts_rejected: int = 0
    prompts_executed: int = 0
    running: int = 0
    max_running: int = 0
    max_queue_remaining: int = 0
    cache_hits: int = 0
    checkpoint_loads: int = 0
    images_saved: int = 0
    execution_errors: int = 0
    interrupted: int = 0
    interrupts: int = 0
    restarts: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    posts_per_id: Counter[str] = field(default_factory=Counter)
    runs_per_id: Counter[str] = field(default_factory=Counter)

    def count(self, what: str, n: int = 1) -> None:
        if what.startswith("fault_"):
            self.faults[what.removeprefix("fault_")] += n
        else:
            setattr(self, what, getattr(self, what) + n)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)}
        out.update(faults=dict(self.faults), posts_per_id=dict(self.posts_per_id),
                   runs_per_id=dict(self.runs_per_id))
        return out


class ComfyState:
    """Queue, history, cache, sockets and the worker of one server life."""

    def __init__(self, config: ComfySimConfig, folders: Folders, stats: ComfySimStats,
                 dice: FaultDice, on_crash: Callable[[], None]) -> None:
        self.config = config
        self.classes = node_classes(config)
        self.folders = folders
        self.stats = stats
        self.dice = dice
        self.number = 0
        self.hub = Hub()
        self.queue = PromptQueue(self.queue_updated)
        self.executor = Executor(config, self.classes, self.hub, folders,
                                 lambda: dice.on_run(self.config), stats.count)
        self.started_s = time.time()
        self._on_crash = on_crash
        self._executions = 0
        self._worker: asyncio.Task[None] | None = None

    def replace_config(self, config: ComfySimConfig) -> None:
        """New settings from now on (the prompt running keeps the knobs it read)."""
        self.config = config
        self.classes = self.executor.classes = node_classes(config)
        self.executor.config = config

    def start(self) -> None:
        self.hub.start()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="comfy-worker")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.hub.close()

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def queue_updated(self) -> None:
        remaining = self.queue.remaining()
        self.stats.max_queue_remaining = max(self.stats.max_queue_remaining, remaining)
        self.hub.send("status", {"status": {"exec_info": {"queue_remaining": remaining}}}, None)

    async def _work(self) -> None:
        while True:
            item, task_id = await self.queue.get()
            await self._run(item, task_id)

    async def _run(self, item: list[Any], task_id: int) -> None:
        number, prompt_id, prompt, extra_data, outputs = item
        stats = self.stats
        stats.running += 1
        stats.max_running = max(stats.max_running, stats.running)
        stats.runs_per_id[prompt_id] += 1
        self._executions += 1
        started = time.monotonic()
        try:
            if self.config.restart_after_prompts and \
                    self._executions >= self.config.restart_after_prompts:
                await self._crash(prompt, prompt_id, dict(extra_data))
            result = await self.executor.execute(prompt, prompt_id, dict(extra_data), outputs)
        except Exception:  # a bug in the simulator: keep serving, record the prompt as failed
            log.exception("simulated ComfyUI: prompt %s failed inside the simulator", prompt_id)
            self.executor.success = False
            result = {"outputs": {}, "meta": {}}
        finally:
            stats.running -= 1
        stats.prompts_executed += 1
        ex = self.executor
        status = {"status_str": "success" if ex.success else "error", "completed": ex.success,
                  "messages": ex.messages}
        self.queue.task_done(task_id, result, status)
        if ex.client_id is not None:
            self.hub.send("executing", {"node": None, "prompt_id": prompt_id}, ex.client_id)
        log.info("Prompt executed in %.2f seconds", time.monotonic() - started)

    async def _crash(self, prompt: dict[str, Any], prompt_id: str,
                     extra_data: dict[str, Any]) -> None:
        """The server dies while this prompt runs (``restart_after_prompts``)."""
        ex = self.executor
        ex.client_id = extra_data.get("client_id")
        ex.prompt_id = prompt_id
        ex.messages = []
        ex._add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        log.warning("simulated crash while prompt %s runs (restart_after_prompts)", prompt_id)
        self._on_crash()
        await asyncio.Event().wait()  # cancelled by the restart
