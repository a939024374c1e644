"""Fault injection: the real CLI against simulated backends that fail, hang, die and come back,
and the pipeline itself killed or interrupted. Every expected image present exactly once,
byte-identical, with the right seed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli.main import main
from tests.conftest import read_manifest
from tests.test_pipeline import _check_files

FAST_RETRY = ("retry: {max_attempts: 30, backoff_initial_s: 0.02, backoff_max_s: 0.2, "
              "cooldown_s: 0.1, cooldown_max_s: 0.5, patience_s: 60}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(write_job, urls: list[str], *, n_prompts: int = 4, seeds: str = "[1, 2, 3]",
         extra: str = "", timeout_s: float = 30) -> Path:
    options = "|".join(f"thing{i}" for i in range(n_prompts))
    backends = "\n".join(f"  - {{url: '{u}', timeout_s: {timeout_s}}}" for u in urls)
    return write_job(f"""
backends:
{backends}
defaults: {{width: 64, height: 64}}
prompts: ["a {{{options}}}"]
seeds: {seeds}
{FAST_RETRY}
{extra}
""")


def _assert_complete(out: Path, expected_variants: int) -> list[dict]:
    records = read_manifest(out)
    assert len({r["id"] for r in records}) == expected_variants
    assert len(records) == expected_variants
    _check_files(out, records)
    for r in records:
        assert r["seed"] == r["requested_seed"]
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"
    return records


def _spawn(job: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--out", str(out),
                             "--no-fsync", "--progress-interval-s", "0.5", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(read_manifest(out)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} images after {timeout_s} s")


def test_500s_resets_and_hangs_past_the_timeout(sim, write_job, tmp_path: Path) -> None:
    backend = sim(error_rate=0.15, reset_rate=0.1, hang_rate=0.1, hang_s=30, oom_rate=0.05,
                  interrupt_rate=0.05, truncate_rate=0.05, fault_seed=11)
    job = _job(write_job, [backend.url], timeout_s=0.5,
               extra="")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    _assert_complete(out, 12)
    faults = backend.stats()["faults"]
    assert sum(faults.values()) >= 3, faults


def test_backend_down_at_start_does_not_stop_the_run(sim, write_job, tmp_path: Path) -> None:
    up = sim()
    down = f"http://127.0.0.1:{_free_port()}"
    job = _job(write_job, [down, up.url])
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    records = _assert_complete(out, 12)
    assert {r["backend"] for r in records} == {up.url}


def test_all_backends_down_waits_then_exits_resumable(write_job, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(write_job, [f"http://127.0.0.1:{_free_port()}"],
               extra="").read_text().replace("patience_s: 60", "patience_s: 0.5")
    path = tmp_path / "down.yaml"
    path.write_text(job)
    out = tmp_path / "out"
    started = time.monotonic()
    assert main(["run", str(path), "--out", str(out), "--no-fsync"]) == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert "patience_s" in err and "run the same command again" in err
    assert (out / "failures.jsonl").read_text() == "", "unfinished work is not marked failed"
    assert json.loads((out / "run.json").read_text())["status"] == "stalled"


def test_backend_killed_and_restarted_mid_run(sim, write_job, tmp_path: Path) -> None:
    backend = sim(latency_s=0.03)
    job = _job(write_job, [backend.url], n_prompts=6, seeds="[1, 2, 3, 4, 5]")
    out = tmp_path / "out"
    proc = _spawn(job, out)
    try:
        _wait_for_lines(out, 5, proc)
        backend.stop()
        time.sleep(0.8)  # the backend stays dead for a while: the run must wait, not give up
        backend.restart()
        assert proc.wait(timeout=60) == 0, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_complete(out, 30)


def test_kill_9_then_rerun_finishes_without_duplicates(sim, write_job, tmp_path: Path) -> None:
    backend = sim(latency_s=0.02)
    job = _job(write_job, [backend.url], n_prompts=8, seeds="[1, 2, 3, 4, 5]")
    out = tmp_path / "out"
    proc = _spawn(job, out)
    _wait_for_lines(out, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    first_pass = {r["id"] for r in read_manifest(out)}
    # a torn last line, as a kill in the middle of an append leaves it
    with (out / "manifest.jsonl").open("ab") as f:
        f.write(b'{"id": "torn", "image_ind')
    (out / "images" / ".tmp-leftover.png").write_bytes(b"partial")
    requests_before = backend.stats()["requests"]
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    _assert_complete(out, 40)
    # nothing already complete was requested again
    assert backend.stats()["requests"] - requests_before == 40 - len(first_pass)


def test_sigint_finishes_in_flight_and_resumes(sim, write_job, tmp_path: Path) -> None:
    backend = sim(latency_s=0.05)
    job = _job(write_job, [backend.url], n_prompts=10, seeds="[1, 2, 3]")
    out = tmp_path / "out"
    proc = _spawn(job, out)
    _wait_for_lines(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "run the same command again" in stderr and "Traceback" not in stderr
    done_first = len(read_manifest(out))
    assert done_first < 30
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert backend.stats()["requests"] == done_first, "in-flight work was written, not dropped"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    _assert_complete(out, 30)
    assert backend.stats()["requests"] == 30, "no variant was requested twice"


def test_second_sigint_stops_at_once(sim, write_job, tmp_path: Path) -> None:
    backend = sim(latency_s=2.0)
    job = _job(write_job, [backend.url], n_prompts=3, seeds="[1]")
    out = tmp_path / "out"
    proc = _spawn(job, out, "--grace-s", "60")
    deadline = time.monotonic() + 20
    while backend.stats()["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert time.monotonic() - started < 5


def test_unwritable_output_directory(sim, write_job, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = _job(write_job, [backend.url])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    out = blocker / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 2  # a usage error (#13)
    err = capsys.readouterr().err
    assert "not-a-dir" in err and "cannot write" in err and "Traceback" not in err
    assert backend.stats()["requests"] == 0


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KiB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_disk_full_stops_cleanly_and_resumes(sim, write_job, tiny_disk: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 256, height: 256}}
prompts: ["a {{red|green|blue|white|black|grey}} {{cube|ball|cone|ring}}"]
seeds: [1, 2, 3, 4]
""")
    out = tiny_disk / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "Traceback" not in err
    assert "rerun the same command" in err
    assert not list(out.rglob(".tmp-*")), "no partial files"
    records = read_manifest(out)
    _check_files(out, records)  # whatever was recorded is whole
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    _assert_complete(out, 96)
