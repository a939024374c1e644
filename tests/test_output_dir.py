"""The output directory is ours alone: refused when it is someone else's, locked while a run
writes, never written through a symlink, and resume trusts only images that are still intact."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.output.lock import LOCK_FILE

from conftest import read_manifest


def _job(sim, write_job, seeds: str = "[1, 2]") -> Path:
    backend = sim()
    return write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a cube"]
seeds: {seeds}
""")


def test_non_empty_foreign_directory_is_refused(sim, write_job, tmp_path: Path, capsys) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    (out / "sub").mkdir()
    (out / "sub" / ".tmp-keep").write_bytes(b"mine too")
    assert main(["run", str(_job(sim, write_job)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "fix:" in err and "Traceback" not in err
    assert (out / "holiday.jpg").read_bytes() == b"mine"
    assert (out / "sub" / ".tmp-keep").exists(), "start-up clean-up never walks a user's tree"
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg", "sub"]


def test_second_run_into_a_locked_directory_exits_2_naming_the_holder(
        sim, write_job, tmp_path: Path, capsys) -> None:
    job = _job(sim, write_job)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    fd = os.open(out / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"424242\n", 0)
    try:
        assert main(["run", str(job), "--out", str(out), "--quiet"]) == 2
        assert "424242" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0


def test_writes_never_follow_a_symlink_out(sim, write_job, tmp_path: Path, capsys) -> None:
    job = _job(sim, write_job)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "manifest.jsonl").symlink_to(outside / "stolen.jsonl")
    assert main(["run", str(job), "--out", str(out), "--quiet"]) != 0
    assert "symlink" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
    (out / "manifest.jsonl").unlink()
    import shutil
    shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").symlink_to(outside)
    assert main(["run", str(job), "--out", str(out), "--quiet"]) != 0
    assert list(outside.iterdir()) == []


def test_resume_remakes_an_image_that_changed(sim, write_job, tmp_path: Path) -> None:
    job = _job(sim, write_job)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    first = read_manifest(out)
    victim = out / first[0]["file"]
    original = victim.read_bytes()
    victim.write_bytes(original[: len(original) // 2])  # cut short: the size no longer matches
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    assert victim.read_bytes() == original
    # same size, other bytes: only --verify (sha256) notices
    victim.write_bytes(bytes(len(original)))
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    assert victim.read_bytes() == bytes(len(original))
    assert main(["run", str(job), "--out", str(out), "--quiet", "--verify"]) == 0
    assert victim.read_bytes() == original
    assert len(read_manifest(out)) == len(first)


def test_manifest_line_with_wrong_types_is_set_aside(sim, write_job, tmp_path: Path) -> None:
    job = _job(sim, write_job)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["images_expected"] = "lots"
    bad["image_index"] = "zero"
    (out / "manifest.jsonl").write_text("\n".join([json.dumps(bad), *lines[1:], "[1, 2]",
                                                   '"just a string"']) + "\n")
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    records = read_manifest(out)
    assert len(records) == len(lines)
    assert len({(r["id"], r["image_index"]) for r in records}) == len(lines)


@pytest.mark.parametrize("argv,expected", [
    (["--sim-latency-s", "-1"], "--sim-latency-s"),
    (["--grace-s", "inf"], "--grace-s"),
    (["--limit", "0"], "--limit"),
])
def test_bad_run_flags_exit_2(write_job, argv, expected, capsys) -> None:
    job = write_job("prompts: [a]\n")
    assert main(["run", str(job), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
