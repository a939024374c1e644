"""The WebUI HTTP client: one backend, one shared ``aiohttp.ClientSession`` per run.

Every aiohttp and OS exception is mapped here, in ``_request``, into the ``BackendError`` tree;
nothing above this module sees a foreign exception. Timeouts are always finite. Credentials go
into the Authorization header only and never into a message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from pipeline.backends.base import Probe
from pipeline.errors import (BackendError, BadResponseError, HTTPStatusError, RequestTimeout,
                             TransportError)
from pipeline.expand.inputs import encode_refs
from pipeline.job.schema import BackendSpec
from pipeline.model import Image, Variant
from pipeline.backends.webui.response import check_substitution, parse_body, split_images

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 30.0
MAX_LIST_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """A checked generation: labelled images, parsed info, the model the server reports."""

    images: tuple[Image, ...]
    info: dict[str, Any]
    model: str | None
    params: dict[str, Any]
    elapsed_s: float


def response_cap_bytes(payload: dict[str, Any]) -> int:
    """A generous ceiling for one response: raw RGBA for every image, base64'd, plus slack.

    Field values are the user's and may be wrong (the server answers 422 for those), so
    anything that is not a number counts as its WebUI default here.
    """
    images = _number(payload.get("batch_size"), 1) * _number(payload.get("n_iter"), 1)
    scale = _number(payload.get("hr_scale"), 1) if payload.get("enable_hr") else 1.0
    pixels = _number(payload.get("width"), 512) * _number(payload.get("height"), 512)
    per_image = int(pixels * scale * scale * 4 * 1.4)
    return 16 * 1024 * 1024 + int(images + 2) * per_image


def _number(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6:
        return float(value)
    return float(default)


class WebUIClient:
    """Talks to one WebUI backend. Cheap to create; owns no session."""

    def __init__(self, session: aiohttp.ClientSession, spec: BackendSpec, setup: Any = None
                 ) -> None:
        self.spec = spec
        self.label = spec.label
        self._session = session
        self._base = spec.url
        self._headers = {k: v.get_secret_value() for k, v in spec.headers.items()}
        if spec.auth:
            token = base64.b64encode(spec.auth.get_secret_value().encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl: bool | None = None if spec.verify_tls else False
        self.payload_extras: dict[str, Any] = {}
        self.sampler_aliases: dict[str, str] = {}  # alias (lower case) -> name, from preflight

    async def generate(self, variant: Variant) -> Reply:
        """POST the variant and return its checked images; raises ``BackendError``."""
        params = self._params(variant)
        started = time.monotonic()
        body = await self._request("POST", f"/sdapi/v1/{variant.endpoint}",
                                   payload=encode_refs(params),
                                   timeout_s=self.spec.timeout_s,
                                   cap_bytes=response_cap_bytes(params))
        data = parse_body(body)
        try:
            images, info = split_images(data, variant)
            model = check_substitution(variant, info, self.sampler_aliases)
        except BadResponseError as exc:
            exc.backend = self.label
            raise
        return Reply(images, info, model, params, time.monotonic() - started)

    async def get_json(self, path: str, *, timeout_s: float = LIST_TIMEOUT_S) -> Any:
        body = await self._request("GET", path, timeout_s=timeout_s, cap_bytes=MAX_LIST_BYTES)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponseError(f"{self.label}{path} did not answer JSON",
                                   backend=self.label) from None

    async def post_json(self, path: str, payload: dict[str, Any], *,
                        timeout_s: float = LIST_TIMEOUT_S) -> Any:
        body = await self._request("POST", path, payload=payload, timeout_s=timeout_s,
                                   cap_bytes=MAX_LIST_BYTES)
        return orjson.loads(body) if body.strip() else None

    async def probe_options(self) -> dict[str, Any]:
        """A cheap health check that works in every mode (``/internal/ping`` is UI-only)."""
        options = await self.get_json("/sdapi/v1/options", timeout_s=min(30.0, self.spec.timeout_s))
        if not isinstance(options, dict):
            raise BadResponseError(f"{self.label}: /sdapi/v1/options is not an object",
                                   backend=self.label)
        return options

    async def probe(self) -> Probe:
        options = await self.probe_options()
        loaded = options.get("sd_model_checkpoint")
        return Probe(loaded if isinstance(loaded, str) else None, options)

    async def interrupt(self) -> None:
        try:
            await self.post_json("/sdapi/v1/interrupt", {}, timeout_s=5)
        except BackendError as exc:
            log.warning("could not interrupt %s: %s", self.label, exc)

    def _params(self, variant: Variant) -> dict[str, Any]:
        if not self.payload_extras:
            return variant.payload
        params = dict(variant.payload)
        for key, value in self.payload_extras.items():
            if isinstance(value, dict) and isinstance(params.get(key), dict):
                params[key] = {**value, **params[key]}
            else:
                params.setdefault(key, value)
        return params

    async def _request(self, method: str, path: str, *, payload: Any = None, timeout_s: float,
                       cap_bytes: int) -> bytes:
        """The choke point: one HTTP exchange, every failure mapped into ``BackendError``."""
        url = self._base + path
        where = f"{self.label} {method} {path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S,
                                                                          timeout_s))
        headers = dict(self._headers)
        data = None
        if payload is not None:
            data = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(method, url, data=data, headers=headers,
                                             timeout=timeout,
                                             ssl=self._ssl) as resp:
                length = resp.content_length
                if length is not None and length > cap_bytes:
                    raise BadResponseError(f"{where}: response of {length} bytes is over the "
                                           f"{cap_bytes}-byte cap", backend=self.label)
                body = await _read_capped(resp, cap_bytes, where, self.label)
                if resp.status >= 400:
                    raise HTTPStatusError(f"{where}: HTTP {resp.status}: "
                                          f"{error_message(body, resp.reason)}",
                                          backend=self.label, status=resp.status)
                return body
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{where}: no complete answer within {timeout_s:g} s "
                                 "(raise timeout_s for slow generations)",
                                 backend=self.label) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(f"{where}: TLS certificate rejected ({exc.certificate_error}); "
                                 "set verify_tls: false for this backend only if you trust it",
                                 backend=self.label) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"{where}: cannot connect ({exc.os_error.strerror or exc})",
                                 backend=self.label) from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError(f"{where}: the server closed the connection without answering",
                                 backend=self.label) from None
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(f"{where}: the response broke off ({exc})",
                                 backend=self.label) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {exc}",
                                 backend=self.label) from None


async def _read_capped(resp: aiohttp.ClientResponse, cap_bytes: int, where: str,
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


def error_message(body: bytes, reason: str | None = None) -> str:
    """One readable line from any WebUI error shape (A1111, Forge, SD.Next, FastAPI 422)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return text or (reason or "no details")
    if not isinstance(data, dict):
        return str(data)[:300]
    detail = data.get("detail")
    if isinstance(detail, list):  # FastAPI validation: [{"loc": [...], "msg": ...}]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
        return "invalid request: " + "; ".join(parts)
    name = data.get("error")
    message = data.get("errors") or data.get("message") or (
        detail if isinstance(detail, str) and detail else None) or data.get("body")
    if name and message:
        return f"{name}: {str(message)[:500]}"
    if message or name:
        return str(message or name)[:500]
    return orjson.dumps(data)[:300].decode()


BackendClient = WebUIClient  # the old name, until every caller uses WebUIClient
