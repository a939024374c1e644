"""HTTP and websocket for one ComfyUI server: the one place foreign exceptions are mapped.

Every aiohttp and OS exception of an HTTP exchange is mapped in ``ComfyHTTP.request`` into the
``BackendError`` tree; the websocket (``open_ws``, ``ws_wait``) never raises: without one, the
client polls. Timeouts are always finite; reads are capped. Credentials go into the
Authorization header only and never into a message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from pipeline.job.masking import mask_url

from pipeline.errors import BadResponseError, HTTPStatusError, RequestTimeout, TransportError
from pipeline.job.schema import BackendSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_WS_MESSAGE_BYTES = 16 * 1024 * 1024


class ComfyHTTP:
    """Requests to one server through the run's shared session."""

    def __init__(self, session: aiohttp.ClientSession, spec: BackendSpec) -> None:
        self.label = spec.label
        self._session = session
        self._base = spec.url
        self._headers = {k: v.get_secret_value() for k, v in spec.headers.items()}
        if spec.auth:
            token = base64.b64encode(spec.auth.get_secret_value().encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl = bool(spec.verify_tls)
        self.ws_supported = True  # False once the server refused the websocket handshake

    async def get_json(self, path: str, *, timeout_s: float = LIST_TIMEOUT_S) -> Any:
        status, body = await self.request("GET", path, timeout_s=timeout_s,
                                           cap_bytes=MAX_JSON_BYTES)
        return self.parse(body, path, status)

    async def post_json(self, path: str, payload: dict[str, Any], *,
                        timeout_s: float = LIST_TIMEOUT_S) -> Any:
        status, body = await self.request("POST", path, payload=payload, timeout_s=timeout_s,
                                           cap_bytes=MAX_JSON_BYTES)
        return self.parse(body, path, status) if body.strip() else None

    def parse(self, body: bytes, path: str, status: int) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if status == 400:
                raise HTTPStatusError(f"{self.label} {path}: HTTP 400: "
                                      f"{body[:300].decode('utf-8', 'replace')}",
                                      backend=self.label, status=400) from exc
            raise BadResponseError(f"{self.label} {path} did not answer JSON "
                                   f"({len(body)} bytes)", backend=self.label) from exc

    async def request(self, method: str, path: str, *, payload: Any = None,
                       params: dict[str, str] | None = None, timeout_s: float, cap_bytes: int,
                       ok_statuses: tuple[int, ...] = ()) -> tuple[int, bytes]:
        """The choke point: one HTTP exchange, every failure mapped into ``BackendError``."""
        url = self._base + path
        where = f"{self.label} {method} {path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s,
                                        sock_connect=min(CONNECT_TIMEOUT_S, timeout_s))
        headers = dict(self._headers)
        data = None
        if payload is not None:
            data = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(method, url, data=data, params=params,
                                             headers=headers, timeout=timeout,
                                             ssl=self._ssl, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:  # never follow: credentials must not travel on
                    raise HTTPStatusError(
                        f"{where}: HTTP {resp.status}: the server redirects (to "
                        f"{mask_url(resp.headers.get('Location', '?'))}); sdbatch does not "
                        "follow redirects to ComfyUI: give the backend's final URL",
                        backend=self.label, status=resp.status)
                length = resp.content_length
                if length is not None and length > cap_bytes:
                    raise BadResponseError(f"{where}: response of {length} bytes is over the "
                                           f"{cap_bytes}-byte cap", backend=self.label)
                body = await read_capped(resp, cap_bytes, where, self.label)
                if resp.status >= 400 and resp.status not in ok_statuses:
                    text = body[:300].decode("utf-8", "replace").strip() or (resp.reason or "")
                    raise HTTPStatusError(f"{where}: HTTP {resp.status}: {text}",
                                          backend=self.label, status=resp.status)
                return resp.status, body
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(f"{where}: no complete answer within {timeout_s:g} s",
                                 backend=self.label) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(f"{where}: TLS certificate rejected ({exc.certificate_error}); "
                                 "set verify_tls: false for this backend only if you trust it",
                                 backend=self.label) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"{where}: cannot connect ({exc.os_error.strerror or exc})",
                                 backend=self.label) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise TransportError(f"{where}: the server closed the connection without answering",
                                 backend=self.label) from exc
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(f"{where}: the response broke off ({exc})",
                                 backend=self.label) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {exc}",
                                 backend=self.label) from exc

    async def open_ws(self, client_id: str) -> aiohttp.ClientWebSocketResponse | None:
        """The socket for one prompt's messages, or None (then completion is polled)."""
        url = self._base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url += f"/ws?clientId={quote(client_id, safe='')}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self._session.ws_connect(
                    url, headers=self._headers, ssl=self._ssl, autoping=True, heartbeat=None,
                    max_msg_size=MAX_WS_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S))
        except aiohttp.WSServerHandshakeError as exc:
            log.info("%s: no websocket at /ws (HTTP %s); polling /history instead",
                     self.label, exc.status)
            self.ws_supported = False
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("%s: websocket not opened (%s); polling", self.label, exc)
        return None


async def ws_wait(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, timeout_s: float) -> str:
    """Read the socket until this prompt ends ("done"), ``timeout_s`` passes, or it closes."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        try:
            msg = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError, RuntimeError):
            return "closed"
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue
            body = data.get("data") if isinstance(data, dict) else None
            if not isinstance(body, dict) or body.get("prompt_id") != prompt_id:
                continue
            kind = data.get("type")
            if kind == "executing" and body.get("node") is None:
                return "done"
            if kind in ("execution_success", "execution_error", "execution_interrupted"):
                return "done"
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                          aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return "closed"


async def read_capped(resp: aiohttp.ClientResponse, cap_bytes: int, where: str,
                       label: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap_bytes:
            raise BadResponseError(f"{where}: response over the {cap_bytes}-byte cap",
                                   backend=label)
        chunks.append(chunk)
    return b"".join(chunks)
