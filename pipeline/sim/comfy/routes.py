"""The HTTP and websocket routes of the simulated ComfyUI server (each also under ``/api``).

    POST /prompt            validate, queue; 200 {prompt_id, number, node_errors} or 400
    GET  /prompt            {exec_info: {queue_remaining}}
    GET  /queue, POST /queue {clear} / {delete: [ids]}
    GET  /history[?max_items=&offset=], GET /history/{id}, POST /history {clear} / {delete}
    GET  /view?filename=&subfolder=&type=[&channel=rgb|a]
    GET  /ws?clientId=      status, then the execution messages of that client's prompts
    GET  /object_info[/{class}], /models[/{folder}], /embeddings, /system_stats, /features
    POST /interrupt [{prompt_id}], POST /free {unload_models, free_memory}
    GET  /jobs[/{id}]       only with ``jobs_api`` (newer servers); 404 otherwise

Handlers answer as ComfyUI's ``server.py`` does, including its rough edges: a body that is not
JSON is aiohttp's plain-text 500, empty 200s for the POSTs that change state, empty 400/403/404
from ``/view``. The simulator adds ``GET /sim/stats``, ``POST /sim/restart`` and
``GET``/``POST /sim/config`` (change knobs at run time), none of them under ``/api``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from pipeline.sim.comfy import jobs
from pipeline.sim.comfy.config import apply_changes, config_to_dict
from pipeline.sim.comfy.images import reencode
from pipeline.sim.comfy.nodes import object_info
from pipeline.sim.comfy.state import SIM
from pipeline.sim.comfy.validate import graph_error, validate_prompt
from pipeline.sim.faults import reset_connection

if TYPE_CHECKING:
    from pipeline.sim.comfy.server import ComfySimServer
    from pipeline.sim.comfy.state import ComfyState

log = logging.getLogger(__name__)

FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
                 "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx",
                 "controlnet", "gligen", "upscale_models", "custom_nodes", "hypernetworks",
                 "photomaker", "classifiers", "model_patches", "audio_encoders")
TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=json.dumps)


def _sim(request: web.Request) -> ComfySimServer:
    sim: ComfySimServer = request.app[SIM]
    return sim


def _state(request: web.Request) -> ComfyState:
    return _sim(request).state


# --- prompts --------------------------------------------------------------------------------

async def post_prompt(request: web.Request) -> web.Response:
    sim, state = _sim(request), _state(request)
    log.info("got prompt")
    sim.stats.prompts_posted += 1
    fault = sim.dice.on_post(sim.config)
    if fault is not None:
        sim.stats.faults[fault] += 1
        log.info("injecting fault %s into POST /prompt", fault)
    if fault == "http_error":
        return web.Response(status=500, text=TROUBLE, content_type="text/plain")
    body = await request.json()  # not JSON: raises, and aiohttp answers its plain 500
    if "number" in body:
        number: float = float(body["number"])
    else:
        number = -state.number if body.get("front") else state.number
        state.number += 1
    if "prompt" not in body:
        sim.stats.prompts_rejected += 1
        error = graph_error("no_prompt", "No prompt provided", "No prompt provided")
        return _json({"error": error, "node_errors": {}}, 400)
    prompt = body["prompt"]
    prompt_id = str(body.get("prompt_id", uuid.uuid4()))
    valid = validate_prompt(prompt, state.classes, body.get("partial_execution_targets"))
    extra_data = body.get("extra_data", {})
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    if not valid.ok:
        sim.stats.prompts_rejected += 1
        log.warning("invalid prompt: %s", valid.error)
        return _json({"error": valid.error, "node_errors": valid.node_errors}, 400)
    if sim.config.jobs_api:
        extra_data.setdefault("create_time", jobs.now_ms())
    state.queue.put([number, prompt_id, prompt, extra_data, valid.outputs])
    sim.stats.prompts_accepted += 1
    sim.stats.posts_per_id[prompt_id] += 1
    if fault == "drop":
        reset_connection(request)
    return _json({"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors})


async def get_prompt(request: web.Request) -> web.Response:
    return _json(_state(request).queue_info())


async def get_queue(request: web.Request) -> web.Response:
    running, pending = _state(request).queue.current()
    return _json({"queue_running": running, "queue_pending": pending})


async def post_queue(request: web.Request) -> web.Response:
    state = _state(request)
    body = await request.json()
    if body.get("clear"):
        state.queue.wipe()
    for prompt_id in body.get("delete", ()):
        state.queue.delete(prompt_id)
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    sim, state = _sim(request), _state(request)
    try:
        body = await request.json()
    except json.JSONDecodeError:
        body = {}
    prompt_id = body.get("prompt_id")
    if prompt_id:
        if state.queue.is_running(prompt_id):
            log.info("Interrupting prompt %s", prompt_id)
            sim.stats.interrupts += 1
            state.executor.interrupt()
        else:
            log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
    else:
        log.info("Global interrupt (no prompt_id specified)")
        sim.stats.interrupts += 1
        state.executor.interrupt()
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("free_memory"):
        _state(request).executor.clear_cache()
    return web.Response(status=200)


# --- history --------------------------------------------------------------------------------

async def get_history(request: web.Request) -> web.Response:
    query = request.rel_url.query
    max_items = int(query["max_items"]) if "max_items" in query else None
    offset = int(query["offset"]) if "offset" in query else -1
    return _json(_state(request).queue.get_history(max_items=max_items, offset=offset))


async def get_history_id(request: web.Request) -> web.Response:
    return _json(_state(request).queue.get_history(request.match_info["prompt_id"]))


async def post_history(request: web.Request) -> web.Response:
    queue = _state(request).queue
    body = await request.json()
    if body.get("clear"):
        queue.wipe_history()
    for prompt_id in body.get("delete", ()):
        queue.delete_history(prompt_id)
    return web.Response(status=200)


# --- files ----------------------------------------------------------------------------------

async def view(request: web.Request) -> web.StreamResponse:
    folders = _sim(request).folders
    query = request.rel_url.query
    if "filename" in query:
        filename, output_dir = folders.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if output_dir is None:
            output_dir = folders.by_type(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full
        filename = os.path.basename(filename)
        path = os.path.join(output_dir, filename)
        if os.path.isfile(path):
            disposition = {"Content-Disposition": f'filename="{filename}"'}
            channel = query.get("channel", "rgba")
            if channel in ("rgb", "a"):
                body = await asyncio.to_thread(reencode, path, channel)
                return web.Response(body=body, content_type="image/png", headers=disposition)
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml",
                                "text/javascript", "text/css"}:
                content_type = "application/octet-stream"
            return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})
    return web.Response(status=404)


# --- discovery ------------------------------------------------------------------------------

async def get_object_info(request: web.Request) -> web.Response:
    return _json(object_info(_sim(request).config))


async def get_object_info_class(request: web.Request) -> web.Response:
    return _json(object_info(_sim(request).config, request.match_info["node_class"]))


async def get_models(request: web.Request) -> web.Response:
    return _json(list(MODEL_FOLDERS))


async def get_models_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    config = _sim(request).config
    files = {"checkpoints": config.checkpoints, "loras": config.loras}.get(folder, ())
    return _json(list(files))


async def get_embeddings(request: web.Request) -> web.Response:
    return _json([])


async def get_system_stats(request: web.Request) -> web.Response:
    sim = _sim(request)
    ram_total, ram_free = _ram()
    system = {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
              "comfyui_version": sim.config.version, "required_frontend_version": "1.27.10",
              "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
              "python_version": sys.version, "pytorch_version": "simulated",
              "embedded_python": False,
              "argv": ["main.py", "--cpu", "--listen", sim.host, "--port", str(sim.port)]}
    device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total,
              "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free}
    return _json({"system": system, "devices": [device]})


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


async def get_features(request: web.Request) -> web.Response:
    return _json(FEATURES)


async def get_root(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>ComfyUI</title><p>simulated ComfyUI "
                             "server (sdbatch)</p>", content_type="text/html")


# --- websocket ------------------------------------------------------------------------------

async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = _state(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    state.hub.register(sid, ws, request)
    try:
        await state.hub.send_now(ws, "status", {"status": state.queue_info(), "sid": sid})
        ex = state.executor
        if ex.client_id == sid and ex.last_node_id is not None:
            await state.hub.send_now(ws, "executing", {"node": ex.last_node_id})
        first = True
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    await state.hub.send_now(ws, "feature_flags", FEATURES)
                first = False
            except ValueError:
                log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
    finally:
        state.hub.unregister(sid, ws)
    return ws


# --- simulator-only -------------------------------------------------------------------------

async def sim_stats(request: web.Request) -> web.Response:
    sim, state = _sim(request), _state(request)
    return _json({**sim.stats.as_dict(), "queue_remaining": state.queue.remaining(),
                  "history": len(state.queue.history), "number": state.number})


async def sim_get_config(request: web.Request) -> web.Response:
    return _json(config_to_dict(_sim(request).config))


async def sim_set_config(request: web.Request) -> web.Response:
    """``POST /sim/config {"error_rate": 0.5, ...}``: the new config, or 400 naming the field."""
    sim = _sim(request)
    try:
        changes = json.loads(await request.read() or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of fields to change")
        sim.config = apply_changes(sim.config, changes)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return _json({"detail": str(exc)}, 400)
    log.info("config changed: %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return _json(config_to_dict(sim.config))


async def sim_restart(request: web.Request) -> web.Response:
    """Restart after answering (``{"downtime_s": 1.5}`` optional)."""
    sim = _sim(request)
    body = await request.json() if request.can_read_body else {}
    downtime = body.get("downtime_s") if isinstance(body, dict) else None
    asyncio.get_running_loop().call_later(0.05, sim.restart_soon, downtime)
    return _json({"restarting": True})


# --- the application ------------------------------------------------------------------------

@web.middleware
async def _track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Remember open requests (a restart cuts them); unknown routes are an empty 404."""
    active = request.app[SIM].active
    active[id(request)] = request
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, content_type="application/octet-stream")
    finally:
        active.pop(id(request), None)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ws", websocket),
    ("POST", "/prompt", post_prompt),
    ("GET", "/prompt", get_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("POST", "/free", post_free),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_id),
    ("POST", "/history", post_history),
    ("GET", "/view", view),
    ("GET", "/object_info", get_object_info),
    ("GET", "/object_info/{node_class}", get_object_info_class),
    ("GET", "/models", get_models),
    ("GET", "/models/{folder}", get_models_folder),
    ("GET", "/embeddings", get_embeddings),
    ("GET", "/system_stats", get_system_stats),
    ("GET", "/features", get_features),
]


def build_app(sim: ComfySimServer) -> web.Application:
    app = web.Application(middlewares=[_track], client_max_size=100 * 1024 * 1024)
    app[SIM] = sim
    routes = list(ROUTES)
    if sim.config.jobs_api:
        routes += [("GET", "/jobs", jobs.get_jobs), ("GET", "/jobs/{job_id}", jobs.get_job)]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, f"/api{path}", handler)
    app.router.add_get("/", get_root)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_post("/sim/restart", sim_restart)
    app.router.add_get("/sim/config", sim_get_config)
    app.router.add_post("/sim/config", sim_set_config)
    return app
