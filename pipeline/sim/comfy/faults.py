"""Injected faults of the simulated ComfyUI server, drawn reproducibly from ``fault_seed``.

One number is drawn per ``POST /prompt`` (``http_error``, ``drop``) and one per prompt whose
KSampler really runs (``error``, ``hang``, ``ws_drop``), from one ``random.Random`` in
arrival order, and mapped onto the configured rates in a fixed order: the same config and the
same requests give the same faults.
"""

from __future__ import annotations

import random

from pipeline.sim.comfy.config import ComfySimConfig

POST_KINDS = (("http_error", "http_error_rate"), ("drop", "drop_rate"))
RUN_KINDS = (("error", "error_rate"), ("hang", "hang_rate"), ("ws_drop", "ws_drop_rate"))
FAULT_KINDS = tuple(kind for kind, _ in (*POST_KINDS, *RUN_KINDS))


class FaultDice:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def _roll(self, config: ComfySimConfig, kinds: tuple[tuple[str, str], ...]) -> str | None:
        if not any(getattr(config, rate) for _, rate in kinds):
            return None  # no draw: adding a fault kind does not shift the others' sequence
        roll = self._rng.random()
        edge = 0.0
        for kind, rate in kinds:
            edge += getattr(config, rate)
            if roll < edge:
                return kind
        return None

    def on_post(self, config: ComfySimConfig) -> str | None:
        return self._roll(config, POST_KINDS)

    def on_run(self, config: ComfySimConfig) -> str | None:
        return self._roll(config, RUN_KINDS)
