"""Where the queue and the outputs live: ``--queue`` and ``--out``/``--store`` URLs. Pure.

    redis://[user:password@]host:6379/0     the queue (rediss:// for TLS)
    s3://[KEY:SECRET@]bucket/prefix[?endpoint=http://host:9000&region=eu-west-1]
    /shared/folder  or  file:///shared/folder

Credentials come from the URL or the environment and are never shown or stored: ``shown`` is
the URL without them (for messages), ``public()`` what may be written to Redis and job files.

- Redis: ``SDBATCH_QUEUE`` when ``--queue`` is not given; ``SDBATCH_REDIS_USERNAME`` /
  ``SDBATCH_REDIS_PASSWORD`` when the URL has none (so a password need not be on the command
  line, where ``ps`` shows it).
- S3: the key pair from the URL, else boto3's own chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles); the endpoint from ``?endpoint=``,
  else ``SDBATCH_S3_ENDPOINT``, else boto3's ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

from pipeline.fleet.errors import FleetUsageError

QUEUE_ENV = "SDBATCH_QUEUE"
REDIS_USER_ENV = "SDBATCH_REDIS_USERNAME"
REDIS_PASSWORD_ENV = "SDBATCH_REDIS_PASSWORD"
S3_ENDPOINT_ENV = "SDBATCH_S3_ENDPOINT"


@dataclass(frozen=True, slots=True)
class QueueURL:
    """A Redis URL: ``secret_url`` (with credentials) goes to redis-py only."""

    secret_url: SecretStr
    shown: str

    def __str__(self) -> str:
        return self.shown


def parse_queue_url(text: str | None, environ: Mapping[str, str] | None = None) -> QueueURL:
    env = os.environ if environ is None else environ
    text = (text or env.get(QUEUE_ENV) or "").strip()
    if not text:
        raise FleetUsageError("no queue given\n  fix: pass --queue redis://HOST:6379/0 (or set "
                              f"{QUEUE_ENV})")
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise FleetUsageError(f"{_redact(text)!r} is not a Redis URL\n  fix: write it like "
                              "redis://127.0.0.1:6379/0 (rediss:// for TLS)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise FleetUsageError(f"{_redact(text)!r} has a bad port number") from None
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise FleetUsageError(f"{_redact(text)!r}: the path must be a database number, like /0")
    user = unquote(parts.username) if parts.username else env.get(REDIS_USER_ENV, "")
    password = unquote(parts.password) if parts.password else env.get(REDIS_PASSWORD_ENV, "")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    auth = ""
    if password:
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    elif user:
        auth = f"{quote(user, safe='')}@"
    secret = urlunsplit((parts.scheme, f"{auth}{host}:{port}", f"/{db}", parts.query, ""))
    shown = urlunsplit((parts.scheme, f"{host}:{port}", f"/{db}", "", ""))
    return QueueURL(SecretStr(secret), shown)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """Where agents put images and records: an S3-compatible bucket or a shared folder."""

    kind: Literal["s3", "folder"]
    bucket: str = ""
    prefix: str = ""  # no leading or trailing slash; "" = the bucket's root
    endpoint: str | None = None  # from the URL (part of the public URL)
    region: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    path: str = ""  # folder: absolute path

    @property
    def shown(self) -> str:
        return self.public()

    def public(self) -> str:
        """The URL without credentials: what Redis and job files may hold."""
        if self.kind == "folder":
            return self.path
        query = {k: v for k, v in (("endpoint", self.endpoint), ("region", self.region)) if v}
        tail = f"?{urlencode(query)}" if query else ""
        path = f"/{self.prefix}" if self.prefix else ""
        return f"s3://{self.bucket}{path}{tail}"

    def __str__(self) -> str:
        return self.public()

    def with_credentials_from(self, other: StoreURL) -> StoreURL:
        """This location, with ``other``'s credentials when it has none of its own."""
        if self.access_key is not None or other.kind != "s3":
            return self
        from dataclasses import replace

        return replace(self, access_key=other.access_key, secret_key=other.secret_key)


def parse_store_url(text: str, environ: Mapping[str, str] | None = None) -> StoreURL:
    env = os.environ if environ is None else environ
    text = (text or "").strip()
    if not text:
        raise FleetUsageError("no output store given\n  fix: pass --out s3://BUCKET/PREFIX or a "
                              "shared folder path")
    if text.startswith("s3://"):
        return _parse_s3(text, env)
    if "://" in text and not text.startswith("file://"):
        raise FleetUsageError(f"{_redact(text)!r} is not an output store\n  fix: write "
                              "s3://BUCKET/PREFIX, a folder path, or file:///folder")
    raw = unquote(urlsplit(text).path) if text.startswith("file://") else text
    return StoreURL("folder", path=str(Path(raw).expanduser().resolve()))


def _parse_s3(text: str, env: Mapping[str, str]) -> StoreURL:
    parts = urlsplit(text)
    bucket = parts.hostname or ""
    if not bucket or not _valid_bucket(bucket):
        raise FleetUsageError(f"{_redact(text)!r}: {bucket!r} is not a bucket name\n  fix: "
                              "write s3://BUCKET/PREFIX (3-63 lower-case letters, digits, '-', '.')")
    query = parse_qs(parts.query)
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise FleetUsageError(f"{_redact(text)!r}: unknown option {sorted(unknown)[0]!r}\n  fix: "
                              "the options are ?endpoint=URL and &region=NAME")
    endpoint = (query.get("endpoint") or [None])[0]
    if endpoint is not None:
        e = urlsplit(endpoint)
        if e.scheme not in ("http", "https") or not e.hostname:
            raise FleetUsageError(f"endpoint {_redact(endpoint)!r} is not an http(s) URL")
        if e.username or e.password:
            raise FleetUsageError("the endpoint URL must not hold credentials\n  fix: write "
                                  "s3://KEY:SECRET@BUCKET/... or set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY")
        endpoint = endpoint.rstrip("/")
    prefix = "/".join(p for p in unquote(parts.path).split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise FleetUsageError(f"{_redact(text)!r}: the prefix must not contain '.' or '..' parts")
    access = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password else None
    if (access is None) != (secret is None):
        raise FleetUsageError("s3:// credentials must be KEY:SECRET@ (both, or neither and "
                              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment)")
    return StoreURL("s3", bucket=bucket, prefix=prefix, endpoint=endpoint,
                    region=(query.get("region") or [None])[0],
                    access_key=SecretStr(access) if access else None,
                    secret_key=SecretStr(secret) if secret else None)


def env_endpoint(store: StoreURL, environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint to use: the URL's, else ``SDBATCH_S3_ENDPOINT`` (else boto3 decides)."""
    env = os.environ if environ is None else environ
    return store.endpoint or env.get(S3_ENDPOINT_ENV) or None


def _valid_bucket(name: str) -> bool:
    return 3 <= len(name) <= 63 and all(c.islower() or c.isdigit() or c in "-." for c in name)


def _redact(text: str) -> str:
    """A URL as it may be shown: user and password removed."""
    try:
        parts = urlsplit(text)
        if parts.username is None and parts.password is None:
            return text
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "URL"


redact = _redact
