"""A child process serving N simulated WebUI backends on loopback (one event loop, N ports).

    python -m benchmarks.simfarm --count 16 --config '{"latency_s": 0.5}'

Prints one JSON line ``{"urls": [...]}`` on stdout once every server listens, then serves until
stdin closes or SIGTERM/SIGINT arrives. Server ``i`` gets ``fault_seed = base + i`` so backends
do not fail in lockstep. The benchmark reads each server's counters over HTTP
(``GET /sim/stats``) and this process's CPU time from ``/proc/<pid>/stat``, so server CPU is
never mixed with the client's.

``--pool`` (benchmark-only): each size's pictures are drawn and encoded once (a pool of six, by
seed), so a zero-latency or fast server's CPU per request is small and the servers on these 2
cores take as little as possible from the client (or from the "GPU time" a latency stands for).

``--photo`` (benchmark-only): generations are sent as photo-like RGB PNGs of the size real
512x512 WebUI outputs have (~0.5 MB, zlib level 6 as PIL saves them for the WebUI API) instead
of the simulator's 8 kB palette pictures, so a client that decodes and re-encodes images pays
what it pays against a real server. A pool of a few such PNGs per size is encoded once, at
start, so the servers stay cheap; every other part of the response is the simulator's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import logging
import signal
import sys
from typing import Any

from pipeline.sim import SimConfig, start_sim

PHOTO_POOL = 6
PHOTO_NOISE_SIGMA = 40
PHOTO_NOISE_WEIGHT = 0.12


def install_photo_payloads(sizes: list[tuple[int, int]]) -> None:
    """Serve generations as photo-like PNGs (see the module docstring)."""
    from PIL import Image, PngImagePlugin

    from pipeline.sim import render

    original = render.encode_b64
    pool: dict[tuple[int, int], list[str]] = {}
    turn = itertools.count()

    def photo_pool(size: tuple[int, int]) -> list[str]:
        if size not in pool:
            made = []
            for k in range(PHOTO_POOL):
                base = render.render_generation(size[0], size[1], 1000 + k,
                                                "a photo-like benchmark image").convert("RGB")
                noise = Image.effect_noise(size, PHOTO_NOISE_SIGMA)
                grain = Image.merge("RGB", (noise, noise.transpose(Image.Transpose.ROTATE_180),
                                            noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
                picture = Image.blend(base, grain, PHOTO_NOISE_WEIGHT)
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", "a photo-like benchmark image\nSteps: 20")
                buf = io.BytesIO()
                picture.save(buf, "PNG", pnginfo=info)
                made.append(base64.b64encode(buf.getvalue()).decode("ascii"))
            pool[size] = made
        return pool[size]

    def encode_b64(image: Any, samples_format: str, infotext: str | None) -> str:
        if samples_format != "png" or image.mode != "P":  # grids and other formats: unchanged
            return original(image, samples_format, infotext)
        return photo_pool(image.size)[next(turn) % PHOTO_POOL]

    for size in sizes:
        photo_pool(size)
    render.encode_b64 = encode_b64


def install_pooled_pictures(pool: int = PHOTO_POOL) -> None:
    """Draw and encode each size's generation pictures once (``pool`` of them, by seed), so the
    servers' CPU per request is the request's, not the drawing's (benchmark-only; see the
    module docstring). Infotexts, seeds and every other field are still the request's own; the
    PNG's embedded text is that of the first request that drew the picture."""
    from pipeline.sim import render

    draw, encode = render.render_generation, render.encode_b64
    pictures: dict[tuple[int, int, int], Any] = {}
    encoded: dict[int, tuple[Any, str, str]] = {}  # id(picture) -> (picture, format, base64)

    def render_generation(width: int, height: int, seed: int, prompt: str,
                          **kwargs: Any) -> Any:
        key = (width, height, seed % pool)
        if key not in pictures:
            pictures[key] = draw(width, height, seed % pool, "a pooled benchmark picture")
        return pictures[key]

    def encode_b64(image: Any, samples_format: str, infotext: str | None) -> str:
        known = encoded.get(id(image))
        if known is not None and known[0] is image and known[1] == samples_format:
            return known[2]
        b64 = encode(image, samples_format, infotext)
        if any(image is p for p in pictures.values()):
            encoded[id(image)] = (image, samples_format, b64)
        return b64

    render.render_generation = render_generation
    render.encode_b64 = encode_b64


async def serve(count: int, config: dict[str, Any], fault_seed_base: int) -> None:
    servers = []
    try:
        for i in range(count):
            fields = dict(config)
            for key in ("models", "samplers", "loras"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            fields["fault_seed"] = fault_seed_base + i
            servers.append(await start_sim(SimConfig(**fields), port=0))
        sys.stdout.write(json.dumps({"urls": [s.url for s in servers]}) + "\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def on_stdin() -> None:  # the parent closed our stdin (done, or it died)
            if not sys.stdin.buffer.read1(1):
                loop.remove_reader(sys.stdin.fileno())
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        await stop.wait()
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--config", default="{}", help="SimConfig fields as JSON")
    parser.add_argument("--fault-seed-base", type=int, default=0)
    parser.add_argument("--photo", metavar="WxH,...", default="",
                        help="serve photo-like PNGs; pre-encode pools for these sizes")
    parser.add_argument("--pool", action="store_true",
                        help="draw and encode a small pool of pictures per size, once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.pool:
        install_pooled_pictures()
    if args.photo:
        install_photo_payloads([tuple(int(v) for v in s.split("x"))  # type: ignore[misc]
                                for s in args.photo.split(",")])
    asyncio.run(serve(args.count, json.loads(args.config), args.fault_seed_base))


if __name__ == "__main__":
    main()
