"""The one reader (and quoter) of the A1111 infotext, the "generation parameters" text.

Base layer: pure. The WebUI writes, into every image and into ``info.infotexts[i]``::

    a red cube <lora:tiny-lora:0.8>
    Negative prompt: blurry
    Steps: 4, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 11, Size: 64x64,
    Model hash: 2705e880c1, Model: tiny-a, Lora hashes: "tiny-lora: a3f08ca83760", Version: f2...

(the last line is one line). Rules, as the WebUI's own reader applies them:

- the last line holds the parameters only if it has at least 3 ``Key: value`` pairs; otherwise
  it is part of the prompt (or the negative prompt);
- lines before the first one starting ``Negative prompt:`` are the prompt, the rest the negative
  prompt (both may span lines);
- a key starts with a word character and holds word characters, spaces, ``-`` and ``/``
  (``Module 1``, ``Hires upscale``); a value is either a double-quoted JSON string (used when it
  contains ``,``, ``:`` or a newline) or runs to the next ``,``;
- list-valued parameters such as ``Lora hashes`` are ``"name: hash, name: hash"``
  (:func:`parse_pairs`); names have ``:`` and ``,`` removed by the server.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE_PREFIX = "Negative prompt:"


@dataclass(frozen=True, slots=True)
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.params


def parse(text: str) -> Infotext:
    """Split an infotext into prompt, negative prompt and its ``Key: value`` parameters."""
    *lines, last = text.strip().split("\n")
    found = _PARAM.findall(last)
    if len(found) < 3:
        lines.append(last)
        found = []
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    params: dict[str, str] = {}
    for key, value in found:
        params[key.strip()] = unquote(value.strip())
    return Infotext("\n".join(prompt), "\n".join(negative), params)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def quote(value: object) -> str:
    """A value as the WebUI writes it: quoted (JSON) when it holds ``,``, ``:`` or a newline."""
    text = str(value)
    if not any(c in text for c in ',:\n') and not (text.startswith('"') and text.endswith('"')):
        return text
    return json.dumps(text, ensure_ascii=False)


def parse_pairs(value: str | None) -> dict[str, str]:
    """``"tiny-lora: a3f08ca83760, other: 1234"`` -> ``{"tiny-lora": "a3f08ca83760", ...}``."""
    out: dict[str, str] = {}
    if not value:
        return out
    for part in value.split(","):
        name, sep, item_hash = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = item_hash.strip()
        elif part.strip():
            out[part.strip()] = ""
    return out


def format_params(params: dict[str, object]) -> str:
    """The parameters line: ``Key: value`` pairs joined with ", ", None values left out."""
    return ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
