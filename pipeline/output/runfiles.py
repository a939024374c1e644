"""``run.json`` (status, counts, history) and ``job.json`` (the job as run, no credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pipeline import __version__
from pipeline.job.schema import JobSpec
from pipeline.output.atomic import output_error
from pipeline.output.layout import JOB_COPY, RUN_FILE, now_iso
from pipeline.output.store import OutputStore

HISTORY_KEPT = 50


def public_job(spec: JobSpec) -> dict[str, Any]:
    """The job as run, with no credentials: backends keep their URL, kind and limits only."""
    data = spec.model_dump(mode="json", exclude={"source_path", "base_dir", "content_sha256"})
    data["backends"] = [{"url": b.url, "name": b.name, "kind": b.kind, "workflow": b.workflow,
                         "concurrency": b.concurrency, "timeout_s": b.timeout_s}
                        for b in spec.backends]
    return data


def read_run(store: OutputStore) -> dict[str, Any]:
    try:
        data = orjson.loads((store.root / RUN_FILE).read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def write_run_files(store: OutputStore, spec: JobSpec, *, status: str, counts: dict[str, int],
                    backends: list[str], shard: tuple[int, int] | None,
                    per_backend: dict[str, Any] | None = None) -> None:
    previous = read_run(store)
    run: dict[str, Any] = {
        "sdbatch_version": __version__,
        "job": spec.source_path,
        "job_sha256": spec.content_sha256,
        "job_base_dir": spec.base_dir,
        "status": status,
        "started": previous.get("started") if status != "running" else now_iso(),
        "ended": None if status == "running" else now_iso(),
        "shard": list(shard) if shard else None,
        "backends": backends,
        "counts": counts,
        "per_backend": per_backend or {},
        "history": (previous.get("history") or [])[-HISTORY_KEPT:],
    }
    if status != "running":
        run["history"].append({k: run[k] for k in ("started", "ended", "status",
                                                    "job_sha256", "counts")})
    store.write_json(RUN_FILE, run)
    if status == "running":
        store.write_json(JOB_COPY, public_job(spec))


def load_run_job(out_dir: Path) -> JobSpec | None:
    """The job an output directory was made with (``job.json``), or None when it has none."""
    from pipeline.job.load import parse_job

    path = out_dir / JOB_COPY
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise output_error(exc, path) from exc
    base_dir = str(out_dir)
    try:
        run = orjson.loads((out_dir / RUN_FILE).read_bytes())
        if isinstance(run, dict) and isinstance(run.get("job_base_dir"), str):
            base_dir = run["job_base_dir"] or base_dir
    except (OSError, orjson.JSONDecodeError):
        pass
    return parse_job(raw, path=str(path), base_dir=base_dir)
