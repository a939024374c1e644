"""The simulated WebUI backend: a real aiohttp server on loopback speaking the A1111 API.

    start_sim(config) -> SimServer      in a running loop (tests, the built-in backend)
    run_sim(config, host=, port=)       blocking, until SIGINT/SIGTERM (``sdbatch sim``)
    build_app(config) -> Application    the routes, for embedding elsewhere

Besides the WebUI's routes it serves ``GET /sim/stats`` and ``POST /sim/config`` (change
settings at run time, e.g. ``{"error_rate": 0.5}``); neither is behind ``--api-auth``. Which
WebUI routes exist and how they answer follows ``config.profile`` (``profiles.py``).
``close()`` drops the connections of requests still running, as a crash would, and returns
within about a second even when requests hang; the port can be bound again at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from secrets import compare_digest
from typing import Any

import orjson
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from pipeline.errors import UsageError
from pipeline.sim import listings
from pipeline.sim.config import (SimConfig, apply_changes, config_to_dict, normalize_format,
                                 parse_auth)
from pipeline.sim.faults import (Fault, error_body, hang, http_error_for, reset_connection,
                                 truncate)
from pipeline.sim.jobs import forge_modules, run_job
from pipeline.sim.processing import Endpoint, plan_generation
from pipeline.sim.ratelimit import retry_after_header
from pipeline.sim.request import GenerationRequest, RequestInvalid, parse_request
from pipeline.sim.state import SimState, SimStats
from pipeline.sim.wording import echo

log = logging.getLogger(__name__)

STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)
SHUTDOWN_TIMEOUT_S = 0.5
MAX_BODY_BYTES = 256 * 1024 * 1024  # img2img init images arrive as base64 in the body
UNPROTECTED = ("/sdapi/v1/loras",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# --- middlewares ----------------------------------------------------------------------------

@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes as FastAPI words them; any exception as the WebUI's 500 body."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)
    except web.HTTPException:
        raise
    except Exception as exc:  # the WebUI answers every failure with its error body
        log.exception("simulated backend: %s %s failed", request.method, request.path)
        kind = request.app[STATE].config.kind
        return _json(error_body(kind, type(exc).__name__, str(exc)), 500)


@web.middleware
async def _rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """SD.Next's budget per client and route, checked after the handler ran, as SD.Next's
    middleware does: an answer over budget (a generation included) is replaced by a 429."""
    response = await handler(request)
    config = request.app[STATE].config
    path = request.path
    if (not config.server.rate_limited or config.rate_limit_per_min <= 0
            or not path.startswith(("/sdapi/", "/internal/"))):
        return response
    client = request.remote or "unknown"
    wait_s = request.app[STATE].rate.charge(client, path, limit=config.rate_limit_per_min,
                                            window_s=config.rate_window_s)
    if wait_s is None:
        return response
    request.app[STATE].stats.rate_limited += 1
    detail = f"{client}:{path}: rate limit exceeded"
    limited = _json(error_body(config.kind, "HTTPException", f"429: {detail}", detail=detail,
                               status=429), 429)
    if config.rate_retry_after:
        limited.headers["Retry-After"] = retry_after_header(wait_s)
    return limited


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic on ``/sdapi/v1/*`` (but not ``/sdapi/v1/loras``) when ``auth`` is set."""
    state = request.app[STATE]
    path = request.path
    if path.startswith("/sdapi/") and path not in UNPROTECTED and state.config.auth:
        problem = _check_credentials(request.headers.get("Authorization"),
                                     parse_auth(state.config.auth))
        if problem:
            return _json(http_error_for(state.config, 401, problem), 401)
    if path not in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        state.stats.other_requests += 1
    return await handler(request)


def _check_credentials(header: str | None, users: dict[str, str]) -> str | None:
    """None when the header names a known user and password, else FastAPI's 401 detail."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return "Not authenticated"
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "Invalid authentication credentials"
    if not sep:
        return "Invalid authentication credentials"
    expected = users.get(user)
    if expected is None or not compare_digest(password.encode(), expected.encode()):
        return "Incorrect username or password"
    return None


# --- generation -----------------------------------------------------------------------------

async def _txt2img(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "txt2img")


async def _img2img(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "img2img")


async def _generation(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    state = request.app[STATE]
    state.count_arrival()
    state.active[id(request)] = request
    try:
        return await _generate(request, state, endpoint)
    finally:
        state.stats.in_flight -= 1
        state.active.pop(id(request), None)


async def _generate(request: web.Request, state: SimState,
                    endpoint: Endpoint) -> web.StreamResponse:
    config = state.config
    raw = await request.read()
    server = config.server
    try:
        req, fields = parse_request(raw, pydantic_v1_wording=config.kind in ("a1111", "a1111-1.9"),
                                    full_v2=server.realistic and server.pydantic_v2)
        if endpoint == "img2img":
            _check_init_images(req, config)
        plan = plan_generation(req, endpoint, config, state.catalogue, state.seed_rng)
    except RequestInvalid as exc:
        return _json(exc.body, exc.status)
    parameters = echo(req, fields, endpoint, config)
    fault = state.faults.draw(config)
    if fault is not Fault.NONE:
        state.stats.faults[fault.value] += 1
        log.info("injecting fault %s", fault.value)
    if fault is Fault.RESET:
        return _dropped(request)
    if fault is Fault.HANG:
        await hang(request, config.hang_s, state.stopping)
        return _dropped(request)
    kept = state.faults.images_kept(plan.total_images) if fault is Fault.INTERRUPT else None
    async with state.lock:
        if state.stopping.is_set():
            return _dropped(request)
        result = await run_job(state, plan, parameters, fault, kept)
    if state.stopping.is_set():
        return _dropped(request)
    body = orjson.dumps(result.body)
    if fault is Fault.TRUNCATE and result.status == 200:
        body = truncate(body)
    return web.Response(body=body, status=result.status, content_type="application/json")


def _dropped(request: web.Request) -> web.Response:
    """Reset the connection; the response returned is never sent."""
    reset_connection(request)
    return web.Response(status=503)


def _check_init_images(req: GenerationRequest, config: SimConfig) -> None:
    if not req.init_images:
        raise RequestInvalid(404, http_error_for(config, 404, "Init image not found"))
    for encoded in req.init_images:
        if encoded.startswith("data:image/"):
            encoded = encoded.partition(",")[2]
        try:
            with Image.open(io.BytesIO(base64.b64decode(encoded))):
                pass
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
            raise RequestInvalid(500, http_error_for(config, 500,
                                                 "Invalid encoded image")) from exc


# --- the rest of the API --------------------------------------------------------------------

def _get(build: Callable[[SimState], Any]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        data = build(request.app[STATE])
        if data is None:
            raise web.HTTPNotFound()
        return _json(data)

    return handler


async def _set_options(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/options``: settings are set (and saved) now; a checkpoint is loaded
    under the lock at once (A1111) or by the next generation (Forge answers at once)."""
    state = request.app[STATE]
    config = state.config
    try:
        changes = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        changes = None
    if not isinstance(changes, dict):
        return _json({"detail": [{"loc": ["body"], "msg": "value is not a valid dict",
                                  "type": "type_error.dict"}]}, 422)
    wanted = changes.get("sd_model_checkpoint")
    model = state.catalogue.resolve(wanted, state.hash_view()) if wanted is not None else None
    if wanted is not None and model is None:
        return _json(error_body(config.kind, "RuntimeError",
                                f"model {wanted!r} not found"), 500)
    if "samples_format" in changes:
        fmt = normalize_format(str(changes["samples_format"]))
        if fmt is None:
            return _json(http_error_for(config, 500, "Invalid image format"), 500)
        changes["samples_format"] = fmt
    for key, value in changes.items():
        if key == "sd_model_checkpoint":
            continue
        if key == "forge_additional_modules" and config.server.kind == "forge":
            value = forge_modules(value, config)
        if config.server.realistic or key in ("samples_format", "CLIP_stop_at_last_layers",
                                               "sd_vae", "forge_additional_modules"):
            state.options.set(key, value)
    if model is not None:
        state.set_checkpoint_option(model, str(wanted))
        if config.server.load_on_options_post:
            async with state.lock:  # the WebUI loads it as a queued call
                await state.load_weights(model)
    return _json(None)


def _no_content_or(state: SimState, data: Any) -> web.Response:
    """SD.Next answers these POSTs 204 without a body; the others a JSON value."""
    if state.config.server.empty_interrupt_body:
        return web.Response(status=204)
    return _json(data)


async def _interrupt(request: web.Request) -> web.Response:
    state = request.app[STATE]
    job = state.job
    if job is not None:
        state.stats.interrupts += 1
        job.interrupted = True
        job.wake.set()
    return _no_content_or(state, {})


async def _skip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    job = state.job
    if job is not None:
        job.skipped = True
        job.wake.set()
    return _no_content_or(state, None)


async def _refresh(request: web.Request) -> web.Response:
    return _no_content_or(request.app[STATE], None)


async def _refresh_checkpoints(request: web.Request) -> web.Response:
    """Realistic servers take the queue lock for it: it waits for a running generation."""
    state = request.app[STATE]
    if state.config.server.queued_refresh:
        async with state.lock:
            pass
    return _no_content_or(state, None)


async def _cmd_flags(request: web.Request) -> web.Response:
    """Forge fails its own response model (``port`` is an int, the model wants a string):
    500 ResponseValidationError with the flags in ``body``."""
    config = request.app[STATE].config
    flags = listings.cmd_flags()
    if config.server.cmd_flags_status == 200:
        return _json(flags)
    message = ("1 validation errors:\n  {'type': 'string_type', 'loc': ('response', 'port'), "
               "'msg': 'Input should be a valid string', 'input': 7861, "
               "'url': 'https://errors.pydantic.dev/2.8/v/string_type'}\n")
    body = error_body(config.kind, "ResponseValidationError", message)
    body["body"] = flags
    return _json(body, config.server.cmd_flags_status)


async def _ping(request: web.Request) -> web.Response:
    if request.app[STATE].config.kind == "sdnext":
        raise web.HTTPNotFound()
    return _json({})


async def _sim_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].snapshot())


async def _sim_get_config(request: web.Request) -> web.Response:
    return _json(config_to_dict(request.app[STATE].config))


async def _sim_set_config(request: web.Request) -> web.Response:
    """``POST /sim/config {"error_rate": 0.5, ...}``: the new config, or 400 naming the field."""
    state = request.app[STATE]
    try:
        changes = orjson.loads(await request.read() or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of fields to change")
        new = apply_changes(state.config, changes)
        state.replace_config(new)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        return _json({"detail": str(exc)}, 400)
    log.info("config changed: %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return _json(config_to_dict(new))


def build_app(config: SimConfig) -> web.Application:
    """The aiohttp application of one simulated backend (its state lives in the app)."""
    app = web.Application(middlewares=[_errors, _rate_limit, _auth],
                          client_max_size=MAX_BODY_BYTES)
    app[STATE] = SimState(config)
    v1 = "/sdapi/v1"
    app.router.add_post(f"{v1}/txt2img", _txt2img)
    app.router.add_post(f"{v1}/img2img", _img2img)
    listing_routes: dict[str, Callable[[SimState], Any]] = {
        "sd-models": listings.sd_models,
        "samplers": lambda s: listings.samplers(s.config),
        "schedulers": lambda s: listings.schedulers(s.config),
        "loras": lambda s: listings.loras(s.config),
        "sd-vae": lambda s: listings.sd_vae(s.config),
        "sd-modules": lambda s: listings.sd_modules(s.config),
        "embeddings": lambda s: listings.embeddings(s.config),
        "upscalers": lambda s: listings.upscalers(s.config),
        "scripts": lambda s: listings.scripts_list(s.config),
        "memory": lambda s: listings.memory(),
        "version": lambda s: (listings.sdnext_version(s.config)
                              if s.config.server.version_route else None),
        "options": listings.options,
        "progress": listings.progress,
    }
    for name, build in listing_routes.items():
        app.router.add_get(f"{v1}/{name}", _get(build))
    app.router.add_get(f"{v1}/cmd-flags", _cmd_flags)
    app.router.add_post(f"{v1}/options", _set_options)
    app.router.add_post(f"{v1}/interrupt", _interrupt)
    app.router.add_post(f"{v1}/skip", _skip)
    app.router.add_post(f"{v1}/refresh-checkpoints", _refresh_checkpoints)
    app.router.add_post(f"{v1}/refresh-loras", _refresh)
    app.router.add_post(f"{v1}/refresh-vae", _refresh)
    app.router.add_get("/internal/ping", _ping)
    app.router.add_get("/sim/stats", _sim_stats)
    app.router.add_get("/sim/config", _sim_get_config)
    app.router.add_post("/sim/config", _sim_set_config)
    return app


# --- running it -----------------------------------------------------------------------------

class SimServer:
    """A running simulated backend. ``config`` may be replaced while it runs."""

    def __init__(self, runner: web.AppRunner, state: SimState, url: str) -> None:
        self._runner = runner
        self._state = state
        self.url = url
        self._closed = False

    @property
    def config(self) -> SimConfig:
        return self._state.config

    @config.setter
    def config(self, config: SimConfig) -> None:
        self._state.replace_config(config)

    @property
    def stats(self) -> SimStats:
        return self._state.stats

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def close(self) -> None:
        """Stop now: running and hanging requests lose their connections, as in a crash."""
        if self._closed:
            return
        self._closed = True
        self._state.stopping.set()
        for request in list(self._state.active.values()):
            reset_connection(request)
        await self._runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_sim(config: SimConfig = SimConfig(), *, host: str = "127.0.0.1",  # noqa: B008
                    port: int = 0) -> SimServer:
    """Start a simulated backend on ``host:port`` (0: a free port) in the running loop."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    server = SimServer(runner, app[STATE], f"http://{url_host}:{bound_port}")
    log.debug("simulated WebUI backend (%s) at %s", config.profile, server.url)
    return server


def run_sim(config: SimConfig, *, host: str = "127.0.0.1", port: int = 7861,
            on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (the ``sdbatch sim`` command).

    ``on_ready(url)`` is called once listening; by default one line naming the URL goes to
    stderr, since this is a command's foreground. A port that cannot be bound is a
    ``UsageError`` naming it.
    """
    asyncio.run(_serve(config, host, port, on_ready or _announce))


def _announce(url: str) -> None:
    sys.stderr.write(f"sdbatch sim: simulated WebUI backend listening at {url} "
                     "(Ctrl-C stops it)\n")
    sys.stderr.flush()


async def _serve(config: SimConfig, host: str, port: int,
                 on_ready: Callable[[str], None]) -> None:
    try:
        server = await start_sim(config, host=host, port=port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                         "another --port or stop what uses it") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("simulated WebUI backend (%s %s, %d models) at %s", config.profile,
             config.webui_version, len(config.models), server.url)
    on_ready(server.url)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.close()
        stats = server.stats
        log.info("simulated backend stopped: %d requests, %d images, %d checkpoint loads",
                 stats.requests, stats.generations, stats.checkpoint_loads)
