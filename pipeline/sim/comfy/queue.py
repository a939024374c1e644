"""The prompt queue, the history and the websocket hub of one simulated ComfyUI server.

As in ComfyUI (``execution.PromptQueue``, ``server.PromptServer``): pending prompts sit in a
heap ordered by ``number``; the one running is kept apart until ``task_done`` moves it to the
history (in memory, oldest first, a reused prompt id replacing its entry in place). Every
change of the queue broadcasts a ``status`` message. Messages go out through one publisher
task in the order they were made: to one client id's socket, or to every socket (``sid``
None); a message for a client id with no open socket goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

MAXIMUM_HISTORY_SIZE = 10000
QueueItem = list[Any]  # [number, prompt_id, prompt, extra_data, outputs_to_execute]


class Hub:
    """Open websockets by client id, and the ordered outbox to them."""

    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._requests: dict[str, web.BaseRequest] = {}
        self._outbox: asyncio.Queue[tuple[str, Any, str | None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._publish(), name="comfy-ws")

    def send(self, event: str, data: Any, sid: str | None) -> None:
        """Queue a message for ``sid`` (None: everyone); never blocks the executor."""
        self._outbox.put_nowait((event, data, sid))

    async def send_now(self, ws: web.WebSocketResponse, event: str, data: Any) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"type": event, "data": data}))

    async def _publish(self) -> None:
        while True:
            event, data, sid = await self._outbox.get()
            if sid is None:
                targets = list(self.sockets.values())
            else:
                found = self.sockets.get(sid)
                targets = [found] if found is not None else []
            if not targets:
                continue
            text = json.dumps({"type": event, "data": data})
            for ws in targets:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)

    def register(self, sid: str, ws: web.WebSocketResponse, request: web.BaseRequest) -> None:
        """A socket for ``sid``; one already open for it stops getting messages."""
        self.sockets[sid] = ws
        self._requests[sid] = request

    def unregister(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self.sockets.get(sid) is ws:  # not a newer socket of the same client id
            del self.sockets[sid]
            self._requests.pop(sid, None)

    def drop(self, sid: str) -> None:
        """Cut one client's socket without a close frame (a dropped connection)."""
        self.sockets.pop(sid, None)
        request = self._requests.pop(sid, None)
        transport = request.transport if request is not None else None
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sid in list(self.sockets):
            self.drop(sid)


class PromptQueue:
    """Pending, running and finished prompts. ``changed()`` is called after every change."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._task_counter = itertools.count()
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self._wakeup = asyncio.Event()

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item[0], next(self._seq), item))
        self._changed()
        self._wakeup.set()

    async def get(self) -> tuple[QueueItem, int]:
        while not self._heap:
            self._wakeup.clear()
            await self._wakeup.wait()
        _, _, item = heapq.heappop(self._heap)
        task_id = next(self._task_counter)
        self.running[task_id] = copy.deepcopy(item)
        self._changed()
        return item, task_id

    def task_done(self, task_id: int, result: dict[str, Any], status: dict[str, Any]) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[item[1]] = {"prompt": item, "outputs": {}, "status": status, **result}
        self._changed()

    def remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def current(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """``(running, pending)`` as ``/queue`` lists them (copies)."""
        pending = [entry[2] for entry in sorted(self._heap)]
        return copy.deepcopy(list(self.running.values())), copy.deepcopy(pending)

    def is_running(self, prompt_id: str) -> bool:
        return any(item[1] == prompt_id for item in self.running.values())

    def wipe(self) -> None:
        self._heap = []
        self._changed()

    def delete(self, prompt_id: Any) -> bool:
        """Remove one pending prompt (ComfyUI wipes, then reports twice, for the last one)."""
        for index, entry in enumerate(self._heap):
            if entry[2][1] == prompt_id:
                if len(self._heap) == 1:
                    self.wipe()
                else:
                    self._heap.pop(index)
                    heapq.heapify(self._heap)
                self._changed()
                return True
        return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1) -> dict[str, Any]:
        if prompt_id is not None:
            found = self.history.get(prompt_id)
            return {prompt_id: copy.deepcopy(found)} if found is not None else {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = copy.deepcopy(self.history[key])
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def delete_history(self, prompt_id: Any) -> None:
        self.history.pop(prompt_id, None)

    def wipe_history(self) -> None:
        self.history.clear()
