"""The Python API: build a job in code, run it, iterate over results as they land."""

from __future__ import annotations

from pathlib import Path

from pipeline import api
from tests.conftest import read_manifest


async def test_generate_yields_each_variant_as_it_lands(sim, tmp_path: Path) -> None:
    backend = sim(error_rate=0.0)
    job = api.job_from_dict({"prompts": ["a {red|blue} kite"], "seeds": [1, 2],
                             "defaults": {"width": 64, "height": 64}})
    results = [r async for r in api.generate(job, out_dir=tmp_path / "out",
                                             backends=[backend.url], fsync=False)]
    assert len(results) == 4 and all(r.ok for r in results)
    files = sorted(r.records[0]["file"] for r in results)
    assert files == sorted(r["file"] for r in read_manifest(tmp_path / "out"))
    assert {r.records[0]["seed"] for r in results} == {1, 2}


async def test_run_returns_the_summary_and_resumes(sim, tmp_path: Path) -> None:
    backend = sim()
    job = api.job_from_dict({"prompts": ["a boat"], "seeds": [1, 2, 3],
                             "defaults": {"width": 64, "height": 64}})
    first = await api.run(job, out_dir=tmp_path / "out", backends=[backend.url], fsync=False)
    assert first.status == "complete" and first.images == 3 and first.exit_code == 0
    again = await api.run(job, out_dir=tmp_path / "out", backends=[backend.url], fsync=False)
    assert again.status == "complete" and again.done == 0 and again.skipped == 3


async def test_failures_come_back_as_results(sim, tmp_path: Path) -> None:
    backend = sim()
    job = api.job_from_dict({"prompts": ["a boat"],  # a script the server does not have: 422
                             "defaults": {"width": 64, "height": 64, "script_name": "nope"}})
    results = [r async for r in api.generate(job, out_dir=tmp_path / "out",
                                             backends=[backend.url], fsync=False)]
    assert len(results) == 1 and not results[0].ok and "422" in results[0].error
