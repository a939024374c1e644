"""How the WebUI names things, read in one place: model titles and hashes, network tags.

Base layer: pure, no imports from the rest of sdbatch. Everything that reads a checkpoint title
(``"sub/name.safetensors [abc123def0]"``), a hash, or a ``<lora:name:weight>`` tag goes through
here, so the rules live once:

- a checkpoint's ``title`` is its path below the models folder, then `` [shorthash]`` once the
  server has hashed it (Forge: only after the first load; until then the title has no hash and
  ``hash`` is null). ``model_name`` is the path without extension, folders joined by ``_`` in
  A1111 (``sub_name``); the infotext's ``Model:`` is the file's stem (``name``).
- ``/options`` ``sd_model_checkpoint`` holds the title (A1111) or whatever string the client last
  sent (Forge: ``"tiny-b"``); :func:`same_checkpoint` compares any two such spellings.
- an extra-network tag is ``<kind:name[:arg...]>``; for LoRA the first positional argument is the
  text-encoder weight (default 1), the second the UNet weight (default: the first), and
  ``te=``/``unet=`` name them. A LoRA whose weights are all 0 changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# <lora:name:0.8>, <lyco:name:1:0.5>, <hypernet:name:1>; the one network-tag pattern.
NETWORK_TAG = re.compile(r"<\s*(lora|lyco|hypernet)\s*:([^>]*)>", re.IGNORECASE)
# An opening "<lora:" with no ">" after it in the same piece of text (a tag split across parts).
OPEN_TAG = re.compile(r"<\s*(?:lora|lyco)\s*:[^>]*$", re.IGNORECASE)
# "name.safetensors [2705e880c1]" -> the hash in brackets at the end of a title.
HASH_SUFFIX = re.compile(r"\s*\[([0-9a-fA-F]{8,64})\]\s*$")
MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True, slots=True)
class NetworkTag:
    """One ``<kind:name:...>`` tag. A weight is None when it is not a plain number."""

    kind: str  # "lora" | "lyco" | "hypernet", lower case
    name: str
    te_weight: float | None = 1.0
    unet_weight: float | None = 1.0
    text: str = ""

    @property
    def active(self) -> bool:
        """Does the tag change the image? Unknown weights count as active."""
        return not (self.te_weight == 0 and self.unet_weight == 0)


def network_tags(text: str) -> list[NetworkTag]:
    """Every network tag in ``text``, in order."""
    if "<" not in text:
        return []
    return [_tag(m.group(1).lower(), m.group(2), m.group(0)) for m in NETWORK_TAG.finditer(text)]


def lora_tags(text: str) -> list[NetworkTag]:
    """The LoRA / LyCORIS tags of a prompt."""
    return [t for t in network_tags(text) if t.kind in LORA_KINDS and t.name]


def strip_network_tags(text: str) -> str:
    return NETWORK_TAG.sub("", text) if "<" in text else text


def has_open_tag(text: str) -> bool:
    """Does ``text`` open a LoRA tag it does not close (the rest is in another piece)?"""
    return "<" in text and OPEN_TAG.search(text) is not None


def _tag(kind: str, body: str, text: str) -> NetworkTag:
    parts = [p.strip() for p in body.split(":")]
    name = parts[0]
    positional: list[float | None] = []
    named: dict[str, float | None] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            named[key.strip().lower()] = _number(value)
        else:
            positional.append(_number(part))
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    return NetworkTag(kind, name, te, unet, text)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --- checkpoints -------------------------------------------------------------------------------

def basename(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def title_parts(title: str) -> tuple[str, str | None]:
    """``"dir/name.safetensors [abc123]"`` -> ``("name", "abc123")``; no hash -> None."""
    match = HASH_SUFFIX.search(title)
    model_hash = match.group(1) if match else None
    stem = MODEL_EXT.sub("", basename(HASH_SUFFIX.sub("", title)))
    return stem.strip(), model_hash


def checkpoint_stems(name: str) -> frozenset[str]:
    """Lower-case stems a spelling may stand for: ``sub/x.safetensors`` -> {x, sub_x}."""
    bare = MODEL_EXT.sub("", HASH_SUFFIX.sub("", name.strip())).replace("\\", "/").strip("/")
    return frozenset({basename(bare).lower(), bare.replace("/", "_").lower()})


def hashes_match(a: str | None, b: str | None) -> bool:
    """Short hash vs sha256 (or two short hashes): one is a prefix of the other (>= 8 hex)."""
    if not a or not b:
        return False
    a, b = a.lower(), b.lower()
    shorter, longer = sorted((a, b), key=len)
    return len(shorter) >= 8 and longer.startswith(shorter)


def same_checkpoint(a: str | None, b: str | None) -> bool:
    """Do two spellings (title, title with hash, model name, file name, path, hash) name one model?

    Hash-less spellings match by stem; when both carry a hash, the hashes decide.
    """
    if not a or not b:
        return False
    hash_a = title_parts(a)[1] or (a.strip() if HEX.match(a.strip()) else None)
    hash_b = title_parts(b)[1] or (b.strip() if HEX.match(b.strip()) else None)
    if hash_a and hash_b:
        return hashes_match(hash_a, hash_b)
    return bool(checkpoint_stems(a) & checkpoint_stems(b))


def checkpoint_matches(asked: str, name: str | None, model_hash: str | None) -> bool:
    """Is the model a server reports (name and/or hash) the one asked for?

    ``asked`` may be a title, a model name, a file name, a path or a hash. Unknown (True) when
    the server reports neither name nor hash (older forks).
    """
    if not name and not model_hash:
        return True
    want = asked.strip()
    asked_hash = title_parts(want)[1] or (want if HEX.match(want) else None)
    if asked_hash and model_hash and hashes_match(asked_hash, str(model_hash)):
        return True
    if title_parts(want)[1] and model_hash:
        return False  # a title with a hash names one file; the server reports another
    if not name:
        return False
    return str(name).lower() in checkpoint_stems(want) | {MODEL_EXT.sub("", want).lower()}
