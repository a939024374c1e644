"""The output directory's layout: the names sdbatch writes, and the one path-safety rule.

    OUT/images/<name>.<ext>      image bytes exactly as the backend sent them
    OUT/images/<name>.json       sidecar: the image's manifest record
    OUT/manifest.jsonl           one record per saved image, appended after the files exist
    OUT/failures.jsonl           one record per variant that failed for good in the last run
    OUT/run.json                 job hash, sdbatch version, start/end, counts, status
    OUT/job.json                 the job as run, without credentials (for grid/reproduce)

Every name sdbatch writes in progress starts with ``TMP_PREFIX``; nothing else is ever cleaned up.
"""

from __future__ import annotations

from datetime import datetime, timezone

TMP_PREFIX = ".tmp-"
IMAGES_DIR = "images"
MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
RUN_FILE = "run.json"
JOB_COPY = "job.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def inside(relative: str) -> bool:
    """True when the relative path ``relative`` cannot leave the directory it is relative to
    (not absolute, no ``..`` part, no NUL). String checks only: it runs once per record."""
    return (not relative.startswith("/") and "\x00" not in relative
            and ".." not in relative.split("/"))
