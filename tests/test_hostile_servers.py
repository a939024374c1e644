"""Hostile servers and credentials (issue 13): the real CLI against small fake servers on
127.0.0.1 (``tests.fakes``) that refuse generations, answer for another request, redirect
elsewhere, send odd shapes to preflight, never answer, or speak broken HTTP. Every case exits
with the right code and a message, never a traceback; no image is lost to a broken backend
that a healthy one could make, none is saved from an answer that is not its own, and no
password is printed, written or sent anywhere else."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image as PILImage

from pipeline.backends.webui.client import response_cap_bytes
from pipeline.cli.main import main
from tests.conftest import read_manifest
from tests.fakes import (PNG_B64, FakeWebUI, RawServer, generation_answer, honest_generation,
                         options, png_bytes)

TXT2IMG = ("POST", "/sdapi/v1/txt2img")
IMG2IMG = ("POST", "/sdapi/v1/img2img")
OPTIONS = ("GET", "/sdapi/v1/options")
QUICK_RETRY = "retry: {cooldown_s: 0, max_attempts: 1, backoff_initial_s: 0, backoff_max_s: 0, " \
              "patience_s: 2}"


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture
def servers() -> Iterator[Callable[..., FakeWebUI]]:
    """``servers(routes)`` starts a ``FakeWebUI``; all stop when the test ends."""
    started: list[FakeWebUI] = []

    def start(routes: dict[tuple[str, str], Any] | None = None) -> FakeWebUI:
        server = FakeWebUI(routes=dict(routes or {})).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    started: list[RawServer] = []

    def start(respond: Any) -> RawServer:
        server = RawServer(respond).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _job(tmp_path: Path, backends: list[str], *, prompts: str = '["a {red|green|blue|white|black} '
         'cube"]', seeds: str = "[1, 2, 3, 4]", defaults: str = "{width: 64, height: 64}",
         retry: str = QUICK_RETRY, extra: str = "", timeout_s: float = 10) -> Path:
    """A job file; ``backends`` are URLs or ready YAML mappings (``{url: ..., auth: ...}``)."""
    listed = ", ".join(b if b.startswith("{") else f'{{url: "{b}", timeout_s: {timeout_s}}}'
                       for b in backends)
    path = tmp_path / "job.yaml"
    path.write_text(f"backends: [{listed}]\ndefaults: {defaults}\nprompts: {prompts}\n"
                    f"seeds: {seeds}\n{retry}\n{extra}\n", encoding="utf-8")
    return path


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the real CLI; return (exit code, stdout + stderr), never a traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return code, text


def _run(job: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
         ) -> tuple[int, str]:
    return _cli(["run", str(job), "--out", str(out), "--no-fsync", *extra], capsys)


def _failures(out: Path) -> list[dict[str, Any]]:
    path = out / "failures.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _json_body(answer: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(answer).encode(), content_type="application/json")


def _answering(make: Callable[[dict[str, Any]], Any]) -> Any:
    """A txt2img handler: ``make(payload)`` returns the answer (a dict or a Response)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        answer = make(await request.json())
        return answer if isinstance(answer, web.StreamResponse) else _json_body(answer)
    return handler


# --- a failing backend never costs an image ------------------------------------------------

@pytest.mark.parametrize("status", [401, 403, 404, 413, 500])
def test_a_backend_refusing_generations_costs_no_image(servers, tmp_path: Path, capsys,
                                                       status: int) -> None:
    # Its GETs work (preflight passes), every txt2img is refused at once; cooldown_s: 0 and a
    # single attempt per variant: still every variant is made by the healthy backend.
    async def refuse(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"detail": "no"}, status=status)

    broken, healthy = servers({TXT2IMG: refuse}), servers()
    job = _job(tmp_path, [broken.url, healthy.url])
    out = tmp_path / "out"
    code, _ = _run(job, out, capsys, "--quiet")
    records = read_manifest(out)
    assert code == 0 and len({r["id"] for r in records}) == 20
    assert _failures(out) == []
    assert {r["backend"] for r in records} == {healthy.url}
    assert broken.generations(), "the broken backend was tried"


# --- the response cap accounts for everything that sizes the answer --------------------------

def _stored_png(width: int, height: int) -> str:
    """An uncompressed PNG: as large as a real one of noise, made in milliseconds."""
    buf = io.BytesIO()
    PILImage.frombytes("RGBA", (width, height), bytes(width * height * 4)).save(
        buf, "PNG", compress_level=0)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("defaults,side", [
    ("{width: 512, height: 512, enable_hr: true, hr_resize_x: 2048, hr_resize_y: 2048, "
     "batch_size: 2}", 2048),
    ("{width: 1024, height: 1024, enable_hr: true, batch_size: 2}", 2048),  # hr_scale: 2 default
    ("{width: 512, height: 512, enable_hr: true, hr_resize_x: 1536, n_iter: 2}", 1536),
    ("{width: 512, height: 512, enable_hr: true, hr_scale: 2.5, batch_size: 2, save_images: true,"
     " alwayson_scripts: {controlnet: {args: [{module: canny}, {module: depth}]}}}", 1280),
])
def test_a_valid_hires_answer_is_never_refused(servers, tmp_path: Path, capsys, defaults: str,
                                               side: int) -> None:
    image = _stored_png(side, side)

    def hires(payload: dict[str, Any]) -> dict[str, Any]:
        count = payload.get("batch_size", 1) * payload.get("n_iter", 1)
        units = len(payload.get("alwayson_scripts", {}).get("controlnet", {}).get("args", []))
        grid = 1 if payload.get("save_images") and count > 1 else 0
        answer = generation_answer(payload, image_b64=image)
        info = json.loads(answer["info"])
        info["index_of_first_image"] = grid
        grid_image = [_stored_png(side * count, side)] if grid else []
        answer["images"] = grid_image + [image] * count + [image] * (units * count)
        answer["info"] = json.dumps(info)
        return answer

    server = servers({TXT2IMG: _answering(hires)})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[7]", defaults=defaults)
    out = tmp_path / "out"
    code, text = _run(job, out, capsys, "--quiet")
    assert code == 0, text
    generations = [r for r in read_manifest(out) if r["kind"] == "generation"]
    assert len(generations) == generations[0]["images_expected"] >= 2
    assert sorted(r["seed"] for r in generations) == list(range(7, 7 + len(generations)))


def test_the_cap_grows_with_everything_that_sizes_the_answer() -> None:
    def raw(width: int, height: int, images: int) -> int:  # RGBA, base64'd
        return width * height * 4 * images * 4 // 3

    base = {"width": 512, "height": 512}
    cases = [
        ({**base, "enable_hr": True}, raw(1024, 1024, 1)),  # hr_scale defaults to 2
        ({**base, "enable_hr": True, "hr_scale": 4}, raw(2048, 2048, 1)),
        ({**base, "enable_hr": True, "hr_resize_x": 3000, "hr_resize_y": 2000},
         raw(3000, 2000, 1)),
        ({**base, "enable_hr": True, "hr_resize_y": 4096}, raw(4096, 4096, 1)),
        ({**base, "batch_size": 8, "n_iter": 4}, raw(512, 512, 32 * 2)),  # and a grid of them
        ({**base, "batch_size": 4, "alwayson_scripts": {"controlnet": {"args": [{}, {}, {}]}}},
         raw(512, 512, 4 + 4 + 12)),
    ]
    for payload, least in cases:
        assert response_cap_bytes(payload) >= least, payload
    assert response_cap_bytes({**base, "enable_hr": True}) > response_cap_bytes(base)
    assert response_cap_bytes({**base, "enable_hr": False, "hr_scale": 4}) == \
        response_cap_bytes(base), "hr_* without enable_hr does not size the answer"


def test_an_answer_past_any_valid_size_is_refused_not_saved(servers, tmp_path: Path,
                                                           capsys) -> None:
    async def flood(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b"A" * (1 << 20)
        try:
            await resp.write(b'{"images": ["')
            for _ in range(200):  # 200 MiB for one 64x64 image, chunked: no Content-Length
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    server = servers({TXT2IMG: flood})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 1 and "cap" in text and read_manifest(out) == []


# --- a response must belong to its request -----------------------------------------------------

def _canned() -> Callable[[dict[str, Any]], dict[str, Any]]:
    first: list[dict[str, Any]] = []

    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        if not first:  # the answer to the first request, for every request (a stale cache)
            first.append(generation_answer(payload))
        return first[0]
    return answer


@pytest.mark.parametrize("name,make", [
    ("seeds shifted", lambda p: generation_answer(p, seed_shift=1000)),
    ("another prompt", lambda p: generation_answer(p, prompt="a photo of a cat")),
    ("canned", None),
    ("parameters of another request",
     lambda p: {**generation_answer(p), "parameters": {**p, "seed": p["seed"] + 1}}),
])
def test_an_answer_to_another_request_is_never_saved(servers, tmp_path: Path, capsys,
                                                     name: str, make: Any) -> None:
    bad = servers({TXT2IMG: _answering(make or _canned())})
    job = _job(tmp_path, [bad.url], seeds="[10, 20]", defaults="{width: 64, height: 64, "
               "batch_size: 2}")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys, "--quiet")
    if name == "canned":  # the first request got its own answer; every later one is refused
        assert len({r["id"] for r in read_manifest(out)}) == 1
    else:
        assert read_manifest(out) == []
    assert code == 1 and "not the one to this request" in text
    assert all("not the one to this request" in f["error"] for f in _failures(out))


def test_a_canned_backend_costs_no_image_beside_an_honest_one(servers, tmp_path: Path,
                                                             capsys) -> None:
    canned, honest = servers({TXT2IMG: _answering(_canned())}), servers()
    job = _job(tmp_path, [canned.url, honest.url])
    out = tmp_path / "out"
    code, _ = _run(job, out, capsys, "--quiet")
    records = read_manifest(out)
    assert code == 0 and len(records) == 20 and _failures(out) == []
    for record in records:  # every image is labelled with the seed and prompt it was made with
        assert record["seed"] == record["requested_seed"]
        assert record["prompt"] == record["params"]["prompt"]


@pytest.mark.parametrize("defaults,rewrite", [
    # styles: the WebUI adds the style's text to all_prompts
    ("{width: 64, height: 64, styles: [cinematic], batch_size: 2}",
     lambda p, i: {"prompt": p["prompt"] + ", cinematic still, film grain"}),
    # subseed_strength > 0: every image has the seed asked for, subseeds step instead
    ("{width: 64, height: 64, subseed_strength: 0.5, batch_size: 3}",
     lambda p, i: {"all_seeds": [p["seed"]] * 3}),
    # whitespace the server normalised
    ("{width: 64, height: 64}", lambda p, i: {"prompt": "  " + p["prompt"].replace(" ", "  ")}),
])
def test_what_a_webui_really_echoes_is_accepted(servers, tmp_path: Path, capsys, defaults: str,
                                                rewrite: Any) -> None:
    def echo(payload: dict[str, Any]) -> dict[str, Any]:
        answer = generation_answer(payload)
        info = json.loads(answer["info"])
        change = rewrite(payload, info)
        if "prompt" in change:
            info["all_prompts"] = [change["prompt"]] * len(info["all_prompts"])
        if "all_seeds" in change:
            info["all_seeds"] = change["all_seeds"]
        answer["info"] = json.dumps(info)
        return answer

    server = servers({TXT2IMG: _answering(echo)})
    job = _job(tmp_path, [server.url], prompts='["a red cube", "a blue ball"]', seeds="[5]",
               defaults=defaults)
    out = tmp_path / "out"
    code, text = _run(job, out, capsys, "--quiet")
    assert code == 0, text
    assert _failures(out) == [] and len({r["id"] for r in read_manifest(out)}) == 2


# --- img2img inputs ---------------------------------------------------------------------------

def _img2img_job(tmp_path: Path, url: str, prompts: str = '["a", "b", "c"]') -> Path:
    (tmp_path / "in.png").write_bytes(png_bytes(16, 16, (1, 2, 3)))
    return _job(tmp_path, [url], prompts=prompts, seeds="[1]",
                defaults='{width: 64, height: 64, init_images: ["in.png"], '
                         'denoising_strength: 0.5}', extra="endpoint: img2img")


def test_img2img_sends_the_bytes_it_records(servers, tmp_path: Path, capsys) -> None:
    server = servers()
    job = _img2img_job(tmp_path, server.url)
    out = tmp_path / "out"
    code, _ = _run(job, out, capsys, "--quiet")
    assert code == 0
    sent = {hashlib.sha256(base64.b64decode(s.json()["init_images"][0])).hexdigest()
            for s in server.generations()}
    recorded = {r["params"]["init_images"][0]["sha256"] for r in read_manifest(out)}
    assert sent == recorded == {hashlib.sha256((tmp_path / "in.png").read_bytes()).hexdigest()}


@pytest.mark.parametrize("how", ["changed", "deleted"])
def test_an_input_that_changes_mid_run_fails_its_variants_with_a_message(
        servers, tmp_path: Path, capsys, how: str) -> None:
    async def then_touch(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if how == "changed":  # the user edits the input while the run goes on
            (tmp_path / "in.png").write_bytes(png_bytes(16, 16, (200, 0, 0)))
        else:
            (tmp_path / "in.png").unlink(missing_ok=True)
        return _json_body(generation_answer(payload))

    server = servers({IMG2IMG: then_touch})
    job = _img2img_job(tmp_path, server.url)
    out = tmp_path / "out"
    code, text = _run(job, out, capsys, "--quiet")
    assert code == 1
    assert len(read_manifest(out)) == 1 and len(server.generations()) == 1, \
        "nothing is sent with an input other than the one recorded"
    failures = _failures(out)
    assert len(failures) == 2 and all("in.png" in f["error"] for f in failures)
    word = "changed since the run started" if how == "changed" else "cannot be read now"
    assert word in text and failures[0]["attempts"] == 1, "no backend can do better: no retry"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (its pixels are not there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [20000, 10000, 9000])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_huge_input_image_gets_the_size_message(tmp_path: Path, capsys, side: int,
                                                  command: str) -> None:
    (tmp_path / "big.png").write_bytes(_png_header(side, side))
    job = tmp_path / "job.yaml"
    job.write_text('endpoint: img2img\nprompts: ["a"]\ndefaults: {init_images: ["big.png"]}\n')
    argv = [command, str(job)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    code, text = _cli(argv, capsys)
    assert code == 2 and "big.png" in text and "8192 per side" in text
    assert not (tmp_path / "out").exists()


# --- redirects never carry credentials elsewhere ---------------------------------------------

SECRETS = ("p%40ss-w0rd", "p@ss-w0rd", "tok-SECRET-42")


def _with_credentials(url: str) -> str:
    return (f'{{url: "{url.replace("http://", "http://bob:p%40ss-w0rd@")}", timeout_s: 5, '
            f'headers: {{X-Token: tok-SECRET-42}}}}')


def _assert_no_secret(*texts: str) -> None:
    token = base64.b64encode(b"bob:p@ss-w0rd").decode()
    for text in texts:
        for secret in (*SECRETS, token):
            assert secret not in text, (secret, text)


def _assert_no_secret_on_disk(out: Path) -> None:
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".html", ".yaml", ".txt", ""):
            _assert_no_secret(path.read_text(errors="replace"))


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_origin_is_refused_and_carries_nothing(
        servers, tmp_path: Path, capsys, status: int) -> None:
    elsewhere = servers()

    async def away(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, headers={"Location": elsewhere.url
                                                    + "/sdapi/v1/txt2img"})

    backend = servers({TXT2IMG: away})
    job = _job(tmp_path, [_with_credentials(backend.url)], prompts='["a"]', seeds="[1]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 1 and read_manifest(out) == []
    assert elsewhere.seen == [], "nothing was sent to the other origin"
    assert backend.url in text and elsewhere.url in text and "another origin" in text
    _assert_no_secret(text)
    _assert_no_secret_on_disk(out)


def test_a_redirected_preflight_names_both_origins(servers, tmp_path: Path, capsys) -> None:
    elsewhere = servers()

    async def away(request: web.Request) -> web.StreamResponse:
        location = elsewhere.url.replace("http://", "http://eve:evil-pass@") + "/sdapi/v1/options"
        return web.Response(status=302, headers={"Location": location})

    backend = servers({OPTIONS: away})
    job = _job(tmp_path, [_with_credentials(backend.url)], prompts='["a"]', seeds="[1]")
    code, text = _cli(["check", str(job)], capsys)
    assert code == 2 and elsewhere.seen == []
    assert backend.url in text and elsewhere.url.split("//")[1] in text
    assert "evil-pass" not in text
    _assert_no_secret(text)


def test_a_same_origin_redirect_is_followed(servers, tmp_path: Path, capsys) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=308, headers={"Location": "/sd/sdapi/v1/txt2img"})

    server = servers({TXT2IMG: moved, ("POST", "/sd/sdapi/v1/txt2img"): honest_generation})
    job = _job(tmp_path, [_with_credentials(server.url)], prompts='["a"]', seeds="[1, 2]")
    out = tmp_path / "out"
    code, _ = _run(job, out, capsys, "--quiet")
    assert code == 0 and len(read_manifest(out)) == 2
    moved_to = server.calls("POST", "/sd/sdapi/v1/txt2img")
    assert len(moved_to) == 2 and all(s.json()["prompt"] == "a" for s in moved_to)


def test_a_redirect_that_would_turn_a_post_into_a_get_is_an_error(servers, tmp_path: Path,
                                                                 capsys) -> None:
    async def found(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    server = servers({TXT2IMG: found})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 1 and "/elsewhere" in text and "GET" in text
    assert server.calls("GET", "/elsewhere") == []


# --- every message masks passwords ----------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://bob:p%40ss-w0rd@gpu1:notaport",
    "ftp://bob:p%40ss-w0rd@gpu1:7861",
    "http://bob:p%40ss-w0rd@gpu1:99999",
    "http://bob:p@ss-w0rd@[::1",
    "http://bob:p%40ss-w0rd",  # no host: the password reads as a port
    "http://bob:p%40ss-w0rd@gpu 1:7861",
])
@pytest.mark.parametrize("command", ["run", "check", "plan"])
def test_a_bad_backend_url_exits_2_without_its_password(tmp_path: Path, capsys, url: str,
                                                        command: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text('prompts: ["a"]\n')
    code, text = _cli([command, str(job), "--backend", url], capsys)
    assert code == 2 and "--backend" in text
    _assert_no_secret(text)


def test_the_same_backend_twice_on_the_command_line_exits_2(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text('prompts: ["a"]\n')
    url = "http://bob:p%40ss-w0rd@127.0.0.1:9"
    code, text = _cli(["check", str(job), "--backend", url, "--backend", url], capsys)
    assert code == 2 and "both" in text
    _assert_no_secret(text)


def test_reproduce_masks_a_bad_backend_url(servers, tmp_path: Path, capsys) -> None:
    server = servers()
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]")
    out = tmp_path / "out"
    assert _run(job, out, capsys, "--quiet")[0] == 0
    image = out / read_manifest(out)[0]["file"]
    code, text = _cli(["reproduce", str(image), "--backend", "http://bob:p%40ss-w0rd@h:x"],
                      capsys)
    assert code == 2 and "--backend" in text
    _assert_no_secret(text)


def test_no_password_in_messages_or_records_when_a_server_echoes_it(servers, tmp_path: Path,
                                                                      capsys) -> None:
    async def echo_credentials(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response({"error": "Boom", "detail": f"auth was "
                                  f"{request.headers.get('Authorization')} and token "
                                  f"{request.headers.get('X-Token')}, user bob:p@ss-w0rd"},
                                 status=500)

    server = servers({TXT2IMG: echo_credentials})
    job = _job(tmp_path, [_with_credentials(server.url)], prompts='["a"]', seeds="[1]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 1 and "Boom" in text
    _assert_no_secret(text)
    _assert_no_secret_on_disk(out)
    seen = {s.headers.get("Authorization") for s in server.seen}
    assert seen == {"Basic " + base64.b64encode(b"bob:p@ss-w0rd").decode()}, \
        "p%40ss means the password p@ss"


def test_the_resume_command_masks_the_password(tmp_path: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    job = _job(tmp_path, ["http://127.0.0.1:9"], prompts='["a"]', seeds="[1]",
               retry="retry: {patience_s: 0.5}")
    out = tmp_path / "out"
    argv = ["run", str(job), "--out", str(out), "--no-fsync", "--backend",
            f"http://bob:p%40ss-w0rd@127.0.0.1:{port}"]
    monkeypatch.setattr(sys, "argv", ["sdbatch", *argv])
    code, text = _cli(argv, capsys)
    assert code == 1 and "run the same command again" in text
    assert f"http://USER:PASS@127.0.0.1:{port}" in text
    _assert_no_secret(text)
    _assert_no_secret_on_disk(out)


# --- odd preflight answers --------------------------------------------------------------------

def _listing(path: str, value: Any) -> dict[tuple[str, str], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(value)
    return {("GET", f"/sdapi/v1/{path}"): handler}


ODD_LISTINGS = [  # (route, answer, defaults, whether the answer's shape itself is wrong)
    ("samplers", 5, "{width: 64, height: 64, sampler_name: Euler}", True),
    ("samplers", [{"name": "Euler", "aliases": 5}, {"name": 7}, "x", None],
     "{width: 64, height: 64, sampler_name: Euler}", False),
    ("schedulers", [{"name": 5, "label": ["x"], "aliases": 5}, {"name": "karras", "aliases": 3}],
     "{width: 64, height: 64, scheduler: karras}", False),
    ("sd-models", [5, None, {"title": 3, "model_name": ["x"]}, {"title": "tiny.safetensors"}],
     "{width: 64, height: 64, override_settings: {sd_model_checkpoint: tiny.safetensors}}",
     False),
    ("sd-models", "tiny.safetensors", "{width: 64, height: 64}", True),
    ("loras", {"name": "x"}, "{width: 64, height: 64}", True),
    ("loras", [{"name": 5, "alias": {"a": 1}}, {"name": "real", "alias": 5}],
     "{width: 64, height: 64}", False),
    ("sd-vae", [{"model_name": ["x"]}, "vae.pt"], "{width: 64, height: 64}", False),
    ("scripts", {"txt2img": 5, "img2img": [5, None]}, "{width: 64, height: 64}", False),
    ("scripts", ["dynamic prompts"], "{width: 64, height: 64}", True),
    ("embeddings", {"loaded": 5}, "{width: 64, height: 64}", False),
    ("version", [1, 2], "{width: 64, height: 64}", True),
    ("options", {"sd_model_checkpoint": 5, "forge_preset": None}, "{width: 64, height: 64}",
     False),
    ("samplers", [{"name": "Euler\x1b[2J"}], "{width: 64, height: 64}", False),
]


@pytest.mark.parametrize("path,value,defaults,noted", ODD_LISTINGS)
@pytest.mark.parametrize("command", ["run", "check"])
def test_odd_preflight_answers_get_a_message_not_a_traceback(
        servers, tmp_path: Path, capsys, path: str, value: Any, defaults: str, noted: bool,
        command: str) -> None:
    server = servers(_listing(path, value))
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", defaults=defaults)
    argv = ["check", str(job)] if command == "check" else [
        "run", str(job), "--out", str(tmp_path / "out"), "--no-fsync"]
    code, text = _cli(argv, capsys)
    assert code == 0, text
    assert ("cannot be checked" in text) is noted, text
    assert "\x1b" not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


MARKUP = {**_listing("options", {"sd_model_checkpoint": "m[/x] [bold]oops"}),
          **_listing("sd-models", [{"title": "m[/x] [bold]oops", "model_name": "m[/x]"}]),
          **_listing("samplers", [{"name": "Euler [/]", "aliases": ["[red]"]}])}


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize("command", ["run", "check", "check-missing"])
def test_markup_in_names_is_printed_as_it_is(servers, tmp_path: Path, capsys,
                                             monkeypatch: pytest.MonkeyPatch, terminal: bool,
                                             command: str) -> None:
    a, b = servers(MARKUP), servers(MARKUP)
    asked = "m[/y]" if command == "check-missing" else "m[/x]"
    job = _job(tmp_path, [f'{{url: "{a.url}", name: "gpu[/x]"}}',
                          f'{{url: "{b.url}", name: "[bold]b[/bold"}}'], prompts='["a"]',
               seeds="[1, 2]", defaults="{width: 64, height: 64, override_settings: "
                                        f"{{sd_model_checkpoint: '{asked}'}}}}")
    if terminal:
        monkeypatch.setattr(sys, "stdout", _Terminal())
        monkeypatch.setattr(sys, "stderr", _Terminal())
    argv = ["check", str(job)] if command.startswith("check") else [
        "run", str(job), "--out", str(tmp_path / "out"), "--no-fsync"]
    code = main(argv)
    text = sys.stdout.getvalue() + sys.stderr.getvalue() if terminal else "".join(
        capsys.readouterr())
    assert "Traceback" not in text and "MarkupError" not in text
    assert code == (2 if command == "check-missing" else 0), text
    if not terminal:  # plain lines: the names exactly as the servers and the job spell them
        assert "gpu[/x]" in text and "[bold]b[/bold" in text
        if command.startswith("check"):
            assert "m[/x] [bold]oops" in text


def test_preflight_listings_obey_the_backend_timeout(servers, tmp_path: Path, capsys) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response([])

    server = servers({("GET", "/sdapi/v1/samplers"): hang, ("GET", "/sdapi/v1/loras"): hang})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", timeout_s=1)
    started = time.monotonic()
    code, text = _run(job, tmp_path / "out", capsys)
    assert code == 0 and time.monotonic() - started < 10
    assert "/sdapi/v1/samplers" in text and "within 1 s" in text and "cannot be checked" in text


def _silent(raw_servers: Any) -> RawServer:
    async def never(request: bytes) -> bytes | None:
        await asyncio.sleep(60)
        return None
    return raw_servers(never)


def test_a_backend_that_never_answers_gets_a_probe_message_fast(raw_servers, tmp_path: Path,
                                                              capsys) -> None:
    silent = _silent(raw_servers)
    job = _job(tmp_path, [silent.url], prompts='["a"]', seeds="[1]", timeout_s=600)
    started = time.monotonic()
    code, text = _cli(["check", str(job)], capsys)
    assert code == 2 and time.monotonic() - started < 15, "the probe has its own short timeout"
    assert "health check" in text and "slow generations" not in text


@pytest.mark.slow  # two probes time out (the preflight's and the run's): ~10 s
def test_a_silent_backend_beside_a_healthy_one_costs_a_few_seconds(raw_servers, servers,
                                                                   tmp_path: Path,
                                                                   capsys) -> None:
    silent, healthy = _silent(raw_servers), servers()
    job = _job(tmp_path, [silent.url, healthy.url], prompts='["a"]', seeds="[1, 2]",
               timeout_s=600)
    started = time.monotonic()
    code, text = _run(job, tmp_path / "out", capsys)
    assert code == 0 and time.monotonic() - started < 30
    assert "health check" in text and "slow generations" not in text


# --- command line arguments -------------------------------------------------------------------

@pytest.mark.parametrize("flags,words", [
    (["--sim-latency-s", "-1"], "--sim-latency-s"),
    (["--sim-latency-s", "1e308"], "--sim-latency-s"),
    (["--sim-latency-s", "nan"], "--sim-latency-s"),
    (["--progress-interval-s", "0"], "--progress-interval-s"),
    (["--grace-s", "inf"], "--grace-s"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "100000"], "--concurrency"),
    (["--shard", "0/4"], "--shard"),
    (["--shard", "1/99999999999999999999"], "--shard"),
    (["--shard", "one/two"], "--shard"),
    (["--out", "FILE/out"], "is a file"),
    (["--out", "/proc/sdbatch-cannot/out"], "cannot be created"),
    (["--limit", "0"], "--limit"),
    (["--subpath", "/a b"], "--subpath"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, capsys, flags: list[str],
                                             words: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text('prompts: ["a"]\nseeds: [1]\ndefaults: {width: 64, height: 64}\n')
    (tmp_path / "FILE").write_text("a file")
    flags = [f.replace("FILE", str(tmp_path / "FILE")) for f in flags]
    argv = ["run", str(job), "--no-fsync", *flags]
    if "--out" not in flags:
        argv += ["--out", str(tmp_path / "out")]
    started = time.monotonic()
    code, text = _cli(argv, capsys)
    assert code == 2 and words in text, text
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists() and not Path("/proc/sdbatch-cannot").exists()


def test_an_unwritable_out_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text('prompts: ["a"]\nseeds: [1]\ndefaults: {width: 64, height: 64}\n')
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "blocker").write_text("x")
    code, text = _cli(["run", str(job), "--out", str(tmp_path / "ro" / "blocker" / "a" / "b")],
                      capsys)
    assert code == 2 and "blocker" in text
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["blocker"]


# --- signals ------------------------------------------------------------------------------------

def _spawn(job: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--out", str(out),
                             "--no-fsync", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str],
                timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run never got there")
        time.sleep(0.02)


def _hanging_after(answers: int) -> tuple[Any, dict[str, int]]:
    """An /options handler that answers ``answers`` times, then never again."""
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] <= answers:
            return await options(request)
        await asyncio.sleep(60)
        return web.json_response({})
    return handler, calls


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("where", ["probe", "listings"])
def test_a_signal_during_the_preflight_exits_130_with_nothing_written(
        servers, tmp_path: Path, sig: signal.Signals, where: str) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response([])

    routes = {OPTIONS: hang} if where == "probe" else {("GET", "/sdapi/v1/samplers"): hang}
    server = servers(routes)
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", timeout_s=60)
    out = tmp_path / "out"
    proc = _spawn(job, out)
    path = "/sdapi/v1/options" if where == "probe" else "/sdapi/v1/samplers"
    _wait_until(lambda: any(s.path == path for s in server.seen), proc)
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and time.monotonic() - sent < 5, err
    assert "Traceback" not in err and "preflight" in err and "run the same command" in err
    assert not out.exists(), "nothing is written before the run starts"


def test_sigterm_during_check_exits_130(servers, tmp_path: Path) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response({})

    server = servers({OPTIONS: hang})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", timeout_s=60)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "check", str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_until(lambda: bool(server.seen), proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and time.monotonic() - sent < 5, err
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.slow  # the run's first probe ends at its timeout (5 s), then the run stops
def test_sigterm_during_the_first_probe_of_the_run_exits_cleanly(servers,
                                                                 tmp_path: Path) -> None:
    handler, calls = _hanging_after(1)  # the preflight's probe is answered, the run's hangs
    server = servers({OPTIONS: handler})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", timeout_s=60)
    out = tmp_path / "out"
    proc = _spawn(job, out)
    _wait_until(lambda: calls["n"] >= 2, proc)
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - sent < 10, err
    assert "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not list(out.rglob(".tmp-*")) and read_manifest(out) == []


def test_a_second_sigint_stops_a_hanging_generation_at_once(servers, tmp_path: Path) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(60)
        return web.json_response({})

    server = servers({TXT2IMG: hang})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]", timeout_s=120)
    out = tmp_path / "out"
    proc = _spawn(job, out, "--grace-s", "60")
    _wait_until(lambda: bool(server.generations()), proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and time.monotonic() - sent < 5, err
    assert "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# --- more hostile answers (the tester's own) ----------------------------------------------------

def _generation(mutate: Callable[[dict[str, Any], dict[str, Any]], Any]) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        answer = generation_answer(payload)
        result = mutate(answer, payload)
        if isinstance(result, web.StreamResponse):
            return result
        return _json_body(answer if result is None else result)
    return handler


async def _byte_by_byte(request: web.Request) -> web.StreamResponse:
    body = json.dumps(generation_answer(await request.json())).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                       "Content-Length": str(len(body))})
    await resp.prepare(request)
    try:
        for i in range(len(body)):
            await resp.write(body[i:i + 1])
            await asyncio.sleep(0.004)
    except (ConnectionError, RuntimeError):
        pass
    return resp


def _gzip_bomb() -> bytes:
    """200 MiB of JSON text in a 200 kB gzip body (aiohttp inflates it as it reads)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"A" * (1 << 20)
    return b"".join([packer.compress(b'{"images": ["'),
                     *(packer.compress(block) for _ in range(200)), packer.flush()])


async def _gzipped_flood(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=_gzip_bomb(), headers={"Content-Encoding": "gzip",
                                                    "Content-Type": "application/json"})


HOSTILE_ANSWERS = {
    "truncated JSON": _generation(lambda a, p: web.Response(
        body=json.dumps(a).encode()[:200], content_type="application/json")),
    "not UTF-8": _generation(lambda a, p: web.Response(
        body=b'{"images": ["\xff\xfe"], "info": "\xff"}', content_type="application/json")),
    "info is a number": _generation(lambda a, p: {**a, "info": 5}),
    "info all_seeds of bools": _generation(lambda a, p: {**a, "info": json.dumps(
        {"all_seeds": [True], "all_prompts": [p["prompt"]]})}),
    "10,000 images for one": _generation(lambda a, p: {**a, "images": [PNG_B64] * 10_000}),
    "10,000 seeds for one": _generation(lambda a, p: {**a, "images": [PNG_B64] * 10_000,
                                                      "info": json.dumps({"all_seeds": list(
                                                          range(10_000))})}),
    "images of numbers": _generation(lambda a, p: {**a, "images": [1, 2]}),
    "a bare PNG signature": _generation(lambda a, p: {**a, "images": [
        base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()]}),
    "the body is a list": _generation(lambda a, p: [a]),
    "byte by byte past the timeout": _byte_by_byte,
    "an escape sequence in the error": _generation(lambda a, p: web.Response(
        status=500, text="\x1b]0;owned\x07\x1b[2J boom")),
    "index_of_first_image past the end": _generation(lambda a, p: {**a, "info": json.dumps(
        {**json.loads(a["info"]), "index_of_first_image": 10**9})}),
    "a 100000x100000 PNG for 64x64": _generation(lambda a, p: {**a, "images": [
        base64.b64encode(_png_header(100_000, 100_000)).decode()]}),
    "a gzip bomb": _gzipped_flood,
}


@pytest.mark.parametrize("name", list(HOSTILE_ANSWERS))
def test_hostile_answers_are_failed_attempts_and_cost_no_image(servers, tmp_path: Path, capsys,
                                                               name: str) -> None:
    hostile = servers({TXT2IMG: HOSTILE_ANSWERS[name]})
    job = _job(tmp_path, [hostile.url], prompts='["a"]', seeds="[1]", timeout_s=1)
    out = tmp_path / "alone"
    code, text = _run(job, out, capsys)
    assert code == 1 and read_manifest(out) == [] and len(_failures(out)) == 1, text
    assert "\x1b" not in text, "a server's control characters never reach the terminal"
    honest = servers()
    job = _job(tmp_path, [hostile.url, honest.url], prompts='["a", "b"]', seeds="[1, 2]",
               timeout_s=1)
    out = tmp_path / "beside"
    code, text = _run(job, out, capsys, "--quiet")
    records = read_manifest(out)
    assert code == 0 and len(records) == 4 and {r["backend"] for r in records} == {honest.url}


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-5", "soon",
                                   "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_a_retry_after_that_is_not_a_sane_wait_never_hangs_the_run(servers, tmp_path: Path,
                                                                   capsys, value: str) -> None:
    calls = {"n": 0}

    async def limited_once(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        calls["n"] += 1
        if calls["n"] == 1:
            return web.json_response({"detail": "slow down"}, status=429,
                                     headers={"Retry-After": value})
        return _json_body(generation_answer(payload))

    server = servers({TXT2IMG: limited_once})
    job = _job(tmp_path, [server.url], prompts='["a"]', seeds="[1]")
    started = time.monotonic()
    code, text = _run(job, tmp_path / "out", capsys, "--quiet")
    assert code == 0 and time.monotonic() - started < 15, text
    assert len(read_manifest(tmp_path / "out")) == 1


HOSTILE_HTTP = {
    "negative Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}",
    "a 100 kB header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n"
                       b"Content-Length: 2\r\n\r\n{}",
    "50,000 headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i
                                                        for i in range(50_000))
                      + b"Content-Length: 2\r\n\r\n{}",
    "not HTTP": b"\x00\x01\x1b[2J not http at all\r\n\r\n",
    "a bad status line": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}",
    "shorter than its Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    "bad chunking": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("name", list(HOSTILE_HTTP))
def test_broken_http_is_a_message_and_the_healthy_backend_does_the_work(
        raw_servers, servers, tmp_path: Path, capsys, name: str) -> None:
    async def answer(request: bytes) -> bytes:
        return HOSTILE_HTTP[name]

    broken, healthy = raw_servers(answer), servers()
    job = _job(tmp_path, [broken.url, healthy.url], prompts='["a"]', seeds="[1, 2]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 0 and len(read_manifest(out)) == 2
    assert broken.url in text and "\x1b" not in text
    code, text = _cli(["check", str(_job(tmp_path, [broken.url], prompts='["a"]'))], capsys)
    assert code == 2 and broken.url in text


def test_no_server_text_writes_escape_sequences_to_the_terminal(servers, tmp_path: Path,
                                                                capsys) -> None:
    def lora_lies(payload: dict[str, Any]) -> dict[str, Any]:
        answer = generation_answer(payload)
        info = json.loads(answer["info"])
        info["infotexts"] = [f'{payload["prompt"]}\nSteps: 20, Seed: {s}, '
                             'Lora hashes: "evil\x1b[2J\x1b]0;t\x07: abc"'
                             for s in info["all_seeds"]]
        answer["info"] = json.dumps(info)
        return answer

    server = servers({**_listing("options", {"sd_model_checkpoint": "m\x1b[2J\x1b]0;t\x07"}),
                      **_listing("loras", [{"name": "real", "alias": "real"}]),
                      TXT2IMG: _answering(lora_lies)})
    job = _job(tmp_path, [server.url], prompts='["a <lora:real:1>"]', seeds="[1]")
    out = tmp_path / "out"
    code, text = _run(job, out, capsys)
    assert code == 1 and "LoRA" in text and "\x1b" not in text


def test_an_error_answer_with_an_escape_sequence_is_shown_escaped(servers, tmp_path: Path,
                                                                 capsys) -> None:
    async def rude(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=500, text=json.dumps({"error": "X\x1b[31m",
                                                         "detail": "\x1b]0;t\x07bad"}))

    server = servers({TXT2IMG: rude})
    out = tmp_path / "out"
    code, text = _run(_job(tmp_path, [server.url], prompts='["a"]', seeds="[1]"), out, capsys)
    assert code == 1 and "\x1b" not in text and "\\x1b" in text
    assert "\x1b" not in (out / "failures.jsonl").read_text()
