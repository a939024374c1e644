"""The ComfyUI client: one backend, one shared ``aiohttp.ClientSession`` per run.

One variant = one prompt:
1. fill the workflow template (``workflow.fill``) with the variant's values, names mapped to the
   server's (``names.Names``), the seed chosen here (the server never picks one), LoRA tags cut
   from the prompt and chained in as ``LoraLoader`` nodes;
2. open ``/ws?clientId=C`` (so the server routes this prompt's messages to us), then
   ``POST /prompt {prompt, client_id: C, prompt_id: P}``, where ``P`` is a UUID derived from
   the variant id and the attempt number;
3. wait for ``executing {node: null}`` on the socket, checking ``/history/P`` every few seconds
   anyway (or only polling, with back-off, when there is no socket). ``{}`` from history means
   queued, running or unknown: ``/queue`` tells which, and a prompt in neither is lost (the
   server restarted): ``PromptLost``, retried;
4. read the entry (``protocol.read_entry``), fetch each image with ``/view``, bytes kept as sent
   (ComfyUI's ``prompt``/``workflow`` PNG chunks stay), and build A1111-style info (``reply``).

Before the first POST of a variant, ``/history/P`` and ``/queue`` are asked for ``P``: a run
killed and resumed finds the prompt it already submitted (same variant, same derived id, same
graph) and takes that result or waits for it, instead of generating it twice.

Every aiohttp and OS exception is mapped into the ``BackendError`` tree in ``transport`` (the
socket only ever falls back to polling). Timeouts are finite; reads are capped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from pipeline.backends.base import Probe, Reply
from pipeline.backends.comfy.names import Catalog, Names, input_choices
from pipeline.backends.comfy.protocol import (ExecutionFailed, Interrupted, PromptLost,
                                              WorkflowRejected, bare_graph,
                                              execution_error_text, image_refs, queue_ids,
                                              read_entry, rejection_text)
from pipeline.backends.comfy.reply import build_info, build_params, model_label
from pipeline.backends.comfy.transport import (LIST_TIMEOUT_S, MAX_JSON_BYTES, ComfyHTTP,
                                               ws_wait)
from pipeline.backends.comfy.payload import check_job, requested_values
from pipeline.backends.comfy.workflow import (Filled, LoraUse, Template, default_workflow, fill,
                                              load_workflow)
from pipeline.errors import (BackendError, BadResponseError, HTTPStatusError, JobError,
                             RequestTimeout, TransportError)
from pipeline.imagebytes import sniff_format
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.model import Image, Variant

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT_S = 60.0
CANCEL_TIMEOUT_S = 5.0
MAX_POLL_FAILURES = 3
SEED_MAX = 2**64 - 1
PROMPT_ID_NAMESPACE = uuid.UUID("5d1b7c0e-2f4a-4f0e-9a51-3c0de5db7a7c")
CATALOG_CLASSES = ("CheckpointLoaderSimple", "LoraLoader", "KSampler", "VAELoader")


@dataclass(frozen=True, slots=True)
class ComfySetup:
    """What the run knows before the client starts (all optional).

    ``template``: the loaded workflow (else the backend's ``workflow``, or the job's, is read,
    relative to the job file's folder; with neither, the built-in SD1.5 graph); ``catalog``:
    the server's names from preflight (else fetched once, on the first generation).
    """

    template: Template | None = None
    catalog: Catalog | None = None
    use_websocket: bool = True
    ws_check_s: float = 5.0  # with a socket: check /history this often anyway
    poll_min_s: float = 0.05  # without one: poll from this interval ...
    poll_max_s: float = 1.0  # ... backing off to this
    adopt: bool = True  # take over a prompt a killed run already submitted


def derive_seed(variant_id: str) -> int:
    """The seed of a variant that asked for -1: stable, from its id, below 2**32 like A1111's."""
    digest = hashlib.sha256(f"{variant_id}:seed".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def prompt_id_for(variant_id: str, attempt: int) -> str:
    return str(uuid.uuid5(PROMPT_ID_NAMESPACE, f"{variant_id}/{attempt}"))


def image_cap_bytes(values: dict[str, Any]) -> int:
    """A generous ceiling for one image file: raw RGBA at 4x the latent size, plus slack."""
    width, height = values.get("width"), values.get("height")
    pixels = width * height if isinstance(width, int) and isinstance(height, int) and \
        0 < width <= 16384 and 0 < height <= 16384 else 1024 * 1024
    return 32 * 1024 * 1024 + pixels * 4 * 16 * 3 // 2


def template_for(spec: BackendSpec, job: JobSpec | None = None) -> Template:
    """The workflow of a ComfyUI backend: its own, else the job's, else the built-in one."""
    name = spec.workflow or (job.workflow if job is not None else None)
    if not name:
        return default_workflow()
    path = Path(name).expanduser()
    if not path.is_absolute() and job is not None and job.base_dir:
        path = Path(job.base_dir) / path
    return load_workflow(path)


class ComfyClient:
    """Talks to one ComfyUI server; implements ``pipeline.backends.base.Backend``."""

    def __init__(self, session: aiohttp.ClientSession, spec: BackendSpec,
                 setup: ComfySetup | None = None, *, job: JobSpec | None = None) -> None:
        """``JobError`` when the workflow cannot be read or lacks a node ``job`` needs."""
        self.spec = spec
        self.label = spec.label
        self.setup = setup or ComfySetup()
        self.template = self.setup.template or template_for(spec, job)
        if job is not None:
            check_job(self.template, job)
        self._http = ComfyHTTP(session, spec)
        self._http.ws_supported = self.setup.use_websocket
        self._catalog = self.setup.catalog
        self._catalog_lock = asyncio.Lock()
        self._attempts: dict[str, int] = {}  # variants not yet done on this client
        self._in_flight: set[str] = set()
        self._client_prefix = f"sdbatch-{uuid.uuid4().hex[:12]}"

    # --- the Backend interface ----------------------------------------------------------------

    async def probe(self) -> Probe:
        stats = await self.get_json("/system_stats", timeout_s=min(30.0, self.spec.timeout_s))
        system = stats.get("system") if isinstance(stats, dict) else None
        if not isinstance(system, dict):
            raise BadResponseError(f"{self.label}: /system_stats has no 'system' object",
                                   backend=self.label)
        return Probe(loaded_model=None, details={"server": "ComfyUI",
                                                 "version": system.get("comfyui_version")})

    async def generate(self, variant: Variant) -> Reply:
        """Run one variant as one prompt; raises ``BackendError``."""
        started = time.monotonic()
        attempt = self._attempts.get(variant.id, 0) + 1
        self._attempts[variant.id] = attempt
        reply = await self._generate(variant, attempt, started)
        self._attempts.pop(variant.id, None)
        return reply

    async def interrupt(self) -> None:
        """Stop this client's prompts only: unqueue the pending ones, interrupt the running one."""
        for prompt_id in list(self._in_flight):
            await self._cancel(prompt_id)

    async def submitted_prompts(self, *, history_items: int = 64) -> frozenset[str]:
        """Prompt ids the server is running, holds pending, or finished lately (the newest
        ``history_items`` of its history): for a resumed run to send a variant whose
        ``prompt_id_for(variant.id, 1)`` is here to this backend, which then adopts it."""
        ids = set(queue_ids(await self.get_json("/queue")))
        history = await self.get_json(f"/history?max_items={int(history_items)}")
        if isinstance(history, dict):
            ids.update(str(k) for k in history)
        return frozenset(ids)

    # --- one generation -----------------------------------------------------------------------

    async def _generate(self, variant: Variant, attempt: int, started: float) -> Reply:
        catalog = await self.catalog()
        filled, seed = self.build_graph(variant, attempt, catalog)
        prompt_id, entry, adopted = await self._execute(prompt_id_for(variant.id, attempt),
                                                        filled, attempt,
                                                        started + self.spec.timeout_s)
        outcome = read_entry(entry)
        where = f"{self.label}: prompt {prompt_id}"
        if outcome.status == "interrupted":
            raise Interrupted(f"{where} was interrupted (nothing saved); it will be redone",
                              backend=self.label)
        if outcome.status == "error":
            error = outcome.error or {}
            raise ExecutionFailed(f"{where} failed: {execution_error_text(outcome.error)}",
                                  backend=self.label, node=error.get("node_id"),
                                  exception_type=error.get("exception_type"))
        if outcome.status != "success":
            raise BadResponseError(f"{where}: history entry has no outcome", backend=self.label)
        images, refs = await self._images(variant, filled, outcome.outputs, where)
        generations = sum(1 for i in images if i.kind == "generation")
        cached = [ref["node"] in outcome.cached_nodes for ref in refs]
        comfy = {
            "prompt_id": prompt_id, "version": catalog.version, "adopted": adopted,
            "workflow_sha256": self.template.sha256,
            "cached_nodes": sorted(outcome.cached_nodes),
            "fully_cached": set(filled.graph) <= outcome.cached_nodes,
            "server_time_s": outcome.server_time_s, "outputs": refs,
        }
        info = build_info(prompt=variant.prompt, negative=variant.negative_prompt, filled=filled,
                          seed=seed, generations=generations, cached=cached,
                          version=catalog.version, comfy=comfy)
        labelled = tuple(
            Image(index=i.index, data=i.data, format=i.format, kind=i.kind,
                  seed=seed if i.kind == "generation" else None, prompt=variant.prompt,
                  negative_prompt=variant.negative_prompt,
                  infotext=info["infotexts"][i.index] if i.kind == "generation" else None)
            for i in images)
        params = build_params(variant.payload, self.template, filled, catalog.version, prompt_id)
        return Reply(labelled, info, model_label(filled.values), params,
                     time.monotonic() - started)

    def build_graph(self, variant: Variant, attempt: int, catalog: Catalog
                    ) -> tuple[Filled, int]:
        """The graph for one attempt at a variant, and its seed; ``WorkflowRejected`` (never
        retried) when the job asks for something this workflow or server cannot do."""
        template = self.template
        names = Names(catalog, label=self.label)
        try:
            values, tags = requested_values(variant.payload, template)
            seed = variant.seed if variant.seed >= 0 else derive_seed(variant.id)
            if seed > SEED_MAX:
                raise JobError(f"seed {seed} is above ComfyUI's largest ({SEED_MAX})")
            values["seed"] = seed
            if values.get("sampler"):
                values["sampler"], scheduler = names.sampler(str(values["sampler"]),
                                                             values.get("scheduler"))
                if scheduler:
                    values["scheduler"] = scheduler
            elif values.get("scheduler"):
                values["scheduler"] = names.scheduler(str(values["scheduler"]))
            if values.get("checkpoint"):
                values["checkpoint"] = names.file("checkpoint", str(values["checkpoint"]))
            loras = [LoraUse(names.file("lora", name), strength_model=unet, strength_clip=te)
                     for name, te, unet in tags]
            for slot, neutral in (("negative_prompt", ""), ("batch_size", 1)):
                if not template.has(slot) and values.get(slot, neutral) in (neutral, None):
                    values.pop(slot, None)
            suffix = variant.id if attempt == 1 else f"{variant.id}_a{attempt}"
            filled = fill(template, values, loras, prefix_suffix=suffix)
        except JobError as exc:
            raise WorkflowRejected(f"{self.label}: {exc}", backend=self.label) from exc
        return filled, seed

    async def _execute(self, prompt_id: str, filled: Filled, attempt: int, deadline: float
                       ) -> tuple[str, dict[str, Any], bool]:
        """(prompt id, history entry, adopted?): submit and wait, or take over an earlier one."""
        self._in_flight.add(prompt_id)
        used = prompt_id
        ws = None
        try:
            if attempt == 1 and self.setup.adopt:
                found = await self._find_submitted(prompt_id, filled.graph)
                if isinstance(found, dict):
                    log.info("%s: prompt %s already ran (an earlier run): taking its result",
                             self.label, prompt_id)
                    return prompt_id, found, True
                if isinstance(found, int):
                    log.info("%s: prompt %s is already queued (an earlier run): waiting for it",
                             self.label, prompt_id)
                    return prompt_id, await self._wait(prompt_id, found, None, deadline), True
            client_id = f"{self._client_prefix}-{prompt_id[:8]}"
            ws = await self._http.open_ws(client_id) if self._http.ws_supported else None
            try:
                used, number = await self._submit(prompt_id, client_id, filled.graph)
            except (TransportError, RequestTimeout) as exc:
                # No answer, but the server may have queued it: our own id tells.
                found = await self._find_after_lost_answer(prompt_id, filled.graph, exc)
                if isinstance(found, dict):
                    return prompt_id, found, False
                used, number = prompt_id, found
            self._in_flight.add(used)
            return used, await self._wait(used, number, ws, deadline), False
        finally:
            self._in_flight.discard(prompt_id)
            self._in_flight.discard(used)
            if ws is not None:
                await ws.close()

    async def _find_after_lost_answer(self, prompt_id: str, graph: dict[str, Any],
                                      exc: BackendError) -> dict[str, Any] | int:
        try:
            found = await self._find_submitted(prompt_id, graph)
        except BackendError:
            found = None
        if found is None:
            raise exc
        log.info("%s: POST /prompt got no answer, but prompt %s was queued: waiting for it",
                 self.label, prompt_id)
        return found

    async def _find_submitted(self, prompt_id: str, graph: dict[str, Any]
                              ) -> dict[str, Any] | int | None:
        """A finished entry with our graph, a queue number (ours, still queued), or None."""
        entry = await self._history_entry(prompt_id, None)
        if entry is not None:
            outcome = read_entry(entry)
            if outcome.status == "success" and outcome.graph is not None and \
                    bare_graph(outcome.graph) == bare_graph(graph):
                return entry
        queue = await self.get_json("/queue")
        for key in ("queue_running", "queue_pending"):
            for item in (queue.get(key) if isinstance(queue, dict) else None) or []:
                if isinstance(item, list) and len(item) > 2 and item[1] == prompt_id and \
                        isinstance(item[2], dict) and bare_graph(item[2]) == bare_graph(graph):
                    return item[0] if isinstance(item[0], int) else -1
        return None

    async def _submit(self, prompt_id: str, client_id: str, graph: dict[str, Any]
                      ) -> tuple[str, int | None]:
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        if self.template.extra_pnginfo:
            body["extra_data"] = {"extra_pnginfo": self.template.extra_pnginfo}
        status, raw = await self._http.request("POST", "/prompt", payload=body,
                                          timeout_s=min(SUBMIT_TIMEOUT_S, self.spec.timeout_s),
                                          cap_bytes=MAX_JSON_BYTES, ok_statuses=(400,))
        data = self._http.parse(raw, "/prompt", status)
        if status == 400:
            raise WorkflowRejected(f"{self.label} refused the workflow: "
                                   f"{rejection_text(data, graph)}", backend=self.label)
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise BadResponseError(f"{self.label}: POST /prompt answered without a prompt_id",
                                   backend=self.label)
        used = data["prompt_id"]  # servers that ignore our id make their own
        if data.get("node_errors"):
            await self._cancel(used)
            raise WorkflowRejected(
                f"{self.label} accepted the workflow only in part (the other outputs would run "
                f"alone): {rejection_text({'node_errors': data['node_errors']}, graph)}",
                backend=self.label, http_status=200)
        number = data.get("number")
        return used, number if isinstance(number, int) else None

    async def _wait(self, prompt_id: str, number: int | None,
                    ws: aiohttp.ClientWebSocketResponse | None, deadline: float
                    ) -> dict[str, Any]:
        """The prompt's history entry once it has one; raises on timeout or loss."""
        delay_s = self.setup.poll_min_s
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._cancel(prompt_id)
                raise RequestTimeout(f"{self.label}: prompt {prompt_id} not done within "
                                     f"{self.spec.timeout_s:g} s (raise timeout_s for slow "
                                     "generations or long queues)", backend=self.label)
            if ws is not None and not ws.closed:
                if await ws_wait(ws, prompt_id, min(self.setup.ws_check_s, remaining)) \
                        != "timeout":
                    ws = None  # done (history follows at once) or closed: poll from here on
            else:
                await asyncio.sleep(min(delay_s, remaining))
                delay_s = min(delay_s * 1.5, self.setup.poll_max_s)
            try:
                entry = await self._history_entry(prompt_id, number)
                if entry is None:
                    if prompt_id in queue_ids(await self.get_json("/queue")):
                        failures = 0
                        continue
                    entry = await self._history_entry(prompt_id, number)  # done in between?
                if entry is None:
                    raise PromptLost(f"{self.label}: prompt {prompt_id} is in neither the queue "
                                     "nor the history (the server restarted or dropped it); "
                                     "it will be redone", backend=self.label)
                if read_entry(entry).status == "running":
                    continue
                return entry
            except PromptLost:
                raise
            except (TransportError, RequestTimeout):
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise

    async def _history_entry(self, prompt_id: str, number: int | None) -> dict[str, Any] | None:
        data = await self.get_json(f"/history/{quote(prompt_id, safe='')}")
        if not isinstance(data, dict):
            raise BadResponseError(f"{self.label}: /history did not answer an object",
                                   backend=self.label)
        entry = data.get(prompt_id)
        if not isinstance(entry, dict):
            return None
        if number is not None and number >= 0 and read_entry(entry).number not in (None, number):
            return None  # an earlier run under the same id; ours has not finished
        return entry

    async def _images(self, variant: Variant, filled: Filled, outputs: dict[str, Any],
                      where: str) -> tuple[list[Image], list[dict[str, Any]]]:
        if not filled.outputs:
            raise WorkflowRejected(f"{self.label}: the workflow has no output node",
                                   backend=self.label)
        expected = filled.values.get("batch_size")
        expected = expected if isinstance(expected, int) and expected > 0 else 1
        primary = image_refs(outputs, filled.outputs[0])
        if len(primary) < expected:
            raise BadResponseError(f"{where}: output node {filled.outputs[0]} has "
                                   f"{len(primary)} of {expected} images", backend=self.label)
        listed = [(filled.outputs[0], ref, n < expected) for n, ref in enumerate(primary)]
        for node in filled.outputs[1:]:
            listed += [(node, ref, False) for ref in image_refs(outputs, node)]
        cap = image_cap_bytes(filled.values)
        images: list[Image] = []
        refs: list[dict[str, Any]] = []
        extras = 0
        for node, ref, generation in listed:
            data = await self._view(ref, cap)
            fmt = sniff_format(data)
            if fmt is None:
                raise BadResponseError(f"{where}: /view of {ref['filename']} is not an image "
                                       f"(starts {data[:8]!r})", backend=self.label)
            index = len(images) if generation else expected + extras
            extras += 0 if generation else 1
            images.append(Image(index=index, data=data, format=fmt,
                                kind="generation" if generation else "extra"))
            refs.append({"node": node, **ref})
        return images, refs

    async def _view(self, ref: dict[str, str], cap_bytes: int) -> bytes:
        try:
            _, body = await self._http.request("GET", "/view", params=ref,
                                          timeout_s=LIST_TIMEOUT_S * 4, cap_bytes=cap_bytes)
        except HTTPStatusError as exc:
            if exc.status != 404:
                raise
            # A cached result points at an earlier run's file, which may have been deleted; the
            # next attempt gets another filename_prefix, so its SaveImage writes it again.
            raise BadResponseError(f"{self.label}: /view has no {ref['subfolder']}/"
                                   f"{ref['filename']} (deleted since an earlier run?); it will "
                                   "be rendered again", backend=self.label) from exc
        return body

    async def _cancel(self, prompt_id: str) -> None:
        """Best effort: unqueue it if pending, interrupt it if running (only ours, by id)."""
        try:
            queue = await self.get_json("/queue", timeout_s=CANCEL_TIMEOUT_S)
            running = {item[1] for item in (queue.get("queue_running") or [])
                       if isinstance(item, list) and len(item) > 1} \
                if isinstance(queue, dict) else set()
            await self.post_json("/queue", {"delete": [prompt_id]}, timeout_s=CANCEL_TIMEOUT_S)
            if prompt_id in running:  # older servers ignore the id: interrupt only when it is ours
                await self.post_json("/interrupt", {"prompt_id": prompt_id},
                                     timeout_s=CANCEL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - best effort, never raises
            log.warning("%s: could not cancel prompt %s: %s", self.label, prompt_id, exc)

    # --- the server's names -------------------------------------------------------------------

    async def catalog(self, *, refresh: bool = False) -> Catalog:
        """The server's checkpoint, LoRA, sampler, scheduler and VAE names, and its version."""
        async with self._catalog_lock:
            if self._catalog is None or refresh:
                self._catalog = await self._fetch_catalog()
            return self._catalog

    async def _fetch_catalog(self) -> Catalog:
        template = self.template
        wanted = dict.fromkeys([*CATALOG_CLASSES,
                                *sorted({n["class_type"] for n in template.graph.values()})])
        infos: dict[str, Any] = {}
        for cls in wanted:  # one at a time: the per-host limit holds for these GETs too
            try:
                data = await self.get_json(f"/object_info/{quote(cls, safe='')}")
            except HTTPStatusError as exc:
                if exc.status == 404:
                    continue
                raise
            if isinstance(data, dict) and isinstance(data.get(cls), dict):
                infos[cls] = data[cls]

        def choices(slot: str, default_cls: str, field: str) -> tuple[str, ...] | None:
            places = template.places.get(slot) or ()
            for place in places:
                cls = template.graph[place.node]["class_type"]
                found = input_choices(infos.get(cls), place.field)
                if found is not None:
                    return tuple(found)
            found = input_choices(infos.get(default_cls), field)
            return tuple(found) if found is not None else None

        version = None
        try:
            stats = await self.get_json("/system_stats")
            system = stats.get("system") if isinstance(stats, dict) else None
            if isinstance(system, dict) and system.get("comfyui_version"):
                version = str(system["comfyui_version"])
        except HTTPStatusError:
            pass
        return Catalog(
            checkpoint=choices("checkpoint", "CheckpointLoaderSimple", "ckpt_name"),
            lora=tuple(c) if (c := input_choices(infos.get("LoraLoader"), "lora_name"))
            is not None else None,
            sampler=choices("sampler", "KSampler", "sampler_name"),
            scheduler=choices("scheduler", "KSampler", "scheduler"),
            vae=tuple(c) if (c := input_choices(infos.get("VAELoader"), "vae_name"))
            is not None else None,
            version=version, classes=frozenset(infos))

    # --- HTTP ---------------------------------------------------------------------------------

    # --- HTTP ---------------------------------------------------------------------------------

    async def get_json(self, path: str, *, timeout_s: float = LIST_TIMEOUT_S) -> Any:
        return await self._http.get_json(path, timeout_s=timeout_s)

    async def post_json(self, path: str, payload: dict[str, Any], *,
                        timeout_s: float = LIST_TIMEOUT_S) -> Any:
        return await self._http.post_json(path, payload, timeout_s=timeout_s)

