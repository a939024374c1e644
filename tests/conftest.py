"""Shared fixtures: simulated WebUI backends on loopback, each in its own thread and event loop,
so that the real CLI (``pipeline.cli.main``, which runs its own loop) can be driven in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.sim import SimConfig, start_sim


@dataclass
class SimHandle:
    """A simulated backend running in a background thread."""

    url: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _server: Any
    _thread: threading.Thread

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/sim/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, **changes: Any) -> None:
        req = urllib.request.Request(self.url + "/sim/config", data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        if self._server is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._server.close(), self._loop)
        fut.result(timeout=20)
        self._server = None

    def restart(self, config: SimConfig | None = None) -> None:
        """Start again on the same port (a backend that crashed and came back)."""
        cfg = config or self._server_config
        fut = asyncio.run_coroutine_threadsafe(start_sim(cfg, port=self.port), self._loop)
        self._server = fut.result(timeout=20)

    _server_config: SimConfig = SimConfig()


class SimFactory:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.handles: list[SimHandle] = []

    def __call__(self, config: SimConfig | None = None, **changes: Any) -> SimHandle:
        cfg = replace(config or SimConfig(), **changes)
        fut = asyncio.run_coroutine_threadsafe(start_sim(cfg), self._loop)
        server = fut.result(timeout=20)
        port = int(server.url.rsplit(":", 1)[1])
        handle = SimHandle(server.url, port, self._loop, server, self._thread)
        handle._server_config = cfg
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.handles:
            try:
                handle.stop()
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def sim() -> Iterator[SimFactory]:
    """``sim(latency_s=0.01, ...)`` starts a simulated backend and returns its handle."""
    factory = SimFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file (YAML text) into the test's directory and return its path."""

    def write(text: str, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def read_manifest(out: Path) -> list[dict[str, Any]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (minutes each; the default suite skips "
                          "them, and so does CI unless SDBATCH_SLOW=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    if config.getoption("--runslow") or os.environ.get("SDBATCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (or SDBATCH_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
