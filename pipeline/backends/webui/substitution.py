"""After every response: did the server use what was asked? Pure.

Every WebUI answers HTTP 200 while silently using something else: an unknown checkpoint is
ignored (the loaded one generates), an unknown LoRA tag is stripped (the only trace: no
``Lora hashes`` entry), an unknown sampler or sampler alias becomes "DPM++ 2M" + Karras (Forge), an
unknown scheduler "Automatic", ``sd_vae`` is ignored by Forge, and settings leak from one request
into the next. So what the infotext of each image (``info.infotexts[i]``) says was used is
compared with what was sent:

    model (Model / Model hash), sampler, Schedule type, every LoRA with a non-zero weight
    (Lora hashes), Clip skip, and the VAE (A1111 "VAE:", Forge "Module N:") where one was asked

Any difference is a ``SubstitutionError``: a failure on that backend, never a saved image. What
a server does not report at all (older forks, SD.Next without infotexts) cannot be checked and
passes; what it reports must agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import infotext as infotexts
from pipeline import names
from pipeline.backends.webui.setup import AUTOMATIC_VAES, ClientSetup
from pipeline.errors import SubstitutionError
from pipeline.model import Image

LEGACY_SCHEDULERS = ("Karras", "Exponential", "SGM Uniform", "Uniform", "Polyexponential",
                     "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "KL Optimal")


@dataclass(frozen=True, slots=True)
class Mismatch:
    what: str  # "checkpoint" | "sampler" | "scheduler" | "LoRA" | "clip skip" | "VAE"
    asked: str
    used: str

    def __str__(self) -> str:
        return f"asked for {self.what} {self.asked!r} but the server used {self.used}"


@dataclass(frozen=True, slots=True)
class Reported:
    """What one response says it used. None: not reported (cannot be checked)."""

    model: str | None
    model_hash: str | None
    sampler: str | None
    schedule: str | None
    loras: frozenset[str] | None  # lower-case names in "Lora hashes"
    clip_skip: str | None
    vae: str | None
    modules: tuple[str, ...]
    has_infotext: bool


def reported(info: dict[str, Any], text: str | None) -> Reported:
    """Read one image's infotext (falling back on ``info``'s own fields)."""
    extra = info.get("extra_generation_params")
    extra = extra if isinstance(extra, dict) else {}
    if text:
        parsed = infotexts.parse(text)
        params: dict[str, Any] = parsed.params
    else:
        params = {}
    has_text = bool(params)

    def pick(key: str, fallback: Any = None) -> str | None:
        value = params.get(key, fallback)
        return str(value) if value not in (None, "") else None

    lora_text = params.get("Lora hashes") if has_text else extra.get("Lora hashes")
    if has_text or "Lora hashes" in extra:
        loras: frozenset[str] | None = frozenset(
            n.lower() for n in infotexts.parse_pairs(str(lora_text) if lora_text else None))
    else:
        loras = None
    modules = tuple(v for k, v in params.items() if k.startswith("Module ") and v) \
        if "Module 1" in params else ()
    return Reported(
        model=pick("Model", info.get("sd_model_name")),
        model_hash=pick("Model hash", info.get("sd_model_hash")),
        sampler=pick("Sampler", info.get("sampler_name")),
        schedule=pick("Schedule type", extra.get("Schedule type")),
        loras=loras, clip_skip=pick("Clip skip"),
        vae=pick("VAE") if has_text else (str(info["sd_vae_name"]) if info.get("sd_vae_name")
                                          else None),
        modules=modules, has_infotext=has_text)


def find_substitutions(params: dict[str, Any], info: dict[str, Any],
                       images: Sequence[Image] = (), setup: ClientSetup | None = None
                       ) -> list[Mismatch]:
    """Every way the response differs from the request ``params`` (as sent), over all images."""
    texts = [i.infotext for i in images if i.kind == "generation"]
    if not any(texts):
        texts = [None]
    found: list[Mismatch] = []
    for text in dict.fromkeys(texts):  # one batch's texts differ only by seed; check each once
        for mismatch in _compare(params, reported(info, text), setup):
            if mismatch not in found:
                found.append(mismatch)
    return found


def check_substitution(params: dict[str, Any], info: dict[str, Any],
                       images: Sequence[Image] = (), setup: ClientSetup | None = None,
                       *, backend: str = "") -> str | None:
    """Raise ``SubstitutionError`` naming every difference; else the model the server reports."""
    found = find_substitutions(params, info, images, setup)
    if found:
        where = f"{backend}: " if backend else ""
        raise SubstitutionError(
            where + "; ".join(str(m) for m in found) + ". The server silently replaces what it "
            "does not have (or kept a setting from an earlier request); check the names with "
            "'sdbatch check' (--probe tries each one)", backend=backend)
    texts = [i.infotext for i in images if i.kind == "generation" and i.infotext]
    model = reported(info, texts[0] if texts else None).model
    return model


def foreign_answer(params: dict[str, Any], info: dict[str, Any], echoed: Any = None) -> list[str]:
    """Why an answer is not the one to the request ``params`` (as sent): [] when it is.

    A cache, a proxy or a stub can answer 200 with images made for another request. With a
    fixed seed, ``all_seeds`` must be the seeds asked for (seed, seed+1, ... for a batch; all
    the seed when ``subseed_strength`` > 0), and ``all_prompts`` (``all_negative_prompts``)
    the prompt sent, as a WebUI echoes it: whitespace aside, and with ``styles`` the style
    text around it. ``parameters`` (``echoed``), where a server sends it, is the request
    itself: its seed and prompt must be the ones sent. A request with ``infotext`` lets the
    server take values from that text, so it is not compared."""
    if params.get("infotext"):
        return []
    found: list[str] = []
    seed = params.get("seed")
    count = _count(params.get("batch_size")) * _count(params.get("n_iter"))
    if _is_int(seed) and seed != -1:
        strength = params.get("subseed_strength")
        same = isinstance(strength, (int, float)) and not isinstance(strength, bool) \
            and strength > 0
        want = [seed] * count if same else [seed + i for i in range(count)]
        got = info.get("all_seeds")
        if isinstance(got, list) and got:
            if got[:count] != want:
                found.append(f"asked for seed{'s' if count > 1 else ''} {_few(want)} but "
                             f"info.all_seeds is {_few(got)}")
        elif "seed" in info and info.get("seed") != seed:
            found.append(f"asked for seed {seed} but info.seed is {info.get('seed')!r}")
    styled = bool(params.get("styles"))
    for key, many in (("prompt", "all_prompts"), ("negative_prompt", "all_negative_prompts")):
        sent = params.get(key, "")
        if not isinstance(sent, str):
            continue
        texts = info.get(many)
        texts = texts[:count] if isinstance(texts, list) and texts else (
            [info[key]] if key in info else [])
        wrong = next((t for t in texts if not _same_text(sent, t, styled)), None)
        if texts and wrong is not None:
            found.append(f"sent {key} {_short(sent)} but info.{many if many in info else key} "
                         f"has {_short(wrong)}")
    if isinstance(echoed, dict):
        if "seed" in echoed and _is_int(seed) and echoed["seed"] != seed \
                and not found:
            found.append(f"sent seed {seed} but parameters.seed is {echoed['seed']!r}")
        sent = params.get("prompt", "")
        if isinstance(sent, str) and isinstance(echoed.get("prompt"), str) and not found \
                and not _same_text(sent, echoed["prompt"], styled):
            found.append(f"sent prompt {_short(sent)} but parameters.prompt is "
                         f"{_short(echoed['prompt'])}")
    return found


def check_belongs(params: dict[str, Any], info: dict[str, Any], echoed: Any = None, *,
                  backend: str = "") -> None:
    """Raise ``SubstitutionError`` when the answer was made for another request."""
    found = foreign_answer(params, info, echoed)
    if found:
        where = f"{backend}: " if backend else ""
        raise SubstitutionError(
            where + "the answer is not the one to this request: " + "; ".join(found)
            + " (a cached, proxied or canned answer, or another client's); not saved",
            backend=backend)


def _same_text(sent: str, echoed: Any, styled: bool) -> bool:
    if not isinstance(echoed, str):
        return False
    a, b = " ".join(sent.split()), " ".join(echoed.split())
    return a == b or (styled and a in b)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return value if _is_int(value) and 0 < value < 10**6 else 1


def _few(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) if not _is_int(v) else str(v) for v in values[:4])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 4 else "")


def _short(text: Any) -> str:
    text = str(text)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _compare(params: dict[str, Any], rep: Reported, setup: ClientSetup | None) -> list[Mismatch]:
    overrides = params.get("override_settings")
    overrides = overrides if isinstance(overrides, dict) else {}
    out: list[Mismatch] = []
    asked = overrides.get("sd_model_checkpoint")
    if asked and (rep.model or rep.model_hash):
        ref = setup.checkpoints.get(str(asked)) if setup else None
        ok = ref.matches(rep.model, rep.model_hash) if ref else names.checkpoint_matches(
            str(asked), rep.model, rep.model_hash)
        if not ok:
            out.append(Mismatch("checkpoint", str(asked),
                                f"{rep.model!r} [{rep.model_hash or 'no hash'}]"))
    out += _samplers(params, rep, setup)
    out += _loras(str(params.get("prompt") or ""), rep, setup)
    clip = overrides.get("CLIP_stop_at_last_layers")
    if clip is not None and rep.has_infotext:
        try:
            want, got = int(float(clip)), int(float(rep.clip_skip or 1))
        except (TypeError, ValueError):
            pass
        else:
            if want != got:
                out.append(Mismatch("clip skip", str(want), str(got)))
    out += _vae(overrides, rep, setup)
    return out


def _samplers(params: dict[str, Any], rep: Reported, setup: ClientSetup | None
              ) -> list[Mismatch]:
    out: list[Mismatch] = []
    asked = params.get("sampler_name")
    legacy = split_legacy_sampler(str(asked)) if asked else None
    if asked and rep.sampler:
        spellings = {str(asked).lower()}
        if legacy:
            spellings.add(legacy[0].lower())
        if setup and str(asked) in setup.samplers:
            spellings.add(setup.samplers[str(asked)].lower())
        if rep.sampler.lower() not in spellings:
            out.append(Mismatch("sampler", str(asked), repr(rep.sampler)))
    scheduler = params.get("scheduler")
    if (not scheduler or _norm(scheduler) == "automatic") and legacy and rep.sampler \
            and rep.sampler.lower() != str(asked).lower():
        scheduler = legacy[1]  # the server split the legacy name: its scheduler must show
    if scheduler and _norm(scheduler) != "automatic":
        want = {_norm(scheduler)}
        if setup and str(scheduler) in setup.schedulers:
            want.add(_norm(setup.schedulers[str(scheduler)]))
        if rep.schedule is None:
            if rep.has_infotext and setup and setup.profile.always_writes_schedule_type:
                out.append(Mismatch("scheduler", str(scheduler), "none"))
        elif _norm(rep.schedule) not in want:
            out.append(Mismatch("scheduler", str(scheduler), repr(rep.schedule)))
    return out


def _loras(prompt: str, rep: Reported, setup: ClientSetup | None) -> list[Mismatch]:
    if rep.loras is None or "<" not in prompt:
        return []
    out: list[Mismatch] = []
    for tag in names.lora_tags(prompt):
        if not tag.active:
            continue
        accepted = {_lora_key(tag.name)}
        if setup:
            accepted |= setup.loras.get(tag.name.lower(), frozenset())
        if not accepted & rep.loras:
            listed = ", ".join(sorted(rep.loras)) or "none"
            out.append(Mismatch("LoRA", tag.name, f"no such LoRA ('Lora hashes' lists {listed})"))
    return out


def _vae(overrides: dict[str, Any], rep: Reported, setup: ClientSetup | None) -> list[Mismatch]:
    if not rep.has_infotext:
        return []
    modules = overrides.get("forge_additional_modules")
    if isinstance(modules, list):
        want = sorted(_stem(m) for m in modules if m)
        got = sorted(_stem(m) for m in rep.modules)
        if want != got:
            return [Mismatch("VAE/modules", ", ".join(want) or "none",
                             ", ".join(got) or "none")]
        return []
    asked = overrides.get("sd_vae")
    if asked is None or str(asked).lower() in ("automatic", ""):
        return []
    if str(asked).lower() in AUTOMATIC_VAES:  # "None": the checkpoint's own VAE
        if rep.vae:
            return [Mismatch("VAE", str(asked), repr(rep.vae))]
        return []
    if rep.vae is None or _stem(rep.vae) != _stem(str(asked)):
        forge = setup is not None and setup.profile.kind == "forge"
        used = repr(rep.vae) if rep.vae else "none" + (" (Forge ignores sd_vae)" if forge else "")
        return [Mismatch("VAE", str(asked), used)]
    return []


def split_legacy_sampler(name: str) -> tuple[str, str] | None:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; None when there is no such suffix."""
    for scheduler in LEGACY_SCHEDULERS:
        suffix = " " + scheduler
        if name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            return name[: -len(suffix)], scheduler
    return None


def _norm(name: Any) -> str:
    return str(name).strip().lower().replace("_", " ")


def _lora_key(name: str) -> str:
    """How a name appears in ``Lora hashes`` (the server drops ``:`` and ``,``)."""
    return name.replace(":", "").replace(",", "").strip().lower()


def _stem(name: Any) -> str:
    return names.MODEL_EXT.sub("", names.basename(str(name))).strip().lower()
