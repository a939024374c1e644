"""A bounded, closable channel between two stages (asyncio, one event loop).

``send`` waits while the channel is full (backpressure: a slow disk throttles generation instead
of filling memory); ``close`` ends it: the receiver drains what is queued, then its ``async for``
ends. No sentinel values, no polling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ChannelClosed(Exception):
    """``send`` on a closed channel."""


class Channel(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._closed = False
        self._changed = asyncio.Condition()

    async def send(self, item: T) -> None:
        async with self._changed:
            while len(self._items) >= self.capacity and not self._closed:
                await self._changed.wait()
            if self._closed:
                raise ChannelClosed("send on a closed channel")
            self._items.append(item)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            async with self._changed:
                while not self._items and not self._closed:
                    await self._changed.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._changed.notify_all()
            yield item
