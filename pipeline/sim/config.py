"""What the simulated WebUI backend is: its settings (``SimConfig``) and the names it serves.

``SimConfig`` is frozen; at run time a new one replaces the old (``POST /sim/config``), built
with :func:`apply_changes`, which checks names and types so a typo is an error, not a no-op.
``profile`` names the server kind imitated (``profiles.py``); ``flavor`` is the older, coarser
switch of the ``classic`` profile. :class:`Catalogue` derives everything name-shaped from a
config: checkpoint titles and hashes, LoRA hashes, and the lookup a request's
``sd_model_checkpoint`` goes through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pipeline.sim.profiles import PROFILES, ServerProfile, profile_named

FLAVORS = ("a1111", "a1111-1.9", "forge", "sdnext")
SAMPLES_FORMATS = ("png", "jpg", "webp")
FAULT_RATES = ("error_rate", "oom_rate", "reset_rate", "hang_rate", "truncate_rate",
               "interrupt_rate")

MODELS_DIR = "/sim/models"


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of one simulated backend. See ``sdbatch sim --help`` for each field's meaning."""

    models: tuple[str, ...] = ("v1-5-pruned-emaonly.safetensors", "sdxl_base_1.0.safetensors",
                               "dreamshaper_8.safetensors")
    loaded_model: str | None = None  # None: the first model; "": none loaded
    samplers: tuple[str, ...] = ("DPM++ 2M", "Euler a", "Euler", "DPM++ SDE", "DDIM", "UniPC")
    schedulers: tuple[str, ...] | None = ("Automatic", "Karras", "Exponential", "Uniform")
    loras: tuple[str, ...] = ("detail_tweaker", "add_brightness", "film_grain")
    vaes: tuple[str, ...] = ("vae-ft-mse-840000-ema-pruned.safetensors",)
    embeddings: tuple[str, ...] = ("easynegative",)
    profile: str = "classic"
    flavor: str = "a1111"  # classic profile only
    version: str | None = None  # None: the profile's (Forge: f2.0.1v1.10.1-previous-669-...)
    latency_s: float = 0.0
    switch_cost_s: float = 0.0
    hash_cost_s: float = 0.0  # added to a checkpoint's first load (the server hashes it then)
    prepare_s: float = 0.0  # per job, before the first sampling step
    hash_cache: tuple[str, ...] = ()  # checkpoints whose hash is cached at start
    saved_options: tuple[str, ...] = ("sd_model_checkpoint",)  # keys config.json holds
    forge_ui: bool = False  # Forge built its UI: /sd-modules lists the VAEs
    rate_limit_per_min: int = 300  # sdnext: request budget per client and route, 0 = off
    rate_window_s: float = 60.0  # sdnext: the budget's window
    rate_retry_after: bool = True  # sdnext: send Retry-After with a 429
    samples_format: str = "png"
    auth: str | None = None
    dynamic_prompts: bool = False
    extra_images: int = 0
    error_rate: float = 0.0
    oom_rate: float = 0.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    truncate_rate: float = 0.0
    interrupt_rate: float = 0.0
    fault_seed: int = 0
    image_size_cap: int = 2048

    def __post_init__(self) -> None:
        profile_named(self.profile)
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor {self.flavor!r} is not one of {', '.join(FLAVORS)}")
        if self.profile != "classic" and self.flavor != "a1111":
            raise ValueError(f"flavor {self.flavor!r} applies to the classic profile only; "
                             f"profile {self.profile!r} is a server kind of its own")
        fmt = normalize_format(self.samples_format)
        if fmt is None:
            raise ValueError(f"samples_format {self.samples_format!r} is not one of "
                             f"{', '.join(SAMPLES_FORMATS)}")
        object.__setattr__(self, "samples_format", fmt)
        if not self.models:
            raise ValueError("models is empty: a backend needs at least one checkpoint")
        if not self.samplers:
            raise ValueError("samplers is empty: a backend needs at least one sampler")
        for name in FAULT_RATES:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        total = sum(getattr(self, name) for name in FAULT_RATES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault rates add up to {total:.3g}, more than 1")
        for name in ("latency_s", "switch_cost_s", "hash_cost_s", "prepare_s", "hang_s",
                     "rate_limit_per_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_window_s <= 0:
            raise ValueError("rate_window_s must be positive")
        if self.extra_images < 0:
            raise ValueError("extra_images must not be negative")
        if self.image_size_cap < 8:
            raise ValueError("image_size_cap must be at least 8")
        if self.auth is not None and not parse_auth(self.auth):
            raise ValueError("auth must look like 'user:pass[,user2:pass2]'")

    @property
    def server(self) -> ServerProfile:
        """What the imitated server kind does (``profiles.py``)."""
        return PROFILES[self.profile]

    @property
    def kind(self) -> str:
        """The server kind error bodies and wording follow: the profile's, or (classic) the
        flavour."""
        return self.flavor if self.profile == "classic" else self.server.kind

    @property
    def webui_version(self) -> str:
        return self.version if self.version is not None else self.server.version

    @property
    def sampler_strict(self) -> bool:
        """Does an unknown sampler get 404 (v1.9, SD.Next) instead of silently the first one?"""
        if self.profile == "classic":
            return self.flavor in ("a1111-1.9", "sdnext")
        return self.server.unknown_sampler_404

    @property
    def has_schedulers(self) -> bool:
        if self.schedulers is None:
            return False
        if self.profile == "classic":
            return self.flavor != "sdnext"
        return self.server.schedulers_route


def normalize_format(value: str) -> str | None:
    fmt = str(value).strip().lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    return fmt if fmt in SAMPLES_FORMATS else None


def parse_auth(text: str) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` -> ``{"user": "pass", ...}`` (empty when malformed)."""
    out: dict[str, str] = {}
    for pair in text.split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user:
            return {}
        out[user] = password
    return out


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint as the WebUI lists it. The 'file' hash is the sha256 of the name."""

    name: str  # relative file name, e.g. "sdxl/base.safetensors"
    model_name: str  # "sdxl_base"
    sha256: str
    filename: str  # absolute path on the 'server'

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    def listing(self, *, hashed: bool = True) -> dict[str, Any]:
        """The ``/sd-models`` entry; before the server has hashed the file (on its first
        load) the title has no " [hash]" and both hashes are null, as A1111 and Forge list it."""
        if not hashed:
            return {"title": self.name, "model_name": self.model_name, "hash": None,
                    "sha256": None, "filename": self.filename, "config": None}
        return {"title": self.title, "model_name": self.model_name, "hash": self.shorthash,
                "sha256": self.sha256, "filename": self.filename, "config": None}


def make_checkpoint(name: str) -> Checkpoint:
    flat = name.replace("\\", "/").replace("/", "_")
    stem = flat.rsplit(".", 1)[0] if "." in flat else flat
    return Checkpoint(name=name, model_name=stem, sha256=sha256_hex(name),
                      filename=f"{MODELS_DIR}/Stable-diffusion/{name}")


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Everything name-shaped a config implies, with the lookups requests go through."""

    checkpoints: tuple[Checkpoint, ...]
    aliases: dict[str, Checkpoint]  # every spelling accepted without a hash -> checkpoint
    hash_aliases: dict[str, Checkpoint]  # title with hash, short and full hash -> checkpoint
    lora_hashes: dict[str, str]  # LoRA name -> 12-hex short hash

    @classmethod
    def from_config(cls, config: SimConfig) -> Catalogue:
        checkpoints = tuple(make_checkpoint(name) for name in config.models)
        aliases: dict[str, Checkpoint] = {}
        hash_aliases: dict[str, Checkpoint] = {}
        for ckpt in reversed(checkpoints):  # the first model wins a shared spelling
            base = ckpt.name.replace("\\", "/").rsplit("/", 1)[-1]
            stem = base.rsplit(".", 1)[0] if "." in base else base
            for spelling in (ckpt.name, base, stem, ckpt.model_name, ckpt.filename):
                aliases[spelling] = ckpt
            for spelling in (ckpt.title, ckpt.shorthash, ckpt.sha256):
                hash_aliases[spelling] = ckpt
        lora_hashes = {name: sha256_hex(f"lora:{name}")[:12] for name in config.loras}
        return cls(checkpoints=checkpoints, aliases=aliases, hash_aliases=hash_aliases,
                   lora_hashes=lora_hashes)

    def resolve(self, name: Any, hashed: set[str] | None = None) -> Checkpoint | None:
        """A checkpoint by title, model name, file name, short or full hash; None if unknown.

        With ``hashed`` (the names the server has hashed so far) a spelling that carries the
        hash only works for those, as A1111 and Forge register hash aliases on first load.
        """
        if not isinstance(name, str) or not name.strip():
            return None
        name = name.strip()
        found = self.aliases.get(name)
        if found is not None:
            return found
        found = self.hash_aliases.get(name)
        if found is not None and (hashed is None or found.name in hashed):
            return found
        return None

    def initial(self, config: SimConfig) -> Checkpoint | None:
        """The model loaded at start: ``loaded_model`` resolved, the first one, or none ("")."""
        if config.loaded_model == "":
            return None
        if config.loaded_model is None:
            return self.checkpoints[0]
        found = self.resolve(config.loaded_model)
        if found is None:
            raise ValueError(f"loaded_model {config.loaded_model!r} is not one of the models "
                             f"({', '.join(config.models)})")
        return found


def config_to_dict(config: SimConfig) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


def apply_changes(config: SimConfig, changes: dict[str, Any]) -> SimConfig:
    """A new config with ``changes`` applied; raises ``ValueError`` naming the bad field.

    Lists (or comma-separated strings) are accepted for tuple fields, ints for float fields.
    """
    hints = typing.get_type_hints(SimConfig)
    known = {f.name for f in dataclasses.fields(SimConfig)}
    coerced: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in known:
            raise ValueError(f"unknown field {key!r}; known: {', '.join(sorted(known))}")
        coerced[key] = _coerce(key, value, hints[key])
    return dataclasses.replace(config, **coerced)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key} must not be null")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of strings")
        return tuple(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        return value
    return value
