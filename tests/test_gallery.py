"""The gallery page: its data, escaping of untrusted text, and a real headless browser.

The browser test drives Debian's chromium over the DevTools protocol with aiohttp's websocket
client (no extra dependency). ``tests/browser_setup.sh`` installs chromium; when it is missing
the test installs it once under CI as root, and otherwise skips with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, PngImagePlugin

from pipeline.gallery import GalleryWriter, write_gallery
from pipeline.gallery.page import embed_json
from pipeline.grid import render_grids
from test_grid import LORA_JOB, make_run

EVIL = '</script><img src=x onerror="window.__pwned=1"><!-- & "quotes"'
BROWSER_TIMEOUT_S = 60
ROOT = Path(__file__).resolve().parent.parent


def gallery_data(html: str) -> dict[str, Any]:
    start = html.index('<script id="sdbatch-data" type="application/json">') + 50
    return json.loads(html[start:html.index("</script>", start)])


# --- data and escaping ---------------------------------------------------------------------------

def test_embedded_json_cannot_close_its_script_element() -> None:
    text = embed_json({"prompt": EVIL, "k": ["<!--", "]]>", "\u2028"]})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"prompt": EVIL, "k": ["<!--", "]]>", "\u2028"]}


def test_prompts_and_names_are_escaped_in_the_page(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB.replace("name: lora test", f"name: '{EVIL}'"), prompt=EVIL,
             fail={1})
    html = write_gallery(tmp_path).read_text(encoding="utf-8")
    assert EVIL not in html and 'onerror="' not in html
    assert html.count("<img") == 1  # the viewer's own, in the template
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "&lt;/script&gt;&lt;img" in html.split("<title>")[1]  # the title, HTML-escaped
    data = gallery_data(html)
    assert data["title"] == EVIL
    assert {i["prompt"] for i in data["items"]} == {EVIL}
    assert data["failures"][0]["prompt"] == EVIL


def test_gallery_data_lists_images_failures_axes_and_grids(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB, fail={4}, skip={9})
    render_grids(tmp_path)
    data = gallery_data(write_gallery(tmp_path).read_text(encoding="utf-8"))
    assert len(data["items"]) == 8 and len(data["failures"]) == 1
    axes = {a["name"]: a["values"] for a in data["axes"]}
    assert axes["lora"] == ["baseline (no LoRA)", "detail @ 0.5", "detail @ 1.0", "grain @ 0.5",
                            "grain @ 1.0"]
    assert axes["seed"] == ["seed 1", "seed 2"] and "prompt" not in axes  # one prompt only
    first = data["items"][0]
    assert first["v"][list(axes).index("lora")] == 0 and first["file"].startswith("images/")
    assert first["infotext"].startswith("a lighthouse at dusk\n")  # rebuilt: the server sent none
    assert "Steps: 12, Sampler: Euler a" in first["infotext"]
    assert [g["file"] for g in data["grids"]] == ["grids/lora_by_seed.png"]
    assert data["grids"][0]["pending"] == 1


def test_infotext_comes_from_the_manifest_or_the_png_chunk(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB, infotext="from the manifest")
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    records[0]["infotext"] = None
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "from the png\nSteps: 3")
    Image.new("RGB", (8, 8)).save(tmp_path / records[0]["file"], pnginfo=info)
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = GalleryWriter(tmp_path).data()["items"]
    assert items[0]["infotext"] == "from the png\nSteps: 3"
    assert items[1]["infotext"] == "from the manifest"


def test_unsafe_paths_and_huge_values_stay_out(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    records[0]["file"] = "../outside.png"
    records[1]["file"] = "javascript:alert(1)"
    records[2]["file"] = "/etc/passwd"
    records[3]["params"]["init_images"] = ["A" * 50_000]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = GalleryWriter(tmp_path).data()["items"]
    assert len(items) == 7
    assert all(not i["file"].startswith(("/", "..", "javascript")) for i in items)
    assert items[0]["params"]["init_images"].startswith("[omitted:")


def test_file_names_are_url_encoded(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    odd = tmp_path / "images" / "a #1 ?%.png"
    (tmp_path / records[0]["file"]).rename(odd)
    records[0]["file"] = "images/a #1 ?%.png"
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = GalleryWriter(tmp_path).data()["items"]
    assert items[0]["file"] == "images/a%20%231%20%3F%25.png"


def test_an_empty_directory_still_gets_a_page(tmp_path: Path) -> None:
    data = gallery_data(write_gallery(tmp_path).read_text(encoding="utf-8"))
    assert data["items"] == [] and data["failures"] == [] and data["grids"] == []


# --- a real browser ------------------------------------------------------------------------------

def find_chromium() -> str | None:
    for candidate in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def chromium_or_skip() -> str:
    found = find_chromium()
    if found is None and os.environ.get("CI") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["bash", str(ROOT / "tests" / "browser_setup.sh")], check=False,
                       timeout=900, stdin=subprocess.DEVNULL)
        found = find_chromium()
    if found is None:
        pytest.skip("no chromium: run tests/browser_setup.sh as root (apt-get install chromium)")
    return found


class DevTools:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.waiting:
                self.waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 20)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout_s: float = 15) -> Any:
        """Poll ``expression`` until it is truthy."""
        async with asyncio.timeout(timeout_s):
            while True:
                value = await self.js(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description")))
                                      for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found


@contextlib.asynccontextmanager
async def browser(executable: str) -> AsyncIterator[DevTools]:
    """Headless chromium on a loopback DevTools port, in its own process group, which is
    killed on exit whatever happens."""
    with tempfile.TemporaryDirectory(prefix="sdbatch-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        proc = await asyncio.create_subprocess_exec(
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--window-size=1280,900", f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(30):
                while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                    if proc.returncode is not None:
                        raise AssertionError(f"chromium exited with {proc.returncode}")
                    await asyncio.sleep(0.05)
            port = int(port_file.read_text().split("\n")[0])
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with asyncio.timeout(30):
                    while True:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                            pages = [t for t in await resp.json() if t.get("type") == "page"]
                        if pages:
                            break
                        await asyncio.sleep(0.05)
                async with http.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                           max_msg_size=0) as ws:
                    tools = DevTools(ws)
                    try:
                        for domain in ("Runtime", "Page", "Log"):
                            await tools.call(f"{domain}.enable")
                        yield tools
                    finally:
                        tools.reader.cancel()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helper processes
            await asyncio.wait_for(proc.wait(), 20)


async def open_page(tools: DevTools, path: Path) -> None:
    tools.loaded.clear()
    await tools.call("Page.navigate", url=path.resolve().as_uri())
    await asyncio.wait_for(tools.loaded.wait(), 20)


@pytest.mark.browser
async def test_gallery_in_a_headless_browser(tmp_path: Path) -> None:
    executable = chromium_or_skip()
    make_run(tmp_path, LORA_JOB, fail={4}, skip={9}, prompt=f"a lighthouse {EVIL}")
    render_grids(tmp_path)
    page = write_gallery(tmp_path)
    async with asyncio.timeout(BROWSER_TIMEOUT_S), browser(executable) as tools:
        await open_page(tools, page)
        # the page opens on the grid explorer; the list of every image is the other tab
        assert await tools.js("document.getElementById('images').hidden") is True
        await tools.js("document.getElementById('tab-images').click()")
        await tools.until("document.querySelectorAll('#thumbs a.thumb').length > 0")
        assert await tools.js("document.querySelectorAll('#thumbs a.thumb').length") == 8
        assert await tools.js("document.getElementById('status').textContent") \
            == "Showing 8 images"
        # every thumbnail and the grid sheet link load from the file system
        await tools.until("[...document.images].filter(i => i.closest('#thumbs, #grids'))"
                          ".every(i => i.complete && i.naturalWidth > 0)")
        assert await tools.js("document.querySelectorAll('#grid-list a').length") == 1
        # filter through the UI: LoRA = detail @ 0.5
        await tools.js("""(() => {
            const s = document.querySelector('select[data-axis="lora"]');
            s.value = [...s.options].find(o => o.textContent === 'detail @ 0.5').value;
            s.dispatchEvent(new Event('change', {bubbles: true}));
        })()""")
        assert await tools.js("document.querySelectorAll('#thumbs a.thumb').length") == 2
        assert await tools.js("document.getElementById('status').textContent") \
            == "Showing 2 of 8 images"
        assert "detail" in await tools.js("decodeURIComponent(location.hash)")
        # search narrows too; reset brings everything back
        await tools.js("document.getElementById('reset').click()")
        assert await tools.js("document.querySelectorAll('#thumbs a.thumb').length") == 8
        # a click shows the full image with its prompt and infotext
        await tools.js("document.querySelector('#thumbs a.thumb img').click()")
        assert await tools.js("document.getElementById('viewer').hidden") is False
        assert await tools.js("document.getElementById('viewer-prompt').textContent") \
            == f"a lighthouse {EVIL}"
        assert "Steps: 12" in await tools.js("document.getElementById('viewer-infotext').value")
        await tools.until("document.getElementById('viewer-img').naturalWidth > 0")
        await tools.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert await tools.js("document.getElementById('viewer').hidden") is True
        # the failure is listed, and no prompt ran as markup
        assert await tools.js("document.querySelectorAll('#failure-list li').length") == 1
        assert await tools.js("window.__pwned === undefined")
        assert await tools.js("document.querySelectorAll('img[src=\"x\"]').length") == 0
        await asyncio.sleep(0.2)  # let late console events arrive
        assert tools.errors() == []
        shots = os.environ.get("SDBATCH_SCREENSHOTS")
        if shots:
            import base64

            shot = await tools.call("Page.captureScreenshot", format="png")
            Path(shots).mkdir(parents=True, exist_ok=True)
            (Path(shots) / "gallery.png").write_bytes(base64.b64decode(shot["data"]))


def _pick(select_css: str, text: str) -> str:
    """JS that sets a <select> to the option with ``text`` and fires its change event."""
    return f"""(() => {{
        const s = document.querySelector({json.dumps(select_css)});
        s.value = [...s.options].find(o => o.textContent === {json.dumps(text)}).value;
        s.dispatchEvent(new Event('change', {{bubbles: true}}));
        return document.getElementById('explorer-status').textContent;
    }})()"""


@pytest.mark.browser
async def test_grid_explorer_in_a_headless_browser(tmp_path: Path) -> None:
    """Pick X and Y in the page, hold the other axes, compare cells side by side: from
    file://, with no server and no network, and a reload keeps the view."""
    executable = chromium_or_skip()
    job = LORA_JOB.replace("seeds: [1, 2]", "seeds: [1, 2]\nmatrix: {cfg_scale: [5, 7]}")
    make_run(tmp_path, job, fail={4}, skip={9})
    render_grids(tmp_path)
    page = write_gallery(tmp_path)
    cells = "document.querySelectorAll('#xgrid td.cell')"
    async with asyncio.timeout(BROWSER_TIMEOUT_S), browser(executable) as tools:
        await open_page(tools, page)
        # the job's view to start with: LoRA across, seed down, CFG held at its first value
        assert await tools.js("document.getElementById('explorer').hidden") is False
        heads = await tools.js("[...document.querySelectorAll('#xgrid thead th')]"
                               ".map(t => t.textContent)")
        assert heads[1:] == ["baseline (no LoRA)", "detail @ 0.5", "detail @ 1.0", "grain @ 0.5",
                             "grain @ 1.0"]
        assert await tools.js(f"{cells}.length") == 10
        assert await tools.js("document.querySelectorAll('#xgrid td.failed').length") == 1
        assert await tools.js("document.querySelectorAll('#xgrid td.pending').length") == 1
        assert await tools.js("document.querySelector('#xgrid td.pending').textContent") \
            == "not generated yet"  # run.json says the run is going
        assert "holding CFG 5" in await tools.js(
            "document.getElementById('explorer-status').textContent")
        await tools.until(f"[...{cells}].filter(c => c.querySelector('img'))"
                          ".every(c => c.querySelector('img').naturalWidth > 0)")
        # CFG across, then seed: a composite column axis; LoRA held at one value
        await tools.js(_pick("#gx", "CFG scale"))
        await tools.js(_pick("#gx2", "seed"))
        await tools.js(_pick("#gy", "—"))
        status = await tools.js(_pick('select[data-hold="lora"]', "detail @ 1.0"))
        assert status.startswith("1 × 4 cells: 3 with an image, 1 empty")
        heads = await tools.js("[...document.querySelectorAll('#xgrid thead th')]"
                               ".map(t => t.textContent)")
        assert heads[1:] == ["CFG 5", "CFG 7", "seed 1", "seed 2", "seed 1", "seed 2"]
        # a reload (the run rewrites the page) keeps the view
        tools.loaded.clear()
        await tools.js("location.reload()")
        await asyncio.wait_for(tools.loaded.wait(), 20)
        assert (await tools.js("document.getElementById('explorer-status').textContent")) \
            == status
        # pin two cells and compare them side by side
        await tools.js("document.querySelectorAll('#xgrid td.ok .pin')[0].click()")
        await tools.js("document.querySelectorAll('#xgrid td.ok .pin')[2].click()")
        await tools.js("document.getElementById('compare-open').click()")
        assert await tools.js("document.getElementById('compare').hidden") is False
        captions = await tools.js("[...document.querySelectorAll('#compare figcaption')]"
                                  ".map(f => f.textContent)")
        assert captions == ["CFG 5 · seed 1", "CFG 7 · seed 2"]
        await tools.until("[...document.querySelectorAll('#compare img')]"
                          ".every(i => i.naturalWidth > 0)")
        # a cell opens the viewer, whose arrows walk the grid
        await tools.js("document.getElementById('compare-close').click()")
        await tools.js("document.querySelector('#xgrid td.ok img').click()")
        assert await tools.js("document.getElementById('viewer').hidden") is False
        await asyncio.sleep(0.2)
        assert tools.errors() == []
        shots = os.environ.get("SDBATCH_SCREENSHOTS")
        if shots:
            import base64

            shot = await tools.call("Page.captureScreenshot", format="png")
            (Path(shots) / "gallery-grid.png").write_bytes(base64.b64decode(shot["data"]))
