"""A minimal ``/api/jobs`` as newer ComfyUI servers have it (only with ``jobs_api=True``).

0.3.64 has no such route (404). Newer servers list running, pending and finished prompts as
jobs: ``{"id", "status": pending|in_progress|completed|failed, "priority", "create_time",
"outputs_count", ...}``, ``GET /api/jobs?status=&limit=&offset=`` ->
``{"jobs": [...], "pagination": {...}}`` (newest first), ``GET /api/jobs/{id}`` -> one job
with its outputs, or 404.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from pipeline.sim.comfy.state import SIM

STATUSES = ("pending", "in_progress", "completed", "failed")


def now_ms() -> int:
    return int(time.time() * 1000)


def _queued(item: list[Any], status: str) -> dict[str, Any]:
    job = {"id": item[1], "status": status, "priority": item[0],
           "create_time": item[3].get("create_time"), "outputs_count": 0}
    return {k: v for k, v in job.items() if v is not None}


def _finished(prompt_id: str, entry: dict[str, Any], full: bool) -> dict[str, Any]:
    status = entry.get("status") or {}
    start = end = error = None
    for event, data in status.get("messages", []):
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            error = data if event == "execution_error" else None
    outputs = entry.get("outputs", {})
    count = sum(len(items) for node in outputs.values() for items in node.values()
                if isinstance(items, list))
    job = {"id": prompt_id, "priority": entry["prompt"][0],
           "status": "failed" if status.get("status_str") == "error" else "completed",
           "create_time": entry["prompt"][3].get("create_time"), "execution_start_time": start,
           "execution_end_time": end, "execution_error": error, "outputs_count": count}
    job = {k: v for k, v in job.items() if v is not None}
    if full:
        job.update(outputs=outputs, execution_status=status,
                   workflow={"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]})
    return job


async def get_jobs(request: web.Request) -> web.Response:
    state = _state(request)
    query = request.rel_url.query
    wanted = [s.strip() for s in query.get("status", "").split(",") if s.strip()] or STATUSES
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        return _json({"error": f"Invalid status value(s): {', '.join(bad)}. Valid values: "
                               f"{', '.join(STATUSES)}"}, 400)
    try:
        limit = int(query["limit"]) if "limit" in query else None
        offset = max(0, int(query.get("offset", 0)))
    except ValueError:
        return _json({"error": "limit and offset must be integers"}, 400)
    running, pending = state.queue.current()
    found: list[dict[str, Any]] = []
    if "in_progress" in wanted:
        found += [_queued(item, "in_progress") for item in running]
    if "pending" in wanted:
        found += [_queued(item, "pending") for item in pending]
    for prompt_id, entry in state.queue.history.items():
        job = _finished(prompt_id, entry, False)
        if job["status"] in wanted:
            found.append(job)
    found.sort(key=lambda j: j.get("create_time", 0), reverse=query.get("sort_order") != "asc")
    total = len(found)
    page = found[offset:] if limit is None else found[offset:offset + limit]
    return _json({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                "has_more": offset + len(page) < total}})


async def get_job(request: web.Request) -> web.Response:
    state = _state(request)
    job_id = request.match_info["job_id"]
    entry = state.queue.history.get(job_id)
    if entry is not None:
        return _json(_finished(job_id, entry, True))
    running, pending = state.queue.current()
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item[1] == job_id:
                return _json(_queued(item, status))
    return _json({"error": "Job not found"}, 404)


def _state(request: web.Request) -> Any:
    return request.app[SIM].state


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=json.dumps)
