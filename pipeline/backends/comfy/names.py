"""A1111 names -> ComfyUI names: an explicit table, used only when a name is not ComfyUI's own.

Pure. ComfyUI matches names exactly and answers 400 ``value_not_in_list`` for A1111 spellings
(``Euler a``, ``Karras``, ``tiny-a`` without its extension), so a job written for the WebUI
needs its names mapped. The rules, in order, for each kind:

1. A name the server lists (``Catalog``) is used as written.
2. Samplers and schedulers: the table below, case-insensitively, after splitting a legacy
   combined name (``DPM++ 2M Karras`` = ``DPM++ 2M`` + ``Karras`` -> ``dpmpp_2m`` + ``karras``).
   ``Automatic`` (A1111's "the sampler's default") is ComfyUI's ``normal``.
3. Checkpoints, LoRAs, VAEs: the one file whose name without folder and extension equals the
   name (``tiny-a`` -> ``tiny-a.safetensors``; an A1111 title's ``[hash]`` is dropped first).
   Two such files (``x.ckpt`` and ``x.safetensors``) are ambiguous and refused.
4. Anything else is refused (``NameRefused``) with the closest names the server has.

With no catalog (the server's lists unknown) rules 2 and 3 apply to the table only and any
other name passes through: the server's own validation then has the last word.

| A1111 / Forge sampler | ComfyUI | | A1111 schedule type | ComfyUI |
| --- | --- | --- | --- | --- |
| Euler | euler | | Automatic | normal |
| Euler a | euler_ancestral | | Uniform | normal |
| Heun | heun | | Normal | normal |
| LMS | lms | | Karras | karras |
| DPM2 / DPM2 a | dpm_2 / dpm_2_ancestral | | Exponential | exponential |
| DPM++ 2S a | dpmpp_2s_ancestral | | SGM Uniform | sgm_uniform |
| DPM++ 2M | dpmpp_2m | | Simple | simple |
| DPM++ SDE | dpmpp_sde | | DDIM | ddim_uniform |
| DPM++ 2M SDE (Heun) | dpmpp_2m_sde(_heun) | | Beta | beta |
| DPM++ 3M SDE | dpmpp_3m_sde | | KL Optimal | kl_optimal |
| DPM fast / adaptive | dpm_fast / dpm_adaptive | | Polyexponential, Align Your Steps | refused |
| LCM, DDIM, DDPM, UniPC | lcm, ddim, ddpm, uni_pc | | | |
| IPNDM, IPNDM_V, DEIS | ipndm, ipndm_v, deis | | | |
| Euler CFG++, Euler a CFG++, DPM++ 2M CFG++ | euler_cfg_pp, euler_ancestral_cfg_pp, dpmpp_2m_cfg_pp | | | |
| Restart, PLMS, DDIM CFG++ | refused (no ComfyUI equivalent) | | | |
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import HTTPStatusError
from pipeline.names import HASH_SUFFIX

SAMPLERS: dict[str, str] = {
    "Euler": "euler", "Euler a": "euler_ancestral", "Heun": "heun", "LMS": "lms",
    "DPM2": "dpm_2", "DPM2 a": "dpm_2_ancestral", "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ 2M": "dpmpp_2m", "DPM++ SDE": "dpmpp_sde", "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "dpmpp_2m_sde_heun", "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DPM fast": "dpm_fast", "DPM adaptive": "dpm_adaptive", "LCM": "lcm", "DDIM": "ddim",
    "DDPM": "ddpm", "UniPC": "uni_pc", "IPNDM": "ipndm", "IPNDM_V": "ipndm_v", "DEIS": "deis",
    "Euler CFG++": "euler_cfg_pp", "Euler a CFG++": "euler_ancestral_cfg_pp",
    "DPM++ 2M CFG++": "dpmpp_2m_cfg_pp",
    # A1111's lower-case aliases
    "k_euler": "euler", "k_euler_a": "euler_ancestral", "k_heun": "heun", "k_lms": "lms",
    "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_ancestral", "k_dpmpp_2s_a": "dpmpp_2s_ancestral",
    "k_dpmpp_2m": "dpmpp_2m", "k_dpmpp_sde": "dpmpp_sde", "k_dpmpp_2m_sde": "dpmpp_2m_sde",
    "k_dpmpp_3m_sde": "dpmpp_3m_sde", "k_dpm_fast": "dpm_fast", "k_dpm_ad": "dpm_adaptive",
}
SCHEDULERS: dict[str, str] = {
    "Automatic": "normal", "Uniform": "normal", "Normal": "normal", "Karras": "karras",
    "Exponential": "exponential", "SGM Uniform": "sgm_uniform", "Simple": "simple",
    "DDIM": "ddim_uniform", "Beta": "beta", "KL Optimal": "kl_optimal",
}
UNSUPPORTED: dict[str, str] = {
    "restart": "sampler", "plms": "sampler", "ddim cfg++": "sampler",
    "polyexponential": "scheduler", "align your steps": "scheduler",
}
_SAMPLERS_LOWER = {k.lower(): v for k, v in SAMPLERS.items()}
_SCHEDULERS_LOWER = {k.lower(): v for k, v in SCHEDULERS.items()}
# ComfyUI name -> the A1111 display name, for A1111-style infotexts (first table entry wins)
A1111_SAMPLER: dict[str, str] = {}
for _a1111, _comfy in SAMPLERS.items():
    if not _a1111.startswith("k_"):
        A1111_SAMPLER.setdefault(_comfy, _a1111)
A1111_SCHEDULER: dict[str, str] = {v: k for k, v in SCHEDULERS.items() if k not in
                                   ("Automatic", "Uniform")}

# A1111 < 1.9 named sampler + schedule in one: "DPM++ 2M Karras" (longest suffixes first)
_LEGACY_SUFFIXES = ("SGM Uniform", "KL Optimal", "Exponential", "Karras", "Simple", "Normal",
                    "Beta", "DDIM", "Uniform")


def split_legacy_sampler(name: str) -> tuple[str, str] | None:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; None without such a suffix."""
    for suffix in _LEGACY_SUFFIXES:
        if name.lower().endswith(" " + suffix.lower()) and len(name) > len(suffix) + 1:
            return name[: -len(suffix) - 1], suffix
    return None


_MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
FILE_KINDS = ("checkpoint", "lora", "vae")


class NameRefused(HTTPStatusError):
    """A name the server does not have and no rule maps: fix the job (never retried).

    ``status`` is 400, as for the server's own ``value_not_in_list`` refusal.
    """

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message, backend=backend, status=400)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The names one ComfyUI server accepts, by kind (None: that list is unknown)."""

    checkpoint: tuple[str, ...] | None = None
    lora: tuple[str, ...] | None = None
    sampler: tuple[str, ...] | None = None
    scheduler: tuple[str, ...] | None = None
    vae: tuple[str, ...] | None = None
    version: str | None = None
    classes: frozenset[str] | None = None  # node classes asked about that the server has

    def names(self, kind: str) -> tuple[str, ...] | None:
        return getattr(self, kind)


def stem(filename: str) -> str:
    """``"sd15/tiny-a.safetensors"`` -> ``"tiny-a"``."""
    return _MODEL_EXT.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1])


def combo_choices(spec: Any) -> list[str] | None:
    """The choices of an ``/object_info`` combo input, old (``[[...], {}]``) or new form
    (``["COMBO", {"options": [...]}]``); None when the input is not a combo."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(c) for c in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        if isinstance(options, list):
            return [str(c) for c in options]
    return None


def input_choices(node_info: Any, field: str) -> list[str] | None:
    """The choices of ``field`` in one ``/object_info`` class entry."""
    if not isinstance(node_info, dict):
        return None
    inputs = node_info.get("input")
    if not isinstance(inputs, dict):
        return None
    for group in ("required", "optional"):
        section = inputs.get(group)
        if isinstance(section, dict) and field in section:
            return combo_choices(section[field])
    return None


def _suggest(name: str, pool: Iterable[str]) -> str:
    pool = sorted(set(pool))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name, sorted({stem(p) for p in pool}), n=3, cutoff=0.5)
    if close:
        return "; did you mean " + ", ".join(repr(c) for c in close) + "?"
    return f"; it has {', '.join(pool[:8])}{'…' if len(pool) > 8 else ''}" if pool else ""


class Names:
    """Maps a job's names to one server's, by the rules in the module docstring."""

    def __init__(self, catalog: Catalog | None = None, *, label: str = "") -> None:
        self.catalog = catalog or Catalog()
        self.label = label

    def _refuse(self, kind: str, name: str, why: str = "", pool: Iterable[str] = ()) -> NameRefused:
        where = f"{self.label}: " if self.label else ""
        return NameRefused(f"{where}{kind} {name!r} {why or 'is not on this ComfyUI server'}"
                           f"{_suggest(name, pool)}", backend=self.label)

    def sampler(self, name: str, scheduler: str | None = None) -> tuple[str, str | None]:
        """(ComfyUI sampler, ComfyUI scheduler or None to keep the workflow's)."""
        known = self.catalog.sampler
        chosen_scheduler = self.scheduler(scheduler) if scheduler else None
        if known is not None and name in known:
            return name, chosen_scheduler
        mapped = _SAMPLERS_LOWER.get(name.strip().lower())
        legacy_scheduler = None
        if mapped is None:
            legacy = split_legacy_sampler(name.strip())
            if legacy and legacy[0].lower() in _SAMPLERS_LOWER:
                mapped = _SAMPLERS_LOWER[legacy[0].lower()]
                legacy_scheduler = legacy[1]
        if mapped is None:
            if known is None and name.strip().lower() not in UNSUPPORTED:
                return name, chosen_scheduler
            why = ("has no ComfyUI equivalent" if name.strip().lower() in UNSUPPORTED
                   else "is neither a ComfyUI sampler nor an A1111 name sdbatch maps")
            raise self._refuse("sampler", name, why, [*(known or ()), *SAMPLERS])
        if known is not None and mapped not in known:
            raise self._refuse("sampler", name, f"maps to {mapped!r}, which this server lacks",
                               known)
        if legacy_scheduler and (scheduler is None or scheduler.strip().lower() == "automatic"):
            chosen_scheduler = self.scheduler(legacy_scheduler)
        return mapped, chosen_scheduler

    def scheduler(self, name: str) -> str:
        known = self.catalog.scheduler
        if known is not None and name in known:
            return name
        mapped = _SCHEDULERS_LOWER.get(name.strip().lower())
        if mapped is None:
            if known is None and name.strip().lower() not in UNSUPPORTED:
                return name
            why = ("has no ComfyUI equivalent" if name.strip().lower() in UNSUPPORTED
                   else "is neither a ComfyUI scheduler nor an A1111 name sdbatch maps")
            raise self._refuse("scheduler", name, why, [*(known or ()), *SCHEDULERS])
        if known is not None and mapped not in known:
            raise self._refuse("scheduler", name, f"maps to {mapped!r}, which this server lacks",
                               known)
        return mapped

    def file(self, kind: str, name: str) -> str:
        """A checkpoint, LoRA or VAE name as the server's file name."""
        known = self.catalog.names(kind)
        if known is None or name in known:
            return name
        matches = file_matches(name, known)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise self._refuse(kind, name, "is ambiguous on this server (" + ", ".join(
                matches) + "); write the file name", ())
        raise self._refuse(kind, name, pool=known)

    def accepts(self, kind: str, name: str) -> bool:
        """Would ``name`` resolve on this server (for preflight)?"""
        try:
            if kind == "sampler":
                self.sampler(name)
            elif kind == "scheduler":
                self.scheduler(name)
            else:
                self.file(kind, name)
        except NameRefused:
            return False
        return True


def file_matches(name: str, files: Iterable[str]) -> list[str]:
    """Files ``name`` may mean: by base name, or by base name without extension."""
    want = HASH_SUFFIX.sub("", name.strip()).replace("\\", "/")
    base = want.rsplit("/", 1)[-1]
    files = list(files)
    exact = [f for f in files if f.replace("\\", "/") == want
             or f.replace("\\", "/").rsplit("/", 1)[-1] == base]
    if exact:
        return exact
    return [f for f in files if stem(f) == stem(base)]


def spellings(kind: str, names: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(every spelling that resolves, display names) for one kind of one server's list.

    The accepted set is what ``BackendInfo.has`` checks: ComfyUI's own names plus each A1111
    name the table maps onto one of them, and each file's unambiguous stem.
    """
    names = list(names)
    accepted: set[str] = set(names)
    shown: list[str] = list(names)
    if kind in FILE_KINDS:
        stems: dict[str, list[str]] = {}
        for n in names:
            stems.setdefault(stem(n), []).append(n)
            accepted.add(n.replace("\\", "/").rsplit("/", 1)[-1])
        for s, files in stems.items():
            if len(files) == 1:
                accepted.add(s)
                shown.append(s)
    else:
        table = SAMPLERS if kind == "sampler" else SCHEDULERS
        present = set(names)
        for a1111, comfy in table.items():
            if comfy in present:
                accepted.update((a1111, a1111.lower()))
                if not a1111.startswith("k_"):
                    shown.append(a1111)
    return frozenset(accepted), tuple(dict.fromkeys(shown))
