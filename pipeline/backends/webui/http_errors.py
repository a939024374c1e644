"""A WebUI's error answers, read into one line a user can act on. Pure.

The shapes servers send (all recorded from real servers or their source):

- FastAPI validation, 422: ``{"detail": [{"loc": ["body", "steps"], "msg": ..., "input": ...}]}``
  (pydantic 2 in Forge; pydantic 1 in A1111 says "value is not a valid integer");
  ``loc ["body", 1]`` with type ``json_invalid`` is a body that is not JSON at all;
- server errors, 500: ``{"error": "IndexError", "detail": "", "body": "", "message": ...}`` (Forge),
  ``"errors"`` instead of ``"message"`` (A1111), plus ``"code"`` (SD.Next);
- a route the server does not have: ``404 {"detail": "Not Found"}``; other 404s carry their own
  words (``{"detail": "Init image not found"}``);
- proxies: HTML or plain text.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import Any

import orjson

MAX_CHARS = 500


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = MAX_CHARS) -> str:
    """A server's words made safe to print: one line, no terminal control characters (an
    escape sequence in an error body must not reach the user's terminal), at most ``limit``."""
    text = " ".join(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def error_message(body: bytes, reason: str | None = None, *, status: int | None = None,
                  path: str | None = None) -> str:
    """One readable line from any WebUI error shape, naming the field and the server's words."""
    return printable(_error_message(body, reason, status=status, path=path), 2 * MAX_CHARS)


def _error_message(body: bytes, reason: str | None = None, *, status: int | None = None,
                   path: str | None = None) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return text or (reason or "no details")
    if not isinstance(data, dict):
        return str(data)[:300]
    detail = data.get("detail")
    if isinstance(detail, list):
        return "invalid request: " + "; ".join(_validation_item(i) for i in detail[:5])
    if status == 404 and detail == "Not Found":
        route = f" {path.split('?')[0]}" if path else " such"
        return (f"Not Found: this server has no{route} route (another kind or an older version "
                "of the WebUI; 'sdbatch check' says which)")
    name = data.get("error")
    message = _text(data.get("errors")) or _text(data.get("message")) or _text(detail) \
        or _text(data.get("body"))
    if name and message:
        return f"{name}: {message.strip()[:MAX_CHARS]}"
    if message or name:
        return str(message or name).strip()[:MAX_CHARS]
    return orjson.dumps(data)[:300].decode()


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)[:200]
    loc = [p for p in item.get("loc") or [] if p != "body"]
    msg = str(item.get("msg") or item.get("type") or "invalid")
    if item.get("type") == "json_invalid":
        ctx = item.get("ctx") if isinstance(item.get("ctx"), dict) else {}
        cause = f" ({ctx['error']})" if ctx.get("error") else ""
        return f"the request body is not valid JSON{cause}"
    field = ".".join(str(p) for p in loc if not isinstance(p, int) or len(loc) > 1)
    text = f"{field}: {msg}" if field else msg
    if "input" in item and not isinstance(item["input"], (dict, list)):
        text += f" (got {item['input']!r})"
    return text


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


MAX_RETRY_AFTER_S = 300.0  # a server asking for longer (or for ``inf``) is asking too much


def retry_after_s(header: str | None, *, now_s: float | None = None) -> float | None:
    """``Retry-After``: delta seconds or an HTTP date, at most ``MAX_RETRY_AFTER_S``; None when
    absent or unreadable (``nan``, ``inf`` and other non-numbers included)."""
    if not header:
        return None
    header = header.strip()
    try:
        value = float(header)
    except ValueError:
        pass
    else:
        return min(max(0.0, value), MAX_RETRY_AFTER_S) if math.isfinite(value) else None
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    try:
        wait_s = when.timestamp() - (time.time() if now_s is None else now_s)
    except (OverflowError, ValueError, OSError):
        return None
    return min(max(0.0, wait_s), MAX_RETRY_AFTER_S)
