"""A small stand-in for the Dynamic Prompts extension's random mode.

Where the extension is installed and not switched off per request, the WebUI re-expands
``{a|b|c}`` in every prompt at random, per image. Supported here: nesting, ``{N$$a|b|c}`` and
``{N-M$$...}`` (pick several, joined by ", "). ``__wildcard__`` is left as written (the
simulator has no wildcard files). Random, but reproducible from the ``rng`` given.
"""

from __future__ import annotations

import random

TITLE = "Dynamic Prompts v2.17.1"  # as the extension's script title reads


def expand_random(template: str, rng: random.Random) -> str:
    """One random expansion of the variant groups in ``template``."""
    out, _ = _expand(template, 0, rng, top=True)
    return out


def _expand(text: str, pos: int, rng: random.Random, *, top: bool) -> tuple[str, int]:
    """Expand from ``pos`` until an unmatched ``}`` or ``|`` (inside a group) or the end."""
    parts: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == "{":
            chosen, pos = _group(text, pos + 1, rng)
            parts.append(chosen)
        elif not top and ch in "|}":
            break
        else:
            parts.append(ch)
            pos += 1
    return "".join(parts), pos


def _group(text: str, pos: int, rng: random.Random) -> tuple[str, int]:
    """Options of one ``{...}`` group starting after its brace; returns the pick and the end."""
    low = high = 1
    head, sep, _ = text[pos:].partition("$$")
    closing = text.find("}", pos)
    if sep and (closing == -1 or pos + len(head) < closing) and _is_count(head):
        low_text, _, high_text = head.partition("-")
        low, high = int(low_text), int(high_text or low_text)
        pos += len(head) + 2
    options: list[str] = []
    while True:
        option, pos = _expand(text, pos, rng, top=False)
        options.append(option)
        if pos >= len(text):  # unclosed: the extension would reject it; keep what we have
            break
        if text[pos] == "}":
            pos += 1
            break
        pos += 1  # "|"
    count = min(len(options), rng.randint(min(low, high), max(low, high)))
    return ", ".join(rng.sample(options, count)), pos


def _is_count(text: str) -> bool:
    low, dash, high = text.partition("-")
    return low.isdigit() and (not dash or high.isdigit())


def is_enabled(installed: bool, alwayson_scripts: dict[str, object] | None) -> bool:
    """Installed and not switched off with ``alwayson_scripts: {<title>: {"args": [false]}}``.

    The WebUI matches the script title case-insensitively and exactly: a misspelled title
    leaves the extension on.
    """
    if not installed:
        return False
    for key, value in (alwayson_scripts or {}).items():
        if isinstance(key, str) and key.lower() == TITLE.lower() and isinstance(value, dict):
            args = value.get("args")
            if isinstance(args, list) and args and args[0] is False:
                return False
    return True
