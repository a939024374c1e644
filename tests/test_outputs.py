"""Dataset outputs, each read back by what consumes it: ``datasets`` (imagefolder), the ``csv``
module (manifest.csv), plain files as kohya reads them (captions), Pillow (infotext in PNG text
chunks and EXIF UserComment), and piexif the way the WebUI's PNG Info tab reads it.

Output directories are built synthetically: real PNGs written with Pillow, and manifest records
shaped like ``OutputStore.write`` makes them from the real expansion of a job.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import importlib.util
import io
from pathlib import Path
from typing import Any

import orjson
import PIL.Image
import pytest
from PIL import ExifTags, PngImagePlugin

from pipeline import expand
from pipeline.errors import JobError
from pipeline.job.load import load_job, parse_job
from pipeline.job.schema import ConvertSpec, JobSpec
from pipeline.model import Image
from pipeline.job.naming import Namer
from pipeline.outputs import build_exporters
from pipeline.outputs.captions import clean_prompt
from pipeline.outputs.convert import (UNICODE_PREFIX, convert_for_write, convert_image,
                                      decode_user_comment, read_infotext)
from pipeline.output.layout import MANIFEST
from pipeline.output.resume import repair_manifest

REPO = Path(__file__).resolve().parent.parent
METADATA = Path("imagefolder") / "metadata.jsonl"

JOB = """
name: outputs-test
defaults: {steps: 12, width: 32, height: 32, sampler_name: Euler a, negative_prompt: "bad, ugly"}
prompts:
  - "a {red|blue} cube, on a \\"wooden\\" table"
  - prompt: "line one\\nline two, a sphere"
    negative_prompt: "cone"
matrix:
  cfg_scale: [5, 7.5]
  style: [1, "two"]
loras: {names: [detail], weights: [0, 0.8]}
seeds: [7]
outputs: [imagefolder, captions, csv]
"""
# 3 prompts x 2 cfg x 2 style x 2 lora x 1 seed
JOB_IMAGES = 24


def spec_from(text: str = JOB, **changes: Any) -> JobSpec:
    spec = parse_job(text.encode(), path="test.yaml")
    return spec.model_copy(update=changes) if changes else spec


def png_bytes(color: tuple[int, int, int], infotext: str | None = None,
              size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    info = None
    if infotext is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
    out = io.BytesIO()
    PIL.Image.new(mode, size, color if mode == "RGB" else (*color, 128)).save(
        out, "PNG", pnginfo=info)
    return out.getvalue()


def infotext_for(prompt: str, negative: str, seed: int) -> str:
    return (f"{prompt}\nNegative prompt: {negative}\n"
            f"Steps: 12, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 32x32")


def synth_output(out: Path, spec: JobSpec, *, extras: bool = True) -> list[list[dict[str, Any]]]:
    """Write every variant's image + sidecar like the store; return records per variant
    (the manifest is left to the caller)."""
    plan = expand.build_plan(spec)
    namer = Namer(spec.naming)
    variants: list[list[dict[str, Any]]] = []
    for n, variant in enumerate(expand.variants(plan)):
        seed = variant.seed if variant.seed != -1 else 1000 + n
        records = []
        kinds = ["generation", "extra"] if extras and n == 0 else ["generation"]
        for index, kind in enumerate(kinds):
            infotext = infotext_for(variant.prompt, variant.negative_prompt, seed)
            data = png_bytes((n * 10 % 256, 40, 90), infotext if kind == "generation" else None)
            rel = namer.relative_path(ordinal=variant.ordinal, variant_id=variant.id,
                                      index=index, seed=seed,
                                      prompt=variant.axis("prompt", variant.prompt),
                                      axes=dict(variant.axes), extension="png",
                                      extra=kind == "extra")
            record = {
                "id": variant.id, "image_index": index, "kind": kind, "file": rel,
                "format": "png", "prompt": variant.prompt,
                "negative_prompt": variant.negative_prompt,
                "seed": seed if kind == "generation" else None,
                "subseed": seed + 1 if kind == "generation" else None,
                "requested_seed": variant.seed, "backend": "http://127.0.0.1:9",
                "model": "sim-model", "sampler": "Euler a", "ordinal": variant.ordinal,
                "axes": dict(variant.axes), "images_expected": variant.images_expected,
                "params": dict(variant.payload), "infotext": infotext,
                "sha256": "0" * 64, "bytes": len(data), "attempts": 1, "elapsed_s": 0.01,
                "created": "2026-01-01T00:00:00+00:00",
            }
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.with_suffix(".json").write_bytes(orjson.dumps(record))
            records.append(record)
        variants.append(records)
    for name in ("run.json", "job.json"):  # the rest of a real output directory
        (out / name).write_bytes(b"{}")
    (out / "failures.jsonl").write_bytes(b"")
    return variants


def append_manifest(out: Path, records: list[dict[str, Any]]) -> None:
    with (out / MANIFEST).open("ab") as handle:
        for record in records:
            handle.write(orjson.dumps(record) + b"\n")


def all_records(variants: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for records in variants for r in records]


def exporter(spec: JobSpec, out: Path, name: str) -> Any:
    return next(e for e in build_exporters(spec, out) if e.name == name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> tuple[Path, JobSpec, list[list[dict[str, Any]]]]:
    out = tmp_path / "out"
    spec = spec_from()
    variants = synth_output(out, spec)
    append_manifest(out, all_records(variants))
    return out, spec, variants


# --- infotext and conversion -------------------------------------------------------------------

INFOTEXT = ('a "cat", <lora:detail:0.8> ü 猫 🐱\nNegative prompt: dog\n'
            'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32')


@pytest.mark.parametrize("target", ["webp", "jpeg"])
def test_convert_to_lossy_keeps_infotext_in_exif_user_comment(target: str) -> None:
    data, fmt = convert_image(png_bytes((200, 10, 10), INFOTEXT), to=target, quality=80)
    assert fmt == target
    with PIL.Image.open(io.BytesIO(data)) as image:
        assert image.format == target.upper()
        raw = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert raw[:8] == UNICODE_PREFIX
    assert raw[8:].decode("utf-16-be") == INFOTEXT  # what piexif's "unicode" writes
    assert read_infotext(data) == INFOTEXT


def test_convert_reads_the_webui_way_with_piexif() -> None:
    """The WebUI's read_info_from_image: piexif.load(info["exif"]) + UserComment.load."""
    piexif = pytest.importorskip("piexif", reason="piexif (the WebUI's EXIF reader) not installed")
    import piexif.helper

    for target in ("jpeg", "webp"):
        data, _ = convert_image(png_bytes((1, 2, 3), INFOTEXT), to=target, quality=90)
        with PIL.Image.open(io.BytesIO(data)) as image:
            exif = piexif.load(image.info["exif"])
        comment = exif["Exif"][piexif.ExifIFD.UserComment]
        assert isinstance(comment, bytes)  # typed UNDEFINED, not BYTE (a tuple to piexif)
        assert piexif.helper.UserComment.load(comment) == INFOTEXT


def test_user_comment_decoding_variants() -> None:
    assert decode_user_comment(UNICODE_PREFIX + "ab ü".encode("utf-16-be")) == "ab ü"
    assert decode_user_comment(UNICODE_PREFIX + "ab ü".encode("utf-16-le")) == "ab ü"
    assert decode_user_comment(b"ASCII\x00\x00\x00Steps: 20") == "Steps: 20"
    assert decode_user_comment(b"Steps: 20") == "Steps: 20"
    assert decode_user_comment(b"") is None
    assert decode_user_comment(None) is None


def test_convert_to_png_writes_parameters_text_chunk_and_round_trips() -> None:
    webp, _ = convert_image(png_bytes((5, 5, 5), INFOTEXT), to="webp", quality=90)
    data, fmt = convert_image(webp, to="png", quality=90)  # infotext read from the EXIF
    assert fmt == "png"
    with PIL.Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.info["parameters"] == INFOTEXT
    assert read_infotext(data) == INFOTEXT


def test_convert_explicit_infotext_wins_and_alpha_is_handled() -> None:
    rgba = png_bytes((10, 20, 30), "old", mode="RGBA")
    jpeg, _ = convert_image(rgba, to="jpg", quality=70, infotext="new text")
    webp, _ = convert_image(rgba, to="webp", quality=70, infotext="new text")
    assert read_infotext(jpeg) == "new text"
    with PIL.Image.open(io.BytesIO(jpeg)) as image:
        assert image.mode == "RGB"
    with PIL.Image.open(io.BytesIO(webp)) as image:
        assert image.mode == "RGBA"
    with pytest.raises(ValueError, match="webp, jpeg or png"):
        convert_image(rgba, to="gif", quality=70)


def test_read_infotext_png_and_plain_and_garbage() -> None:
    assert read_infotext(png_bytes((0, 0, 0), INFOTEXT)) == INFOTEXT
    assert read_infotext(png_bytes((0, 0, 0))) is None
    assert read_infotext(b"not an image") is None


def test_convert_for_write_identity_conversion_and_fallback() -> None:
    image = Image(index=0, data=png_bytes((9, 9, 9), INFOTEXT), format="png", seed=3,
                  infotext=INFOTEXT)
    assert convert_for_write(image, None) is image
    assert convert_for_write(image, ConvertSpec(format="png")) is image
    converted = convert_for_write(image, ConvertSpec(format="webp", quality=75))
    assert converted is not image and converted.format == "webp"
    assert converted.seed == 3 and converted.index == 0 and converted.infotext == INFOTEXT
    assert converted.data[8:12] == b"WEBP" and read_infotext(converted.data) == INFOTEXT
    broken = Image(index=1, data=b"\x89PNG\r\n\x1a\nbroken", format="png")
    assert convert_for_write(broken, ConvertSpec(format="jpeg")) is broken


# --- imagefolder ---------------------------------------------------------------------------------

def test_imagefolder_rebuild_rows_columns_and_consistent_types(dataset_dir) -> None:
    out, spec, variants = dataset_dir
    exporter(spec, out, "imagefolder").rebuild()
    rows = read_jsonl(out / METADATA)
    assert len(rows) == JOB_IMAGES  # the extra image is not a row
    assert all((out / "imagefolder" / r["file_name"]).is_file() for r in rows)
    assert rows[0]["file_name"].startswith("images/00000/")
    generations = [r for r in all_records(variants) if r["kind"] == "generation"]
    for row, record in zip(rows, generations):  # the same file as the store's, in order
        assert (out / "imagefolder" / row["file_name"]).samefile(out / record["file"])
    assert list(rows[0]) == ["file_name", "prompt", "negative_prompt", "seed", "model", "sampler",
                             "steps", "cfg_scale", "width", "height", "lora", "lora_name",
                             "lora_weight", "style"]
    for column in rows[0]:
        kinds = {type(r[column]).__name__ for r in rows if r[column] is not None}
        assert len(kinds) == 1, (column, kinds)
    assert {r["style"] for r in rows} == {"1", "two"}  # int and str axis values -> str
    assert {r["cfg_scale"] for r in rows} == {5.0, 7.5}
    assert {r["lora"] for r in rows} == {"baseline", "detail:0.8"}
    assert {r["lora_weight"] for r in rows} == {0.0, 0.8}
    assert {r["lora_name"] for r in rows} == {"", "detail"}  # text is never null
    assert rows[0]["seed"] == 7 and rows[0]["steps"] == 12 and rows[0]["model"] == "sim-model"


def test_imagefolder_columns_override_and_unknown_column(tmp_path: Path) -> None:
    spec = spec_from(columns=["prompt", "seed", "style", "scheduler", "sha256"])
    variants = synth_output(tmp_path, spec)
    append_manifest(tmp_path, all_records(variants))
    exporter(spec, tmp_path, "imagefolder").rebuild()
    rows = read_jsonl(tmp_path / METADATA)
    assert list(rows[0]) == ["file_name", "prompt", "seed", "style", "scheduler", "sha256"]
    with pytest.raises(JobError) as caught:
        build_exporters(spec_from(columns=["prompt", "cfg"]), tmp_path)
    assert caught.value.where == "columns[1]" and caught.value.path == "test.yaml"


async def test_imagefolder_append_then_rebuild_agree_and_repair_crashes(tmp_path: Path) -> None:
    spec = spec_from()
    variants = synth_output(tmp_path, spec)
    folder = exporter(spec, tmp_path, "imagefolder")
    folder.rebuild()  # empty manifest: empty file
    path = tmp_path / METADATA
    assert path.read_bytes() == b""
    for records in variants:
        append_manifest(tmp_path, records)
        await folder.on_variant(records)
    appended = path.read_bytes()
    folder.rebuild()
    assert path.read_bytes() == appended
    # A crash: a torn last line; a variant in the manifest but not here; a duplicate manifest
    # line (which the store's repair drops before the exporters rebuild); a stray link.
    lines = appended.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]) + lines[-2][:20])
    append_manifest(tmp_path, variants[3])
    stray = tmp_path / "imagefolder" / "images" / "00000" / "stray.png"
    stray.write_bytes(b"x")
    (tmp_path / "imagefolder" / "images" / "00007").mkdir()
    repair_manifest(tmp_path)
    folder.rebuild()
    assert path.read_bytes() == appended
    assert not stray.exists() and not (tmp_path / "imagefolder" / "images" / "00007").exists()
    assert not list(tmp_path.rglob(".tmp-*"))


def test_imagefolder_warns_about_number_columns_null_through_the_schema_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_from()
    variants = synth_output(tmp_path, spec)
    records = all_records(variants)
    for record in records[:12]:  # made before a "seed" was known
        record["seed"] = None
        record["requested_seed"] = -1
    append_manifest(tmp_path, records)
    monkeypatch.setattr("pipeline.outputs.imagefolder.SCHEMA_WINDOW_BYTES", 2000)
    exporter(spec, tmp_path, "imagefolder").rebuild()
    assert [r.message for r in caplog.records if "'seed' is null" in r.message]
    assert len(read_jsonl(tmp_path / METADATA)) == JOB_IMAGES


def load_imagefolder(out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``datasets.load_dataset("imagefolder", data_dir=out)``, offline, caching under ``cache``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read when datasets is first imported
    monkeypatch.setenv("HF_HOME", str(cache))
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    return datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                                 cache_dir=str(cache / "datasets"))


def test_imagefolder_loads_with_datasets(dataset_dir, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out, spec, _ = dataset_dir
    for e in build_exporters(spec, out):
        e.rebuild()
    ds = load_imagefolder(out / "imagefolder", tmp_path / "hf", monkeypatch)
    assert ds.num_rows == JOB_IMAGES
    assert ds.column_names[0] == "image"
    assert {"prompt", "negative_prompt", "seed", "cfg_scale", "style", "lora_weight"} <= set(
        ds.column_names)
    assert ds.features["style"].dtype == "string"
    assert ds.features["seed"].dtype == "int64"
    assert ds.features["cfg_scale"].dtype == "float64"
    row = ds[0]
    assert row["prompt"] == 'a red cube, on a "wooden" table'
    assert row["image"].size == (32, 32)
    row["image"].load()
    prompts = set(ds["prompt"])
    assert "line one\nline two, a sphere <lora:detail:0.8>" in prompts


# --- captions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("a cat, <lora:detail:0.8>", "a cat"),
    ("<lora:a:1> a cat , <LyCO:b:0.5>, sitting,,  <hypernet:c:1>", "a cat, sitting"),
    ("a (cat:1.2)\n on  a mat <lora:x:0.5:te=1>, night", "a (cat:1.2) on a mat, night"),
    ("<lora:only:1>", ""),
])
def test_clean_prompt(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean


def test_captions_default_template_beside_each_image(dataset_dir) -> None:
    out, spec, variants = dataset_dir
    exporter(spec, out, "captions").rebuild()
    captions = sorted((out / "images").glob("*.txt"))
    assert len(captions) == JOB_IMAGES
    for record in all_records(variants):
        path = (out / record["file"]).with_suffix(".txt")
        if record["kind"] == "extra":
            assert not path.exists()
            continue
        text = path.read_text(encoding="utf-8")
        # kohya: the first line is the caption, and a caption file is never empty
        assert text.endswith("\n") and text.count("\n") == 1
        assert "<lora" not in text
    sphere = next(r for r in all_records(variants)
                  if "sphere" in r["prompt"] and "<lora" in r["prompt"])
    assert (out / sphere["file"]).with_suffix(".txt").read_text() == \
        "line one line two, a sphere\n"


async def test_captions_template_fields_rebuild_and_stale_files(dataset_dir) -> None:
    out, _, variants = dataset_dir
    spec = spec_from(caption="photo of sks, {prompt}, {lora_name}, style {style}, seed {seed}")
    captions = exporter(spec, out, "captions")
    await captions.on_variant(variants[-1])
    record = variants[-1][0]
    path = (out / record["file"]).with_suffix(".txt")
    assert path.read_text() == \
        "photo of sks, line one line two, a sphere, detail, style two, seed 7\n"
    # A template change is applied by rebuild; a caption of an image the manifest dropped goes.
    spec2 = spec_from(caption="{raw_prompt} | {cfg_scale} | {negative_prompt}")
    (out / MANIFEST).write_bytes(b"".join(orjson.dumps(r) + b"\n"
                                          for r in all_records(variants[:-1])))
    exporter(spec2, out, "captions").rebuild()
    assert not path.exists()
    first = variants[0][0]
    assert (out / first["file"]).with_suffix(".txt").read_text() == \
        'a red cube, on a "wooden" table | 5.0 | bad, ugly\n'
    assert not list((out / "images").glob(".tmp-*"))


@pytest.mark.parametrize("template, message", [
    ("{prompt}, {colour}", "not a known field"),
    ("{seed:08d}", "format spec"),
    ("{prompt!r}", "format spec"),
    ("{prompt", "malformed"),
    ("{0}", "not a known field"),
])
def test_caption_template_errors_at_build(tmp_path: Path, template: str, message: str) -> None:
    with pytest.raises(JobError, match=message) as caught:
        build_exporters(spec_from(caption=template), tmp_path)
    assert caught.value.where == "caption" and caught.value.path == "test.yaml"
    assert caught.value.hint


# --- csv -----------------------------------------------------------------------------------------

async def test_csv_reads_back_with_the_csv_module(dataset_dir) -> None:
    out, spec, variants = dataset_dir
    table = exporter(spec, out, "csv")
    table.rebuild()
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    assert header == ["id", "image_index", "file", "prompt", "negative_prompt", "seed",
                      "subseed", "model", "sampler", "backend", "sha256", "lora",
                      "lora_name", "lora_weight", "cfg_scale", "style", "params"]
    generations = [r for r in all_records(variants) if r["kind"] == "generation"]
    assert len(rows) == len(generations) == JOB_IMAGES
    for row, record in zip(rows, generations):
        assert row["prompt"] == record["prompt"]  # commas, quotes, newlines intact
        assert row["file"] == record["file"] and row["seed"] == "7"
        assert orjson.loads(row["params"])["cfg_scale"] == record["params"]["cfg_scale"]
    assert any("\n" in r["prompt"] and '"' not in r["prompt"] for r in rows)
    assert any('"wooden"' in r["prompt"] for r in rows)
    # Appends and a rebuild agree; a torn last row is repaired.
    whole = (out / "manifest.csv").read_bytes()
    (out / "manifest.csv").unlink()
    for records in variants:
        await table.on_variant(records)
    assert (out / "manifest.csv").read_bytes() == whole
    (out / "manifest.csv").write_bytes(whole[:-15])
    table.rebuild()
    assert (out / "manifest.csv").read_bytes() == whole


# --- the job file and the simulator --------------------------------------------------------------

def test_dataset_job_builds_all_its_exporters(tmp_path: Path) -> None:
    spec = load_job(REPO / "jobs" / "dataset.yaml")
    plan = expand.build_plan(spec)
    assert expand.count(plan) == 18
    names = [e.name for e in build_exporters(spec, tmp_path, plan=plan)]
    assert names == ["imagefolder", "captions", "csv", "webdataset"]


async def test_dataset_job_on_the_simulator(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs/dataset.yaml through the real stages on the built-in simulator, then every format
    built from that output directory (by rebuild, and by on_variant in write order: the same)."""
    sim = importlib.util.find_spec("pipeline.sim") and importlib.import_module("pipeline.sim")
    if not sim or not hasattr(sim, "start_sim"):
        pytest.skip("the simulated backend (pipeline.sim) is not complete in this tree yet")
    from pipeline import api
    from pipeline.events import VariantWritten

    written: list[tuple[dict[str, Any], ...]] = []

    def listen(event: Any) -> None:
        if isinstance(event, VariantWritten):
            written.append(event.records)

    out = tmp_path / "ds"
    spec = load_job(REPO / "jobs" / "dataset.yaml")
    summary = await api.run(spec, out_dir=out, listeners=(listen,), fsync=False,
                            zero_waits=True)
    assert summary.status == "complete" and summary.images == 18
    exporters = build_exporters(spec, out)
    for e in exporters:
        await asyncio.to_thread(e.rebuild)
    dataset_files = ["imagefolder/metadata.jsonl", "manifest.csv"]
    rebuilt = {name: (out / name).read_bytes() for name in dataset_files}
    captions = {p.name: p.read_text() for p in (out / "images").glob("*.txt")}
    assert len(read_jsonl(out / METADATA)) == 18 and len(captions) == 18
    assert all(text.startswith("a 3d render, a ") and text.endswith(" on a table\n")
               for text in captions.values())
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 18
    for name in dataset_files:
        (out / name).unlink()
    for path in (out / "images").glob("*.txt"):
        path.unlink()
    exporters = build_exporters(spec, out)  # new ones, as at the start of a first run
    for records in written:
        for e in exporters:
            await e.on_variant(list(records))
    assert {name: (out / name).read_bytes() for name in dataset_files} == rebuilt
    assert {p.name: p.read_text() for p in (out / "images").glob("*.txt")} == captions
    # The simulator's infotext survives conversion, and the dataset loads.
    record = read_jsonl(out / "manifest.jsonl")[0]
    image = Image(index=0, data=(out / record["file"]).read_bytes(), format=record["format"])
    webp = convert_for_write(image, ConvertSpec(format="webp", quality=80))
    assert webp.format == "webp" and read_infotext(webp.data) == read_infotext(image.data)
    assert read_infotext(webp.data) and "Seed: " in read_infotext(webp.data)
    ds = load_imagefolder(out / "imagefolder", tmp_path / "hf", monkeypatch)
    assert ds.num_rows == 18 and ds[0]["image"].size == (256, 256)
    assert ds[0]["prompt"] == record["prompt"]

def test_jpeg_too_long_infotext_is_left_out_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    data, fmt = convert_image(png_bytes((1, 2, 3), "x" * 40_000), to="jpeg", quality=80)
    assert fmt == "jpeg" and read_infotext(data) is None
    assert "does not fit in JPEG EXIF" in caplog.text
