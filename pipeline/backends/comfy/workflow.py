"""ComfyUI workflow templates: an API-format graph and the places a variant fills. Pure.

A template is what ComfyUI's "Export (API)" writes, ``{node_id: {"class_type", "inputs",
"_meta": {"title"}}}``, where a link is ``[source_node_id, output_index]``. The places a variant
fills are its *slots*, named in an optional top-level ``"sdbatch_slots"`` object of the same
file (removed before the graph is sent) or found automatically in the standard txt2img graph:

    "sdbatch_slots": {
      "prompt": "Positive",                 # a node title: its standard input (here "text")
      "negative_prompt": "7.inputs.text",   # or node_id.inputs.field (or title.inputs.field)
      "seed": ["3.inputs.seed", "12.inputs.noise_seed"],   # several places get the same value
      "lora": "Load Checkpoint",            # LoraLoader nodes are chained after this node
      "output": ["9"],                      # the output nodes whose images are collected
      "denoising_strength": "3.inputs.denoise"   # any other key: that payload field, verbatim
    }                                            # (e.g. in an img2img workflow)

Slots: ``prompt, negative_prompt, seed, steps, cfg, sampler, scheduler, width, height,
batch_size, checkpoint, lora, filename_prefix, output``; a slot set to null is switched off.
Auto-detection (for slots the map does not name) starts at the one ``KSampler`` (or
``KSamplerAdvanced``): its ``positive``/``negative`` links to ``CLIPTextEncode`` nodes are the
prompts, ``latent_image`` to ``EmptyLatentImage`` the size and batch, ``model`` traced upstream
to the node with a ``ckpt_name`` the checkpoint and the LoRA anchor, and every ``SaveImage``
the outputs (the first one's images are the generations, others' are extras).

LoRAs: ``<lora:name:weight>`` tags (A1111 syntax; core ComfyUI has none) are cut out of the
prompt text sent, and one ``LoraLoader`` per tag is chained between the anchor's MODEL/CLIP
outputs (0 and 1) and every node that consumed them. ``<lora:name:te:unet>`` and
``te=``/``unet=`` arguments set ``strength_clip``/``strength_model`` apart.

``fill`` never mutates the template: it returns a new graph and the values in it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import JobError

SLOTS_KEY = "sdbatch_slots"
PNGINFO_KEY = "sdbatch_extra_pnginfo"  # optional: sent as extra_data.extra_pnginfo
VALUE_SLOTS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler",
               "width", "height", "batch_size", "checkpoint", "filename_prefix")
SLOTS = (*VALUE_SLOTS, "lora", "output")
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("text",), "negative_prompt": ("text",), "seed": ("seed", "noise_seed"),
    "steps": ("steps",), "cfg": ("cfg",), "sampler": ("sampler_name",),
    "scheduler": ("scheduler",), "width": ("width",), "height": ("height",),
    "batch_size": ("batch_size",), "checkpoint": ("ckpt_name",),
    "filename_prefix": ("filename_prefix",),
}
# slot -> the WebUI payload field it takes its value from
PAYLOAD_FIELDS: dict[str, str] = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps",
    "cfg": "cfg_scale", "sampler": "sampler_name", "scheduler": "scheduler", "width": "width",
    "height": "height", "batch_size": "batch_size",
    "checkpoint": "override_settings.sd_model_checkpoint",
}
SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
OUTPUT_CLASSES = ("SaveImage",)
_PATH = re.compile(r"^(.+)\.inputs\.([^.]+)$")


@dataclass(frozen=True, slots=True)
class Place:
    """One input of one node: ``graph[node]["inputs"][field]``."""

    node: str
    field: str

    def __str__(self) -> str:
        return f"{self.node}.inputs.{self.field}"


@dataclass(frozen=True, slots=True)
class LoraUse:
    """One LoRA to chain in: ``name`` as the server names the file."""

    name: str
    strength_model: float
    strength_clip: float


@dataclass(frozen=True, slots=True)
class Template:
    """A loaded workflow: treat ``graph`` as read-only (``fill`` copies it)."""

    graph: dict[str, Any] = field(hash=False, compare=False)
    places: dict[str, tuple[Place, ...]] = field(hash=False, compare=False)
    lora_anchor: str | None
    outputs: tuple[str, ...]
    sha256: str
    source: str
    extra_pnginfo: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    notes: tuple[str, ...] = ()  # why auto-detection left slots out, for error messages

    def has(self, slot: str) -> bool:
        if slot == "lora":
            return self.lora_anchor is not None
        if slot == "output":
            return bool(self.outputs)
        return bool(self.places.get(slot))

    def require(self, slots: Iterable[str]) -> None:
        """Raise ``JobError`` naming each slot the job needs that the workflow lacks."""
        missing = [s for s in dict.fromkeys(slots) if not self.has(s)]
        if missing:
            raise self.missing_error(missing)

    def missing_error(self, missing: Sequence[str]) -> JobError:
        what = ", ".join(_describe(s) for s in missing)
        why = f" ({'; '.join(self.notes)})" if self.notes else ""
        return JobError(f"the ComfyUI workflow has no node for {what}{why}", path=self.source,
                        hint=f"add the node, or name its place in \"{SLOTS_KEY}\", e.g. "
                             f"{{\"{missing[0]}\": \"<node title or id>.inputs.<field>\"}}")


@dataclass(frozen=True, slots=True)
class Filled:
    """A graph ready to POST, and the values it holds (for the manifest and the infotext)."""

    graph: dict[str, Any] = field(hash=False, compare=False)
    values: dict[str, Any] = field(hash=False, compare=False)
    loras: tuple[LoraUse, ...]
    lora_nodes: tuple[str, ...]
    outputs: tuple[str, ...]


def _describe(slot: str) -> str:
    if slot == "lora":
        return "LoRAs (a checkpoint loader to chain LoraLoader nodes after)"
    if slot == "output":
        return "the output (a SaveImage node)"
    key = PAYLOAD_FIELDS.get(slot)
    return f"{slot} ({key})" if key and key != slot else slot


# --- loading -----------------------------------------------------------------------------------

def load_workflow(source: str | Path | Mapping[str, Any], *, name: str | None = None) -> Template:
    """Read an API-format workflow (a file path or an already parsed dict); ``JobError`` if bad."""
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
        where = name or "<workflow>"
        digest_source = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    else:
        where = str(source)
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise JobError(f"cannot read the ComfyUI workflow ({exc.strerror or exc})",
                           path=where, hint="check the workflow path (relative paths are "
                                            "resolved from the job file's folder)") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise JobError(f"the ComfyUI workflow is not JSON ({exc})", path=where) from exc
        digest_source = raw
    if not isinstance(data, dict):
        raise JobError("the ComfyUI workflow is not a JSON object", path=where)
    if "nodes" in data and "links" in data:
        raise JobError("this is ComfyUI's UI workflow format, not the API format", path=where,
                       hint="in ComfyUI use Workflow > Export (API) and point to that file")
    slots = data.pop(SLOTS_KEY, None)
    pnginfo = data.pop(PNGINFO_KEY, None)
    if slots is not None and not isinstance(slots, dict):
        raise JobError(f"\"{SLOTS_KEY}\" must be an object of slot -> place", path=where)
    if pnginfo is not None and not isinstance(pnginfo, dict):
        raise JobError(f"\"{PNGINFO_KEY}\" must be an object", path=where)
    graph = _check_graph(data, where)
    places, anchor, outputs, notes = detect_slots(graph)
    for key, spec in (slots or {}).items():
        if not isinstance(key, str):
            continue
        if spec is None:
            places.pop(key, None)
            if key == "lora":
                anchor = None
            elif key == "output":
                outputs = ()
            continue
        if key == "lora":
            anchor = _node_ref(graph, _one(spec, key, where), key, where)
        elif key == "output":
            specs = spec if isinstance(spec, list) else [spec]
            outputs = tuple(_node_ref(graph, _text(s, key, where), key, where) for s in specs)
        else:
            specs = spec if isinstance(spec, list) else [spec]
            places[key] = tuple(_place(graph, _text(s, key, where), key, where) for s in specs)
    if slots and "filename_prefix" not in slots and "output" in slots:
        places["filename_prefix"] = tuple(
            Place(n, "filename_prefix") for n in outputs
            if isinstance(graph[n]["inputs"].get("filename_prefix"), str))
    return Template(graph=graph, places=places, lora_anchor=anchor, outputs=outputs,
                    sha256=hashlib.sha256(digest_source).hexdigest(), source=where,
                    extra_pnginfo=pnginfo, notes=tuple(notes))


def _check_graph(data: dict[str, Any], where: str) -> dict[str, Any]:
    if not data:
        raise JobError("the ComfyUI workflow has no nodes", path=where)
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs"), dict):
            raise JobError(f"node {node_id!r} is not {{\"class_type\": ..., \"inputs\": {{...}}}}"
                           " (is this an API-format export?)", path=where)
        for name, value in node["inputs"].items():
            if is_link(value) and str(value[0]) not in data:
                raise JobError(f"node {node_id} ({node['class_type']}) input {name!r} links to "
                               f"node {value[0]!r}, which the workflow does not have", path=where)
    return data


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _text(spec: Any, key: str, where: str) -> str:
    if not isinstance(spec, str) or not spec.strip():
        raise JobError(f"\"{SLOTS_KEY}\".{key} must be a node title, a node id, or "
                       "node_id.inputs.field", path=where)
    return spec.strip()


def _one(spec: Any, key: str, where: str) -> str:
    if isinstance(spec, list) and len(spec) == 1:
        spec = spec[0]
    return _text(spec, key, where)


def title(node: dict[str, Any]) -> str | None:
    meta = node.get("_meta")
    value = meta.get("title") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def _node_ref(graph: dict[str, Any], ref: str, key: str, where: str) -> str:
    if ref in graph:
        return ref
    hits = [n for n, node in graph.items() if title(node) == ref]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise JobError(f"\"{SLOTS_KEY}\".{key}: the title {ref!r} is on nodes "
                       f"{', '.join(hits)}", path=where, hint="use node_id.inputs.field")
    titles = sorted({t for t in (title(n) for n in graph.values()) if t})
    raise JobError(f"\"{SLOTS_KEY}\".{key}: no node has the id or title {ref!r}", path=where,
                   hint=f"titles in this workflow: {', '.join(titles)}" if titles else
                   f"node ids in this workflow: {', '.join(graph)}")


def _place(graph: dict[str, Any], spec: str, key: str, where: str) -> Place:
    match = _PATH.match(spec)
    if match:
        node_id = _node_ref(graph, match.group(1), key, where)
        fields: tuple[str, ...] = (match.group(2),)
    else:
        node_id = _node_ref(graph, spec, key, where)
        fields = DEFAULT_FIELDS.get(key, ())
        if not fields:
            raise JobError(f"\"{SLOTS_KEY}\".{key}: give the place as node_id.inputs.field",
                           path=where)
    inputs = graph[node_id]["inputs"]
    for name in fields:
        if name in inputs:
            if is_link(inputs[name]):
                raise JobError(f"\"{SLOTS_KEY}\".{key}: {node_id}.inputs.{name} is a link, "
                               "not a value", path=where)
            return Place(node_id, name)
    raise JobError(f"\"{SLOTS_KEY}\".{key}: node {node_id} ({graph[node_id]['class_type']}) has "
                   f"no input {' or '.join(repr(f) for f in fields)}", path=where,
                   hint=f"its inputs: {', '.join(inputs)}")


def detect_slots(graph: dict[str, Any]
                 ) -> tuple[dict[str, tuple[Place, ...]], str | None, tuple[str, ...], list[str]]:
    """Slots of the standard txt2img graph: (places, LoRA anchor, outputs, notes)."""
    places: dict[str, tuple[Place, ...]] = {}
    notes: list[str] = []

    def put(slot: str, node_id: str | None) -> None:
        if node_id is None:
            return
        inputs = graph[node_id]["inputs"]
        for name in DEFAULT_FIELDS[slot]:
            if name in inputs and not is_link(inputs[name]):
                places[slot] = (Place(node_id, name),)
                return

    def linked(node_id: str, name: str) -> str | None:
        value = graph[node_id]["inputs"].get(name)
        return str(value[0]) if is_link(value) else None

    anchor = None
    samplers = sorted((n for n, v in graph.items() if v["class_type"] in SAMPLER_CLASSES),
                      key=_id_order)
    if len(samplers) == 1:
        ks = samplers[0]
        for slot in ("seed", "steps", "cfg", "sampler", "scheduler"):
            put(slot, ks)
        for slot, name in (("prompt", "positive"), ("negative_prompt", "negative")):
            source = linked(ks, name)
            if source and graph[source]["class_type"] == "CLIPTextEncode":
                put(slot, source)
        latent = linked(ks, "latent_image")
        if latent and all(k in graph[latent]["inputs"] for k in ("width", "height")):
            for slot in ("width", "height", "batch_size"):
                put(slot, latent)
        node, seen = linked(ks, "model"), set()
        while node and node not in seen:
            seen.add(node)
            if "ckpt_name" in graph[node]["inputs"]:
                put("checkpoint", node)
                anchor = node
                break
            node = linked(node, "model")
        if places.get("prompt") and places.get("negative_prompt") and \
                places["prompt"][0].node == places["negative_prompt"][0].node:
            del places["negative_prompt"]  # one encoder for both: the prompt wins
    elif samplers:
        notes.append(f"found {len(samplers)} sampler nodes ({', '.join(samplers)}), so the "
                     f"slots cannot be found automatically: name them in \"{SLOTS_KEY}\"")
    else:
        notes.append("found no KSampler node")
    outputs = tuple(sorted((n for n, v in graph.items() if v["class_type"] in OUTPUT_CLASSES),
                           key=_id_order))
    prefixes = tuple(Place(n, "filename_prefix") for n in outputs
                     if isinstance(graph[n]["inputs"].get("filename_prefix"), str))
    if prefixes:
        places["filename_prefix"] = prefixes
    return places, anchor, outputs, notes


def _id_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


# --- filling -------------------------------------------------------------------------------------

def fill(template: Template, values: Mapping[str, Any], loras: Sequence[LoraUse] = (), *,
         prefix_suffix: str | None = None) -> Filled:
    """A new graph with ``values`` (slot -> ComfyUI value) and ``loras`` put in their places.

    ``prefix_suffix`` is appended (after ``_``) to each output's ``filename_prefix``, so the
    server's files say which variant they belong to.
    """
    missing = [k for k in values if not template.places.get(k)]
    if loras and template.lora_anchor is None:
        missing.append("lora")
    if missing:
        raise template.missing_error(missing)
    graph = copy.deepcopy(template.graph)
    for key, value in values.items():
        for place in template.places[key]:
            graph[place.node]["inputs"][place.field] = value
    if prefix_suffix:
        for place in template.places.get("filename_prefix", ()):
            inputs = graph[place.node]["inputs"]
            inputs[place.field] = f"{inputs[place.field]}_{prefix_suffix}"
    lora_nodes = _chain_loras(graph, template.lora_anchor, loras) if loras else ()
    effective: dict[str, Any] = {}
    for key, places in template.places.items():
        value = graph[places[0].node]["inputs"].get(places[0].field)
        if not is_link(value):
            effective[key] = value
    if loras:
        effective["loras"] = [{"name": lu.name, "strength_model": lu.strength_model,
                               "strength_clip": lu.strength_clip} for lu in loras]
    return Filled(graph=graph, values=effective, loras=tuple(loras), lora_nodes=lora_nodes,
                  outputs=template.outputs)


def _chain_loras(graph: dict[str, Any], anchor: str | None, loras: Sequence[LoraUse]
                 ) -> tuple[str, ...]:
    assert anchor is not None
    consumers: list[tuple[str, str, int]] = []  # (node, input, which output of the anchor)
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if is_link(value) and str(value[0]) == anchor and value[1] in (0, 1):
                consumers.append((node_id, name, value[1]))
    numeric = [int(n) for n in graph if n.isdigit()]
    next_id = max(numeric, default=0) + 1
    model: list[Any] = [anchor, 0]
    clip: list[Any] = [anchor, 1]
    ids: list[str] = []
    for lora in loras:
        while str(next_id) in graph:
            next_id += 1
        node_id = str(next_id)
        next_id += 1
        graph[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": lora.name, "strength_model": lora.strength_model,
                       "strength_clip": lora.strength_clip, "model": model, "clip": clip},
            "_meta": {"title": f"sdbatch LoRA {lora.name}"},
        }
        model, clip = [node_id, 0], [node_id, 1]
        ids.append(node_id)
    for node_id, name, output in consumers:
        graph[node_id]["inputs"][name] = list(model if output == 0 else clip)
    return tuple(ids)



# The standard SD1.5 txt2img graph (as in jobs/flows/sd15.json), used when a ComfyUI backend
# names no workflow.
SD15_TXT2IMG: dict[str, Any] = {
    "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
          "inputs": {"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                     "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                     "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
          "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"},
          "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"},
          "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative"},
          "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
          "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
          "inputs": {"filename_prefix": "sdbatch", "images": ["8", 0]}},
}


def default_workflow() -> Template:
    return load_workflow(SD15_TXT2IMG, name="<built-in SD1.5 txt2img>")

