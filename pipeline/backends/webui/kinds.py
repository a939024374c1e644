"""Which WebUI a server is (A1111, Forge, reForge, SD.Next), and what differs between them.

Told apart from what a server reports, never from what the user says:

- **SD.Next** answers ``GET /sdapi/v1/version`` (``{"app": "sd.next", ...}``; the others 404) and
  its ``/options`` has ``sd_backend`` / ``diffusers_*`` keys; no ``/schedulers``, no
  ``Version:`` in the infotext; limits API clients (HTTP 429 with ``Retry-After``).
- **Forge** (lllyasviel, ``version: "f2..."``): ``/options`` has ``forge_preset`` /
  ``forge_additional_modules``; ``/sd-vae`` is 404; a VAE is applied through
  ``forge_additional_modules`` (file names from ``/sd-modules``, which is filled only while its UI
  runs), ``sd_vae`` is ignored; the infotext names it ``Module 1: stem``.
- **reForge** (Panchovix): Forge's options and ``f...`` version, but A1111's ``/sd-vae`` and
  ``sd_vae``; the route decides.
- **AUTOMATIC1111**: none of the above; version ``v1.x`` in ``info.version``; ``/schedulers``
  from v1.9; infotext ``VAE: stem``.

All of them silently substitute unknown names (SD.Next and A1111 < 1.10 answer 404 for an
unknown sampler instead), so the per-response check is the same for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["a1111", "forge", "reforge", "sdnext", "unknown"]


@dataclass(frozen=True, slots=True)
class ServerProfile:
    kind: Kind
    display: str
    vae_list_route: str | None  # where its VAE names are listed
    vae_via: Literal["sd_vae", "forge_additional_modules"] | None  # override that applies one
    vae_needs_ui: bool = False  # Forge lists modules only while its gradio UI is built
    vae_infotext_key: str = "VAE"  # "VAE" (A1111) | "Module" (Forge: "Module 1", "Module 2")
    always_writes_schedule_type: bool = False
    rate_limited: bool = False
    # After a 429 the host is paced: at least this many seconds between generation requests.
    min_pace_s: float = 0.0


PROFILES: dict[str, ServerProfile] = {
    "a1111": ServerProfile("a1111", "AUTOMATIC1111", "/sdapi/v1/sd-vae", "sd_vae"),
    "forge": ServerProfile("forge", "Forge", "/sdapi/v1/sd-modules", "forge_additional_modules",
                           vae_needs_ui=True, vae_infotext_key="Module",
                           always_writes_schedule_type=True),
    "reforge": ServerProfile("reforge", "reForge", "/sdapi/v1/sd-vae", "sd_vae"),
    # 300 requests a minute with txt2img costing 5: one generation a second keeps under it.
    "sdnext": ServerProfile("sdnext", "SD.Next", "/sdapi/v1/sd-vae", "sd_vae", rate_limited=True,
                            min_pace_s=1.0),
    "unknown": ServerProfile("unknown", "unknown WebUI", "/sdapi/v1/sd-vae", "sd_vae"),
}


def profile(kind: str | None) -> ServerProfile:
    return PROFILES.get(kind or "unknown", PROFILES["unknown"])


def detect_kind(options: Any, *, sd_vae_route: bool | None = None, version_route: Any = None,
                info_version: str | None = None) -> Kind:
    """The server kind from ``/options``, whether ``/sd-vae`` and ``/version`` answered, and the
    ``version`` a generation's info reported (any of them may be unknown: None)."""
    if not isinstance(options, dict):
        return "unknown"
    if isinstance(version_route, dict) and (
            "next" in str(version_route.get("app", "")).lower() or "updated" in version_route):
        return "sdnext"
    if "sd_backend" in options or any(str(k).startswith("diffusers_") for k in options):
        return "sdnext"
    forge_family = any(str(k).startswith("forge_") for k in options) or bool(
        info_version and len(info_version) > 1 and info_version[0] == "f"
        and info_version[1].isdigit())
    if forge_family:
        return "reforge" if sd_vae_route else "forge"
    return "a1111"


def describe(kind: str, version: str | None) -> str:
    """``"Forge f2.0.1v1.10.1-..."``, for ``check``'s server column."""
    name = profile(kind).display
    return f"{name} {version}" if version else name
