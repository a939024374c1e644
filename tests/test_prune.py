"""After an edit: the rerun says what the job no longer makes; prune moves it aside."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.main import main

from conftest import read_manifest


def test_prune_moves_aside_what_the_edited_job_no_longer_makes(sim, write_job, tmp_path: Path,
                                                                capsys) -> None:
    backend = sim()
    head = f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
outputs: [captions]
"""
    out = tmp_path / "out"
    job = write_job(head + 'prompts: ["a cube", "a ball"]\nseeds: [1, 2]\n')
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    assert len(read_manifest(out)) == 4
    job = write_job(head + 'prompts: ["a cube"]\nseeds: [1, 2]\n')
    assert main(["run", str(job), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "holds 2 images of 2 variants the job no longer makes" in err
    assert main(["prune", str(out), "--dry-run"]) == 0
    assert "would move 2 images" in capsys.readouterr().out
    assert len(read_manifest(out)) == 4
    assert main(["prune", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "moved 2 images" in printed
    records = read_manifest(out)
    assert len(records) == 2 and all("ball" not in r["prompt"] for r in records)
    moved = [p for p in (out / "pruned").rglob("*.png")]
    assert len(moved) == 2, "moved aside, not deleted"
    captions = [p for p in out.rglob("*.txt") if "pruned" not in p.parts]
    assert captions and all("ball" not in p.read_text() for p in captions)
    assert main(["prune", str(out)]) == 0
    assert "nothing to prune" in capsys.readouterr().out
