"""Assemble the gallery's single HTML file from its template, stylesheet, script and data.

The data blob is JSON with ``<``, ``>`` and ``&`` written as ``\\u003c``/``\\u003e``/``\\u0026``:
still the same JSON to ``JSON.parse``, but no prompt can close the ``<script>`` element or open
a comment. The title is HTML-escaped. A Content-Security-Policy with a fresh nonce allows only
the page's own inline script and style, and images from the directory.
"""

from __future__ import annotations

import html
import re
import secrets
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson

_SLOT = re.compile(r"\{\{(TITLE|NONCE|STYLE|SCRIPT|DATA)\}\}")


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return resources.files("pipeline.gallery").joinpath(name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``."""
    raw = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return (raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
            .decode("utf-8"))


def render_page(data: dict[str, Any]) -> str:
    """The complete page for ``data`` (see ``build`` for its shape)."""
    slots = {
        "TITLE": html.escape(f"{data.get('title') or 'sdbatch'} — sdbatch gallery"),
        "NONCE": secrets.token_urlsafe(18),
        "STYLE": _asset("gallery.css"),
        "SCRIPT": _asset("gallery.js"),
        "DATA": embed_json(data),
    }
    # One pass: text substituted into one slot is never searched for another.
    return _SLOT.sub(lambda m: slots[m.group(1)], _asset("page.html"))
