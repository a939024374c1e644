"""Preflight for ComfyUI backends: the same ``BackendInfo`` as ``pipeline.backends.preflight``.

The names come from ``/object_info/{Class}`` (the loaders' and the sampler's combo inputs, one
small request per class the workflow uses, one at a time) and the version from
``/system_stats``. ``BackendInfo.names`` holds every spelling that resolves on the server under
the rules of ``names`` (ComfyUI's own names, the A1111 names the table maps onto them, files by
their unambiguous stem), so ``judge`` finds a job's ``Euler a`` / ``tiny-a`` exactly where the
client would map them, and suggests real names for those it would refuse. Node classes the
workflow uses that the server lacks (custom nodes not installed) make the backend unusable.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

import aiohttp

from pipeline.backends.comfy.client import ComfyClient, ComfySetup
from pipeline.backends.comfy.names import Catalog, spellings
from pipeline.backends.comfy.workflow import Template
from pipeline.backends.preflight import KINDS, BackendInfo
from pipeline.errors import BackendError, HTTPStatusError
from pipeline.job.schema import BackendSpec, JobSpec


_INFO_FIELDS = frozenset(f.name for f in dataclasses.fields(BackendInfo))


def _info(label: str, **values: Any) -> BackendInfo:
    """A ``BackendInfo`` with the fields this version of it has (it is growing)."""
    return BackendInfo(label, **{k: v for k, v in values.items() if k in _INFO_FIELDS})


def missing_classes(catalog: Catalog, template: Template) -> list[str]:
    """Node classes of the workflow the server does not have (empty when unknown)."""
    if catalog.classes is None:
        return []
    used = sorted({node["class_type"] for node in template.graph.values()})
    if template.lora_anchor is not None:
        used.append("LoraLoader")
    return [c for c in dict.fromkeys(used) if c not in catalog.classes]


def backend_info(label: str, catalog: Catalog, template: Template | None = None) -> BackendInfo:
    """A reachable server's ``BackendInfo`` from its catalog."""
    names = {}
    shown = {}
    for kind in KINDS:
        listed = catalog.names(kind)
        if listed is None:
            continue
        names[kind], shown[kind] = spellings(kind, listed)
    server = f"ComfyUI {catalog.version}" if catalog.version else "ComfyUI"
    lacking = missing_classes(catalog, template) if template is not None else []
    if lacking:
        return _info(label, reachable=False, server=server, kind="comfyui",
                           version=catalog.version, names=names, shown=shown, error=f"{label}: the workflow uses node classes this ComfyUI server "
                                 f"does not have: {', '.join(lacking)} (install the custom "
                                 "nodes, or use another workflow)")
    return _info(label, reachable=True, server=server, kind="comfyui",
                       version=catalog.version, names=names, shown=shown)


async def inspect_backend(client: ComfyClient) -> BackendInfo:
    """Ask one ComfyUI server for its names (and keep them in the client for the run)."""
    label = client.label
    try:
        catalog = await client.catalog(refresh=True)
    except HTTPStatusError as exc:
        return _info(label, reachable=exc.status != 401, error=str(exc),
                           auth_rejected=exc.status == 401, kind="comfyui")
    except BackendError as exc:
        return _info(label, reachable=False, error=str(exc), kind="comfyui")
    return backend_info(label, catalog, client.template)


async def inspect_all(session: aiohttp.ClientSession, backends: Iterable[BackendSpec], *,
                      job: JobSpec | None = None,
                      setups: dict[str, ComfySetup] | None = None) -> list[BackendInfo]:
    """``BackendInfo`` for each ComfyUI backend, concurrently (``setups`` by backend label);
    ``job`` locates a relative workflow path (and is checked against the workflow)."""
    clients = [ComfyClient(session, b, (setups or {}).get(b.label), job=job) for b in backends]
    return list(await asyncio.gather(*(inspect_backend(c) for c in clients)))
