"""What travels between submitter, agents and collector: JSON forms of the stage values. Pure.

- a stream entry: ``v`` = the variant (``variant_json``), ``h`` = its ``History`` so far;
- a job's meta (``JobMeta``): the job without credentials, its store, its checkpoints (one
  stream each) and the names it uses (so each agent runs the local preflight checks itself);
- a store record ``records/<variant id>.json`` (``record_document``): the variant, the reply's
  info/params/model and one entry per image naming its content-addressed object
  ``images/<sha256>.<ext>``. A redelivered variant writes the same keys again, so the store
  holds one record per variant however often it was delivered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.expand.inputs import IMAGE_FIELDS, is_ref
from pipeline.imagebytes import EXTENSIONS
from pipeline.model import Failed, Generated, Image, Variant
from pipeline.output.layout import now_iso

RECORD_FORMAT = 1
DUMP = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
IMAGES_PREFIX = "images/"
RECORDS_PREFIX = "records/"
INPUTS_PREFIX = "inputs/"
JOB_OBJECT = "job.json"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=DUMP)


# --- variants ----------------------------------------------------------------------------------

def variant_json(variant: Variant) -> dict[str, Any]:
    return {"id": variant.id, "ordinal": variant.ordinal, "prompt": variant.prompt,
            "negative_prompt": variant.negative_prompt, "seed": variant.seed,
            "payload": variant.payload, "axes": [list(pair) for pair in variant.axes],
            "endpoint": variant.endpoint}


def variant_from(data: dict[str, Any]) -> Variant:
    return Variant(id=str(data["id"]), ordinal=int(data["ordinal"]), prompt=str(data["prompt"]),
                   negative_prompt=str(data.get("negative_prompt", "")), seed=int(data["seed"]),
                   payload=dict(data["payload"]),
                   axes=tuple((str(k), v) for k, v in data.get("axes") or ()),
                   endpoint=data.get("endpoint", "txt2img"))


@dataclass(frozen=True, slots=True)
class History:
    """A variant's past across deliveries: what the retry policy and the dead letter need.

    ``deliveries``: deliveries before the current entry (a handed-back variant is re-added as a
    new entry, whose own delivery count Redis starts again); ``attempts``: generation attempts;
    ``failed_on``/``excluded``: backend labels, as in a local run's ``Attempts``; ``first_at``:
    unix time of the first attempt (the policy's ``max_time_s`` counts from it).
    """

    deliveries: int = 0
    attempts: int = 0
    failed_on: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    first_at: float | None = None

    def to_json(self) -> bytes:
        return dumps({"d": self.deliveries, "a": self.attempts, "f": list(self.failed_on),
                      "x": list(self.excluded), "t": self.first_at})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> History:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(int(data.get("d", 0)), int(data.get("a", 0)), tuple(data.get("f") or ()),
                   tuple(data.get("x") or ()), data.get("t"))


def entry_fields(variant: Variant, history: History = History()) -> dict[str, bytes]:  # noqa: B008
    return {"v": dumps(variant_json(variant)), "h": history.to_json()}


# --- the job -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JobMeta:
    """A submitted job as agents and the collector read it (no credentials anywhere)."""

    id: str
    name: str
    store: str  # public URL of the output store
    job: dict[str, Any] = field(hash=False, compare=False)  # public_job(spec)
    source_path: str = ""
    base_dir: str = ""
    content_sha256: str = ""
    checkpoints: tuple[str | None, ...] = (None,)
    requirements: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    total: int = 0
    lease_s: float = 300.0
    max_deliveries: int = 5
    submitted_at: str = ""

    def to_json(self) -> bytes:
        return dumps({"id": self.id, "name": self.name, "store": self.store, "job": self.job,
                      "source_path": self.source_path, "base_dir": self.base_dir,
                      "content_sha256": self.content_sha256,
                      "checkpoints": list(self.checkpoints), "requirements": self.requirements,
                      "total": self.total, "lease_s": self.lease_s,
                      "max_deliveries": self.max_deliveries, "submitted_at": self.submitted_at})

    @classmethod
    def from_json(cls, raw: bytes | str) -> JobMeta:
        d = orjson.loads(raw)
        return cls(id=d["id"], name=d.get("name") or d["id"], store=d["store"], job=d["job"],
                   source_path=d.get("source_path", ""), base_dir=d.get("base_dir", ""),
                   content_sha256=d.get("content_sha256", ""),
                   checkpoints=tuple(d.get("checkpoints") or (None,)),
                   requirements=dict(d.get("requirements") or {}),
                   total=int(d.get("total", 0)), lease_s=float(d.get("lease_s", 300.0)),
                   max_deliveries=int(d.get("max_deliveries", 5)),
                   submitted_at=d.get("submitted_at", ""))

    def stream_of(self, checkpoint: str | None) -> int:
        return self.checkpoints.index(checkpoint)


# --- records in the store ------------------------------------------------------------------------

def image_key(image: Image) -> str:
    return f"{IMAGES_PREFIX}{hashlib.sha256(image.data).hexdigest()}.{EXTENSIONS.get(image.format, 'bin')}"


def record_key(variant_id: str) -> str:
    return f"{RECORDS_PREFIX}{variant_id}.json"


def record_id(key: str) -> str | None:
    """The variant id a ``records/<id>.json`` key names, or None for anything else."""
    if not key.startswith(RECORDS_PREFIX) or not key.endswith(".json"):
        return None
    ident = key[len(RECORDS_PREFIX):-5]
    return ident if ident and all(c in "0123456789abcdef" for c in ident) else None


def record_document(result: Generated, *, job: str, agent: str, deliveries: int
                    ) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The record of a generated variant and the ``(key, bytes)`` objects it names."""
    images: list[dict[str, Any]] = []
    objects: list[tuple[str, bytes]] = []
    for image in result.images:
        key = image_key(image)
        objects.append((key, image.data))
        images.append({"index": image.index, "kind": image.kind, "format": image.format,
                       "key": key, "sha256": key[len(IMAGES_PREFIX):].split(".")[0],
                       "bytes": len(image.data), "seed": image.seed, "subseed": image.subseed,
                       "prompt": image.prompt, "negative_prompt": image.negative_prompt,
                       "infotext": image.infotext})
    doc = {"format": RECORD_FORMAT, "job": job, "variant": variant_json(result.variant),
           "images": images, "info": result.info, "backend": result.backend,
           "model": result.model, "params": result.params, "attempts": result.attempts,
           "elapsed_s": result.elapsed_s, "agent": agent, "deliveries": deliveries,
           "created": now_iso()}
    return doc, objects


def generated_from(doc: dict[str, Any], data: dict[str, bytes]) -> Generated:
    """The ``Generated`` a record describes; ``data`` maps each image key to its bytes."""
    images = tuple(Image(index=int(i["index"]), data=data[i["key"]], format=i["format"],
                         kind=i.get("kind", "generation"), seed=i.get("seed"),
                         subseed=i.get("subseed"), prompt=i.get("prompt"),
                         negative_prompt=i.get("negative_prompt"), infotext=i.get("infotext"))
                   for i in doc["images"])
    return Generated(variant=variant_from(doc["variant"]), images=images, info=doc.get("info")
                     or {}, backend=str(doc.get("backend") or ""), model=doc.get("model"),
                     attempts=int(doc.get("attempts") or 1),
                     elapsed_s=float(doc.get("elapsed_s") or 0.0), params=doc.get("params") or {})


def sha256_matches(key: str, data: bytes) -> bool:
    """True when ``data`` is what the content-addressed ``images/<sha256>.<ext>`` key names."""
    name = key[len(IMAGES_PREFIX):] if key.startswith(IMAGES_PREFIX) else key
    return hashlib.sha256(data).hexdigest() == name.split(".")[0]


# --- the dead letter -----------------------------------------------------------------------------

def error_entry(error: str, status: int | None, backend: str | None, agent: str) -> bytes:
    return dumps({"error": error, "status": status, "backend": backend, "agent": agent,
                  "at": now_iso()})


def failed_from(variant: Variant, errors: list[dict[str, Any]], reason: str,
                attempts: int) -> Failed:
    last = errors[-1] if errors else {}
    message = reason if not last else (f"{reason}; last error: {last.get('error')}"
                                       if reason and reason != last.get("error")
                                       else str(last.get("error")))
    return Failed(variant, message, last.get("status"), attempts, last.get("backend"))


# --- img2img inputs --------------------------------------------------------------------------

def input_refs(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The file references (``{"$file", "sha256"}``) an img2img payload holds."""
    found: list[dict[str, Any]] = []
    for name in IMAGE_FIELDS:
        value = payload.get(name)
        for item in value if isinstance(value, list) else [value]:
            if is_ref(item):
                found.append(item)
    return found


def input_key(sha256: str) -> str:
    return f"{INPUTS_PREFIX}{sha256}"


def relocate_refs(payload: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """``payload`` with each reference's ``$file`` pointing at ``paths[sha256]`` (a local copy)."""
    out = dict(payload)
    for name in IMAGE_FIELDS:
        value = out.get(name)
        if is_ref(value):
            out[name] = {**value, "$file": paths[value["sha256"]]}
        elif isinstance(value, list):
            out[name] = [{**v, "$file": paths[v["sha256"]]} if is_ref(v) else v for v in value]
    return out


def restore_refs(params: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """What the client sent, with input references as the job named them (not local copies)."""
    if not any(name in original for name in IMAGE_FIELDS):
        return params
    out = dict(params)
    for name in IMAGE_FIELDS:
        if name in original:
            out[name] = original[name]
    return out


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
