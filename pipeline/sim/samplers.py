"""Which sampler and scheduler a request gets, as each server kind decides it. Pure.

Realistic profiles follow A1111 v1.10's ``get_sampler_and_scheduler`` (Forge shares it):

1. the scheduler is looked up by label or name (``"Karras"``, ``"karras"``), else Automatic;
2. a scheduler suffix on the sampler name is split off (``"DPM++ 2M Karras"``);
3. the sampler must match a name exactly, else it silently becomes the first sampler (aliases
   such as ``k_euler_a`` are *not* names, so they are substituted too); SD.Next answers 404;
4. Automatic, or the sampler's own default scheduler, becomes that default at sampling time
   (``DPM++ 2M`` -> Karras), which is what the infotext reports.

The classic profile keeps the simulator's original, more forgiving rules (aliases accepted,
Automatic stays Automatic).
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.sim import forge_data
from pipeline.sim.config import SimConfig
from pipeline.sim.faults import http_error_for
from pipeline.sim.request import GenerationRequest, RequestInvalid

log = logging.getLogger(__name__)

# name -> {"aliases": [...], "options": {...}}, as /samplers lists them (Forge's table)
SAMPLER_INFO: dict[str, dict[str, Any]] = {
    entry["name"]: {"aliases": list(entry["aliases"]), "options": dict(entry["options"])}
    for entry in forge_data.SAMPLERS
}
SCHEDULER_INFO: dict[str, dict[str, Any]] = {entry["label"]: entry
                                             for entry in forge_data.SCHEDULERS}


def scheduler_name(label: str) -> str:
    """The scheduler's machine name beside its label: "SGM Uniform" -> "sgm_uniform"."""
    known = SCHEDULER_INFO.get(label)
    return str(known["name"]) if known else label.lower().replace(" ", "_")


def sampler_names(config: SimConfig) -> tuple[str, ...]:
    """Sampler names the server lists. Servers without schedulers (A1111 < 1.9) list the
    combined "<sampler> Karras" names as samplers of their own."""
    if config.has_schedulers or config.kind == "sdnext" or config.profile != "classic":
        return config.samplers
    combined = tuple(f"{name} Karras" for name in config.samplers if name.startswith("DPM"))
    return (*config.samplers, *combined)


def aliases_of(name: str) -> list[str]:
    return list(SAMPLER_INFO.get(name.removesuffix(" Karras"), {}).get("aliases", []))


def options_of(name: str) -> dict[str, Any]:
    return dict(SAMPLER_INFO.get(name, {}).get("options", {}))


def resolve_sampler(req: GenerationRequest, config: SimConfig) -> tuple[str, str | None]:
    """(sampler, scheduler label or None) as the server resolves them; 404 where the kind
    says so. The label is the one the infotext's ``Schedule type`` reports."""
    asked = req.sampler_name or req.value("sampler_index") or "Euler"
    if config.profile == "classic":
        return _classic(asked, req.scheduler, config)
    labels = config.schedulers if config.has_schedulers and config.schedulers else ()
    by_key = {key: label for label in labels for key in (label, scheduler_name(label))}
    automatic = labels[0] if labels else None
    found = by_key.get(req.scheduler or "", automatic)
    name = asked
    for label in labels:  # A1111 tries every scheduler's label and name as a suffix
        for option in (label, scheduler_name(label)):
            if name.endswith(" " + option):
                found, name = label, name[: -len(option) - 1]
                break
    alias_of = {alias.lower(): s for s in config.samplers for alias in aliases_of(s)}
    if name in config.samplers:
        sampler = name
    elif config.server.sampler_aliases and name.lower() in alias_of:
        sampler = alias_of[name.lower()]
    elif config.sampler_strict:
        raise RequestInvalid(404, http_error_for(config, 404, "Sampler not found"))
    else:
        log.info("unknown sampler %r: using %r instead", asked, config.samplers[0])
        sampler = config.samplers[0]
    if found is None or not config.server.sampler_default_scheduler:
        return sampler, found
    own = by_key.get(str(options_of(sampler).get("scheduler", "")))
    if own is not None and found in (automatic, own):
        return sampler, own
    return sampler, found


def _classic(asked: str, scheduler: str | None, config: SimConfig) -> tuple[str, str | None]:
    name = asked.strip()
    labels = config.schedulers if config.has_schedulers and config.schedulers else ()
    found = labels[0] if labels else None
    if labels:
        wanted = (scheduler or "").strip()
        for label in labels:
            if wanted in (label, scheduler_name(label)):
                found = label
        # a legacy combined name ("DPM++ 2M Karras") is split into sampler + scheduler
        for label in sorted(labels, key=len, reverse=True):
            if name.endswith(" " + label):
                name, found = name[: -len(label) - 1], label
                break
    if name in sampler_names(config):
        return name, found
    for sampler in config.samplers:
        if name.lower() in (alias.lower() for alias in aliases_of(sampler)):
            return sampler, found
    if config.sampler_strict:
        raise RequestInvalid(404, http_error_for(config, 404, "Sampler not found"))
    log.info("unknown sampler %r: using %r instead", asked, config.samplers[0])
    return config.samplers[0], found
