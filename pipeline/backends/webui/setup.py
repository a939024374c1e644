"""``ClientSetup``: everything a WebUI client needs from preflight, fixed before the run starts.

Preflight (``pipeline.backends.preflight``) builds one per backend from what that backend
reported; ``WebUIClient`` takes it at construction and nothing changes it afterwards. A client
without one sends variants as they are and checks responses by string rules alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline import names
from pipeline.backends.webui.kinds import ServerProfile, profile


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    """One ``/sd-models`` entry. ``hash``/``sha256`` are None until the server hashed it."""

    title: str
    model_name: str = ""
    filename: str | None = None
    hash: str | None = None
    sha256: str | None = None

    @property
    def stems(self) -> frozenset[str]:
        found = set(names.checkpoint_stems(self.title))
        if self.model_name:
            found |= names.checkpoint_stems(self.model_name)
        if self.filename:
            found |= names.checkpoint_stems(names.basename(self.filename))
        return frozenset(found)

    def matches(self, name: str | None, model_hash: str | None) -> bool:
        """Is the model a response reports this one? A known hash decides; else the name."""
        if not name and not model_hash:
            return True
        known = self.sha256 or self.hash or names.title_parts(self.title)[1]
        if model_hash and known:
            return names.hashes_match(str(model_hash), known)
        return bool(name) and str(name).lower() in self.stems


@dataclass(frozen=True, slots=True)
class ClientSetup:
    """What one backend needs to be sent, and what its answers must show.

    - ``payload_extras``: merged into every request (dicts merged key by key, the variant's own
      keys win), e.g. the Dynamic Prompts switch-off in ``alwayson_scripts``;
    - ``samplers``: every sampler spelling the job uses -> this backend's ``/samplers`` name (never
      an alias); ``implied_schedulers``: a legacy "DPM++ 2M Karras" -> "Karras";
    - ``schedulers``: spelling -> the label to send;
    - ``checkpoints``: spelling -> the ``/sd-models`` entry it names (for the response check);
    - ``loras``: lower-case name as tagged -> lower-case keys ``Lora hashes`` may list it under;
    - ``vaes``: spelling -> what to send (an ``sd_vae`` name, or a Forge module file name);
    - ``override_pins``: every ``override_settings`` key any variant of the job sets on this
      backend -> the value to send when a variant does not set it (what the server reported at
      start), so no variant inherits a setting another one leaked.
    """

    label: str = ""
    kind: str = "unknown"
    version: str | None = None
    payload_extras: Mapping[str, Any] = field(default_factory=dict, hash=False)
    samplers: Mapping[str, str] = field(default_factory=dict, hash=False)
    implied_schedulers: Mapping[str, str] = field(default_factory=dict, hash=False)
    schedulers: Mapping[str, str] = field(default_factory=dict, hash=False)
    checkpoints: Mapping[str, CheckpointRef] = field(default_factory=dict, hash=False)
    loras: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    vaes: Mapping[str, str] = field(default_factory=dict, hash=False)
    override_pins: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def profile(self) -> ServerProfile:
        return profile(self.kind)


AUTOMATIC_VAES = frozenset({"automatic", "none", ""})
# Options the server reads when it encodes images[], after it restored the overrides.
ENCODE_TIME_OPTIONS = frozenset({"samples_format", "jpeg_quality", "webp_lossless",
                                 "enable_pnginfo", "export_for_4chan"})


def build_payload(payload: dict[str, Any], setup: ClientSetup | None) -> dict[str, Any]:
    """The request body for one variant on one backend (pure; ``payload`` is not changed).

    Canonical sampler and scheduler names, the VAE in the form the backend applies, every pinned
    override, and the extras. Without a setup the payload goes as it is.
    """
    if setup is None:
        return payload
    params = dict(payload)
    overrides = dict(params.get("override_settings") or {})
    for sampler_key, scheduler_key in (("sampler_name", "scheduler"),
                                       ("hr_sampler_name", "hr_scheduler")):
        asked = params.get(sampler_key)
        if not isinstance(asked, str):
            continue
        params[sampler_key] = setup.samplers.get(asked, asked)
        implied = setup.implied_schedulers.get(asked)
        if implied and str(params.get(scheduler_key) or "automatic").lower() == "automatic":
            params[scheduler_key] = implied
    for key in ("scheduler", "hr_scheduler"):
        asked = params.get(key)
        if isinstance(asked, str):
            params[key] = setup.schedulers.get(asked, asked)
    if "sd_vae" in overrides:
        asked_vae = overrides["sd_vae"]
        sent = setup.vaes.get(str(asked_vae), asked_vae)
        if setup.profile.vae_via == "forge_additional_modules":
            del overrides["sd_vae"]  # Forge ignores it (and would save it as a leaked option)
            automatic = str(asked_vae or "").lower() in AUTOMATIC_VAES
            overrides["forge_additional_modules"] = [] if automatic else [sent]
        else:
            overrides["sd_vae"] = sent
    for key, value in setup.override_pins.items():
        overrides.setdefault(key, value)
    if overrides:
        params["override_settings"] = overrides
        if overrides.get("sd_model_checkpoint") or ENCODE_TIME_OPTIONS.intersection(overrides):
            # A checkpoint: restoring costs a second load per request (expand does the same).
            # An encoding option: the server encodes images[] *after* restoring, so with restore
            # on, samples_format: jpg gives PNGs. Every key is pinned anyway, so none leaks.
            params.setdefault("override_settings_restore_afterwards", False)
    for key, value in setup.payload_extras.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**value, **params[key]}
        else:
            params.setdefault(key, value)
    return params
