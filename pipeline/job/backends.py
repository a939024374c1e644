"""A backend server as a job (or ``--backend``) names it: URL, kind, limits, credentials.

Credentials live in ``auth`` (and ``headers``) only, never in ``url``: ``http://user:p%40ss@host``
becomes url ``http://host`` and auth ``user:p@ss`` (percent-decoded). URLs, names, auth and
header values may not hold line breaks or control characters (a header is one line), and every
message shows a URL through ``mask_url``.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pipeline.job.masking import mask_url
from pipeline.job.values import FieldValueError

MAX_REQUEST_TIMEOUT_S = 86_400.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class StrictModel(BaseModel):
    """Unknown keys are errors, values are frozen, .inf and .nan are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackendSpec(StrictModel):
    """One backend server. Credentials live in ``auth`` only, never in ``url``.

    ``kind`` says which API it speaks: ``webui`` (AUTOMATIC1111, Forge, reForge, SD.Next) or
    ``comfyui``; a ComfyUI backend needs a ``workflow`` (here or at job level).
    """

    url: str
    name: str | None = None
    kind: Literal["webui", "comfyui"] = "webui"
    workflow: str | None = None
    concurrency: int = Field(1, ge=1, le=64)
    auth: SecretStr | None = None
    timeout_s: float = Field(600.0, gt=0, le=MAX_REQUEST_TIMEOUT_S)
    verify_tls: bool = True
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """``http://user:p%40ss@host`` -> url ``http://host`` and auth ``user:p@ss`` (decoded)."""
        if isinstance(data, str):
            data = {"url": data}
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            try:
                parts = urlsplit(data["url"].strip())
                has_userinfo = "@" in parts.netloc
                host = parts.netloc.rpartition("@")[2]
            except ValueError:
                return data  # _check_url says what is wrong
            if has_userinfo:
                userinfo = parts.netloc.rpartition("@")[0]
                user, _, password = userinfo.partition(":")
                data = dict(data)
                data["url"] = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
                if not data.get("auth"):
                    data["auth"] = f"{unquote(user)}:{unquote(password)}"
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        shown = mask_url(url)
        if _CONTROL.search(url) or " " in url.strip():
            raise FieldValueError(f"{shown!r} contains spaces or control characters",
                                  hint="write the URL on one line, without spaces")
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:
            raise FieldValueError(f"{shown!r} is not a URL ({exc})",
                                  hint="write it like http://127.0.0.1:7861") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FieldValueError(f"{shown!r} is not a backend URL",
                                  hint="write it like http://127.0.0.1:7861 (http or https)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise FieldValueError(f"{shown!r} has a bad port number",
                                  hint="a port is a number up to 65535; credentials go before "
                                       "the host: http://user:password@host:port") from None
        return url.strip().rstrip("/")

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and (_CONTROL.search(name) or not name.strip()):
            raise FieldValueError("the backend name is empty or has control characters",
                                  hint="write a short label such as gpu1")
        return name

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, auth: SecretStr | None) -> SecretStr | None:
        if auth is not None and ":" not in auth.get_secret_value():
            raise FieldValueError("auth must look like user:password",
                                  hint="write auth: \"user:password\" (as for the WebUI's "
                                       "--api-auth), or ${VAR} to read it from the environment")
        if auth is not None and _CONTROL.search(auth.get_secret_value()):
            raise FieldValueError("auth contains a line break or control character",
                                  hint="write user:password on one line")
        return auth

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise FieldValueError(f"header name {name[:40]!r} is not a valid HTTP header "
                                      "name", loc=(name,), hint="use letters, digits and - "
                                      "only, e.g. X-Token")
            if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value.get_secret_value()):
                raise FieldValueError(f"header {name} has a line break or control character "
                                      "in its value", loc=(name,),
                                      hint="a header value is one line of text")
        return headers

    @property
    def label(self) -> str:
        """How the backend is named in output and logs: never with credentials."""
        return self.name or self.url


def check_backend_labels(backends: list[BackendSpec]) -> None:
    """Each backend is told apart by its label (name, else URL): two alike would share a lane."""
    seen: dict[str, int] = {}
    for i, backend in enumerate(backends):
        if backend.label in seen:
            raise FieldValueError(f"backends {seen[backend.label] + 1} and {i + 1} are both "
                                  f"{mask_url(backend.label)!r}", loc=(i,),
                                  hint="list each server once (raise its concurrency for more "
                                       "requests in flight), or give them different names")
        seen[backend.label] = i
