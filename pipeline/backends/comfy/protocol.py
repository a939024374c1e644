"""What ComfyUI's answers mean, and the errors they become. Pure: parsed JSON in, values out.

Facts (from a real 0.3.64 server, ``shared/real-comfy``):
- ``POST /prompt`` validates and queues: 400 with ``node_errors`` (per node: type, details,
  ``extra_info.input_name``) or a graph-level ``error``; **200 with non-empty ``node_errors``**
  means some outputs were refused and only the others will run.
- ``GET /history/{id}`` is ``{}`` while queued or running *and* for an unknown id; ``/queue``
  tells those apart. An entry's ``prompt[0]`` is the submission's ``number``: an entry whose
  number is not ours is an older run under a re-used id, not our result.
- An entry's ``status.messages`` end with ``execution_success``, ``execution_error`` (node,
  exception) or ``execution_interrupted`` (nothing saved); ``execution_cached.nodes`` lists the
  nodes taken from the cache: all of them means nothing ran and the outputs are an earlier run's.

Errors (all in the ``BackendError`` tree of ``pipeline.errors``):
    WorkflowRejected(HTTPStatusError, 400)  the server refused the graph: fix it, never retried
    ExecutionFailed(HTTPStatusError, 500)   a node raised while running: retried like a 500
    Interrupted(BadResponseError)           interrupted: retried, nothing saved
    PromptLost(TransportError)              in neither queue nor history (restart): redone
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import BadResponseError, HTTPStatusError, TransportError

MAX_ERRORS_SHOWN = 6


class WorkflowRejected(HTTPStatusError):
    """The server refused the graph (or part of it): a job or workflow to fix, not to retry.

    ``status`` is 400 even when the server answered 200 with ``node_errors`` (partly refused).
    """

    def __init__(self, message: str, *, backend: str = "", http_status: int = 400) -> None:
        super().__init__(message, backend=backend, status=400)
        self.http_status = http_status


class ExecutionFailed(HTTPStatusError):
    """A node raised while the prompt ran (``execution_error``); treated as a server 500."""

    def __init__(self, message: str, *, backend: str = "", node: str | None = None,
                 exception_type: str | None = None) -> None:
        super().__init__(message, backend=backend, status=500)
        self.node = node
        self.exception_type = exception_type


class Interrupted(BadResponseError):
    """The prompt was interrupted (``execution_interrupted``): nothing was saved; retryable."""


class PromptLost(TransportError):
    """The prompt is in neither the queue nor the history: the server restarted or dropped it."""


def node_errors_text(node_errors: Any, graph: dict[str, Any] | None = None) -> str:
    """``node 3 (KSampler) sampler_name: value_not_in_list: ...`` for each refused input."""
    if not isinstance(node_errors, dict):
        return ""
    parts: list[str] = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        cls = entry.get("class_type") or ((graph or {}).get(node_id) or {}).get("class_type")
        head = f"node {node_id} ({cls})" if cls else f"node {node_id}"
        for err in entry.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            name = extra.get("input_name")
            reason = err.get("details") or err.get("message") or ""
            kind = err.get("type") or "error"
            where = f"{head} input {name!r}" if name else head
            parts.append(f"{where}: {kind}: {reason}".rstrip(": "))
    if len(parts) > MAX_ERRORS_SHOWN:
        parts = parts[:MAX_ERRORS_SHOWN] + [f"and {len(parts) - MAX_ERRORS_SHOWN} more"]
    return "; ".join(parts)


def rejection_text(body: Any, graph: dict[str, Any] | None = None) -> str:
    """One readable line from a ``POST /prompt`` refusal body."""
    if not isinstance(body, dict):
        return str(body)[:300] if body else "no details"
    nodes = node_errors_text(body.get("node_errors"), graph)
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "refused"
        details = error.get("details")
        if details and not nodes:
            head = f"{head} ({details})"
        return f"{head}: {nodes}" if nodes else str(head)
    if isinstance(error, str):
        return f"{error}: {nodes}" if nodes else error
    return nodes or "refused without details"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A history entry, read."""

    status: str  # "success" | "error" | "interrupted" | "running"
    number: int | None
    cached_nodes: frozenset[str]
    outputs: dict[str, Any] = field(hash=False, compare=False)
    graph: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    error: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    server_time_s: float | None = None


def read_entry(entry: Any) -> Outcome:
    """Read one ``/history/{id}`` entry (the value under the id)."""
    if not isinstance(entry, dict):
        raise BadResponseError("a /history entry is not an object")
    prompt = entry.get("prompt")
    number = prompt[0] if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) \
        else None
    graph = prompt[2] if isinstance(prompt, list) and len(prompt) > 2 and \
        isinstance(prompt[2], dict) else None
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    cached: set[str] = set()
    error: dict[str, Any] | None = None
    started = ended = None
    kind = {"success": "success", "error": "error"}.get(str(status.get("status_str")), "running")
    for item in messages:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        name, data = item
        stamp = data.get("timestamp")
        if name == "execution_start" and isinstance(stamp, (int, float)):
            started = stamp
        elif name == "execution_cached":
            cached.update(str(n) for n in data.get("nodes") or [])
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            if isinstance(stamp, (int, float)):
                ended = stamp
            if name == "execution_error":
                error, kind = data, "error"
            elif name == "execution_interrupted":
                error, kind = data, "interrupted"
            else:
                kind = "success"
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    elapsed = (ended - started) / 1000.0 if started is not None and ended is not None else None
    return Outcome(kind, number, frozenset(cached), outputs, graph, error, elapsed)


def execution_error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "the server reports an error without details"
    node = error.get("node_id")
    cls = error.get("node_type")
    exc_type = error.get("exception_type") or "error"
    message = str(error.get("exception_message") or "").strip().replace("\n", " ")
    while "  " in message:
        message = message.replace("  ", " ")
    where = f"node {node} ({cls})" if node else "a node"
    return f"{where} raised {exc_type}: {message[:500]}"


def image_refs(outputs: dict[str, Any], node: str) -> list[dict[str, str]]:
    """The ``{filename, subfolder, type}`` references one output node produced."""
    out = outputs.get(node)
    images = out.get("images") if isinstance(out, dict) else None
    refs: list[dict[str, str]] = []
    for ref in images or []:
        if isinstance(ref, dict) and isinstance(ref.get("filename"), str):
            refs.append({"filename": ref["filename"], "subfolder": str(ref.get("subfolder") or ""),
                         "type": str(ref.get("type") or "output")})
    return refs


def queue_ids(queue: Any) -> dict[str, int | None]:
    """prompt_id -> number for every prompt running or pending in a ``/queue`` answer."""
    ids: dict[str, int | None] = {}
    if not isinstance(queue, dict):
        raise BadResponseError("/queue did not answer an object")
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str):
                ids[item[1]] = item[0] if isinstance(item[0], int) else None
    return ids


def bare_graph(graph: dict[str, Any]) -> dict[str, Any]:
    """A graph without ``_meta`` (for comparing what we sent with what a server stored)."""
    return {k: {"class_type": v.get("class_type"), "inputs": v.get("inputs")}
            for k, v in graph.items() if isinstance(v, dict)}
