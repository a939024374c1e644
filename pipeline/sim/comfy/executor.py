"""Running one prompt, with the messages ComfyUI 0.3.64 sends while it does.

Per prompt (``client_id`` from ``extra_data`` decides who hears it): ``execution_start``,
``execution_cached`` (the ids whose results the classic cache holds), then per node that
runs ``progress_state`` (running), ``executing``, for KSampler ``progress_state`` +
``progress`` per step, for SaveImage ``executed``, ``progress_state`` (finished); a cached
output node only gets ``executed`` (from the cache) and a finished ``progress_state``. The end
is ``execution_success``, ``execution_error`` (a node raised: exception type, message,
traceback, its inputs) or ``execution_interrupted`` (no exception fields). The worker then
stores the history entry, broadcasts ``status`` and sends ``executing {node: null}``.

Routing as the real server: ``execution_*`` and ``executing``/``executed`` only go to the
client id (nowhere without one, except ``execution_interrupted``, then broadcast);
``progress`` and ``progress_state`` go to the client id, or to every socket without one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from pipeline.sim.comfy.config import ComfySimConfig
from pipeline.sim.comfy.graph import ExecutionList, dependency_order, is_link, signatures
from pipeline.sim.comfy.images import Folders
from pipeline.sim.comfy.nodefuncs import FUNCTIONS, OOM_TIPS, Interrupted, OutOfMemoryError
from pipeline.sim.comfy.nodes import NodeClass
from pipeline.sim.comfy.queue import Hub
from pipeline.sim.comfy.validate import full_type_name

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class _Progress:
    """ComfyUI's progress registry for one prompt: node states, sent as ``progress_state``."""

    def __init__(self, executor: Executor, prompt_id: str) -> None:
        self._executor = executor
        self._prompt_id = prompt_id
        self._nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        return self._nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, node_id: str, value: int, total: int) -> None:
        self._entry(node_id).update(state="running", value=value, max=total)
        self._send()

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])
        self._send()

    def _send(self) -> None:
        pid = self._prompt_id
        active = {node_id: {"value": e["value"], "max": e["max"], "state": e["state"],
                            "node_id": node_id, "prompt_id": pid, "display_node_id": node_id,
                            "parent_node_id": None, "real_node_id": node_id}
                  for node_id, e in self._nodes.items() if e["state"] != "pending"}
        self._executor.send("progress_state", {"prompt_id": pid, "nodes": active})


class _NodeContext:
    """What a node function may ask for (see ``nodefuncs.NodeContext``)."""

    def __init__(self, executor: Executor, node_id: str, progress: _Progress) -> None:
        self._executor = executor
        self._node_id = node_id
        self._progress = progress
        self.config = executor.config
        self.folders = executor.folders

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def stall(self, seconds: float) -> None:
        log.info("injecting a hang of %.3g s in node %s", seconds, self._node_id)
        try:
            await asyncio.wait_for(self._executor.interrupted.wait(), seconds)
        except TimeoutError:
            pass

    def check_interrupt(self) -> None:
        self._executor.check_interrupt()

    def progress(self, value: int, total: int) -> None:
        ex = self._executor
        self._progress.update(self._node_id, value, total)
        ex.send("progress", {"value": value, "max": total, "prompt_id": ex.prompt_id,
                             "node": self._node_id})

    def draw_fault(self) -> str | None:
        fault = self._executor.dice()
        if fault is not None:
            log.info("injecting fault %s into prompt %s", fault, self._executor.prompt_id)
            self.count(f"fault_{fault}")
        return fault

    def drop_socket(self) -> None:
        if self._executor.client_id is not None:
            self._executor.hub.drop(self._executor.client_id)

    def count(self, what: str, n: int = 1) -> None:
        self._executor.count(what, n)


class Executor:
    """Runs prompts one at a time; owns the classic cache (results of the last prompt)."""

    def __init__(self, config: ComfySimConfig, classes: dict[str, NodeClass], hub: Hub,
                 folders: Folders, dice: Callable[[], str | None],
                 count: Callable[[str, int], None]) -> None:
        self.config = config
        self.classes = classes
        self.hub = hub
        self.folders = folders
        self.dice = dice
        self.count = count
        self.outputs_cache: dict[str, tuple[Any, ...]] = {}  # signature -> node outputs
        self.ui_cache: dict[str, dict[str, Any]] = {}  # signature -> {"meta", "output"}
        self.interrupted = asyncio.Event()
        self.client_id: str | None = None
        self.prompt_id: str | None = None
        self.last_node_id: str | None = None
        self.success = True
        self.messages: list[list[Any]] = []

    # --- plumbing -------------------------------------------------------------------------

    def send(self, event: str, data: dict[str, Any]) -> None:
        self.hub.send(event, data, self.client_id)

    def _add_message(self, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.send(event, data)

    def interrupt(self) -> None:
        self.interrupted.set()

    def check_interrupt(self) -> None:
        if self.interrupted.is_set():
            self.interrupted.clear()
            raise Interrupted("Processing interrupted")

    def clear_cache(self) -> None:
        self.outputs_cache.clear()
        self.ui_cache.clear()

    # --- one prompt -----------------------------------------------------------------------

    async def execute(self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
                      outputs: list[str]) -> dict[str, Any]:
        """Run ``outputs`` of ``prompt``; returns the history's ``outputs`` and ``meta``."""
        self.interrupted.clear()
        self.client_id = extra_data.get("client_id")
        self.prompt_id = prompt_id
        self.messages = []
        self._add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        sigs = signatures(prompt)
        used = set(sigs.values())
        for cache in (self.outputs_cache, self.ui_cache):
            for key in [k for k in cache if k not in used]:
                del cache[key]
        cached = [node_id for node_id in prompt if sigs[node_id] in self.outputs_cache]
        if len(cached) == len(prompt):
            self.count("cache_hits", 1)
        self._add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id},
                          broadcast=False)
        progress = _Progress(self, prompt_id)
        order = ExecutionList(prompt, self.classes, lambda n: sigs[n] in self.outputs_cache)
        for node_id in outputs:
            order.add_node(node_id)
        executed: dict[str, None] = {}
        while not order.is_empty():
            node_id = order.stage()
            failure = await self._execute_node(prompt, node_id, sigs, extra_data, executed,
                                               progress)
            self.success = failure is None
            if failure is not None:
                self._report_failure(prompt, dependency_order(prompt, outputs), executed,
                                     *failure)
                break
            order.complete()
        else:
            self._add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        result: dict[str, Any] = {"outputs": {}, "meta": {}}
        for node_id in prompt:
            ui = self.ui_cache.get(sigs[node_id])
            if ui is not None:
                result["outputs"][node_id] = ui["output"]
                result["meta"][node_id] = ui["meta"]
        self.last_node_id = None
        return result

    def _input_data(self, prompt: dict[str, Any], node_id: str, klass: NodeClass,
                    sigs: dict[str, str], extra_data: dict[str, Any]) -> dict[str, list[Any]]:
        data: dict[str, list[Any]] = {}
        for name, value in prompt[node_id]["inputs"].items():
            if is_link(value):
                data[name] = [self.outputs_cache[sigs[value[0]]][value[1]]]
            elif klass.input_info(name) is not None:
                data[name] = [value]
        for name, kind in klass.hidden.items():
            if kind == "PROMPT":
                data[name] = [prompt]
            elif kind == "EXTRA_PNGINFO":
                data[name] = [extra_data.get("extra_pnginfo")]
        return data

    async def _execute_node(self, prompt: dict[str, Any], node_id: str, sigs: dict[str, str],
                            extra_data: dict[str, Any], executed: dict[str, None],
                            progress: _Progress) -> tuple[dict[str, Any], BaseException] | None:
        """None on success, else ``(error details, exception)``."""
        class_type = prompt[node_id]["class_type"]
        klass = self.classes[class_type]
        sig = sigs[node_id]
        if sig in self.outputs_cache:
            if self.client_id is not None:
                ui = self.ui_cache.get(sig) or {}
                self.send("executed", {"node": node_id, "display_node": node_id,
                                       "output": ui.get("output"), "prompt_id": self.prompt_id})
            progress.finish(node_id)
            return None
        inputs: dict[str, list[Any]] | None = None
        try:
            progress.start(node_id)
            inputs = self._input_data(prompt, node_id, klass, sigs, extra_data)
            if self.client_id is not None:
                self.last_node_id = node_id
                self.send("executing", {"node": node_id, "display_node": node_id,
                                        "prompt_id": self.prompt_id})
            self.check_interrupt()
            context = _NodeContext(self, node_id, progress)
            returned = await FUNCTIONS[class_type](context, **{k: v[0] for k, v in inputs.items()})
            outputs: tuple[Any, ...] = ()
            if isinstance(returned, dict):
                ui = returned.get("ui")
                if ui:
                    self.ui_cache[sig] = {"meta": {"node_id": node_id, "display_node": node_id,
                                                   "parent_node": None, "real_node_id": node_id},
                                          "output": ui}
                    if self.client_id is not None:
                        self.send("executed", {"node": node_id, "display_node": node_id,
                                               "output": ui, "prompt_id": self.prompt_id})
            else:
                outputs = tuple(returned)
            self.outputs_cache[sig] = outputs
        except Interrupted as exc:
            log.info("Processing interrupted")
            return {"node_id": node_id}, exc
        except Exception as exc:
            log.error("!!! Exception during processing !!! %s", exc)
            tips = OOM_TIPS if isinstance(exc, OutOfMemoryError) else ""
            formatted = {name: [format_value(x) for x in values]
                         for name, values in (inputs or {}).items()}
            return {"node_id": node_id, "exception_message": f"{exc}\n{tips}",
                    "exception_type": full_type_name(type(exc)),
                    "traceback": traceback.format_tb(exc.__traceback__),
                    "current_inputs": formatted}, exc
        progress.finish(node_id)
        executed[node_id] = None
        return None

    def _report_failure(self, prompt: dict[str, Any], current_outputs: list[str],
                        executed: dict[str, None], error: dict[str, Any],
                        exc: BaseException) -> None:
        node_id = error["node_id"]
        message = {"prompt_id": self.prompt_id, "node_id": node_id,
                   "node_type": prompt[node_id]["class_type"], "executed": list(executed)}
        if isinstance(exc, Interrupted):
            self.count("interrupted", 1)
            self._add_message("execution_interrupted", message, broadcast=True)
            return
        self.count("execution_errors", 1)
        message.update(exception_message=error["exception_message"],
                       exception_type=error["exception_type"], traceback=error["traceback"],
                       current_inputs=error["current_inputs"], current_outputs=current_outputs)
        self._add_message("execution_error", message, broadcast=False)
