"""Where agents put what they made: an S3-compatible bucket (boto3) or a shared folder.

Both hold the same keys (``images/<sha256>.<ext>``, ``records/<variant id>.json``,
``inputs/<sha256>``, ``job.json``) and offer the same few calls, all async (boto3 and the file
system run in worker threads). Every write replaces a whole object atomically: S3 PUTs are
atomic per object; the folder writes a uniquely named temporary file beside the target (through
``pipeline.output.atomic.replace_file``) and renames it over, so two agents writing the same key
at once never interleave. A key that already exists is simply written again: content-addressed
keys make that harmless.

Foreign exceptions (botocore, OSError) become ``StoreError`` here and nowhere else; boto3's own
standard retry mode handles throttling and transient 5xx/connection errors underneath.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import OutputError
from pipeline.fleet.errors import FleetUsageError, StoreError
from pipeline.fleet.urls import StoreURL, env_endpoint
from pipeline.output.atomic import replace_file
from pipeline.output.layout import TMP_PREFIX

LIST_PAGE = 1000
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


class ObjectStore(Protocol):
    shown: str

    async def check(self, *, create: bool = False) -> str | None:
        """Prove the store is reachable and writable; returns a note when it created it."""
        ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        ...

    async def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key under ``prefix`` (e.g. ``"records/"``), lazily, page by page."""
        ...

    async def close(self) -> None: ...


def open_store(url: StoreURL, *, fsync: bool = True) -> ObjectStore:
    if url.kind == "folder":
        return FolderStore(Path(url.path), fsync=fsync)
    return S3Store(url)


# --- a shared folder ------------------------------------------------------------------------------

class FolderStore:
    """A folder every agent mounts (NFS, SMB, a synced disk), with the same keys as a bucket."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.shown = str(root)
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root / key

    async def check(self, *, create: bool = False) -> str | None:
        def probe() -> str | None:
            note = None
            if not self.root.is_dir():
                if not create:
                    raise StoreError(f"{self.shown} is not a folder\n  fix: mount the shared "
                                     "folder here, or pass --store with its path on this machine")
                note = f"created {self.shown}"
            self._write(f"{TMP_PREFIX}probe-{os.getpid()}", b"")
            (self.root / f"{TMP_PREFIX}probe-{os.getpid()}").unlink(missing_ok=True)
            return note

        return await asyncio.to_thread(probe)

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        staging = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
        try:
            replace_file(staging, data, fsync=self.fsync)
            os.replace(staging, path)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        except OutputError as exc:
            raise StoreError(str(exc)) from None

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, key, data)

    async def get(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StoreError(f"cannot read {self._path(key)}: {exc.strerror or exc}") from None

        return await asyncio.to_thread(read)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        """Every file in the folder ``prefix`` names (it ends with "/"), sorted."""
        folder = self._path(prefix)

        def listing() -> list[str]:
            try:
                with os.scandir(folder) as entries:
                    return sorted(e.name for e in entries
                                  if not e.name.startswith(TMP_PREFIX) and e.is_file())
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise StoreError(f"cannot list {folder}: {exc.strerror or exc}") from None

        for name in await asyncio.to_thread(listing):
            yield prefix + name

    async def close(self) -> None:
        return None


# --- an S3-compatible bucket ----------------------------------------------------------------------

class S3Store:
    """A bucket (AWS S3, MinIO, Ceph RGW, R2, ...) through boto3, one client per process."""

    def __init__(self, url: StoreURL) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ModuleNotFoundError:
            raise FleetUsageError("an s3:// store needs boto3\n  fix: pip install "
                                  "'sdbatch[fleet]'") from None

        self.url = url
        self.shown = url.public()
        self.bucket = url.bucket
        self._prefix = f"{url.prefix}/" if url.prefix else ""
        endpoint = env_endpoint(url)
        region = url.region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(retries={"max_attempts": 5, "mode": "standard"},
                        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                        max_pool_connections=32,
                        s3={"addressing_style": "path"} if endpoint else None)
        kwargs: dict[str, Any] = {"region_name": region, "config": config}
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if url.access_key is not None and url.secret_key is not None:
            kwargs["aws_access_key_id"] = url.access_key.get_secret_value()
            kwargs["aws_secret_access_key"] = url.secret_key.get_secret_value()
        self._client = boto3.session.Session().client("s3", **kwargs)
        self._region = region

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """The choke point: one boto3 call in a thread, every failure mapped to StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return await asyncio.to_thread(fn, **kwargs)
        except NoCredentialsError:
            raise StoreError(f"{self.shown}: no S3 credentials\n  fix: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in this machine's "
                             "environment") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = exc.response.get("Error", {}).get("Message", "") or code
            hint = {"AccessDenied": "check the credentials' permissions on the bucket",
                    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
                    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
                    "NoSuchBucket": "create the bucket, or check its name"}.get(
                code, "check the store's URL and credentials")
            raise StoreError(f"{self.shown}: cannot {what}: {code} {message}\n  fix: {hint}") \
                from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.shown}: cannot {what}: {exc}\n  fix: check that the store "
                             "is up and the endpoint is right") from None

    async def check(self, *, create: bool = False) -> str | None:
        from botocore.exceptions import ClientError

        def head() -> int:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return 200
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    return 404
                raise

        if await self._call("reach the bucket", head) == 200:
            return None
        if not create:
            raise StoreError(f"{self.shown}: there is no bucket {self.bucket!r}\n  fix: create "
                             "it, or check the name")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        await self._call("create the bucket", self._client.create_bucket, **kwargs)
        return f"created bucket {self.bucket}"

    async def put(self, key: str, data: bytes) -> None:
        await self._call(f"write {key}", self._client.put_object, Bucket=self.bucket,
                         Key=self._key(key), Body=data, ContentType=_content_type(key))

    async def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def read() -> bytes | None:
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            with response["Body"] as body:
                return body.read()

        return await self._call(f"read {key}", read)

    async def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return bool(await self._call(f"look up {key}", head))

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix),
                                      "MaxKeys": LIST_PAGE}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(f"list {prefix}", self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents") or ():
                yield item["Key"][len(self._prefix):]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


def _content_type(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
            "gif": "image/gif", "json": "application/json"}.get(ext, "application/octet-stream")
