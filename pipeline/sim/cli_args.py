"""Command-line flags of ``sdbatch sim`` and the ``SimConfig`` they make."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.errors import UsageError
from pipeline.sim.config import FLAVORS, SAMPLES_FORMATS, SimConfig
from pipeline.sim.profiles import PROFILES

_DEFAULTS = SimConfig()


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (``--host``, ``--port`` and one per ``SimConfig`` knob)."""
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1, loopback only)")
    net.add_argument("--port", type=int, default=7861,
                     help="port to bind (default 7861, as 'webui --nowebui'; 0 picks a free one)")
    net.add_argument("--auth", metavar="USER:PASS[,USER2:PASS2]", default=None,
                     help="require HTTP Basic on /sdapi/v1/* like --api-auth "
                          "(/sdapi/v1/loras, /internal/* and /sim/* stay open)")

    server = parser.add_argument_group("what the backend is")
    server.add_argument("--profile", choices=tuple(PROFILES), default=_DEFAULTS.profile,
                        help="which server kind to imitate, as it really behaves: a1111 "
                             "(v1.10: titles without hashes until loaded, aliases and unknown "
                             "samplers silently substituted, unsaved override settings leak), "
                             "forge (as recorded: all that, plus lazy model loading, no "
                             "/sd-vae, sd_vae ignored, /cmd-flags 500, pydantic-2 errors), "
                             "sdnext (404 for unknown samplers, no /schedulers, a 429 rate "
                             "budget); classic (default): the idealised original simulator, "
                             "whose --flavor picks a few fork differences")
    server.add_argument("--flavor", choices=FLAVORS, default=_DEFAULTS.flavor,
                        help="classic profile only: a1111 (v1.10: unknown sampler silently "
                             "becomes the first), a1111-1.9 (unknown sampler -> 404), forge "
                             "(/sd-modules, 'message' in errors), sdnext (404 for unknown "
                             "sampler, no /schedulers, fewer info keys) (default a1111)")
    server.add_argument("--webui-version", dest="webui_version", default=None,
                        help="version string reported in info and infotexts (default: the "
                             "profile's, e.g. v1.10.1 or Forge's f2.0.1v1.10.1-previous-...)")
    server.add_argument("--forge-ui", action="store_true",
                        help="forge: act as if its UI were built, so /sd-modules lists the VAEs "
                             "and forge_additional_modules work (API-only Forge lists none)")
    server.add_argument("--hash-cache", type=_names, default=(), metavar="A,B,...",
                        help="realistic profiles: checkpoints whose hash the server has cached "
                             "at start (the others have titles without ' [hash]' until loaded)")
    server.add_argument("--saved-options", type=_names, default=_DEFAULTS.saved_options,
                        metavar="KEY,...",
                        help="a1111/forge: settings config.json already holds; overriding any "
                             "other leaks into later requests (default: "
                             + ",".join(_DEFAULTS.saved_options) + ", a fresh install)")
    server.add_argument("--models", type=_names, default=_DEFAULTS.models, metavar="A,B,...",
                        help="checkpoint file names (default: " + ", ".join(_DEFAULTS.models) + ")")
    server.add_argument("--loaded-model", default=None, metavar="NAME",
                        help="checkpoint loaded at start (default: the first; '' for none, "
                             "which makes SD.Next answer images: [])")
    server.add_argument("--samplers", type=_names, default=_DEFAULTS.samplers, metavar="A,B,...",
                        help="sampler names; the first is what unknown names become")
    server.add_argument("--schedulers", default=",".join(_DEFAULTS.schedulers or ()),
                        metavar="A,B,...|none",
                        help="scheduler labels, or 'none' for a server without /schedulers "
                             "(A1111 before 1.9)")
    server.add_argument("--loras", type=_names, default=_DEFAULTS.loras, metavar="A,B,...",
                        help="LoRA names; <lora:x:w> tags naming others are silently ignored")
    server.add_argument("--vaes", type=_names, default=_DEFAULTS.vaes, metavar="A,B,...",
                        help="VAE file names")
    server.add_argument("--embeddings", type=_names, default=_DEFAULTS.embeddings,
                        metavar="A,B,...", help="textual-inversion embedding names")
    server.add_argument("--dynamic-prompts", action="store_true",
                        help="act as if the Dynamic Prompts extension were installed: {a|b} in "
                             "prompts is re-expanded at random unless switched off per request")
    server.add_argument("--samples-format", choices=SAMPLES_FORMATS,
                        default=_DEFAULTS.samples_format,
                        help="image format of responses (PNG with a 'parameters' text chunk, or "
                             "JPEG/WebP with EXIF UserComment); POST /sdapi/v1/options changes it")
    server.add_argument("--extra-images", type=int, default=0, metavar="N",
                        help="append N non-generation images after the generations, as "
                             "ControlNet does with detect maps (default 0)")
    server.add_argument("--image-size-cap", type=int, default=_DEFAULTS.image_size_cap,
                        metavar="PX", help="largest width/height accepted; larger gets 422 "
                                           f"(default {_DEFAULTS.image_size_cap})")

    timing = parser.add_argument_group("timing")
    timing.add_argument("--latency-s", type=_non_negative, default=0.0, metavar="S",
                        help="seconds per generated image (a sleep, not CPU; default 0)")
    timing.add_argument("--switch-cost-s", type=_non_negative, default=0.0, metavar="S",
                        help="seconds per checkpoint load, the first after start included; "
                             "Forge loads on the first request (default 0)")
    timing.add_argument("--hash-cost-s", type=_non_negative, default=0.0, metavar="S",
                        help="seconds added to a checkpoint's first load, when the server hashes "
                             "it (realistic profiles; default 0)")
    timing.add_argument("--prepare-s", type=_non_negative, default=0.0, metavar="S",
                        help="realistic profiles: seconds per job before its first sampling "
                             "step, when /progress sits at 0.01 (default 0)")

    rate = parser.add_argument_group("rate budget (sdnext)")
    rate.add_argument("--rate-limit-per-min", type=int, default=_DEFAULTS.rate_limit_per_min,
                      metavar="N", help="cost units per client and route per window; txt2img "
                                        "costs 5, most others 1; 0 turns it off (default "
                                        f"{_DEFAULTS.rate_limit_per_min})")
    rate.add_argument("--rate-window-s", type=float, default=_DEFAULTS.rate_window_s,
                      metavar="S", help=f"the budget's window (default {_DEFAULTS.rate_window_s:g})")
    rate.add_argument("--no-retry-after", dest="rate_retry_after", action="store_false",
                      help="answer 429 without a Retry-After header (SD.Next's own code sends "
                           "none)")

    faults = parser.add_argument_group(
        "fault injection", "fractions of generation requests (0..1, adding up to at most 1), "
                           "drawn reproducibly from --fault-seed")
    for flag, what in (("error", "answered 500 with the WebUI's RuntimeError body"),
                       ("oom", "answered 500 OutOfMemoryError (CUDA out of memory)"),
                       ("reset", "whose connection is reset without an answer"),
                       ("hang", "that get no answer for --hang-s, then a closed connection"),
                       ("truncate", "answered 200 with a JSON body cut short"),
                       ("interrupt", "answered 200 with fewer images than all_seeds lists")):
        faults.add_argument(f"--{flag}-rate", type=_rate, default=0.0, metavar="F",
                            help=f"fraction {what} (default 0)")
    faults.add_argument("--hang-s", type=_non_negative, default=_DEFAULTS.hang_s, metavar="S",
                        help=f"how long a hang lasts (default {_DEFAULTS.hang_s:g})")
    faults.add_argument("--fault-seed", type=int, default=0, metavar="N",
                        help="seed of the fault draws: same seed and request order, same faults")


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` the parsed flags describe (flags missing from ``ns`` keep defaults);
    ``UsageError`` for combinations that make no sense (fault rates adding up past 1)."""
    def get(name: str, default: Any) -> Any:
        return getattr(ns, name, default)

    schedulers_text = get("schedulers", None)
    if schedulers_text is None:
        schedulers = _DEFAULTS.schedulers
    elif isinstance(schedulers_text, str) and schedulers_text.strip().lower() in ("none", ""):
        schedulers = None
    else:
        schedulers = (_names(schedulers_text) if isinstance(schedulers_text, str)
                      else tuple(schedulers_text))
    try:
        return _build(get, schedulers)
    except ValueError as exc:
        raise UsageError(f"sdbatch sim: {exc}") from exc


def _build(get: Any, schedulers: tuple[str, ...] | None) -> SimConfig:
    return SimConfig(
        models=tuple(get("models", _DEFAULTS.models)),
        loaded_model=get("loaded_model", None),
        samplers=tuple(get("samplers", _DEFAULTS.samplers)),
        schedulers=schedulers,
        loras=tuple(get("loras", _DEFAULTS.loras)),
        vaes=tuple(get("vaes", _DEFAULTS.vaes)),
        embeddings=tuple(get("embeddings", _DEFAULTS.embeddings)),
        profile=get("profile", _DEFAULTS.profile),
        flavor=get("flavor", _DEFAULTS.flavor),
        version=get("webui_version", _DEFAULTS.version),
        latency_s=get("latency_s", 0.0),
        switch_cost_s=get("switch_cost_s", 0.0),
        hash_cost_s=get("hash_cost_s", 0.0),
        prepare_s=get("prepare_s", 0.0),
        hash_cache=tuple(get("hash_cache", ())),
        saved_options=tuple(get("saved_options", _DEFAULTS.saved_options)),
        forge_ui=bool(get("forge_ui", False)),
        rate_limit_per_min=get("rate_limit_per_min", _DEFAULTS.rate_limit_per_min),
        rate_window_s=get("rate_window_s", _DEFAULTS.rate_window_s),
        rate_retry_after=bool(get("rate_retry_after", True)),
        samples_format=get("samples_format", _DEFAULTS.samples_format),
        auth=get("auth", None),
        dynamic_prompts=bool(get("dynamic_prompts", False)),
        extra_images=get("extra_images", 0),
        error_rate=get("error_rate", 0.0),
        oom_rate=get("oom_rate", 0.0),
        reset_rate=get("reset_rate", 0.0),
        hang_rate=get("hang_rate", 0.0),
        hang_s=get("hang_s", _DEFAULTS.hang_s),
        truncate_rate=get("truncate_rate", 0.0),
        interrupt_rate=get("interrupt_rate", 0.0),
        fault_seed=get("fault_seed", 0),
        image_size_cap=get("image_size_cap", _DEFAULTS.image_size_cap),
    )
