"""Options and helpers several subcommands share: job selection, backends, shards, redaction."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

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
    return index, total


def resolve_backends(spec: JobSpec, urls: list[str], concurrency: int | None,
                     subpath: str = "") -> list[BackendSpec]:
    from pydantic import ValidationError

    if concurrency is not None and concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    prefix = "/" + subpath.strip("/") if subpath.strip("/") else ""
    if prefix and not all(part and part not in (".", "..") for part in prefix[1:].split("/")):
        raise UsageError(f"--subpath {subpath!r} is not a URL path like /sd")
    if urls:
        backends = []
        for url in urls:
            try:
                backends.append(BackendSpec.model_validate(
                    {"url": url, "concurrency": concurrency or 1}))
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                raise UsageError(f"--backend {redact(url)}: {redact(msg)}") from exc
    else:
        backends = list(spec.backends)
        if concurrency is not None:
            backends = [b.model_copy(update={"concurrency": concurrency}) for b in backends]
    if prefix:
        if not backends:
            raise UsageError("--subpath needs backends (in the job or with --backend)")
        backends = [b.model_copy(update={"url": b.url + prefix}) for b in backends]
    return backends


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:pass@host`` URL in it masked."""
    import re

    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s:@]*):([^/\s@]*)@", r"\1\2:***@", text)


def resume_command(argv: list[str]) -> str:
    return "sdbatch " + " ".join(shlex.quote(redact(a)) for a in argv)


def positive_float(name: str) -> Any:
    """An argparse type: a finite number >= 0, with a message naming the flag."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} needs a number, not {text!r}") from exc
        if not (0 <= value < float("inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, not {text}")
        return value
    return parse


def out_dir_for(spec: JobSpec, out: str | None) -> Path:
    from pipeline.run.start import default_out_dir

    return Path(out) if out else default_out_dir(spec)
