"""Pictures and files: what the simulated ComfyUI renders, saves and serves through ``/view``.

A sampled image starts as the simulated WebUI's picture for its seed and prompt
(:func:`pipeline.sim.render.render_generation`: layout from the seed, prompt and ``seed N``
written on it), then its colours are remapped by everything else the sampler sees: the
checkpoint and the batch index (strongly: a batch shares one seed, yet image 1 is neither
image 0 nor the seed+1 image), each LoRA and its strength, cfg, steps, sampler, scheduler,
denoise and the negative prompt (slightly). So the same inputs give the same pixels, and
changing any of them changes them.

Files follow ComfyUI's ``SaveImage``: ``prefix_NNNNN_.png`` with the counter one past the
highest in the folder (it survives restarts), a ``prompt`` tEXt chunk holding the graph as run
and one chunk per ``extra_pnginfo`` key, RGB PNGs. Paths are checked as ``folder_paths`` does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

from pipeline.sim.render import (GRADIENT_LEVELS, PNG_COMPRESS_LEVEL, SHAPE_BASE, SHAPE_COLOURS,
                                 render_generation)

_TINTED = max(GRADIENT_LEVELS, SHAPE_BASE + SHAPE_COLOURS)  # palette entries that get recoloured
_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Everything one decoded image depends on."""

    width: int
    height: int
    seed: int | None  # None: an empty latent decoded without sampling
    batch_index: int
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()  # on the model and on CLIP, in chain order
    positive: str = ""
    negative: str = ""
    settings: tuple[Any, ...] = ()  # cfg, steps, sampler, scheduler, denoise


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def render(spec: ImageSpec) -> Image.Image:
    """The RGB picture for ``spec`` (deterministic)."""
    if spec.seed is None:
        shade = _digest("vae", spec.checkpoint)
        return Image.new("RGB", (spec.width, spec.height), (96 + shade[0] % 64,) * 3)
    image = render_generation(spec.width, spec.height, spec.seed, spec.positive)
    palette = image.getpalette() or []
    palette += [0] * (768 - len(palette))
    mix = _digest("model", spec.checkpoint, spec.batch_index)
    perm = _PERMUTATIONS[mix[0] % 6]  # swap channels and invert some: stays smooth
    invert = [bool(mix[1] >> c & 1) for c in range(3)]
    tint = [mix[2 + c] % 97 - 48 for c in range(3)]
    for name, strength in spec.loras:
        d = _digest("lora", name)
        for c in range(3):
            tint[c] += round(24 * strength * (1 if d[c] % 2 else -1))
    d = _digest("settings", spec.settings, spec.negative)
    for c in range(3):
        tint[c] += d[c] % 7 - 3
    for i in range(_TINTED):
        rgb = palette[i * 3:i * 3 + 3]
        for c in range(3):
            value = rgb[perm[c]]
            value = 255 - value if invert[c] else value
            palette[i * 3 + c] = min(255, max(0, value + tint[c]))
    image.putpalette(palette)
    return image.convert("RGB")


def png_bytes(image: Image.Image, prompt: Any, extra_pnginfo: Any) -> bytes:
    """PNG with ComfyUI's text chunks (``json.dumps`` as Python writes it, ASCII-escaped)."""
    metadata = PngImagePlugin.PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    if extra_pnginfo is not None:
        for key in extra_pnginfo:
            metadata.add_text(key, json.dumps(extra_pnginfo[key]))
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=metadata, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class Folders:
    """The server's ``output``, ``input`` and ``temp`` directories under one root."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.output = os.path.join(self.root, "output")
        self.input = os.path.join(self.root, "input")
        self.temp = os.path.join(self.root, "temp")
        for path in (self.output, self.input, self.temp):
            os.makedirs(path, exist_ok=True)

    def by_type(self, kind: str) -> str | None:
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind)

    def annotated(self, name: str) -> tuple[str, str | None]:
        """``"x.png [output]"`` -> ``("x.png", output dir)``; no annotation -> ``(name, None)``."""
        for kind in ("output", "input", "temp"):
            suffix = f"[{kind}]"
            if name.endswith(suffix):
                return name[:-len(suffix) - 1], self.by_type(kind)
        return name, None

    def save_path(self, filename_prefix: str, width: int, height: int
                  ) -> tuple[str, str, int, str]:
        """``(folder, file stem, counter, subfolder)`` for a SaveImage prefix, as ComfyUI's
        ``get_save_image_path``; raises ``Exception`` for a prefix escaping the output folder."""
        output_dir = self.output
        if "%" in filename_prefix:
            filename_prefix = _compute_vars(filename_prefix, width, height)
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        folder = os.path.join(output_dir, subfolder)
        common = os.path.commonpath((output_dir, os.path.abspath(folder)))
        if common != output_dir:
            raise Exception(  # noqa: TRY002 - ComfyUI raises a bare Exception here
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {os.path.abspath(folder)}"
                f"\n         output_dir: {output_dir}"
                f"\n         commonpath: {common}")
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            names = []
        prefix_len = len(filename)
        counters = []
        for name in names:
            prefix = name[:prefix_len + 1]
            if os.path.normcase(prefix[:-1]) != os.path.normcase(filename) or prefix[-1:] != "_":
                continue
            try:
                counters.append(int(name[prefix_len + 1:].split("_")[0]))
            except ValueError:
                counters.append(0)
        return folder, filename, (max(counters) + 1 if counters else 1), subfolder


def _compute_vars(text: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in (("%width%", str(width)), ("%height%", str(height)),
                       ("%year%", str(now.tm_year)), ("%month%", f"{now.tm_mon:02}"),
                       ("%day%", f"{now.tm_mday:02}"), ("%hour%", f"{now.tm_hour:02}"),
                       ("%minute%", f"{now.tm_min:02}"), ("%second%", f"{now.tm_sec:02}")):
        text = text.replace(key, value)
    return text


def save_images(folders: Folders, images: list[Image.Image], filename_prefix: str,
                prompt: Any, extra_pnginfo: Any) -> dict[str, Any]:
    """ComfyUI's ``SaveImage.save_images``: write the files, return the ``ui`` dict."""
    width, height = images[0].size
    folder, filename, counter, subfolder = folders.save_path(filename_prefix, width, height)
    results = []
    for batch_number, image in enumerate(images):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        data = png_bytes(image, prompt, extra_pnginfo)
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
        results.append({"filename": name, "subfolder": subfolder, "type": "output"})
        counter += 1
    return {"images": results}


def reencode(path: str, channel: str) -> bytes:
    """``/view?channel=rgb`` (no alpha, no text chunks) or ``channel=a`` (the alpha)."""
    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
    return buf.getvalue()
