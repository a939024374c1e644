"""``sdbatch reproduce OUT/images/<file>`` (or ``OUT`` + a variant id): regenerate one image.

The recorded request is sent again with the resolved seed in place of -1, and only that image's
batch position asked for; the result is compared with the file on disk: byte-identical, or at
least the same A1111 infotext (GPU nondeterminism changes pixels, not parameters).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from pipeline.backends.webui.client import BackendClient
from pipeline.cli.common import backend_specs, redact
from pipeline.errors import ExitStatus, UsageError
from pipeline.model import Variant
from pipeline.outputs.convert import read_infotext
from pipeline.output.layout import MANIFEST
from pipeline.output.resume import read_records


def add_parser(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="regenerate one saved image from its recorded "
                       "parameters and resolved seed, and compare",
                       description="Find the image's manifest record, send its request again "
                       "with the resolved seed (batch of one), and report whether the bytes, or "
                       "at least the infotext, match. Exit 0 on a match, 1 otherwise.")
    p.add_argument("target", help="an image file inside an output directory, or the output "
                   "directory itself (then give --id)")
    p.add_argument("--id", help="the variant id (with an output directory as target)")
    p.add_argument("--index", type=int, default=0, help="image index within the variant "
                   "(with --id; default 0)")
    p.add_argument("--backend", action="append", default=[], metavar="URL",
                   help="where to generate (default: the run's first backend; none: the "
                        "built-in simulator)")
    p.add_argument("--save", metavar="FILE", help="also write the regenerated image here")
    p.set_defaults(func=cmd_reproduce)


def find_record(target: Path, variant_id: str | None, index: int) -> tuple[Path, dict[str, Any]]:
    """The output directory and the manifest record the target names."""
    if target.is_dir():
        out_dir = target
        if not variant_id:
            raise UsageError("give --id with an output directory (or name an image file)")
        match = lambda r: r.get("id") == variant_id and r.get("image_index") == index  # noqa: E731
    else:
        out_dir = next((p for p in target.resolve().parents if (p / MANIFEST).exists()), None)
        if out_dir is None:
            raise UsageError(f"{target} is not inside an sdbatch output directory (no "
                             f"{MANIFEST} above it)")
        rel = target.resolve().relative_to(out_dir).as_posix()
        match = lambda r: r.get("file") == rel  # noqa: E731
    for record in read_records(out_dir / MANIFEST):
        if match(record) and record.get("kind", "generation") == "generation":
            return out_dir, record
    raise UsageError(f"no generation record for {target}"
                     + (f" id {variant_id} index {index}" if variant_id else ""))


def request_for(record: dict[str, Any]) -> dict[str, Any]:
    """The recorded request, narrowed to this one image with its resolved seed."""
    params = dict(record["params"])
    params["seed"] = record["seed"]
    if record.get("subseed") is not None and float(params.get("subseed_strength", 0) or 0) > 0:
        params["subseed"] = record["subseed"]
    params["batch_size"] = 1
    params["n_iter"] = 1
    params.pop("save_images", None)
    # Pin the checkpoint the image was made with (and every recorded override), so it reproduces
    # on a backend that has another model loaded, and leaves that backend as it found it.
    overrides = dict(params.get("override_settings") or {})
    if not overrides.get("sd_model_checkpoint") and isinstance(record.get("model"), str):
        overrides["sd_model_checkpoint"] = record["model"]
    if overrides:
        params["override_settings"] = overrides
        params["override_settings_restore_afterwards"] = True
    return params


async def regenerate(record: dict[str, Any], backend_urls: list[str]) -> bytes:
    from pipeline.run.start import backends_or_sim

    params = request_for(record)
    specs = backend_specs(backend_urls)  # a bad URL: exit 2, its password masked
    async with backends_or_sim(specs) as (backends, _):
        async with aiohttp.ClientSession() as session:
            client = BackendClient(session, backends[0])
            variant = Variant(id=record["id"], ordinal=0, prompt=params.get("prompt", ""),
                              negative_prompt=params.get("negative_prompt", ""),
                              seed=params["seed"], payload=params,
                              endpoint="img2img" if "init_images" in params else "txt2img")
            reply = await client.generate(variant)
    return next(i.data for i in reply.images if i.kind == "generation")


def cmd_reproduce(args: argparse.Namespace) -> int:
    out_dir, record = find_record(Path(args.target), args.id, args.index)
    backends = args.backend
    if not backends:
        try:
            job = orjson.loads((out_dir / "job.json").read_bytes())
            backends = [b["url"] for b in job.get("backends") or []][:1]
        except (OSError, orjson.JSONDecodeError):
            backends = []
    original = (out_dir / record["file"]).read_bytes()
    data = asyncio.run(regenerate(record, backends))
    if args.save:
        Path(args.save).write_bytes(data)
    same_bytes = hashlib.sha256(data).hexdigest() == hashlib.sha256(original).hexdigest()
    old_info, new_info = read_infotext(original), read_infotext(data)
    same_info = old_info is not None and old_info == new_info
    where = redact(backends[0]) if backends else "the built-in simulator"
    print(f"regenerated {record['file']} (seed {record['seed']}) on {where}")
    if same_bytes:
        print("match: byte-identical")
        return ExitStatus.OK
    if same_info:
        print("match: same infotext (pixels differ, as GPU nondeterminism allows)")
        return ExitStatus.OK
    print("no match: the bytes and the infotext differ", file=sys.stderr)
    if old_info and new_info:
        for a, b in zip(old_info.splitlines(), new_info.splitlines()):
            if a != b:
                print(f"  was: {a}\n  now: {b}", file=sys.stderr)
    return ExitStatus.FAILED
