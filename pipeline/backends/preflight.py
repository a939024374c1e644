"""Preflight: what each backend has, checked exactly against every name the job uses.

The WebUI silently substitutes what it does not have (an unknown checkpoint becomes the loaded
one, an unknown sampler the first one, an unknown LoRA tag is ignored), so a typo costs a night of
wrong images. Before a run, every backend is asked concurrently for its lists; every checkpoint,
sampler, scheduler, LoRA (including ``<lora:name:w>`` tags inside expanded prompts) and VAE the job
uses is matched exactly (never fuzzily) against each reachable backend. Names no backend has stop
the run (exit 2) with the closest real names as suggestions; names only some backends have route
those variants to the backends that can serve them.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline import expand
from pipeline.backends.webui.client import BackendClient
from pipeline.schedule.dispatch import CanServe
from pipeline.errors import BackendError, HTTPStatusError, PreflightError
from pipeline.job.schema import BackendSpec, JobSpec
from pipeline.model import Variant
from pipeline.backends.webui.response import split_legacy_sampler

EXACT_SCAN_LIMIT = 100_000
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::[^>]*)?>", re.IGNORECASE)
KINDS = ("checkpoint", "sampler", "scheduler", "lora", "vae")


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What one backend reported. ``names[kind]`` holds every accepted spelling."""

    label: str
    reachable: bool
    error: str = ""
    auth_rejected: bool = False
    server: str = ""
    loaded_model: str | None = None
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    shown: dict[str, tuple[str, ...]] = field(default_factory=dict)  # display names for hints
    dynamic_prompts: str | None = None  # the script title, when the extension is installed
    sampler_aliases: dict[str, str] = field(default_factory=dict)  # alias (lower) -> name

    def has(self, kind: str, name: str) -> bool:
        accepted = self.names.get(kind)
        if accepted is None:
            return True  # the server has no list for this kind (e.g. no /schedulers): unknowable
        if name in accepted or name.lower() in accepted:
            return True
        legacy = split_legacy_sampler(name) if kind == "sampler" else None
        if legacy:  # "DPM++ 2M Karras": the server splits it into sampler + scheduler
            return self.has("sampler", legacy[0]) and self.has("scheduler", legacy[1])
        return False


@dataclass(frozen=True, slots=True)
class Requirements:
    """Every name the job uses, by kind."""

    names: dict[str, frozenset[str]]
    exact: bool


def variant_needs(variant: Variant) -> dict[str, set[str]]:
    """The names one variant depends on, by kind."""
    p = variant.payload
    needs: dict[str, set[str]] = {k: set() for k in KINDS}
    if variant.checkpoint:
        needs["checkpoint"].add(variant.checkpoint)
    for key in ("sampler_name", "hr_sampler_name"):
        if p.get(key):
            needs["sampler"].add(str(p[key]))
    for key in ("scheduler", "hr_scheduler"):
        if p.get(key):
            needs["scheduler"].add(str(p[key]))
    vae = (p.get("override_settings") or {}).get("sd_vae")
    if vae and str(vae) not in ("Automatic", "None"):
        needs["vae"].add(str(vae))
    for text in (p.get("prompt", ""), p.get("hr_prompt", "")):
        if text and "<" in text:
            needs["lora"].update(m.strip() for m in _LORA_TAG.findall(str(text)))
    return needs


def job_requirements(plan: expand.Plan) -> Requirements:
    """Names the job uses: exact (every variant scanned) when the job is small enough."""
    names: dict[str, set[str]] = {k: set() for k in KINDS}
    exact = expand.count(plan) <= EXACT_SCAN_LIMIT
    if exact:
        for variant in expand.variants(plan):
            for kind, found in variant_needs(variant).items():
                names[kind] |= found
    else:  # templates, defaults and axes, without expanding a huge job
        for checkpoint in expand.checkpoints(plan):
            if checkpoint:
                names["checkpoint"].add(checkpoint)
        texts = [t.text for t in plan.templates]
        for text in texts:
            names["lora"].update(m.strip() for m in _LORA_TAG.findall(text))
        if plan.spec.loras:
            names["lora"].update(plan.spec.loras.names)
        samples = [plan.spec.defaults, *(t.overrides for t in plan.templates)]
        for axis in plan.axes:
            if axis.kind == "matrix":
                samples += [{expand.MATRIX_ALIASES.get(axis.name, axis.name): v}
                            for v in axis.values]
            elif axis.kind == "zip":
                samples += list(axis.values)
        for sample in samples:
            for key, kind in (("sampler_name", "sampler"), ("scheduler", "scheduler")):
                if sample.get(key):
                    names[kind].add(str(sample[key]))
    return Requirements({k: frozenset(v) for k, v in names.items()}, exact)


# --- asking the backends -----------------------------------------------------------------------

async def inspect_backend(client: BackendClient) -> BackendInfo:
    label = client.label
    try:
        options = await client.probe_options()
    except HTTPStatusError as exc:
        return BackendInfo(label, reachable=exc.status != 401, error=str(exc),
                           auth_rejected=exc.status == 401)
    except BackendError as exc:
        return BackendInfo(label, reachable=False, error=str(exc))

    async def listing(path: str) -> Any:
        """A list the server may not have (404 on older versions and forks): None if absent."""
        try:
            return await client.get_json(path)
        except BackendError:
            return None

    paths = ["/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/schedulers",
             "/sdapi/v1/loras", "/sdapi/v1/sd-vae", "/sdapi/v1/sd-modules", "/sdapi/v1/scripts",
             "/sdapi/v1/embeddings"]
    # One at a time: a backend's per-host limit holds for our cheap GETs too.
    models, samplers, schedulers, loras, vaes, modules, scripts, embeddings = \
        [await listing(p) for p in paths]
    names: dict[str, frozenset[str]] = {}
    shown: dict[str, tuple[str, ...]] = {}

    def add(kind: str, items: Any, spellings: Any, display: str) -> None:
        if not isinstance(items, list):
            return
        accepted: set[str] = set()
        disp: list[str] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            for spelling in spellings(item):
                if spelling:
                    accepted.add(str(spelling))
            if item.get(display):
                disp.append(str(item[display]))
        names[kind] = frozenset(accepted)
        shown[kind] = tuple(disp)

    add("checkpoint", models, _checkpoint_spellings, "model_name")
    add("sampler", samplers, lambda s: [s.get("name"), *[a.lower() for a in s.get("aliases") or []
                                                         if isinstance(a, str)]], "name")
    add("scheduler", schedulers, lambda s: [s.get("name"), s.get("label")], "name")
    add("lora", loras, lambda x: [x.get("name"), x.get("alias")], "name")
    vae_items = vaes if isinstance(vaes, list) else modules
    add("vae", vae_items, lambda v: [v.get("model_name"), v.get("filename"),
                                     _basename(v.get("filename"))], "model_name")
    if isinstance(embeddings, dict) and isinstance(embeddings.get("loaded"), dict):
        shown["embedding"] = tuple(sorted(embeddings["loaded"]))
    server = "Forge" if isinstance(modules, list) else (
        "AUTOMATIC1111 v1.9+" if isinstance(schedulers, list) else "AUTOMATIC1111 <1.9 or SD.Next")
    dynamic = None
    if isinstance(scripts, dict):
        for title in [*(scripts.get("txt2img") or []), *(scripts.get("img2img") or [])]:
            if isinstance(title, str) and "dynamic prompts" in title.lower():
                dynamic = title
                break
    aliases = {str(a).lower(): str(s["name"]) for s in samplers or [] if isinstance(s, dict)
               and s.get("name") for a in s.get("aliases") or [] if isinstance(a, str)}
    return BackendInfo(label, reachable=True, server=server,
                       loaded_model=options.get("sd_model_checkpoint"), names=names,
                       shown=shown, dynamic_prompts=dynamic, sampler_aliases=aliases)


def _basename(path: Any) -> str | None:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1] if path else None


def _checkpoint_spellings(model: dict[str, Any]) -> list[str]:
    """Every way ``override_settings.sd_model_checkpoint`` may name this model."""
    out = [model.get("title"), model.get("model_name"), model.get("hash"), model.get("sha256")]
    filename = _basename(model.get("filename"))
    if filename:
        out += [filename, model.get("filename")]
    title = model.get("title")
    if isinstance(title, str):
        out.append(re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", title))
    return [str(x) for x in out if x]


async def inspect_all(session: aiohttp.ClientSession, backends: Iterable[BackendSpec]
                      ) -> list[BackendInfo]:
    clients = [BackendClient(session, b) for b in backends]
    return list(await asyncio.gather(*(inspect_backend(c) for c in clients)))


# --- judging -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    name: str
    available_on: tuple[str, ...]
    missing_on: tuple[str, ...]
    suggestions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    infos: tuple[BackendInfo, ...]
    findings: tuple[Finding, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


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
            pool = sorted({n for i in reachable for n in i.shown.get(kind, ())})
            suggestions = tuple(difflib.get_close_matches(name, pool, n=3, cutoff=0.5))
            findings.append(Finding(kind, name, have, lack, suggestions))
            if reachable and not have:
                hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions \
                    else (f"; available: {', '.join(pool[:8])}" if pool else "")
                problems.append(f"{kind} {name!r} is on no backend{hint}")
    return Verdict(tuple(infos), tuple(findings), tuple(problems))


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
        return not any((kind, name) in lacks for kind, names in variant_needs(variant).items()
                       for name in names)

    return can_serve


def payload_extras(info: BackendInfo) -> dict[str, Any]:
    """Per-backend additions to every request: switch off server-side prompt re-expansion."""
    if info.dynamic_prompts:
        return {"alwayson_scripts": {info.dynamic_prompts: {"args": [False]}}}
    return {}


async def check_backends(session: aiohttp.ClientSession, spec: JobSpec, plan: expand.Plan,
                         backends: Iterable[BackendSpec]) -> Verdict:
    """The preflight ``sdbatch run`` does: the verdict, or ``PreflightError`` when it cannot run."""
    infos = await inspect_all(session, backends)
    verdict = judge(job_requirements(plan), infos, spec)
    if not verdict.ok:
        raise PreflightError("the job cannot run on these backends:\n  - "
                             + "\n  - ".join(verdict.problems)
                             + "\n  fix: correct the names in the job file (they are matched "
                               "exactly), or add backends that have them; 'sdbatch check "
                               f"{spec.source_path}' shows every backend's lists")
    return verdict


def setup_for(verdict: Verdict, label: str) -> Any:
    """What the client for ``label`` needs from preflight."""
    setup = getattr(verdict, "setup_for", None)
    if callable(setup):
        return setup(label)
    for info in verdict.infos:
        if info.label == label:
            return {"payload_extras": payload_extras(info),
                    "sampler_aliases": info.sampler_aliases}
    return None
