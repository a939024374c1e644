"""Server kinds the simulator imitates: what each one does differently, as data.

``SimConfig.profile`` names one of :data:`PROFILES`:

    classic  the simulator's original, idealised A1111 v1.10 (the default): hashes known from
             the start, sampler aliases accepted, override settings always restored, every
             route present; ``SimConfig.flavor`` then picks a few fork differences.
    a1111    AUTOMATIC1111 v1.10 as its code behaves: titles without " [hash]" until a
             checkpoint is loaded once, aliases substituted, unsaved override settings leak,
             unknown sampler -> the first one with its default scheduler.
    forge    Stable Diffusion WebUI Forge f2.0.1 as recorded in ``real-forge/``: everything
             a1111 does, plus lazy model loading, ``sd_model_checkpoint`` echoing the client's
             string, no ``/sd-vae``, ``sd_vae`` ignored, ``/sd-modules`` empty unless
             ``forge_ui``, ``/cmd-flags`` 500, pydantic-2 422 bodies, 500 for batch_size 0.
    sdnext   SD.Next: unknown sampler -> 404, no ``/schedulers``, ``code`` in error bodies,
             fewer info keys, ``/sdapi/v1/version``, and its per-client rate budget (429).

Everything version- or fork-specific is a field of :class:`ServerProfile`, so the handlers ask
"does this server leak overrides?" instead of "is this Forge?".
"""

from __future__ import annotations

from dataclasses import dataclass

FORGE_VERSION = "f2.0.1v1.10.1-previous-669-gdfdcbab6"  # as recorded (real-forge/)


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """What one server kind does. ``kind`` picks error-body shapes ("a1111", "forge",
    "sdnext"); the rest are behaviours, each named for what a client observes."""

    name: str
    kind: str
    version: str
    realistic: bool  # False only for "classic": the idealised original simulator
    pydantic_v2: bool  # 422 bodies with "input"/"url", as pydantic 2 words them
    hashless_until_loaded: bool  # sd-models: title without " [hash]", hash null, until loaded
    loads_at_start: bool  # False: the first generation pays the model load (Forge)
    option_echoes_request: bool  # /options sd_model_checkpoint = the client's string (Forge)
    load_on_options_post: bool  # POST /options sd_model_checkpoint loads at once (A1111)
    sampler_aliases: bool  # "k_euler_a" accepted as "Euler a" (classic only)
    unknown_sampler_404: bool  # else silently the first sampler
    sampler_default_scheduler: bool  # "Automatic" resolves to the sampler's own (DPM++ 2M: Karras)
    schedulers_route: bool
    override_leak: bool  # override_settings keys not yet saved stay in force afterwards
    vae_route: str  # "sd-vae" (A1111, SD.Next) or "sd-modules" (Forge)
    sd_vae_override: bool  # override_settings.sd_vae applied
    half_done_images: bool  # interrupt/skip return the half-sampled image (else dropped)
    float_infotext: bool  # "CFG scale: 7.0" (Python's repr) rather than "7"
    strip_network_tags: bool  # <lora:...> tags do not reach the pixels; known LoRAs change them
    realistic_options: bool  # /options serves the recorded ~330 settings
    realistic_echo: bool  # parameters echo every field the server's request model has
    batch_size_zero_error: bool  # batch_size/n_iter 0 -> 500 IndexError (else 422)
    cmd_flags_status: int  # 200, or Forge's 500 ResponseValidationError
    queued_refresh: bool  # POST /refresh-checkpoints waits for the queue lock
    rate_limited: bool  # SD.Next's per-client request budget (429)
    version_route: bool  # GET /sdapi/v1/version (SD.Next)
    empty_interrupt_body: bool  # interrupt/skip answer 204 without a body (SD.Next)
    http_detail_only: bool  # HTTPExceptions (404, 401) answered {"detail"} alone (Forge)


_REALISTIC = {
    "realistic": True, "pydantic_v2": False, "hashless_until_loaded": True,
    "loads_at_start": True, "option_echoes_request": False, "load_on_options_post": True,
    "sampler_aliases": False, "unknown_sampler_404": False, "sampler_default_scheduler": True,
    "schedulers_route": True, "override_leak": True, "vae_route": "sd-vae",
    "sd_vae_override": True, "half_done_images": True, "float_infotext": True,
    "strip_network_tags": True, "realistic_options": True, "realistic_echo": True,
    "batch_size_zero_error": True, "cmd_flags_status": 200, "queued_refresh": True,
    "rate_limited": False, "version_route": False, "empty_interrupt_body": False,
    "http_detail_only": False,
}

PROFILES: dict[str, ServerProfile] = {
    "classic": ServerProfile(
        name="classic", kind="a1111", version="v1.10.1", realistic=False, pydantic_v2=False,
        hashless_until_loaded=False, loads_at_start=True, option_echoes_request=False,
        load_on_options_post=True, sampler_aliases=True, unknown_sampler_404=False,
        sampler_default_scheduler=False, schedulers_route=True, override_leak=False,
        vae_route="sd-vae", sd_vae_override=True, half_done_images=False, float_infotext=False,
        strip_network_tags=False, realistic_options=False, realistic_echo=False,
        batch_size_zero_error=False, cmd_flags_status=200, queued_refresh=False,
        rate_limited=False, version_route=False, empty_interrupt_body=False,
        http_detail_only=False),
    "a1111": ServerProfile(name="a1111", kind="a1111", version="v1.10.1", **_REALISTIC),
    "forge": ServerProfile(**{
        **_REALISTIC, "name": "forge", "kind": "forge", "version": FORGE_VERSION,
        "pydantic_v2": True, "loads_at_start": False, "option_echoes_request": True,
        "load_on_options_post": False, "vae_route": "sd-modules", "sd_vae_override": False,
        "cmd_flags_status": 500, "http_detail_only": True}),
    "sdnext": ServerProfile(**{
        **_REALISTIC, "name": "sdnext", "kind": "sdnext", "version": "2025-06-30",
        "pydantic_v2": True, "unknown_sampler_404": True, "sampler_default_scheduler": False,
        "schedulers_route": False, "override_leak": False, "float_infotext": False,
        "realistic_options": False, "realistic_echo": False, "batch_size_zero_error": False,
        "rate_limited": True, "version_route": True, "empty_interrupt_body": True}),
}


def profile_named(name: str) -> ServerProfile:
    try:
        return PROFILES[name]
    except KeyError as exc:
        raise ValueError(f"profile {name!r} is not one of {', '.join(PROFILES)}") from exc
