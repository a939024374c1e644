"""The smaller commands and the shipped files: import, reproduce, the example jobs, compose."""

from __future__ import annotations

import asyncio

import json
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline import expand
from pipeline.cli.main import build_parser, main
from pipeline.job.load import load_job
from tests.conftest import read_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_plans(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variants"] >= 1 and report["images"] >= report["variants"]
    spec = load_job(job)
    assert report["variants"] == sum(1 for _ in expand.variants(expand.build_plan(spec)))


def test_import_webui_and_kohya_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    webui = tmp_path / "prompts.txt"
    webui.write_text('--prompt "a cat" --steps 12 --seed 5 --width 256\n# comment\na plain dog\n')
    job = tmp_path / "job.yaml"
    assert main(["import", str(webui), "-o", str(job)]) == 0
    spec = load_job(job)
    variants = list(expand.variants(expand.build_plan(spec)))
    assert [(v.prompt, v.seed) for v in variants] == [("a cat", 5), ("a plain dog", -1)]
    assert variants[0].payload["steps"] == 12 and variants[0].payload["width"] == 256
    kohya = tmp_path / "sample.txt"
    kohya.write_text("a fox --n blurry --w 512 --h 768 --d 42 --s 28 --l 7.5\n")
    assert main(["import", str(kohya), "--format", "kohya"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    entry = data["prompts"][0]
    assert entry["prompt"] == "a fox" and entry["negative_prompt"] == "blurry"
    assert (entry["width"], entry["height"], entry["seed"], entry["steps"]) == (512, 768, 42, 28)
    bad = tmp_path / "bad.txt"
    bad.write_text("--prompt 'unclosed\n")
    assert main(["import", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_reproduce_matches_bytes(sim, write_job, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim()
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64, batch_size: 2}}
prompts: ["a lamp"]
seeds: 1
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    second = [r for r in read_manifest(out) if r["image_index"] == 1][0]
    assert main(["reproduce", str(out / second["file"]), "--save", str(tmp_path / "r.png")]) == 0
    assert "byte-identical" in capsys.readouterr().out
    assert (tmp_path / "r.png").read_bytes() == (out / second["file"]).read_bytes()
    assert main(["reproduce", str(out), "--id", second["id"], "--index", "1"]) == 0
    (out / second["file"]).write_bytes(b"\x89PNG\r\n\x1a\nnot the same image")
    assert main(["reproduce", str(out / second["file"])]) == 1
    assert main(["reproduce", str(tmp_path)]) == 2


def test_compose_file_matches_the_cli() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"sim", "sdbatch"} <= set(services)
    assert services["sdbatch"]["depends_on"]["sim"]["condition"] == "service_healthy"
    assert any(v.endswith(":/out") for v in services["sdbatch"]["volumes"])
    assert "real" in services["webui"]["profiles"]
    assert "--nowebui" in services["webui"]["command"] and "--api" in services["webui"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["sdbatch"]' in dockerfile
    parser = build_parser()
    for name, service in services.items():
        if service.get("build") and "command" in service:
            args = parser.parse_args(service["command"])  # the command is valid sdbatch usage
            if args.command == "run":
                assert (ROOT / args.job).exists(), f"{name}: {args.job} is not in the image"
                assert args.backend and all(b.startswith("http://") for b in args.backend)
    sim_cmd = services["sim"]["command"]
    port = sim_cmd[sim_cmd.index("--port") + 1]
    assert f"http://sim:{port}" in shlex.join(services["sdbatch"]["command"])


def test_version_matches_pyproject() -> None:
    import tomllib

    import pipeline

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pipeline.__version__ == project["version"]


def test_reproduce_pins_the_recorded_checkpoint(sim, write_job, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    backend = sim(models=("model-a.safetensors", "model-b.safetensors"))
    job = write_job(f"""
backends: [{{url: "{backend.url}"}}]
defaults: {{width: 64, height: 64}}
prompts: ["a lamp"]
seeds: [7]
""")
    asyncio.run(_set_model(backend.url, "model-b"))  # the job names no checkpoint: b makes it
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet", "--no-fsync"]) == 0
    record = read_manifest(out)[0]
    # the backend now has another model loaded: the reproduction must pin the recorded one
    asyncio.run(_set_model(backend.url, "model-a"))
    assert main(["reproduce", str(out / record["file"])]) == 0
    assert "byte-identical" in capsys.readouterr().out


async def _set_model(url: str, name: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/sdapi/v1/options",
                                json={"sd_model_checkpoint": name}) as resp:
            assert resp.status == 200
