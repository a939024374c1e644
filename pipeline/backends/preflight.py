"""Preflight: what each backend has and is, checked exactly against every name the job uses.

Every WebUI silently substitutes what it does not have (an unknown checkpoint becomes the loaded
one, an unknown sampler or alias "DPM++ 2M", an unknown LoRA tag is stripped, Forge ignores
``sd_vae``), so a typo costs a night of wrong images. Before a run every backend is asked, one
request at a time (its per-host limit holds for these GETs too), for its options and lists; its
kind (A1111, Forge, reForge, SD.Next) is told from them. Every checkpoint, sampler, scheduler,
LoRA and VAE the job uses (``requirements.job_requirements``) is matched exactly (never fuzzily)
against each reachable backend:

- a name no backend has stops the run (exit 2) with the closest real names as suggestions;
- a name only some backends have routes those variants to the backends that can serve them
  (``router``); a VAE counts as present only where the backend can *apply* it (A1111/reForge/
  SD.Next: ``sd_vae``; Forge: ``forge_additional_modules``, only when its UI lists modules);
- each backend gets a ``ClientSetup`` (``Verdict.setup_for``): canonical sampler names, pinned
  overrides, its VAE form, the Dynamic Prompts switch-off.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from pipeline import expand, names
from pipeline.backends.requirements import (KINDS, Requirements, job_requirements,
                                            variant_needs)
from pipeline.backends.webui.client import WebUIClient
from pipeline.backends.webui.kinds import describe, detect_kind, profile
from pipeline.backends.webui.setup import CheckpointRef, ClientSetup
from pipeline.backends.webui.substitution import split_legacy_sampler
from pipeline.errors import BackendError, HTTPStatusError, PreflightError, RequestTimeout
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.model import Variant
from pipeline.schedule.dispatch import CanServe

__all__ = ["BackendInfo", "ClientSetup", "Finding", "Requirements", "Verdict", "describe_backend",
           "check_backends", "inspect_all", "inspect_backend", "job_requirements", "judge",
           "router", "setup_for", "variant_needs"]

V1 = "/sdapi/v1"
RATE_LIMIT_TRIES = 4
LISTING_RETRY_TIMEOUT_S = 5.0  # once a listing timed out, the next ones wait this long at most
MAX_LISTING_TIMEOUTS = 3
# What each answer must be; anything else is no listing (its names are unknowable), and noted.
SHAPES = {"options": dict, "sd-models": list, "samplers": list, "schedulers": list, "loras": list,
          "sd-vae": list, "sd-modules": list, "scripts": dict, "embeddings": dict, "version": dict}
MAX_RATE_WAIT_S = 30.0
LISTINGS = ("sd-models", "samplers", "schedulers", "loras", "sd-vae", "sd-modules", "scripts",
            "embeddings")
# Options that make the infotext show what the response check reads; pinned on when off.
INFOTEXT_OPTIONS = {"lora": ("lora_add_hashes_to_infotext",),
                    "checkpoint": ("add_model_name_to_info", "add_model_hash_to_info"),
                    "vae": ("add_vae_name_to_info",)}


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What one backend reported. ``names[kind]`` holds every accepted spelling (lower case too);
    a kind missing from ``names`` means the server has no list for it (unknowable)."""

    label: str
    reachable: bool
    error: str = ""
    auth_rejected: bool = False
    server: str = ""  # "Forge f2.0.1v1.10.1-...": kind and version, for display
    kind: str = "unknown"  # "a1111" | "forge" | "reforge" | "sdnext" | "unknown"
    version: str | None = None
    loaded_model: str | None = None
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    shown: dict[str, tuple[str, ...]] = field(default_factory=dict)  # display names for hints
    dynamic_prompts: str | None = None  # the script title, when the extension is installed
    sampler_aliases: dict[str, str] = field(default_factory=dict)  # alias (lower) -> name
    samplers: tuple[str, ...] = ()  # the /samplers names, the only spellings ever sent
    schedulers: dict[str, str] = field(default_factory=dict)  # name or label (lower) -> label
    checkpoints: tuple[CheckpointRef, ...] = ()
    loras: tuple[tuple[str, str], ...] = ()  # (name, alias)
    vaes: dict[str, str] = field(default_factory=dict)  # spelling (and lower) -> value to send
    vae_note: str = ""  # why this backend cannot apply a VAE, when it cannot
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    notes: tuple[str, ...] = ()  # answers that could not be used (odd shapes, timeouts)

    def has(self, kind: str, name: str) -> bool:
        accepted = self.names.get(kind)
        if accepted is None:
            return True  # the server has no list for this kind (e.g. no /schedulers): unknowable
        if name in accepted or name.lower() in accepted:
            return True
        if kind == "checkpoint":  # "x.safetensors [hash]" for a title the server has not hashed
            return any(names.same_checkpoint(name, ref.title) for ref in self.checkpoints)
        legacy = split_legacy_sampler(name) if kind == "sampler" else None
        if legacy:  # "DPM++ 2M Karras": sampler + scheduler, split by the server or by us
            return self.has("sampler", legacy[0]) and self.has("scheduler", legacy[1])
        return False


# --- asking the backends -----------------------------------------------------------------------

async def inspect_backend(client: WebUIClient) -> BackendInfo:
    """Ask one backend for its options and lists, one request at a time."""
    label = client.label
    try:
        probe = await _patiently(client.probe)
    except HTTPStatusError as exc:
        return BackendInfo(label, reachable=False, error=str(exc),
                           auth_rejected=exc.status in (401, 403))
    except BackendError as exc:
        return BackendInfo(label, reachable=False, error=str(exc))

    notes: list[str] = []
    timeouts = 0

    async def listing(path: str) -> Any:
        """A list the server may not have (404 on older versions and forks): None if absent.
        Other failures are noted (the names of that kind cannot be checked); after a listing
        timed out the rest get a short timeout, and after three none is asked any more."""
        nonlocal timeouts
        if timeouts >= MAX_LISTING_TIMEOUTS:
            notes.append(f"{path} was not asked (earlier listings timed out)")
            return None
        timeout_s = min(LISTING_RETRY_TIMEOUT_S, client.spec.timeout_s) if timeouts else None
        try:
            return await _patiently(lambda: client.get_json(path, timeout_s=timeout_s))
        except HTTPStatusError as exc:
            if exc.status not in (404, 405):
                notes.append(_without_label(str(exc), label))
        except RequestTimeout as exc:
            timeouts += 1
            notes.append(_without_label(str(exc), label))
        except BackendError as exc:
            notes.append(_without_label(str(exc), label))
        return None

    answers: dict[str, Any] = {"options": probe.details.get("options", {})}
    for name in LISTINGS:
        answers[name] = await listing(f"{V1}/{name}")
    if not any(str(k).startswith("forge_") for k in answers["options"]):
        answers["version"] = await listing(f"{V1}/version")  # SD.Next only
    info = describe_backend(label, answers)
    if notes:
        info = replace(info, notes=(*info.notes, *(
            f"{n}: what it lists cannot be checked on this backend" for n in notes)))
    return info


def _without_label(message: str, label: str) -> str:
    return message.removeprefix(f"{label} ").removeprefix(f"{label}: ")


async def _patiently(ask: Callable[[], Awaitable[Any]]) -> Any:
    """``ask()``, waiting out a rate limit (SD.Next's 429) up to a few times: a list lost to a
    429 would make every name of its kind unknowable, and so accepted."""
    for attempt in range(RATE_LIMIT_TRIES):
        try:
            return await ask()
        except HTTPStatusError as exc:
            if not exc.rate_limited or attempt == RATE_LIMIT_TRIES - 1:
                raise
            await asyncio.sleep(min(exc.retry_after_s or 1.0, MAX_RATE_WAIT_S))
    raise AssertionError("unreachable")


def describe_backend(label: str, answers: Mapping[str, Any]) -> BackendInfo:
    """A ``BackendInfo`` from a backend's answers (``"options"``, ``"sd-models"``, ... ->
    parsed JSON, None for a route that failed). Pure: recorded answers work as well.

    Answers are the server's and may have any shape: a listing that is not a list is no listing
    (its kind is unknowable), entries that are not objects and names that are not strings are
    left out, so no answer can raise here."""
    options = answers.get("options") if isinstance(answers.get("options"), dict) else {}
    sd_vae, modules = answers.get("sd-vae"), answers.get("sd-modules")
    kind = detect_kind(options, sd_vae_route=isinstance(sd_vae, list),
                       version_route=answers.get("version"))
    version_answer = answers.get("version")
    version = None
    if isinstance(version_answer, dict):
        version = next((v for v in (_text(version_answer.get(k)) for k in
                                    ("version", "updated", "hash")) if v), None)
    names_: dict[str, frozenset[str]] = {}
    shown: dict[str, tuple[str, ...]] = {}

    def add(kind_: str, spellings: Iterable[str], display: Iterable[str]) -> None:
        accepted = {s for s in spellings if s}
        names_[kind_] = frozenset(accepted | {s.lower() for s in accepted})
        shown[kind_] = tuple(d for d in display if d)

    refs = tuple(CheckpointRef(title, _text(m.get("model_name")) or "", _text(m.get("filename")),
                               _text(m.get("hash")), _text(m.get("sha256")))
                 for m in _objects(answers.get("sd-models"))
                 if (title := _text(m.get("title")) or _text(m.get("model_name"))))
    if isinstance(answers.get("sd-models"), list):
        add("checkpoint", (s for r in refs for s in _checkpoint_spellings(r)),
            (r.model_name or r.title for r in refs))
    samplers = [s for s in _objects(answers.get("samplers")) if _text(s.get("name"))]
    aliases = {a.lower(): str(s["name"]) for s in samplers for a in _texts(s.get("aliases"))}
    if isinstance(answers.get("samplers"), list):
        add("sampler", [*(str(s["name"]) for s in samplers), *aliases],
            (str(s["name"]) for s in samplers))
    schedulers: dict[str, str] = {}
    for item in _objects(answers.get("schedulers")):
        label_ = _text(item.get("label")) or _text(item.get("name"))
        if label_:
            for spelling in (item.get("name"), item.get("label"), *_texts(item.get("aliases"))):
                if _text(spelling):
                    schedulers[spelling.lower()] = label_
    if isinstance(answers.get("schedulers"), list):
        add("scheduler", schedulers, dict.fromkeys(schedulers.values()))
    loras = tuple((name, _text(x.get("alias")) or name) for x in _objects(answers.get("loras"))
                  if (name := _text(x.get("name"))))
    if isinstance(answers.get("loras"), list):
        add("lora", (s for pair in loras for s in pair), (n for n, _ in loras))
    vaes, vae_note = _vaes(kind, sd_vae, modules)
    if vaes is not None:
        add("vae", vaes, dict.fromkeys(vaes.values()))
    embeddings = answers.get("embeddings")
    if isinstance(embeddings, dict) and isinstance(embeddings.get("loaded"), dict):
        shown["embedding"] = tuple(sorted(k for k in embeddings["loaded"] if _text(k)))
    loaded = _text(options.get("sd_model_checkpoint"))
    notes = tuple(f"{V1}/{name} answered {_shape(answers[name])}, not a "
                  f"{'list' if shape is list else 'JSON object'}; what it lists cannot be "
                  "checked on this backend" for name, shape in SHAPES.items()
                  if answers.get(name) is not None and not isinstance(answers[name], shape))
    return BackendInfo(
        label, reachable=True, server=describe(kind, version), kind=kind, version=version,
        loaded_model=loaded, names=names_, shown=shown,
        dynamic_prompts=_dynamic_prompts(answers.get("scripts")), sampler_aliases=aliases,
        samplers=tuple(str(s["name"]) for s in samplers), schedulers=schedulers,
        checkpoints=refs, loras=loras, vaes=vaes or {}, vae_note=vae_note, options=options,
        notes=notes)


def _shape(value: Any) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
    return kind


def _objects(listing: Any) -> list[dict[str, Any]]:
    """The entries of a listing that are JSON objects ([] when the listing is not a list)."""
    return [x for x in listing if isinstance(x, dict)] if isinstance(listing, list) else []


def _texts(value: Any) -> list[str]:
    """The non-empty strings of a list ([] for anything else: ``aliases: 5``)."""
    return [x for x in value if _text(x)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """A non-empty string from a server's answer, else None: numbers are no names, and neither
    is text with control characters (it would reach the terminal when printed)."""
    if isinstance(value, str) and value.strip() and not _CONTROL.search(value):
        return value
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _vaes(kind: str, sd_vae: Any, modules: Any) -> tuple[dict[str, str] | None, str]:
    """Spellings of the VAEs this backend can *apply* -> what to send; or why it cannot."""
    if profile(kind).vae_via == "forge_additional_modules":
        items = [m for m in _objects(modules) if _text(m.get("model_name"))]
        note = "" if items else (
            "Forge applies a VAE only through forge_additional_modules, and lists the modules it "
            "can load (/sdapi/v1/sd-modules) only while its UI runs; this one lists none (it was "
            "started with --nowebui?), and it ignores sd_vae")
        if not isinstance(modules, list):
            note = "Forge answered no /sdapi/v1/sd-modules list, and it ignores sd_vae"
    else:
        items = [v for v in _objects(sd_vae) if _text(v.get("model_name"))]
        if not isinstance(sd_vae, list):
            return None, ""  # no list: unknowable, as before
        note = ""
    out: dict[str, str] = {}
    for item in items:
        send = str(item["model_name"])
        filename = _text(item.get("filename"))
        for spelling in (send, filename, names.basename(filename) if filename else None,
                         names.MODEL_EXT.sub("", send)):
            if spelling:
                out.setdefault(spelling, send)
                out.setdefault(spelling.lower(), send)
    return out, note


def _dynamic_prompts(scripts: Any) -> str | None:
    if isinstance(scripts, dict):
        for title in [*_texts(scripts.get("txt2img")), *_texts(scripts.get("img2img"))]:
            if "dynamic prompts" in title.lower():
                return title
    return None


def _checkpoint_spellings(ref: CheckpointRef) -> list[str]:
    """Every way ``override_settings.sd_model_checkpoint`` may name this model."""
    out = [ref.title, names.HASH_SUFFIX.sub("", ref.title), ref.model_name, ref.hash, ref.sha256]
    if ref.filename:
        base = names.basename(ref.filename)
        out += [ref.filename, base, names.MODEL_EXT.sub("", base)]
    return [str(x) for x in out if x]


async def inspect_all(session: aiohttp.ClientSession, backends: Iterable[BackendSpec], *,
                      job: JobSpec | None = None) -> list[BackendInfo]:
    """Every backend's ``BackendInfo``, asked concurrently (each one request at a time), each
    by its own kind's client. ``job`` locates a ComfyUI backend's relative workflow path."""
    async def inspect(spec: BackendSpec) -> BackendInfo:
        if spec.kind == "comfyui":
            from pipeline.backends.comfy.client import ComfyClient
            from pipeline.backends.comfy.inspect import inspect_backend as inspect_comfy

            return await inspect_comfy(ComfyClient(session, spec, job=job))
        return await inspect_backend(WebUIClient(session, spec))

    return list(await asyncio.gather(*(inspect(b) for b in backends)))


# --- judging -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    name: str
    available_on: tuple[str, ...]
    missing_on: tuple[str, ...]
    suggestions: tuple[str, ...]
    reasons: tuple[str, ...] = ()  # why it is missing where that is not a plain absence


@dataclass(frozen=True, slots=True)
class Verdict:
    infos: tuple[BackendInfo, ...]
    findings: tuple[Finding, ...]
    problems: tuple[str, ...]
    setups: dict[str, ClientSetup] = field(default_factory=dict, hash=False, compare=False)
    requirements: Requirements | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def notes(self) -> tuple[str, ...]:
        """What some backend answered that could not be used (its names go unchecked)."""
        return tuple(f"{i.label}: {note}" for i in self.infos for note in i.notes)

    def setup_for(self, label: str) -> ClientSetup:
        """What the client for backend ``label`` needs (a bare setup for an unknown label)."""
        return self.setups.get(label) or ClientSetup(label=label)


def judge(requirements: Requirements, infos: list[BackendInfo], spec: JobSpec) -> Verdict:
    reachable = [i for i in infos if i.reachable]
    findings: list[Finding] = []
    problems: list[str] = []
    for info in infos:
        if info.auth_rejected:
            problems.append(f"{info.label} rejected the credentials ({info.error}); check auth "
                            "or the user:pass in --backend")
        if info.dynamic_prompts and spec.dynamic_prompts == "refuse":
            problems.append(f"{info.label} has the Dynamic Prompts extension ({info.dynamic_prompts}),"
                            " which would re-expand prompts at random; remove "
                            "'dynamic_prompts: refuse' to have sdbatch disable it per request")
    for kind in KINDS:
        for name in sorted(requirements.names.get(kind, ())):
            have = tuple(i.label for i in reachable if i.has(kind, name))
            lack = tuple(i.label for i in reachable if not i.has(kind, name))
            reasons = tuple(f"{i.label}: {i.vae_note}" for i in reachable
                            if kind == "vae" and i.label in lack and i.vae_note)
            pool = sorted({n for i in reachable for n in i.shown.get(kind, ())})
            suggestions = tuple(difflib.get_close_matches(name, pool, n=3, cutoff=0.5))
            findings.append(Finding(kind, name, have, lack, suggestions, reasons))
            if reachable and not have:
                problems.append(_missing_message(kind, name, suggestions, pool, reasons))
    setups = {i.label: client_setup(i, requirements, spec) for i in reachable
              if i.kind != "comfyui"}
    return Verdict(tuple(infos), tuple(findings), tuple(problems), setups, requirements)


def _missing_message(kind: str, name: str, suggestions: tuple[str, ...], pool: list[str],
                     reasons: tuple[str, ...]) -> str:
    if reasons:
        return (f"{kind} {name!r} cannot be applied by any backend: " + "; ".join(reasons)
                + ". Fix: start Forge with its UI (without --nowebui) so it lists its VAEs, add "
                  "an A1111 or reForge backend, or remove the VAE from the job")
    hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions \
        else (f"; available: {', '.join(pool[:8])}" if pool else "")
    return f"{kind} {name!r} is on no backend{hint}"


def client_setup(info: BackendInfo, requirements: Requirements, spec: JobSpec) -> ClientSetup:
    """What a client for this backend sends and checks, for this job's names."""
    samplers: dict[str, str] = {}
    implied: dict[str, str] = {}
    for name in requirements.names.get("sampler", ()):
        canonical = _sampler(info, name)
        if canonical:
            samplers[name] = canonical
            continue
        legacy = split_legacy_sampler(name)
        if legacy and _sampler(info, legacy[0]) and info.schedulers.get(legacy[1].lower()):
            samplers[name] = _sampler(info, legacy[0]) or legacy[0]
            implied[name] = info.schedulers[legacy[1].lower()]
    schedulers = {n: info.schedulers[n.lower()] for n in requirements.names.get("scheduler", ())
                  if n.lower() in info.schedulers}
    checkpoints = {n: ref for n in requirements.names.get("checkpoint", ())
                   if (ref := _checkpoint(info, n)) is not None}
    if info.loaded_model and (ref := _checkpoint(info, info.loaded_model)) is not None:
        checkpoints.setdefault(info.loaded_model, ref)  # the pinned start value
    loras: dict[str, frozenset[str]] = {}
    for name in requirements.names.get("lora", ()):
        for lora_name, alias in info.loras:
            if name in (lora_name, alias) or name.lower() in (lora_name.lower(), alias.lower()):
                loras[name.lower()] = frozenset(_lora_key(s) for s in (name, lora_name, alias))
    vaes = {n: info.vaes[n] if n in info.vaes else info.vaes[n.lower()]
            for n in requirements.names.get("vae", ()) if n in info.vaes or n.lower() in info.vaes}
    return ClientSetup(
        label=info.label, kind=info.kind, version=info.version,
        payload_extras=_payload_extras(info), samplers=samplers, implied_schedulers=implied,
        schedulers=schedulers, checkpoints=checkpoints, loras=loras, vaes=vaes,
        override_pins=_pins(info, requirements))


def _pins(info: BackendInfo, requirements: Requirements) -> dict[str, Any]:
    """Override keys the job sets -> this backend's value at start, in the backend's own form."""
    pins: dict[str, Any] = {}
    forge_vae = profile(info.kind).vae_via == "forge_additional_modules"
    for key in sorted(requirements.override_keys):
        if key == "sd_vae" and forge_vae:
            key = "forge_additional_modules"
        value = info.options.get(key)
        if key in info.options and value is not None and value != "":
            pins[key] = value
    for kind, options in INFOTEXT_OPTIONS.items():
        if requirements.uses(kind):
            pins.update({o: True for o in options if info.options.get(o) is False})
    return pins


def _payload_extras(info: BackendInfo) -> dict[str, Any]:
    """Per-backend additions to every request: switch off server-side prompt re-expansion."""
    if info.dynamic_prompts:
        return {"alwayson_scripts": {info.dynamic_prompts: {"args": [False]}}}
    return {}


def payload_extras(info: BackendInfo) -> dict[str, Any]:  # kept for callers not yet switched
    return _payload_extras(info)


def _sampler(info: BackendInfo, name: str) -> str | None:
    for canonical in info.samplers:
        if canonical == name or canonical.lower() == name.lower():
            return canonical
    return info.sampler_aliases.get(name.lower())


def _checkpoint(info: BackendInfo, name: str) -> CheckpointRef | None:
    want = name.strip().lower()
    for ref in info.checkpoints:
        if want in {s.lower() for s in _checkpoint_spellings(ref)}:
            return ref
    for ref in info.checkpoints:  # "tiny-b" for a title that gained a hash, a path, ...
        if names.same_checkpoint(name, ref.title):
            return ref
    return None


def _lora_key(name: str) -> str:
    return name.replace(":", "").replace(",", "").strip().lower()


def router(verdict: Verdict) -> CanServe | None:
    """Capability routing: a variant goes only to backends that have every name it uses."""
    partial = [f for f in verdict.findings if f.missing_on]
    if not partial:
        return None
    missing: dict[str, set[tuple[str, str]]] = {}
    for f in partial:
        for label in f.missing_on:
            missing.setdefault(label, set()).add((f.kind, f.name))

    def can_serve(backend: str, variant: Variant) -> bool:
        lacks = missing.get(backend)
        if not lacks:
            return True
        return not any((kind, name) in lacks for kind, names_ in variant_needs(variant).items()
                       for name in names_)

    return can_serve


async def check_backends(session: aiohttp.ClientSession, spec: JobSpec, plan: expand.Plan,
                         backends: Iterable[BackendSpec]) -> Verdict:
    """The preflight ``sdbatch run`` does: the verdict, or ``PreflightError`` when it cannot run."""
    infos = await inspect_all(session, backends, job=spec)
    verdict = judge(job_requirements(plan), infos, spec)
    if not verdict.ok:
        raise PreflightError("the job cannot run on these backends:\n  - "
                             + "\n  - ".join(verdict.problems)
                             + "\n  fix: correct the names in the job file (they are matched "
                               "exactly), or add backends that have them; 'sdbatch check "
                               f"{spec.source_path}' shows every backend's lists")
    return verdict


def setup_for(verdict: Verdict, label: str) -> ClientSetup | None:
    """The ``ClientSetup`` for a WebUI backend; None for other kinds (ComfyUI has its own)."""
    for info in verdict.infos:
        if info.label == label and info.kind == "comfyui":
            return None
    return verdict.setup_for(label)
