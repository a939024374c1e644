"""One client per backend, chosen by the backend's ``kind``."""

from __future__ import annotations

from typing import Any

import aiohttp

from pipeline.backends.base import Backend
from pipeline.job.schema import BackendSpec, JobSpec


def make_client(session: aiohttp.ClientSession, spec: BackendSpec, setup: Any = None, *,
                job: JobSpec | None = None) -> Backend:
    if spec.kind == "comfyui":
        from pipeline.backends.comfy.client import ComfyClient

        return ComfyClient(session, spec, setup, job=job)
    from pipeline.backends.webui.client import WebUIClient

    return WebUIClient(session, spec, setup)
