"""One run per output directory: an exclusive ``flock`` on ``OUT/.sdbatch.lock``.

The lock file holds the pid of the run that holds it, so a second run can say who. The kernel
drops the lock when the holder dies (kill -9 included): there is no stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from pipeline.errors import OutputInUse
from pipeline.output.atomic import output_error

LOCK_FILE = ".sdbatch.lock"


class DirectoryLock:
    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, wait_s: float = 0.0) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise output_error(exc, self.path) from exc
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"process {holder}" if holder else "another sdbatch run"
                    raise OutputInUse(
                        f"{self.path.parent} is in use by {who}: two runs must never write one "
                        "output directory\n  fix: wait for it to finish (or stop it), or choose "
                        "another --out") from exc
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
