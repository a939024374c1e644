"""Bulk dataset formats read back by their real consumers: WebDataset shards by the
``webdataset`` library and ``pyarrow``, Parquet with embedded images by ``datasets`` (as the
Hub's viewer reads it), the sharded imagefolder by ``datasets``, kohya's ``meta_cap.json`` the
way kohya's fine-tuning dataset resolves it. Crashes are simulated at every point a real one can
stop the writer (and, with the real CLI, by ``kill -9``): every sample ends up in exactly one
shard, once.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import JobError
from pipeline.job.schema import DatasetSpec, JobSpec
from pipeline.outputs import build_exporters
from pipeline.outputs.exporter import Exporter
from pipeline.output.layout import MANIFEST, TMP_PREFIX
from pipeline.output.resume import repair_manifest
from tests.conftest import read_manifest
from tests.test_outputs import (
    JOB_IMAGES,
    all_records,
    append_manifest,
    spec_from,
    synth_output,
)

wds = pytest.importorskip("webdataset", reason="the webdataset package is not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
import pyarrow.dataset  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

Records = list[list[dict[str, Any]]]


def dataset_spec(outputs: list[str], **options: Any) -> JobSpec:
    return spec_from(outputs=outputs, dataset=DatasetSpec(**options))


def the(exporters: list[Exporter], name: str) -> Any:
    return next(e for e in exporters if e.name == name)


def generations(variants: Records) -> list[dict[str, Any]]:
    return [r for r in all_records(variants) if r["kind"] == "generation"]


async def write_run(out: Path, spec: JobSpec, variants: Records, *, close: bool = True
                    ) -> list[Exporter]:
    """What the writer stage does: rebuild at start, then per variant the manifest lines and
    on_variant, then close."""
    exporters = build_exporters(spec, out)
    for e in exporters:
        await asyncio.to_thread(e.rebuild)
    for records in variants:
        append_manifest(out, records)
        for e in exporters:
            await e.on_variant(records)
    if close:
        for e in exporters:
            await e.close()
    return exporters


def rebuild(spec: JobSpec, out: Path) -> None:
    """A run's start and end with nothing to add: rebuild, then close."""
    for e in build_exporters(spec, out, fsync=False):
        e.rebuild()
        asyncio.run(e.close())


def crash(out: Path) -> None:
    """What a restart finds after kill -9: the store deletes every temporary file."""
    for tmp in out.rglob(f"{TMP_PREFIX}*"):
        tmp.unlink()


def tars(out: Path) -> list[Path]:
    return sorted((out / "webdataset").glob("[0-9]*.tar"))


def read_webdataset(out: Path, decode: bool = False) -> list[dict[str, Any]]:
    """Every sample, through the webdataset library, in shard order."""
    urls = [str(p) for p in tars(out)]
    if not urls:
        return []
    dataset = wds.WebDataset(urls, shardshuffle=False)
    if decode:
        dataset = dataset.decode("pil")
    return list(dataset)


def assert_every_sample_once(out: Path, shard_size: int) -> list[dict[str, Any]]:
    """Each manifest generation in exactly one sample, in order, keys SSSSSIIII, shards full
    but the last, and each shard's parquet holding exactly its samples."""
    records = [r for r in read_manifest(out) if r.get("kind", "generation") == "generation"]
    samples = read_webdataset(out)
    identities = [(orjson.loads(s["json"])["id"], orjson.loads(s["json"])["image_index"])
                  for s in samples]
    seen = Counter(identities)
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
    assert identities == [(r["id"], r["image_index"]) for r in records]
    digits = max(1, len(str(shard_size - 1)))
    for position, (sample, record) in enumerate(zip(samples, records)):
        shard, index = divmod(position, shard_size)
        assert sample["__key__"] == f"{shard:05d}{index:0{digits}d}"
        assert Path(sample["__url__"]).name == f"{shard:05d}.tar"
        image = next(v for k, v in sample.items() if k in ("png", "jpg", "webp"))
        assert hashlib.sha256(image).hexdigest() == hashlib.sha256(
            (out / record["file"]).read_bytes()).hexdigest()
    counts = [len([s for s in samples if Path(s["__url__"]).name == t.name]) for t in tars(out)]
    assert all(c == shard_size for c in counts[:-1]) and 0 < (counts or [1])[-1] <= shard_size
    for tar in tars(out):
        table = pq.read_table(tar.with_suffix(".parquet"))
        assert table.column("key").to_pylist() == [
            s["__key__"] for s in samples if Path(s["__url__"]).name == tar.name]
    stats = json.loads((out / "webdataset" / "_stats.json").read_text())
    assert stats["count"] == stats["successes"] == len(records)
    assert stats["shards"] == len(tars(out))
    return samples


@pytest.fixture
def synth(tmp_path: Path) -> tuple[Path, Records]:
    out = tmp_path / "out"
    return out, synth_output(out, spec_from())


# --- webdataset ----------------------------------------------------------------------------------

async def test_webdataset_read_back_by_webdataset_and_pyarrow(synth) -> None:
    out, variants = synth
    variants[1][0]["params"]["init_images"] = ["iVBORw0KGgo" * 100]  # an img2img input
    spec = dataset_spec(["webdataset", "captions"], shard_size=5)
    await write_run(out, spec, variants)
    samples = assert_every_sample_once(out, 5)
    assert len(samples) == JOB_IMAGES and len(tars(out)) == 5  # 24 = 4 x 5 + 4
    decoded = read_webdataset(out, decode=True)
    for sample, record in zip(decoded, generations(variants)):
        assert sample["png"].size == (32, 32)
        assert sample["json"]["id"] == record["id"] and sample["json"]["key"] == sample["__key__"]
        assert sample["json"]["prompt"] == record["prompt"]
        # the caption is the caption template's, as the captions output writes it
        assert sample["txt"] + "\n" == (out / record["file"]).with_suffix(".txt").read_text()
        assert sample["json"]["caption"] == sample["txt"]
        assert "init_images" not in sample["json"]["params"]  # inputs stay in the sidecar
    table = pa.dataset.dataset(sorted(map(str, (out / "webdataset").glob("[0-9]*.parquet"))),
                               format="parquet").to_table()
    assert table.num_rows == JOB_IMAGES
    assert table.column("key").to_pylist() == [s["__key__"] for s in decoded]
    assert "image" not in table.column_names  # records only
    assert {"id", "image_index", "file", "sha256", "caption", "prompt", "seed", "cfg_scale",
            "lora_weight", "style", "params", "infotext"} <= set(table.column_names)
    assert table.schema.field("seed").type == pa.int64()
    assert table.schema.field("cfg_scale").type == pa.float64()
    assert table.column("file").to_pylist() == [r["file"] for r in generations(variants)]


async def test_webdataset_shard_in_progress_is_only_a_temporary_file(synth) -> None:
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=5)
    exporters = await write_run(out, spec, variants[:7], close=False)
    folder = out / "webdataset"
    assert [p.name for p in tars(out)] == ["00000.tar"]  # 7 samples: one shard full
    assert (folder / ".tmp-00001.tar").is_file() and (folder / ".tmp-00001.parquet").is_file()
    assert not (folder / "00001.parquet").exists()
    assert len(read_webdataset(out)) == 5  # what is published reads whole
    assert json.loads((folder / "_stats.json").read_text())["count"] == 5  # published only
    await the(exporters, "webdataset").close()
    await the(exporters, "webdataset").close()  # idempotent
    assert [p.name for p in tars(out)] == ["00000.tar", "00001.tar"]
    assert not list(folder.glob(".tmp-*"))
    assert_every_sample_once(out, 5)


async def test_webdataset_rebuild_and_appends_give_the_same_bytes(synth, tmp_path: Path) -> None:
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=4)
    await write_run(out, spec, variants)
    appended = {p.name: p.read_bytes() for p in (out / "webdataset").glob("0*")}
    for path in (out / "webdataset").glob("0*"):
        path.unlink()
    await asyncio.to_thread(rebuild, spec, out)
    assert {p.name: p.read_bytes() for p in (out / "webdataset").glob("0*")} == appended


@pytest.mark.parametrize("stop_after", [3, 5, 9, 23])
async def test_webdataset_crash_anywhere_then_resume_has_every_sample_once(
        synth, stop_after: int) -> None:
    """kill -9 after `stop_after` variants: a partial shard in its temporary file, perhaps a
    torn manifest line; the rerun rebuilds, then adds the rest."""
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=5)
    await write_run(out, spec, variants[:stop_after], close=False)
    with (out / MANIFEST).open("ab") as handle:
        handle.write(b'{"id": "torn", "image_ind')
    crash(out)
    repair_manifest(out)
    await write_run(out, spec, variants[stop_after:])
    assert len(assert_every_sample_once(out, 5)) == JOB_IMAGES


async def test_webdataset_crash_while_publishing_and_damaged_shards_are_rebuilt(synth) -> None:
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=5)
    await write_run(out, spec, variants)
    clean = {p.name: p.read_bytes() for p in (out / "webdataset").glob("0*")}
    folder = out / "webdataset"
    # a crash between the tar's rename and the parquet's: the old parquet (here: none)
    (folder / "00001.parquet").unlink()
    # a tar cut short (a disk full copy, a user's mistake)
    (folder / "00002.tar").write_bytes((folder / "00002.tar").read_bytes()[:3000])
    # a stray shard past the end (a manifest that shrank)
    (folder / "00009.tar").write_bytes(clean["00000.tar"])
    (folder / "00009.parquet").write_bytes(clean["00000.parquet"])
    untouched = (folder / "00003.tar").stat().st_mtime_ns
    await asyncio.to_thread(rebuild, spec, out)
    assert {p.name: p.read_bytes() for p in folder.glob("0*")} == clean
    assert (folder / "00003.tar").stat().st_mtime_ns == untouched  # whole shards are kept
    assert_every_sample_once(out, 5)


async def test_webdataset_clean_stop_then_resume_grows_the_last_shard(synth) -> None:
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=5)
    await write_run(out, spec, variants[:7])  # stopped with Ctrl-C: 7 samples, 2 shards
    assert len(read_webdataset(out)) == 7
    last = (out / "webdataset" / "00001.tar").stat().st_mtime_ns
    exporter = build_exporters(spec, out)[0]
    exporter.rebuild()  # nothing new yet: the published partial shard is kept as it is
    assert (out / "webdataset" / "00001.tar").stat().st_mtime_ns == last
    aside = set_aside(out, generations(variants)[5:7])  # reopened from its tar, not the images
    await write_run(out, spec, variants[7:])
    for path, data in aside:
        path.write_bytes(data)
    assert len(assert_every_sample_once(out, 5)) == JOB_IMAGES


def set_aside(out: Path, records: list[dict[str, Any]]) -> list[tuple[Path, bytes]]:
    """Remove these records' image files (to show they are not read), returning them."""
    kept = [(out / r["file"], (out / r["file"]).read_bytes()) for r in records]
    for path, _ in kept:
        path.unlink()
    return kept


async def test_webdataset_last_shard_grows_from_its_published_tar_without_reading_images(
        synth) -> None:
    out, variants = synth
    spec = dataset_spec(["webdataset"], shard_size=5)
    await write_run(out, spec, variants[:7])  # a clean stop: shard 00001 holds samples 5, 6
    await write_run(out, spec, variants[7:9], close=False)  # then 7, 8 and kill -9
    crash(out)
    aside = set_aside(out, generations(variants)[5:7])  # the published tar has their bytes
    await asyncio.to_thread(rebuild, spec, out)
    assert len(assert_every_sample_once_but_files(out, 5)) == 9
    for path, data in aside:
        path.write_bytes(data)
    # The manifest loses sample 4 (its variant to be redone, say): every later sample moves
    # up one place, so the published 00001 no longer holds the shard's first samples and is
    # written again from the images.
    lines = (out / MANIFEST).read_bytes().splitlines(keepends=True)
    (out / MANIFEST).write_bytes(b"".join(lines[:5] + lines[6:]))
    await asyncio.to_thread(rebuild, spec, out)
    assert len(assert_every_sample_once(out, 5)) == 8


def assert_every_sample_once_but_files(out: Path, shard_size: int) -> list[dict[str, Any]]:
    """``assert_every_sample_once`` where some image files are set aside: compares the samples'
    bytes with the records' sha256 instead."""
    records = [r for r in read_manifest(out) if r.get("kind", "generation") == "generation"]
    samples = read_webdataset(out)
    assert [(orjson.loads(s["json"])["id"], orjson.loads(s["json"])["image_index"])
            for s in samples] == [(r["id"], r["image_index"]) for r in records]
    for sample, record in zip(samples, records):
        assert len(sample["png"]) == record["bytes"]
    return samples


async def test_webdataset_settings_change_rewrites_the_shards(synth) -> None:
    out, variants = synth
    await write_run(out, dataset_spec(["webdataset"], shard_size=5), variants)
    spec = spec_from(outputs=["webdataset"], dataset=DatasetSpec(shard_size=10),
                     caption="photo, {prompt}")
    await asyncio.to_thread(rebuild, spec, out)
    samples = assert_every_sample_once(out, 10)
    assert [p.name for p in tars(out)] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(s["txt"].startswith(b"photo, ") for s in samples)


def fake_output(out: Path, n: int, *, image_bytes: int = 64) -> list[list[dict[str, Any]]]:
    """``n`` one-image variants with small files (the exporters copy bytes, never decode)."""
    images = out / "images"
    images.mkdir(parents=True)
    variants = []
    for i in range(n):
        name = f"images/{i:07d}_x_{i:016x}_0.png"
        data = i.to_bytes(8, "big") * (image_bytes // 8)
        (out / name).write_bytes(data)
        variants.append([{"id": f"{i:016x}", "image_index": 0, "kind": "generation",
                          "file": name, "format": "png", "prompt": f"a thing number {i}",
                          "negative_prompt": "", "seed": i, "model": "m", "sampler": "Euler",
                          "params": {"steps": 4, "width": 8, "height": 8}, "axes": {},
                          "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                          "images_expected": 1, "created": "2026-01-01T00:00:00+00:00"}])
    return variants


def peak_bytes(out: Path, spec: JobSpec, variants: Records) -> tuple[int, int]:
    """Peak traced memory (a) writing ``variants`` as a run does (manifest lines, on_variant,
    close), (b) rebuilding everything from that manifest (as after a crash, shards deleted)."""
    exporters = build_exporters(spec, out, fsync=False)
    for e in exporters:
        e.rebuild()

    async def write() -> None:
        for start in range(0, len(variants), 10):  # ten variants a call: fewer thread hops
            records = all_records(variants[start:start + 10])
            append_manifest(out, records)
            for e in exporters:
                await e.on_variant(records)
        for e in exporters:
            await e.close()

    def rebuild_all() -> None:
        for tar in (out / "webdataset").glob("0000[1-9].*"):
            tar.unlink()
        rebuild(spec, out)

    peaks = []
    for step in (lambda: asyncio.run(write()), rebuild_all):
        gc.collect()
        tracemalloc.start()
        try:
            step()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return peaks[0], peaks[1]


def test_memory_does_not_grow_with_the_number_of_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak traced memory writing (and rebuilding) 1,000 samples is that of 100: nothing is
    kept per sample beyond the current shard (shards and image folders of 20, row groups
    flushed, the manifest streamed)."""
    monkeypatch.setattr("pipeline.outputs.imagefolder.FILES_PER_FOLDER", 20)
    spec = spec_from(outputs=["webdataset", "parquet", "imagefolder"],
                     dataset=DatasetSpec(shard_size=20, parquet_shard_mb=1))
    small, big = tmp_path / "small", tmp_path / "big"
    small_peaks = peak_bytes(small, spec, fake_output(small, 100))
    big_peaks = peak_bytes(big, spec, fake_output(big, 1000))
    for peak_small, peak_big in zip(small_peaks, big_peaks):
        assert peak_big < peak_small * 1.2 + (128 << 10), (small_peaks, big_peaks)
    assert len(read_webdataset(big)) == 1000


# --- parquet with images -----------------------------------------------------------------------

def load_hf(monkeypatch: pytest.MonkeyPatch, cache: Path, *args: Any, **kwargs: Any) -> Any:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    return datasets.load_dataset(*args, split="train", cache_dir=str(cache / "d"), **kwargs)


async def test_parquet_with_images_loads_in_datasets_as_the_hub_shows_it(
        synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, variants = synth
    spec = dataset_spec(["parquet"])
    await write_run(out, spec, variants)
    files = sorted((out / "parquet").glob("train-*.parquet"))
    assert [f.name for f in files] == ["train-00000.parquet"]
    schema = pq.read_schema(files[0])
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()),
                                                    ("path", pa.string())])
    ds = load_hf(monkeypatch, tmp_path / "hf", str(out / "parquet"))  # the Hub's own detection
    assert ds.num_rows == JOB_IMAGES
    assert type(ds.features["image"]).__name__ == "Image"
    assert ds.features["seed"].dtype == "int64" and ds.features["style"].dtype == "string"
    for row, record in zip(ds, generations(variants)):
        assert row["image"].size == (32, 32)  # a PIL image, decoded from the embedded bytes
        assert row["prompt"] == record["prompt"] and row["cfg_scale"] == record["params"][
            "cfg_scale"]
    raw = pq.read_table(files[0]).column("image").to_pylist()
    assert [r["bytes"] for r in raw] == [(out / r["file"]).read_bytes()
                                         for r in generations(variants)]
    assert [r["path"] for r in raw] == [Path(r["file"]).name for r in generations(variants)]


async def test_parquet_files_are_bounded_and_resume_after_a_crash(synth, tmp_path: Path) -> None:
    out, variants = synth
    spec = dataset_spec(["parquet"])
    exporter = build_exporters(spec, out)[0]
    bound = 3 * max(r["bytes"] for r in generations(variants))
    object.__setattr__(exporter.rule, "max_bytes", bound)  # a few images a file

    async def run(batch: Records, close: bool) -> None:
        exporter.rebuild()
        for records in batch:
            append_manifest(out, records)
            await exporter.on_variant(records)
        if close:
            await exporter.close()

    await run(variants[:10], close=True)  # a clean stop: the last file holds fewer images
    await run(variants[10:13], close=False)
    crash(out)
    aside = set_aside(out, generations(variants)[9:10])  # in the published file: not re-read
    await run(variants[13:], close=True)
    for path, data in aside:
        path.write_bytes(data)
    files = sorted((out / "parquet").glob("train-*.parquet"))
    assert len(files) >= JOB_IMAGES // 3
    rows = []
    for f in files:
        table = pq.read_table(f)
        assert sum(len(b) for b in table.column("image").combine_chunks().field("bytes")
                   .to_pylist()) <= bound
        assert f.stat().st_size < bound + (64 << 10)
        rows += table.column("image").to_pylist()
    assert [r["path"] for r in rows] == [Path(r["file"]).name for r in generations(variants)]


def test_missing_pyarrow_is_a_job_error_before_the_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for output in ("webdataset", "parquet"):
        with pytest.raises(JobError, match="needs pyarrow") as caught:
            build_exporters(dataset_spec([output]), tmp_path)
        assert caught.value.where == "outputs" and "sdbatch[parquet]" in caught.value.hint


# --- imagefolder in folders of at most 10,000 ------------------------------------------------------

async def test_imagefolder_folders_stay_under_the_hub_limit_and_load(
        synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, variants = synth
    monkeypatch.setattr("pipeline.outputs.imagefolder.FILES_PER_FOLDER", 5)
    spec = dataset_spec(["imagefolder"])
    (out / "metadata.jsonl").write_bytes(b"{}\n")  # where an older sdbatch wrote it
    await write_run(out, spec, variants[:11])
    assert not (out / "metadata.jsonl").exists()
    crash(out)
    await write_run(out, spec, variants[11:])
    folders = sorted((out / "imagefolder" / "images").iterdir())
    assert [f.name for f in folders] == ["00000", "00001", "00002", "00003", "00004"]
    assert [len(os.listdir(f)) for f in folders] == [5, 5, 5, 5, 4]
    # A stray file in a full last folder goes at the next rebuild (manifest of 20 images).
    lines = (out / MANIFEST).read_bytes().splitlines(keepends=True)
    (out / MANIFEST).write_bytes(b"".join(lines[:21]))  # 20 generations (+ 1 extra)
    (folders[3] / "stray.png").write_bytes(b"x")
    await asyncio.to_thread(rebuild, spec, out)
    assert [len(os.listdir(f)) for f in sorted((out / "imagefolder" / "images").iterdir())
            ] == [5, 5, 5, 5]
    for records in variants[20:]:
        append_manifest(out, records)
    await asyncio.to_thread(rebuild, spec, out)
    ds = load_hf(monkeypatch, tmp_path / "hf", "imagefolder", data_dir=str(out / "imagefolder"))
    assert ds.num_rows == JOB_IMAGES and "label" not in ds.column_names
    assert ds["prompt"] == [r["prompt"] for r in generations(variants)]
    assert ds[7]["image"].size == (32, 32)


# --- kohya -------------------------------------------------------------------------------------------

async def test_kohya_caption_files_and_fine_tuning_metadata(synth) -> None:
    out, variants = synth
    spec = spec_from(outputs=["captions", "kohya"], caption="sks, {prompt}",
                     dataset=DatasetSpec(tags="{lora_name}, style {style}"))
    exporters = build_exporters(spec, out)
    kohya = the(exporters, "kohya")
    for e in exporters:
        e.rebuild()
    assert json.loads((out / "meta_cap.json").read_text()) == {}
    for records in variants:
        append_manifest(out, records)
        for e in exporters:
            await e.on_variant(records)
        json.loads((out / "meta_cap.json").read_text())  # valid JSON after every variant
    metadata = json.loads((out / "meta_cap.json").read_text())
    assert len(metadata) == JOB_IMAGES
    image_dir = out / "images"
    for record in generations(variants):
        image = out / record["file"]
        assert image.with_suffix(".caption").read_text() == image.with_suffix(".txt").read_text()
        # kohya's FineTuningDataset: image_dir/<key><ext> must exist for each key
        key = image.relative_to(image_dir).with_suffix("").as_posix()
        assert any((image_dir / (key + ext)).is_file() for ext in (".png", ".jpg", ".webp"))
        entry = metadata[key]
        assert entry["caption"] + "\n" == image.with_suffix(".caption").read_text()
        assert entry["caption"].startswith("sks, ") and ", style " in entry["tags"]
    appended = (out / "meta_cap.json").read_bytes()
    (out / "meta_cap.json").write_bytes(appended[:-40])  # torn by a crash
    kohya.rebuild()
    assert (out / "meta_cap.json").read_bytes() == appended
    extra = next(r for r in all_records(variants) if r["kind"] == "extra")
    assert not (out / extra["file"]).with_suffix(".caption").exists()


def test_kohya_tags_template_errors_name_their_field(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="not a known field") as caught:
        build_exporters(spec_from(outputs=["kohya"], dataset=DatasetSpec(tags="{colour}")),
                        tmp_path)
    assert caught.value.where == "dataset.tags"


# --- the real CLI, killed and resumed ------------------------------------------------------------

def cli_job(write_job, url: str, *, prompts: int, seeds: int, shard_size: int,
            concurrency: int = 2) -> Path:
    things = "|".join(f"thing{i}" for i in range(prompts))
    return write_job(f"""
backends: [{{url: '{url}', concurrency: {concurrency}, timeout_s: 60}}]
defaults: {{width: 64, height: 64, steps: 2}}
prompts: ["a {{{things}}}"]
seeds: {list(range(1, seeds + 1))}
outputs: [webdataset, parquet]
dataset: {{shard_size: {shard_size}}}
retry: {{max_attempts: 30, backoff_initial_s: 0.02, backoff_max_s: 0.2, patience_s: 120}}
""")


def spawn_and_kill(job: Path, out: Path, after_lines: int, timeout_s: float) -> int:
    """Run the CLI in a child process and kill -9 it once the manifest has ``after_lines``."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--out",
                             str(out), "--no-fsync", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = manifest_lines(out)
            if lines >= after_lines:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return lines
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it was killed: {proc.stderr.read()}")
            time.sleep(0.01)
        raise AssertionError(f"fewer than {after_lines} images after {timeout_s} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def manifest_lines(out: Path) -> int:
    try:
        with (out / MANIFEST).open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def test_webdataset_run_killed_mid_shard_and_resumed_has_every_sample_once(
        sim, write_job, tmp_path: Path) -> None:
    from pipeline.cli.main import main

    backend = sim(latency_s=0.03)
    job = cli_job(write_job, backend.url, prompts=6, seeds=10, shard_size=10)  # 60 images
    out = tmp_path / "out"
    killed_at = spawn_and_kill(job, out, after_lines=25, timeout_s=60)  # shard 00002 half done
    assert killed_at < 60
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    samples = assert_every_sample_once(out, 10)
    assert len(samples) == 60 and len(tars(out)) == 6
    assert not list(out.rglob(f"{TMP_PREFIX}*"))
    parquet_rows = sum(pq.read_metadata(p).num_rows
                       for p in (out / "parquet").glob("train-*.parquet"))
    assert parquet_rows == 60


async def test_a_run_publishes_the_last_partial_shard_when_it_ends(
        sim, write_job, tmp_path: Path) -> None:
    """Through the real stages (the Python API): 25 images in shards of 10; the writer stage
    closes its exporters at the end, so the 5 left over form shard 00002."""
    from pipeline import api

    backend = sim(latency_s=0.0)
    job = cli_job(write_job, backend.url, prompts=5, seeds=5, shard_size=10)
    out = tmp_path / "out"
    summary = await api.run(job, out_dir=out, fsync=False, zero_waits=True)
    assert summary.status == "complete"
    assert len(assert_every_sample_once(out, 10)) == 25
    assert [p.name for p in tars(out)] == ["00000.tar", "00001.tar", "00002.tar"]
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


@pytest.mark.slow
def test_webdataset_100k_images_killed_and_resumed(sim, write_job, tmp_path: Path) -> None:
    """The issue's figure: 100,000 images in shards of 10,000, kill -9 mid-run, rerun: every
    sample exactly once. Minutes long; run with ``-m slow``."""
    from pipeline.cli.main import main

    backend = sim(latency_s=0.0)
    job = cli_job(write_job, backend.url, prompts=1000, seeds=100, shard_size=10_000,
                  concurrency=8)
    out = tmp_path / "out"
    spawn_and_kill(job, out, after_lines=43_210, timeout_s=1800)
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    samples = assert_every_sample_once(out, 10_000)
    assert len(samples) == 100_000 and len(tars(out)) == 10
