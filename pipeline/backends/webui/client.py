"""The WebUI HTTP client: one backend, one shared ``aiohttp.ClientSession`` per run.

Implements ``pipeline.backends.base.Backend``. Every aiohttp and OS exception is mapped here, in
``_request``, into the ``BackendError`` tree; nothing above this module sees a foreign exception.
Timeouts are always finite. Credentials go into the Authorization header only and never into a
message.

What a client sends and checks comes from its ``ClientSetup`` (built by preflight, fixed at
construction): canonical sampler names, pinned overrides, the VAE in the backend's own form.
Every response is checked against what was sent (``substitution``) before it becomes a ``Reply``.

Two more duties:

- **rate limits** (SD.Next): a 429 raises ``HTTPStatusError`` with ``retry_after_s`` (from
  ``Retry-After``, else 1 s) and slows this host down: no request starts before the server's
  date, and generations are spaced at least ``pace_s`` apart from then on (doubling on each
  further 429, easing off as requests succeed);
- **interrupts**: ``interrupt()`` asks the server to stop (best effort). A WebUI answers an
  interrupted generation with HTTP 200 and a half-done image whose infotext claims every step,
  so the client remembers when it interrupted, and an answer to a request that was in flight
  then raises instead of returning images (``mark_interrupted`` records an interrupt made by
  other means).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import aiohttp
import orjson
from yarl import URL

from pipeline.backends.base import Probe, Reply
from pipeline.backends.webui.http_errors import error_message, printable, retry_after_s
from pipeline.backends.webui.response import (EXTRA_SLACK, MAX_SCRIPT_IMAGES, _number,
                                              output_size, parse_body, script_units,
                                              split_images)
from pipeline.backends.webui.setup import ClientSetup, build_payload
from pipeline.backends.webui.substitution import check_belongs, check_substitution
from pipeline.errors import (BadResponseError, HTTPStatusError, RequestTimeout,
                             TransportError)
from pipeline.expand.inputs import encode_refs
from pipeline.job.masking import mask_url
from pipeline.job.schema import BackendSpec
from pipeline.model import Variant

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0  # the health check: /options answers in milliseconds, even mid-generation
LIST_TIMEOUT_S = 30.0  # listings (never over the backend's own timeout_s)
MAX_REDIRECTS = 5
INTERRUPT_TIMEOUT_S = 5.0
MAX_LIST_BYTES = 32 * 1024 * 1024
DEFAULT_RETRY_AFTER_S = 1.0
MAX_PACE_S = 30.0
PACE_EASE = 0.95  # each success shortens the pace by 5% ...
GET_PACE_SHARE = 0.2  # ... and a GET costs a fifth of a generation (SD.Next: 1 vs 5 tokens)
KEPT_INTERRUPTS = 8

__all__ = ["BackendClient", "Reply", "WebUIClient", "error_message", "response_cap_bytes"]


def response_cap_bytes(payload: dict[str, Any]) -> int:
    """A generous ceiling for one response to ``payload``: every image it may hold as raw RGBA,
    base64'd, at the size the answer really has, plus its texts.

    What sizes the answer: the output size (``width`` x ``height``, or with ``enable_hr`` the
    hires size: ``hr_resize_x``/``hr_resize_y`` where set, else ``hr_scale``, 2 by default), the
    number of images (``batch_size`` x ``n_iter``, plus the extras a server may add: a grid,
    ControlNet maps, a script's images; ``response.max_extra_images``) and the texts echoed per
    image (prompts, infotexts). ``_request`` adds twice the body sent (``parameters`` echoes
    it). Field values are the user's and may be wrong (the server answers 422 for those), so
    anything that is not a number counts as its WebUI default here.
    """
    width, height = output_size(payload)
    count = int(_number(payload.get("batch_size"), 1)) * int(_number(payload.get("n_iter"), 1))
    grid = count if count > 1 else 0  # one image as large as all the generations together
    script = MAX_SCRIPT_IMAGES if payload.get("script_name") else 0
    full_size = count + grid + count * script_units(payload) + script
    text = sum(len(v.encode("utf-8", "surrogatepass")) for k in TEXT_FIELDS
               if isinstance(v := payload.get(k), str))
    per_image = int((width + 64) * (height + 64) * 4 * 1.4) + 256 * 1024 + 2 * text
    slack = EXTRA_SLACK * min(per_image, 4 * 1024 * 1024)  # a preview or two, small
    # info: prompt, all_prompts, infotexts, ... per image, JSON-escaped twice (\uXXXX)
    texts = (4 * count + 8) * 4 * text
    return 16 * 1024 * 1024 + full_size * per_image + slack + texts


TEXT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


class WebUIClient:
    """Talks to one WebUI backend (A1111, Forge, reForge, SD.Next). Cheap to create; owns no
    session."""

    kind = "webui"

    def __init__(self, session: aiohttp.ClientSession, spec: BackendSpec,
                 setup: ClientSetup | None = None) -> None:
        self.spec = spec
        self.label = spec.label
        self.setup = setup
        self._session = session
        self._base = spec.url
        self._headers = {k: v.get_secret_value() for k, v in spec.headers.items()}
        # what a server might echo back into an error body: never shown
        self._secrets = sorted({v for v in self._headers.values() if len(v) >= 4},
                               key=len, reverse=True)
        if spec.auth:
            token = base64.b64encode(spec.auth.get_secret_value().encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
            password = spec.auth.get_secret_value().partition(":")[2]
            self._secrets = sorted({*self._secrets, token, spec.auth.get_secret_value(),
                                    *([password] if len(password) >= 4 else [])},
                                   key=len, reverse=True)
        self._ssl: bool | None = None if spec.verify_tls else False
        self._next_start_s = 0.0  # monotonic: no request starts before this (rate limits)
        self.pace_s = 0.0  # at least this long between generation starts, after a 429
        self._pace_floor_s = 0.0  # a host known to rate-limit stays paced at its profile's rate
        # (sent_s, answered_s) of our interrupts; answered_s is inf while the POST is out
        self._interrupts: list[tuple[float, float]] = []

    # --- the Backend protocol -----------------------------------------------------------------

    async def probe(self) -> Probe:
        """A cheap health check that works in every mode (``/internal/ping`` is UI-only)."""
        timeout_s = min(PROBE_TIMEOUT_S, self.spec.timeout_s)
        try:
            options = await self.get_json("/sdapi/v1/options", timeout_s=timeout_s)
        except RequestTimeout as exc:
            raise RequestTimeout(
                f"{self.label}: no answer to the health check (GET /sdapi/v1/options) within "
                f"{timeout_s:g} s: the server accepts connections but does not answer (still "
                "starting, hung, or a proxy holding the connection)", backend=self.label) from exc
        if not isinstance(options, dict):
            raise BadResponseError(f"{self.label}: /sdapi/v1/options is not an object",
                                   backend=self.label)
        loaded = options.get("sd_model_checkpoint")
        loaded = printable(loaded, 1000) if isinstance(loaded, str) and loaded.strip() else None
        return Probe(loaded_model=loaded,
                     details={"options": options,
                              "checkpoint_hash": options.get("sd_checkpoint_hash") or None})

    async def generate(self, variant: Variant) -> Reply:
        """POST the variant and return its checked images; raises ``BackendError``."""
        params, data, started, elapsed_s = await self.exchange(variant)
        try:
            images, info = split_images(data, variant)
            check_belongs(params, info, data.get("parameters"), backend=self.label)
            model = check_substitution(params, info, images, self.setup, backend=self.label)
        except BadResponseError as exc:
            exc.backend = self.label
            raise
        return Reply(images, info, model, params, elapsed_s)

    async def exchange(self, variant: Variant) -> tuple[dict[str, Any], dict[str, Any], float,
                                                         float]:
        """Send one variant: (params as sent, parsed body, start, elapsed_s); no checks of the
        images beyond the interrupt rule (``check --probe`` reads the answer itself)."""
        params = self.request_payload(variant)
        started = time.monotonic()
        body = await self._request("POST", f"/sdapi/v1/{variant.endpoint}",
                                   payload=encode_refs(params), timeout_s=self.spec.timeout_s,
                                   cap_bytes=response_cap_bytes(params), weight=1.0)
        if self.interrupted_during(started, time.monotonic()):
            raise BadResponseError(
                f"{self.label}: the answer to variant {variant.id} came back after sdbatch "
                "interrupted this backend: its image is half done (the infotext still claims "
                "every step), so it is not saved and the variant is redone on resume",
                backend=self.label)
        try:
            data = parse_body(body)
        except BadResponseError as exc:
            exc.backend = self.label
            raise
        return params, data, started, time.monotonic() - started

    async def interrupt(self) -> None:
        """POST /sdapi/v1/interrupt (best effort; never raises). Answers to requests that are in
        flight now are refused when they come back."""
        sent = time.monotonic()
        self._interrupts = [*self._interrupts[-(KEPT_INTERRUPTS - 1):], (sent, float("inf"))]
        try:
            await self.post_json("/sdapi/v1/interrupt", {}, timeout_s=INTERRUPT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - best effort by contract
            log.warning("could not interrupt %s: %s", self.label, exc)
        finally:
            self._interrupts[-1] = (sent, time.monotonic())

    def mark_interrupted(self, at_s: float | None = None) -> None:
        """Record that this backend was interrupted at monotonic time ``at_s`` (default: now):
        a reply to a request started before then and answered after then raises."""
        at = time.monotonic() if at_s is None else at_s
        self._interrupts = [*self._interrupts[-(KEPT_INTERRUPTS - 1):], (at, at)]

    def interrupted_during(self, started_s: float, answered_s: float) -> bool:
        """Was a request in flight from ``started_s`` to ``answered_s`` hit by our interrupt?"""
        return any(started_s <= done and answered_s >= sent for sent, done in self._interrupts)

    # --- requests -----------------------------------------------------------------------------

    def request_payload(self, variant: Variant) -> dict[str, Any]:
        """The body this backend gets for ``variant`` (pure; see ``setup.build_payload``)."""
        return build_payload(variant.payload, self.setup)

    async def get_json(self, path: str, *, timeout_s: float | None = None) -> Any:
        """GET a listing; ``timeout_s`` defaults to 30 s, never over the backend's ``timeout_s``."""
        if timeout_s is None:
            timeout_s = min(LIST_TIMEOUT_S, self.spec.timeout_s)
        body = await self._request("GET", path, timeout_s=timeout_s, cap_bytes=MAX_LIST_BYTES)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponseError(f"{self.label}{path} did not answer JSON",
                                   backend=self.label) from None

    async def post_json(self, path: str, payload: dict[str, Any], *,
                        timeout_s: float | None = None) -> Any:
        if timeout_s is None:
            timeout_s = min(LIST_TIMEOUT_S, self.spec.timeout_s)
        body = await self._request("POST", path, payload=payload, timeout_s=timeout_s,
                                   cap_bytes=MAX_LIST_BYTES)
        try:
            return orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            raise BadResponseError(f"{self.label}{path} did not answer JSON",
                                   backend=self.label) from None

    async def _wait_turn(self, weight: float) -> None:
        """Rate limits: wait for this request's start slot (no lock: no await in between)."""
        now = time.monotonic()
        slot = max(now, self._next_start_s)
        if self.pace_s:
            self._next_start_s = slot + self.pace_s * weight
        if slot > now:
            await asyncio.sleep(slot - now)

    def _on_rate_limited(self, wait_s: float) -> None:
        self._pace_floor_s = self.setup.profile.min_pace_s if self.setup else 0.0
        self.pace_s = min(MAX_PACE_S, max(self.pace_s * 2, self._pace_floor_s,
                                          DEFAULT_RETRY_AFTER_S))
        self._next_start_s = max(self._next_start_s, time.monotonic() + wait_s)
        log.info("%s asks us to slow down: waiting %.1f s, then one generation every %.1f s",
                 self.label, wait_s, self.pace_s)

    async def _request(self, method: str, path: str, *, payload: Any = None, timeout_s: float,
                       cap_bytes: int, weight: float = GET_PACE_SHARE) -> bytes:
        """The choke point: one HTTP exchange, every failure mapped into ``BackendError``.

        Redirects are decided here, never by aiohttp: one to the same origin (scheme, host,
        port) is followed with the same headers (a POST only by 307/308, which keep the body);
        one to another origin is an error naming both, so the backend's credentials (Basic auth
        and configured headers) never leave for a host they were not given for."""
        await self._wait_turn(weight)
        url = URL(self._base + path, encoded=False)
        where = f"{self.label} {method} {path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S,
                                                                          timeout_s))
        headers = dict(self._headers)
        data = None
        if payload is not None:
            data = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
            headers["Content-Type"] = "application/json"
            cap_bytes += 2 * len(data)  # a server may echo what it was sent (``parameters``)
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                async with self._session.request(method, url, data=data, headers=headers,
                                                 timeout=timeout, ssl=self._ssl,
                                                 allow_redirects=False) as resp:
                    if resp.status in REDIRECTS and "Location" in resp.headers:
                        url = self._redirect_target(resp, url, method, where)
                        status = resp.status
                        continue
                    return await self._answer(resp, path, where, cap_bytes, weight)
            raise HTTPStatusError(f"{where}: more than {MAX_REDIRECTS} redirects (a loop?); point "
                                  "the backend URL at the server itself", backend=self.label,
                                  status=status)
        except asyncio.TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                message = (f"{where}: cannot connect within {min(CONNECT_TIMEOUT_S, timeout_s):g} "
                           "s (the host does not answer: down, or a firewall drops the packets)")
            elif weight >= 1.0:
                message = (f"{where}: no complete answer within {timeout_s:g} s (raise timeout_s "
                           "for slow generations)")
            else:
                message = f"{where}: no complete answer within {timeout_s:g} s"
            raise RequestTimeout(message, backend=self.label) from exc
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
            raise TransportError(f"{where}: the response broke off ({printable(str(exc), 200)})",
                                 backend=self.label) from exc
        except aiohttp.ClientResponseError as exc:  # an answer aiohttp cannot parse as HTTP
            raise TransportError(f"{where}: not a readable HTTP answer "
                                 f"({printable(str(exc.message), 200)})",
                                 backend=self.label) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {printable(str(exc), 200)}",
                                 backend=self.label) from exc

    async def _answer(self, resp: aiohttp.ClientResponse, path: str, where: str,
                      cap_bytes: int, weight: float) -> bytes:
        """The body of a final (non-redirect) answer, or the ``BackendError`` it means."""
        length = resp.content_length
        if length is not None and length > cap_bytes:
            raise BadResponseError(f"{where}: response of {length} bytes is over the "
                                   f"{cap_bytes}-byte cap", backend=self.label)
        body = await _read_capped(resp, cap_bytes, where, self.label)
        if resp.status == 429:
            wait_s = retry_after_s(resp.headers.get("Retry-After"))
            wait_s = DEFAULT_RETRY_AFTER_S if wait_s is None else wait_s
            self._on_rate_limited(wait_s)
            raise HTTPStatusError(
                f"{where}: HTTP 429, the server limits its API clients "
                f"({self._masked(error_message(body, resp.reason, status=429))}); retrying after "
                f"{wait_s:g} s", backend=self.label, status=429, retry_after_s=wait_s)
        if not 200 <= resp.status < 300:
            message = self._masked(error_message(body, resp.reason, status=resp.status,
                                                 path=path))
            raise HTTPStatusError(f"{where}: HTTP {resp.status}: {message}",
                                  backend=self.label, status=resp.status)
        if self.pace_s and weight >= 1.0:
            eased = self.pace_s * PACE_EASE
            self.pace_s = max(self._pace_floor_s, eased if eased > 0.05 else 0.0)
        return body

    def _masked(self, text: str) -> str:
        """``text`` (a server's words) without this backend's credentials in it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _redirect_target(self, resp: aiohttp.ClientResponse, url: URL, method: str,
                         where: str) -> URL:
        """Where a redirect may be followed to, or the ``HTTPStatusError`` saying why not."""
        location = resp.headers.get("Location", "")
        try:
            target = url.join(URL(location))
            origin = target.origin()
        except (ValueError, TypeError) as exc:
            raise HTTPStatusError(f"{where}: HTTP {resp.status} redirect to an unreadable "
                                  f"Location {mask_url(location)!r}", backend=self.label,
                                  status=resp.status) from exc
        here = url.origin()
        shown = mask_url(str(target))
        if origin != here:
            raise HTTPStatusError(
                f"{where}: HTTP {resp.status} redirect from {here} to another origin, {shown}; "
                "not followed, so the backend's credentials stay with it. Point the backend "
                "URL at where the server really is", backend=self.label, status=resp.status)
        if method != "GET" and resp.status not in (307, 308):
            raise HTTPStatusError(
                f"{where}: HTTP {resp.status} redirect to {shown} would turn the {method} into a "
                "GET without its body; point the backend URL (or --subpath) at that path",
                backend=self.label, status=resp.status)
        return target.with_user(None).with_password(None)


REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


BackendClient = WebUIClient  # until the callers (runner, cli, api) use the new name
