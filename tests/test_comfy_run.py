"""A mixed run: one WebUI backend and two ComfyUI backends share one LoRA x weight x seed sweep,
with per-host limits measured at the servers, resume after kill -9, and grids and gallery built
from what ComfyUI made."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from pipeline.sim.comfy import ComfySimConfig, start_comfy_sim

from conftest import read_manifest

ROOT = Path(__file__).resolve().parent.parent


class ComfyThread:
    """A simulated ComfyUI server in a background thread and loop (the CLI runs its own)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[Any] = []

    def start(self, **knobs: Any) -> Any:
        fut = asyncio.run_coroutine_threadsafe(start_comfy_sim(ComfySimConfig(**knobs)),
                                               self.loop)
        server = fut.result(timeout=20)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def comfy() -> Iterator[ComfyThread]:
    pool = ComfyThread()
    yield pool
    pool.close()


def _job(write_job, webui: str, comfys: list[str], seeds: int = 4) -> Path:
    backends = [f'{{url: "{webui}", name: webui, concurrency: 1}}'] + [
        f'{{url: "{u}", name: comfy{n}, kind: comfyui, concurrency: 2}}'
        for n, u in enumerate(comfys, 1)]
    return write_job(f"""
backends: [{", ".join(backends)}]
defaults: {{width: 64, height: 64, steps: 4, sampler_name: "Euler a"}}
prompts: ["a red cube"]
loras: {{names: [detail_tweaker], weights: [baseline, 0.5, 1.0]}}
seeds: {list(range(1, seeds + 1))}
grid: {{x: lora, y: seed}}
retry: {{backoff_initial_s: 0, backoff_max_s: 0}}
""")


def test_mixed_sweep_every_image_once_with_seed_and_lora(sim, comfy, write_job,
                                                          tmp_path: Path) -> None:
    webui = sim(latency_s=0.02)
    c1, c2 = comfy.start(step_latency_s=0.003), comfy.start(step_latency_s=0.003)
    job = _job(write_job, webui.url, [c1.url, c2.url], seeds=6)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 18 and len({r["id"] for r in records}) == 18
    by_backend = {r["backend"] for r in records}
    assert by_backend == {"webui", "comfy1", "comfy2"}, "all three backends share the sweep"
    for r in records:
        assert r["seed"] == r["axes"]["seed"], "each image records the seed it was made with"
        weight = r["axes"]["lora_weight"]
        if r["backend"].startswith("comfy"):
            filled = r["params"]["comfyui"]
            assert filled["workflow_sha256"]
            if weight:
                assert "<lora:" not in json.dumps(filled.get("values", {}).get("prompt", ""))
        assert (out / r["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per-host limits, measured at the servers
    assert webui.stats()["max_in_flight"] <= 1
    for server in (c1, c2):
        stats = server.stats.as_dict()
        assert stats["max_queue_remaining"] <= 2
        assert all(n == 1 for n in stats["runs_per_id"].values()), "nothing run twice"
    assert (out / "index.html").is_file()
    assert list((out / "grids").glob("*.png")), "grid sheets from the ComfyUI outputs"


@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 of a child process")
def test_kill_9_and_resume_requests_nothing_twice(sim, comfy, write_job, tmp_path: Path) -> None:
    webui = sim(latency_s=0.05)
    c1, c2 = comfy.start(step_latency_s=0.02), comfy.start(step_latency_s=0.02)
    job = _job(write_job, webui.url, [c1.url, c2.url], seeds=8)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--out",
                              str(out), "--quiet", "--no-fsync"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (out / "manifest.jsonl").exists() and \
                len((out / "manifest.jsonl").read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=20)
    done_before = {r["id"] for r in read_manifest(out)}
    assert 0 < len(done_before) < 24
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = read_manifest(out)
    assert len(records) == 24 and len({r["id"] for r in records}) == 24
    runs: dict[str, int] = {}
    for server in (c1, c2):
        for prompt_id, n in server.stats.as_dict()["runs_per_id"].items():
            runs[prompt_id] = runs.get(prompt_id, 0) + n
    assert runs and all(n == 1 for n in runs.values()), "no prompt run twice, on any server"
