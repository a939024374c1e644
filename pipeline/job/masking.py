"""Credentials out of messages: every error about a job is shown with its passwords masked.

``job_secrets(data)`` collects what a job holds (URL passwords, ``auth``, header values), as
written and percent-decoded (``user:p%40ss@`` means the password ``p@ss``); ``masked(error,
secrets)`` replaces them, and any ``scheme://user:pass@`` in the text, before the error is shown.
``mask_url`` is the form of a URL that may be printed.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.errors import JobError

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]*@")


def job_secrets(data: dict[str, Any]) -> list[str]:
    """Every credential the job holds, as written and percent-decoded, to keep out of messages."""
    found: list[str] = []
    backends = data.get("backends")
    for backend in backends if isinstance(backends, list) else []:
        if isinstance(backend, str):
            backend = {"url": backend}
        if not isinstance(backend, dict):
            continue
        url = backend.get("url")
        if isinstance(url, str) and "@" in url:
            userinfo = url.partition("://")[2].rpartition("@")[0]
            found += [userinfo, userinfo.partition(":")[2]]
        auth = backend.get("auth")
        if isinstance(auth, str):
            found += [auth, auth.partition(":")[2]]
        headers = backend.get("headers")
        if isinstance(headers, dict):
            found += [v for v in headers.values() if isinstance(v, str)]
    out = {s for s in found if len(s) >= 3}
    out |= {unquote(s) for s in out}
    return sorted(out, key=len, reverse=True)


def masked(exc: JobError, secrets: list[str]) -> JobError:
    def mask(text: str | None) -> str | None:
        if text is None:
            return None
        text = _USERINFO.sub(r"\1USER:PASS@", text)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    detail, where, hint = mask(exc.detail), mask(exc.where), mask(exc.hint)
    if (detail, where, hint) == (exc.detail, exc.where, exc.hint):
        return exc
    masked = JobError(detail or "", path=exc.path, where=where, hint=hint)
    return masked


def mask_url(url: str) -> str:
    """``url`` as it may be shown: user info replaced, a port that is not a number hidden."""
    try:
        parts = urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            host = "USER:PASS@" + host
        name, colon, port = host.rpartition(":")
        if colon and port and not port.isdigit() and "]" not in port:
            host = f"{name}:***"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "the URL"
