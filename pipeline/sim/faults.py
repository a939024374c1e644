"""Fault injection: which generation requests fail, and how, drawn reproducibly.

One number is drawn per generation request from ``random.Random(fault_seed)`` and mapped onto
the configured rates in a fixed order, so the same config and the same request order give the
same faults. Kinds:

    error      500 with the flavour's error body (RuntimeError)
    oom        500 OutOfMemoryError (CUDA out of memory)
    reset      the connection is reset (RST) without a response
    hang       no answer for ``hang_s`` (or until the client gives up), then the connection closes
    truncate   200 whose JSON body is cut short
    interrupt  200 with fewer images than ``all_seeds`` lists (as an interrupted job answers)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import struct
from typing import Any

from aiohttp import web

from pipeline.sim.config import SimConfig

log = logging.getLogger(__name__)


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"
    OOM = "oom"
    RESET = "reset"
    HANG = "hang"
    TRUNCATE = "truncate"
    INTERRUPT = "interrupt"


_ORDER = ((Fault.ERROR, "error_rate"), (Fault.OOM, "oom_rate"), (Fault.RESET, "reset_rate"),
          (Fault.HANG, "hang_rate"), (Fault.TRUNCATE, "truncate_rate"),
          (Fault.INTERRUPT, "interrupt_rate"))
FAULT_KINDS = tuple(fault.value for fault, _ in _ORDER)


class FaultDrawer:
    """Draws one fault per request from a seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def draw(self, config: SimConfig) -> Fault:
        if config.fault_seed != self.seed:  # reseeded at run time through /sim/config
            self.seed = config.fault_seed
            self._rng.seed(config.fault_seed)
        roll = self._rng.random()
        edge = 0.0
        for fault, rate_name in _ORDER:
            edge += getattr(config, rate_name)
            if roll < edge:
                return fault
        return Fault.NONE

    def images_kept(self, total: int) -> int:
        """How many generations an injected interrupt lets finish (always fewer than total)."""
        return self._rng.randrange(total) if total > 0 else 0


def error_body(flavor: str, error: str, message: str, *, detail: str = "",
               status: int = 500) -> dict[str, Any]:
    """The body the WebUI's exception handler sends, in the flavour's shape.

    A1111 ``{"error", "detail", "body", "errors"}``; Forge has ``message`` for ``errors``;
    SD.Next adds ``code``. HTTP errors (401, 404) come through the same handler, with
    ``detail`` set and ``errors`` reading "<status>: <detail>".
    """
    if flavor == "forge":
        return {"error": error, "detail": detail, "body": "", "message": message}
    body: dict[str, Any] = {"error": error, "detail": detail, "body": "", "errors": message}
    if flavor == "sdnext":
        body["code"] = status
    return body


def http_error(flavor: str, status: int, detail: str) -> dict[str, Any]:
    """An HTTPException as the WebUI words it: ``detail`` plus the generic error fields."""
    return error_body(flavor, "HTTPException", f"{status}: {detail}", detail=detail,
                      status=status)


def http_error_for(config: SimConfig, status: int, detail: str) -> dict[str, Any]:
    """An HTTPException as this server answers it: Forge (recorded) lets FastAPI word it,
    ``{"detail": ...}`` alone; A1111 and SD.Next send their full error body."""
    if config.server.http_detail_only:
        return {"detail": detail}
    return http_error(config.kind, status, detail)


def simulated_error(flavor: str) -> dict[str, Any]:
    return error_body(flavor, "RuntimeError", "simulated failure")


def out_of_memory(flavor: str, width: int, height: int) -> dict[str, Any]:
    mib = max(2, width * height // 4096)
    return error_body(flavor, "OutOfMemoryError",
                      f"CUDA out of memory. Tried to allocate {mib:.2f} MiB (GPU 0; 7.79 GiB "
                      "total capacity; 6.12 GiB already allocated; 20.19 MiB free; 6.81 GiB "
                      "reserved in total by PyTorch)")


def reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashing server's kernel does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already gone
            pass
    transport.abort()


async def hang(request: web.BaseRequest, hang_s: float, stopping: asyncio.Event) -> None:
    """Answer nothing for ``hang_s``; end early when the client or the server goes away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hang_s
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        try:
            await asyncio.wait_for(stopping.wait(), timeout=min(0.05, deadline - loop.time()))
            return
        except TimeoutError:
            continue


def truncate(body: bytes) -> bytes:
    """A JSON body cut about halfway (never valid JSON)."""
    return body[: max(1, len(body) // 2)]
