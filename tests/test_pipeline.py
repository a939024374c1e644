"""End to end: the real CLI against simulated WebUI backends over loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from pathlib import Path

import pytest

from pipeline.cli.main import main
from tests.conftest import read_manifest


def _txt2img(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url + "/sdapi/v1/txt2img", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _check_files(out: Path, records: list[dict]) -> None:
    for r in records:
        data = (out / r["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert (out / r["file"]).with_suffix(".json").exists()
    keys = [(r["id"], r["image_index"]) for r in records]
    assert len(keys) == len(set(keys)), "an (id, image_index) appears twice"


def test_example_job_on_builtin_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    out = tmp_path / "out"
    job = Path(__file__).resolve().parent.parent / "jobs" / "example.yaml"
    assert main(["run", str(job), "--out", str(out), "--no-fsync"]) == 0
    err = capsys.readouterr().err
    assert "simulated" in err
    records = read_manifest(out)
    assert len(records) == 16
    _check_files(out, records)
    assert sorted({r["seed"] for r in records}) == [1, 2]
    assert {r["params"]["cfg_scale"] for r in records} == {5, 7}
    first = records[0]
    for key in ("id", "image_index", "file", "prompt", "negative_prompt", "seed", "subseed",
                "backend", "model", "params", "sha256", "attempts"):
        assert key in first
    assert first["file"].startswith("images/") and first["file"].endswith(".png")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["done"] == 8 * 2


def test_per_host_limit_and_both_backends_used(sim, write_job, tmp_path: Path) -> None:
    fast, slow = sim(latency_s=0.02), sim(latency_s=0.06)
    job = write_job(f"""
backends:
  - url: {fast.url}
    concurrency: 2
  - url: {slow.url}
    concurrency: 1
prompts: ["a {{red|green|blue|black}} cube"]
seeds: [1, 2, 3, 4, 5, 6]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 24
    _check_files(out, records)
    assert fast.stats()["max_in_flight"] <= 2
    assert slow.stats()["max_in_flight"] <= 1
    per_backend = {r["backend"] for r in records}
    assert per_backend == {fast.url, slow.url}
    assert sum(r["backend"] == fast.url for r in records) > 12  # the fast one took more


def test_seed_minus_one_resolved_and_batches_mapped(sim, write_job, tmp_path: Path) -> None:
    backend = sim(extra_images=1)
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{batch_size: 3, save_images: true, width: 64, height: 64}}
prompts: ["a tree"]
seeds: 2
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    gens = [r for r in records if r["kind"] == "generation"]
    extras = [r for r in records if r["kind"] == "extra"]
    assert len(gens) == 6 and len(extras) == 2
    assert all(r["seed"] is None for r in extras)
    _check_files(out, records)
    by_variant: dict[str, list[dict]] = {}
    for r in gens:
        by_variant.setdefault(r["id"], []).append(r)
    assert len(by_variant) == 2
    for recs in by_variant.values():
        recs.sort(key=lambda r: r["image_index"])
        base = recs[0]["seed"]
        assert base != -1 and [r["seed"] for r in recs] == [base, base + 1, base + 2]
        # byte-identical to what the server sends for that seed
        again = _txt2img(backend.url, {**recs[0]["params"], "seed": base})
        info = json.loads(again["info"])
        first = info["index_of_first_image"]
        assert first == 1
        for r in recs:
            sent = base64.b64decode(again["images"][first + r["image_index"]])
            assert sent == (out / r["file"]).read_bytes()


def test_jpeg_output_kept_as_sent(sim, write_job, tmp_path: Path) -> None:
    backend = sim(samples_format="jpg")
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a lake"]
seeds: [10, 11]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert [r["format"] for r in records] == ["jpeg", "jpeg"]
    assert all(r["file"].endswith(".jpg") for r in records)
    for r in records:
        assert (out / r["file"]).read_bytes()[:3] == b"\xff\xd8\xff"
        sent = _txt2img(backend.url, {**r["params"], "seed": r["seed"]})
        assert base64.b64decode(sent["images"][0]) == (out / r["file"]).read_bytes()


def test_retries_lose_nothing(sim, write_job, tmp_path: Path) -> None:
    backend = sim(error_rate=0.25, reset_rate=0.1, truncate_rate=0.05, fault_seed=3)
    job = write_job(f"""
backends: [{{url: "{backend.url}", concurrency: 2}}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{cat|dog|fox|owl|bee}}"]
seeds: [1, 2, 3, 4]
retry: {{max_attempts: 20, backoff_initial_s: 0.01, backoff_max_s: 0.05, cooldown_s: 0.05,
        bench_after_failures: 50}}
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 20
    _check_files(out, records)
    assert sum(backend.stats()["faults"].values()) > 0
    assert any(r["attempts"] > 1 for r in records)


def test_client_errors_fail_for_good_exit_1(sim, write_job, tmp_path: Path) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 4096}}   # past the simulator's image_size_cap: 422
prompts: ["a boat"]
seeds: [1]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 1
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1
    assert failures[0]["status"] == 422 and "height" in failures[0]["error"]
    assert failures[0]["attempts"] == 1
    assert read_manifest(out) == []


def test_resume_requests_only_what_is_missing(sim, write_job, tmp_path: Path) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{red|blue}} kite"]
seeds: [1, 2, 3]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 6
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 6, "a complete run must request nothing again"
    records = read_manifest(out)
    (out / records[2]["file"]).unlink()
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 7
    records = read_manifest(out)
    assert len(records) == 6
    _check_files(out, records)


def test_resume_after_job_edit_only_adds_new_variants(sim, write_job, tmp_path: Path) -> None:
    backend = sim()
    text = f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a {{red|blue}} kite"]
seeds: [1, 2]
"""
    out = tmp_path / "out"
    assert main(["run", str(write_job(text)), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 4
    edited = text.replace("seeds: [1, 2]", "seeds: [1, 2, 3]")
    assert main(["run", str(write_job(edited)), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    assert backend.stats()["requests"] == 6
    assert len(read_manifest(out)) == 6


def test_credentials_never_written(sim, write_job, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim(auth="alice:s3cret-pw")
    host = backend.url.removeprefix("http://")
    job = write_job("""
prompts: ["a key"]
defaults: {width: 64, height: 64}
seeds: [1]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--no-fsync",
                 "--backend", f"http://alice:s3cret-pw@{host}"]) == 0
    streams = capsys.readouterr()
    assert "s3cret" not in streams.out + streams.err
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            assert "s3cret" not in path.read_text(), path
    # and a wrong password stops the run before anything is generated, without echoing it
    assert main(["run", str(job), "--out", str(tmp_path / "o2"), "--no-fsync",
                 "--backend", f"http://alice:wrong@{host}"]) == 2
    err = capsys.readouterr().err
    assert "rejected the credentials" in err and "Incorrect username or password" in err
    assert "wrong" not in err.replace("Incorrect username", "")


def test_img2img_one_variant_per_input_image(sim, write_job, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    backend = sim()
    (tmp_path / "inputs").mkdir()
    for i, colour in enumerate(["red", "blue"]):
        PILImage.new("RGB", (64, 64), colour).save(tmp_path / "inputs" / f"in{i}.png")
    PILImage.new("L", (32, 32), 255).save(tmp_path / "small_mask.png")
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
endpoint: img2img
defaults: {{width: 64, height: 64, denoising_strength: 0.4}}
prompts: ["a painting"]
matrix: {{init_images: ["inputs/*.png"]}}
seeds: [3]
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 2
    _check_files(out, records)
    assert sorted(r["axes"]["init_images"] for r in records) == ["in0.png", "in1.png"]
    # the manifest records which file was used, not megabytes of base64
    ref = records[0]["params"]["init_images"][0]
    assert ref["$file"].endswith(".png") and len(ref["sha256"]) == 64
    bad = write_job(job.read_text().replace("denoising_strength: 0.4",
                                            "denoising_strength: 0.4, mask: small_mask.png"),
                    name="bad.yaml")
    assert main(["plan", str(bad)]) == 2
    missing = write_job(job.read_text().replace("inputs/*.png", "nothing/*.png"), name="m.yaml")
    assert main(["plan", str(missing)]) == 2
