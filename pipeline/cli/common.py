"""Options and helpers several subcommands share: job selection, backends, shards, redaction."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from pipeline.errors import UsageError
from pipeline.job.schema import BackendSpec, JobSpec


def add_job_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job file (YAML or JSON)")
    p.add_argument("--backend", action="append", default=[], metavar="URL",
                   help="a WebUI backend, e.g. http://127.0.0.1:7861 or http://user:pass@host:7861 "
                        "(repeat for several; replaces the job file's backends)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="requests in flight per backend (default: the job's, else 1; the WebUI "
                        "runs one job at a time, so 1-2 is right)")
    p.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint shares of the "
                   "variants (split by id: N machines can share one sweep without talking)")
    p.add_argument("--subpath", metavar="PREFIX", default="",
                   help="URL path prefix in front of /sdapi/v1 on every backend (a WebUI behind a "
                        "reverse proxy at e.g. /sd)")


MAX_SHARDS = 1_000_000
MAX_CONCURRENCY = 64  # as a job file's backends allow


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index_s, total_s = text.split("/")
        index, total = int(index_s), int(total_s)
    except ValueError as exc:
        raise UsageError(f"--shard {text!r} is not I/N\n  fix: e.g. --shard 1/4 for the first "
                         "of four shares") from exc
    if not (1 <= index <= total):
        raise UsageError(f"--shard {text!r}: I must be between 1 and N\n  fix: e.g. --shard 2/4")
    if total > MAX_SHARDS:
        raise UsageError(f"--shard {text!r}: at most {MAX_SHARDS:,} shares\n  fix: e.g. "
                         "--shard 2/4")
    return index, total


def backend_specs(urls: list[str], concurrency: int | None = None, *,
                  flag: str = "--backend") -> list[BackendSpec]:
    """``--backend URL`` values -> backends; a bad one is a ``UsageError`` whose message shows
    no password (``user:p%40ss@`` and the ``p@ss`` it means alike)."""
    from pydantic import ValidationError

    from pipeline.job.backends import check_backend_labels
    from pipeline.job.masking import job_secrets
    from pipeline.job.values import FieldValueError

    check_concurrency(concurrency)
    secrets = job_secrets({"backends": list(urls)})
    backends = []
    for url in urls:
        try:
            backends.append(BackendSpec.model_validate(
                {"url": url, "concurrency": concurrency or 1}))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            cause = (error.get("ctx") or {}).get("error")
            msg = cause.message if isinstance(cause, FieldValueError) else \
                error["msg"].removeprefix("Value error, ")
            hint = f"\n  fix: {cause.hint}" if isinstance(cause, FieldValueError) and \
                cause.hint else ""
            raise UsageError(redact(f"{flag} {url}: {msg}{hint}", secrets)) from None
    try:
        check_backend_labels(backends)
    except FieldValueError as exc:
        hint = f"\n  fix: {exc.hint}" if exc.hint else ""
        raise UsageError(redact(f"{flag}: {exc.message}{hint}", secrets)) from None
    return backends


def check_concurrency(concurrency: int | None) -> None:
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {concurrency}\n  fix: e.g. "
                         "--concurrency 1 (a WebUI runs one job at a time)")
    if concurrency is not None and concurrency > MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be at most {MAX_CONCURRENCY}, not {concurrency}"
                         "\n  fix: 1-2 per WebUI backend is right (it runs one job at a time); "
                         "add backends for more throughput")


def resolve_backends(spec: JobSpec, urls: list[str], concurrency: int | None,
                     subpath: str = "") -> list[BackendSpec]:
    check_concurrency(concurrency)
    prefix = "/" + subpath.strip("/") if subpath.strip("/") else ""
    parts = prefix[1:].split("/")
    if prefix and (not all(part and part not in (".", "..") for part in parts)
                   or any(c in prefix for c in "?#\\") or _CONTROL.search(prefix)):
        raise UsageError(f"--subpath {subpath!r} is not a URL path like /sd")
    if urls:
        backends = backend_specs(urls, concurrency)
    else:
        backends = list(spec.backends)
        if concurrency is not None:
            backends = [b.model_copy(update={"concurrency": concurrency}) for b in backends]
    if prefix:
        if not backends:
            raise UsageError("--subpath needs backends (in the job or with --backend)")
        backends = [b.model_copy(update={"url": b.url + prefix}) for b in backends]
    return backends


_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*)://([^\s'\"<>]*)")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL's credentials masked (``mask_url``: the user info, and a "port"
    that is not a number, as ``http://user:secret`` without a host has) and every known secret
    (as written and percent-decoded: ``p%40ss`` and ``p@ss``) replaced by ``***``."""
    from urllib.parse import unquote

    text = _URL.sub(_mask_match, text)
    for secret in sorted({s for x in secrets if len(x) >= 3 for s in (x, unquote(x))},
                         key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _mask_match(match: re.Match[str]) -> str:
    from pipeline.job.masking import mask_url

    scheme, rest = match.group(1), match.group(2)
    kept = rest.rstrip(".,;:)!")  # the sentence's punctuation, not the URL's
    rest, after = kept, rest[len(kept):]
    at = rest.rfind("@")  # the last one: a password may hold an '@' or '/' not percent-encoded
    start = at + 1 if at >= 0 else 0
    cut = [i for i in (rest.find(c, start) for c in "/?#") if i >= 0]
    end = min(cut) if cut else len(rest)
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority and ":" not in authority:
        return match.group(0)
    userinfo, at_sign, host = authority.rpartition("@")
    shown = mask_url(f"{scheme}://{host}")  # a "port" that is not a number is hidden too
    if shown == "the URL":
        shown = f"{scheme}://***"
    if at_sign:
        shown = shown.replace("://", "://USER:PASS@", 1)
    return shown + tail + after


def resume_command(argv: list[str]) -> str:
    return "sdbatch " + " ".join(shlex.quote(redact(a)) for a in argv)


MAX_SECONDS = 10_000_000.0  # ~116 days: longer is a typo (and overflows timers)


def positive_float(name: str, *, above_zero: bool = False) -> Any:
    """An argparse type: a finite number of seconds >= 0 (> 0 with ``above_zero``), at most
    ``MAX_SECONDS``, with a message naming the flag."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} needs a number, not {text!r}") from exc
        low = "> 0" if above_zero else ">= 0"
        if not (0 <= value <= MAX_SECONDS) or (above_zero and value == 0):
            raise argparse.ArgumentTypeError(f"{name} must be a number {low} and at most "
                                             f"{MAX_SECONDS:,.0f}, not {text}")
        return value
    return parse


def out_dir_for(spec: JobSpec, out: str | None, *, writable: bool = False) -> Path:
    """The output directory (``-o``, else the job's). ``writable``: a directory that cannot be
    made or written is a ``UsageError`` now (exit 2), before any backend is asked."""
    from pipeline.run.start import default_out_dir

    path = Path(out) if out else default_out_dir(spec)
    if writable:
        check_writable_dir(path, flag="--out" if out else "the job's output directory")
    return path


def check_writable_dir(path: Path, *, flag: str = "--out") -> None:
    """Can ``path`` be an output directory? It is a directory we may write, or it can be
    created; nothing is left behind by asking."""
    import os

    def refuse(why: str) -> NoReturn:
        raise UsageError(f"cannot write the output directory {path} ({flag}): {why}\n  fix: "
                         "choose a directory you can write, e.g. --out out/<name>")

    if path.exists() and not path.is_dir():
        refuse("is a file, not a directory")
    missing: list[Path] = []
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            refuse(f"{existing} is a symlink to nothing")
        missing.append(existing)
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        refuse(f"{existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        refuse(f"{existing} is not writable (permission denied or a read-only file system)")
    made: list[Path] = []
    try:
        for folder in reversed(missing):  # create what is missing, then take it away again
            folder.mkdir()
            made.append(folder)
    except OSError as exc:
        refuse(f"cannot be created ({os.strerror(exc.errno) if exc.errno else exc})")
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass


class StopSignals:
    """SIGINT and SIGTERM for a command that opens a run.

    Until ``attach(run)`` (the preflight: nothing is written yet) a signal cancels the task that
    installed these handlers at once; ``early`` then names the signal, and the caller exits 130
    with ``early_message()``. Once attached, the first signal asks the run to stop gracefully
    (in-flight work finishes within the grace period) and a second one stops it at once.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._run: Any = None
        self.presses = 0
        self.early: str | None = None

    def __enter__(self) -> StopSignals:
        import signal

        for name in self.SIGNALS:
            self._loop.add_signal_handler(getattr(signal, name), self._on_signal, name)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for name in self.SIGNALS:
            self._loop.remove_signal_handler(getattr(signal, name))

    def attach(self, run: Any) -> None:
        self._run = run

    def _on_signal(self, name: str) -> None:
        self.presses += 1
        if self._run is not None:
            self._run.request_stop(f"{name} received", hard=self.presses > 1)
        elif self.early is None and self._task is not None:
            self.early = name
            self._task.cancel()

    def early_message(self) -> str:
        return (f"{self.early} received while the backends were being asked what they have "
                "(preflight): stopped before anything was written; run the same command again")


def run_stoppable(coro: Any) -> Any:
    """``asyncio.run(coro)`` for a command that writes nothing (``check``): SIGINT or SIGTERM
    stops it at once, as ``KeyboardInterrupt`` (exit 130, "interrupted"), never a kill."""
    import asyncio

    stopped = object()

    async def main() -> Any:
        with StopSignals() as signals:
            try:
                return await coro
            except asyncio.CancelledError:
                if signals.early is None:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return stopped

    result = asyncio.run(main())
    if result is stopped:
        raise KeyboardInterrupt
    return result
