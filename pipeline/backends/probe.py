"""``sdbatch check --probe``: prove each backend honours every name before a long run starts.

A name can be listed by a backend and still not be used (a LoRA that fails to load is stripped,
a sampler alias becomes "DPM++ 2M", Forge ignores ``sd_vae``), so preflight's lists are not the
last word. The probe makes one tiny generation (64x64, 1 step) per distinct
checkpoint/sampler/scheduler/VAE/LoRA combination the job uses (``name_combinations``) on each
backend that would serve it, sent exactly as the run would send it (the backend's
``ClientSetup``), and reads the infotext back: what the server used instead is reported per
backend. ``probe_cost`` states what that costs before anything is sent.

    combos = name_combinations(plan)
    print(probe_cost(combos, verdict).describe())
    findings = await probe_names(session, backends, verdict, combos)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline.backends.preflight import Verdict, router
from pipeline.backends.requirements import NameCombo, name_combinations
from pipeline.backends.webui.client import WebUIClient
from pipeline.backends.webui.response import split_images
from pipeline.backends.webui.substitution import find_substitutions
from pipeline.errors import BackendError
from pipeline.expand import variant_id
from pipeline.job.schema import BackendSpec
from pipeline.model import Variant

__all__ = ["NameCombo", "ProbeCost", "ProbeFinding", "name_combinations", "probe_cost",
           "probe_names", "probe_variant"]

PROBE_FIELDS: dict[str, Any] = {"width": 64, "height": 64, "steps": 1, "batch_size": 1,
                                "n_iter": 1, "cfg_scale": 1, "seed": 1, "save_images": False,
                                "send_images": True, "negative_prompt": ""}
PROBE_TIMEOUT_S = 120.0
# Defaults for the estimate: a tiny 1-step image is seconds on a GPU, up to ~10 s on a busy CPU.
DEFAULT_REQUEST_S = 5.0
DEFAULT_LOAD_S = 10.0


@dataclass(frozen=True, slots=True)
class ProbeFinding:
    """What one backend did with one combination. ``substituted``: each thing it used instead."""

    backend: str
    combo: NameCombo
    substituted: tuple[str, ...] = ()
    error: str = ""
    elapsed_s: float = 0.0
    version: str | None = None  # info.version: "f2..." is Forge (kinds.detect_kind)

    @property
    def ok(self) -> bool:
        return not self.substituted and not self.error


@dataclass(frozen=True, slots=True)
class ProbeCost:
    requests: int
    per_backend: dict[str, int] = field(default_factory=dict, hash=False)
    checkpoint_loads: int = 0
    estimated_s: float = 0.0  # backends run side by side: the slowest one's share

    def describe(self) -> str:
        shares = ", ".join(f"{n} on {b}" for b, n in self.per_backend.items())
        return (f"the probe makes {self.requests} tiny generation(s) (64x64, 1 step)"
                f"{': ' + shares if shares else ''}, with up to {self.checkpoint_loads} "
                f"checkpoint load(s); about {self.estimated_s:.0f} s")


def probe_variant(combo: NameCombo) -> Variant:
    """The request that tries ``combo``: tiny, fixed seed, LoRAs at weight 1."""
    prompt = " ".join(["sdbatch probe", *(f"<lora:{n}:1>" for n in combo.loras)])
    payload: dict[str, Any] = {**PROBE_FIELDS, "prompt": prompt}
    if combo.sampler:
        payload["sampler_name"] = combo.sampler
    if combo.scheduler:
        payload["scheduler"] = combo.scheduler
    overrides = {}
    if combo.checkpoint:
        overrides["sd_model_checkpoint"] = combo.checkpoint
    if combo.vae:
        overrides["sd_vae"] = combo.vae
    if overrides:
        payload["override_settings"] = overrides
    return Variant(id=variant_id("txt2img", payload, "probe"), ordinal=0, prompt=prompt,
                   negative_prompt="", seed=1, payload=payload)


def _plan(combos: Iterable[NameCombo], verdict: Verdict) -> dict[str, list[NameCombo]]:
    """Which combinations each reachable WebUI backend would serve, checkpoint by checkpoint."""
    can_serve = router(verdict)
    out: dict[str, list[NameCombo]] = {}
    ordered = sorted(combos, key=lambda c: (c.checkpoint or "", c.describe()))
    for info in verdict.infos:
        if not info.reachable or info.kind == "comfyui":
            continue
        out[info.label] = [c for c in ordered
                           if can_serve is None or can_serve(info.label, probe_variant(c))]
    return out


def probe_cost(combos: Iterable[NameCombo], verdict: Verdict, *,
               request_s: float = DEFAULT_REQUEST_S, load_s: float = DEFAULT_LOAD_S
               ) -> ProbeCost:
    plan = _plan(list(combos), verdict)
    per_backend = {label: len(items) for label, items in plan.items()}
    loads = {label: len({c.checkpoint for c in items if c.checkpoint})
             for label, items in plan.items()}
    slowest = max((per_backend[b] * request_s + loads[b] * load_s for b in plan), default=0.0)
    return ProbeCost(sum(per_backend.values()), per_backend, sum(loads.values()), slowest)


async def probe_names(session: aiohttp.ClientSession, backends: Iterable[BackendSpec],
                      verdict: Verdict, combos: Iterable[NameCombo] | None = None, *,
                      plan: Any = None, timeout_s: float = PROBE_TIMEOUT_S
                      ) -> dict[str, list[ProbeFinding]]:
    """Try every combination on every backend that would serve it (one request at a time per
    backend, backends side by side); per backend, what each combination got."""
    if combos is None:
        if plan is None:
            raise ValueError("probe_names needs the combinations or the plan")
        combos = name_combinations(plan)
    work = _plan(list(combos), verdict)
    specs = {b.label: b for b in backends if b.label in work}

    async def one_backend(label: str) -> list[ProbeFinding]:
        spec = specs[label].model_copy(update={"timeout_s": min(timeout_s,
                                                                specs[label].timeout_s)})
        client = WebUIClient(session, spec, verdict.setup_for(label))
        return [await _try(client, combo) for combo in work[label]]

    labels = list(specs)
    results = await asyncio.gather(*(one_backend(label) for label in labels))
    return dict(zip(labels, results))


async def _try(client: WebUIClient, combo: NameCombo) -> ProbeFinding:
    variant = probe_variant(combo)
    started = time.monotonic()
    try:
        params, data, _, elapsed_s = await client.exchange(variant)
        images, info = split_images(data, variant)
    except BackendError as exc:
        return ProbeFinding(client.label, combo, error=str(exc),
                            elapsed_s=time.monotonic() - started)
    found = find_substitutions(params, info, images, client.setup)
    version = info.get("version")
    return ProbeFinding(client.label, combo, tuple(str(m) for m in found), elapsed_s=elapsed_s,
                        version=str(version) if version else None)
