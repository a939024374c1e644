"""The one atomic-write helper: every file sdbatch writes goes through ``replace_file``."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import OutputError
from pipeline.output.layout import TMP_PREFIX


def output_error(exc: OSError, path: Path | str) -> OutputError:
    reason = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some disk space",
            errno.EACCES: "fix the permissions",
            errno.EPERM: "fix the permissions",
            errno.EROFS: "choose a writable --out"}.get(exc.errno or 0, "check the path")
    return OutputError(f"cannot write {path}: {reason}. {hint.capitalize()}, then rerun the same "
                       "command: finished images are kept and the run resumes")


def replace_file(path: Path, chunks: bytes | Iterable[bytes], *, fsync: bool = True) -> None:
    """Write ``path`` atomically: a ``.tmp-`` name beside it, (fsync,) rename over it.

    A failure leaves the old file (if any) and no temporary file; it raises ``OutputError``.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                handle.write(chunk)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from exc
