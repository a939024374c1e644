"""Small hostile fake servers on 127.0.0.1, for driving the real CLI against bad backends.

``FakeWebUI`` is a real aiohttp server in its own thread and event loop (so ``pipeline.cli.main``,
which runs its own loop, can be driven in-process). By default it is a minimal, honest WebUI:
``GET /sdapi/v1/options`` answers, listings it has no data for answer 404 (as older forks do, so
every name is unknowable and accepted), and ``POST /sdapi/v1/txt2img``/``img2img`` answer what a
WebUI would: one tiny PNG per image, ``all_seeds`` = seed, seed+1, ..., ``all_prompts`` the prompt
sent. Each route can be replaced by a handler of one's own, and every request is recorded.

Not a simulator: ``pipeline.sim`` is the faithful WebUI. These are for shapes no real server
sends on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image as PILImage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png_bytes(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)
              ) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


PNG = png_bytes()
PNG_B64 = base64.b64encode(PNG).decode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def generation_answer(payload: dict[str, Any], *, image_b64: str = PNG_B64,
                      prompt: str | None = None, seed_shift: int = 0,
                      extras: int = 0) -> dict[str, Any]:
    """What an honest WebUI answers to ``payload``: the images, and an ``info`` that matches."""
    count = int(payload.get("batch_size") or 1) * int(payload.get("n_iter") or 1)
    seed = payload.get("seed", -1)
    seed = random.randrange(2**32) if seed in (-1, None) else int(seed)
    seed += seed_shift
    text = payload.get("prompt", "") if prompt is None else prompt
    seeds = [seed + i for i in range(count)]
    info = {"prompt": text, "all_prompts": [text] * count, "seed": seeds[0], "all_seeds": seeds,
            "subseed": 1, "all_subseeds": [1 + i for i in range(count)],
            "negative_prompt": payload.get("negative_prompt", ""),
            "all_negative_prompts": [payload.get("negative_prompt", "")] * count,
            "index_of_first_image": 0,
            "infotexts": [f"{text}\nSteps: {payload.get('steps', 20)}, Seed: {s}" for s in seeds]}
    return {"images": [image_b64] * (count + extras), "parameters": payload,
            "info": json.dumps(info)}


async def honest_generation(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    return web.json_response(generation_answer(payload))


async def options(request: web.Request) -> web.StreamResponse:
    return web.json_response({"sd_model_checkpoint": "tiny.safetensors [abc123]",
                              "samples_format": "png"})


def default_routes() -> dict[tuple[str, str], Handler]:
    return {("GET", "/sdapi/v1/options"): options,
            ("POST", "/sdapi/v1/txt2img"): honest_generation,
            ("POST", "/sdapi/v1/img2img"): honest_generation,
            ("POST", "/sdapi/v1/interrupt"): _empty}


async def _empty(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


@dataclass
class FakeWebUI:
    """``FakeWebUI(routes={("POST", "/sdapi/v1/txt2img"): handler}).start()``; ``.url``."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    port: int = 0

    def __post_init__(self) -> None:
        merged = default_routes()
        merged.update(self.routes)
        self.routes = merged
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeWebUI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=20)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.json_response({"detail": "Not Found"}, status=404)
        return await handler(request)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    def generations(self) -> list[Seen]:
        return [s for s in self.seen
                if s.method == "POST" and s.path.endswith(("/txt2img", "/img2img"))]

    def stop(self) -> None:
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(timeout=20)
            except Exception:  # noqa: BLE001 - a test's server stops however it can
                pass
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeWebUI:
        return self.start() if not self.url else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawServer:
    """A TCP server that speaks whatever bytes ``respond(request_bytes)`` yields, or nothing:
    for answers aiohttp's server would never write (negative content-length, huge headers,
    a connection accepted and never answered)."""

    def __init__(self, respond: Callable[[bytes], Awaitable[bytes | None]]) -> None:
        self.respond = respond
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.url = ""

    def start(self) -> RawServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=20)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            answer = await self.respond(head + body)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_answer(status: int, body: bytes, *, headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
