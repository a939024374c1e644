"""The server's live settings and A1111's ``override_settings`` semantics, leak included.

A1111 v1.7+ and Forge keep the settings in ``opts.data`` (loaded from config.json) and, per
request, remember only the overridden keys that ``opts.data`` already holds::

    stored_opts = {k: opts.data[k] ... for k in p.override_settings.keys() if k in opts.data}

so on a fresh install an override of a key never saved (``samples_format``,
``CLIP_stop_at_last_layers``, ``sd_vae``...) is *not* restored afterwards: it stays in force
for every later request, restore or not. Setting a key (by override or ``POST /options``)
puts it in ``opts.data``, so the same key overridden again is restored from then on.
``sd_model_checkpoint`` is always saved and handled by the model state, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_ABSENT = object()


class ServerOptions:
    """Option values (``values``) and the keys config.json holds (``saved``)."""

    def __init__(self, values: Mapping[str, Any], saved: Iterable[str], *, leak: bool) -> None:
        self.values: dict[str, Any] = dict(values)
        self.saved: set[str] = set(saved)
        self.leak = leak

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """``POST /options``: the value is set and saved."""
        self.values[key] = value
        self.saved.add(key)

    def override(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a request's overrides; returns what ``restore`` puts back (only saved keys
        when the server leaks, every key otherwise)."""
        stored = {key: self.values.get(key, _ABSENT) for key in changes
                  if key in self.saved or not self.leak}
        for key, value in changes.items():
            self.values[key] = value
            self.saved.add(key)
        return stored

    def restore(self, stored: Mapping[str, Any]) -> None:
        for key, value in stored.items():
            if value is _ABSENT:
                self.values.pop(key, None)
            else:
                self.values[key] = value

    def after_restore(self, stored: Mapping[str, Any], key: str, restoring: bool) -> Any:
        """The value ``key`` will have once the request is over (what its images are encoded
        with: the API encodes them after the restore)."""
        if restoring and key in stored:
            value = stored[key]
            return None if value is _ABSENT else value
        return self.values.get(key)
