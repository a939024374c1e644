"""Running a simulated ComfyUI server: start, restart, close, or serve from the command line.

    await start_comfy_sim(config) -> ComfySimServer   in a running loop (tests)
    run_comfy_sim(config, host=, port=)               blocking until SIGINT/SIGTERM (the CLI)

``restart()`` is a real restart: open connections are cut, the port closes (for
``restart_downtime_s``), and the server comes back on the same port with an empty queue,
history and cache and its prompt counter at 0; files already saved stay (the counter of the
next ``SaveImage`` continues after them). ``close()`` cuts everything and returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import weakref
from collections.abc import Callable

from aiohttp import web

from pipeline.errors import UsageError
from pipeline.sim.comfy.config import ComfySimConfig
from pipeline.sim.comfy.faults import FaultDice
from pipeline.sim.comfy.images import Folders
from pipeline.sim.comfy.routes import build_app
from pipeline.sim.comfy.state import ComfySimStats, ComfyState
from pipeline.sim.faults import reset_connection

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 0.25
DEFAULT_PORT = 8188


class ComfySimServer:
    """A running simulated ComfyUI server. ``url`` stays the same across restarts."""

    def __init__(self, config: ComfySimConfig, host: str) -> None:
        self._config = config
        self.host = host
        self.port = 0
        self.stats = ComfySimStats()
        self.dice = FaultDice(config.fault_seed)
        self._own_dir = config.output_dir is None
        root = tempfile.mkdtemp(prefix="comfy-sim-") if self._own_dir else config.output_dir
        assert root is not None
        self.folders = Folders(root)
        if self._own_dir:  # removed at close(), or at exit if close() is never called
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folders.root, True)
        self.active: dict[int, web.BaseRequest] = {}  # requests being answered, by id
        self._state: ComfyState | None = None
        self._runner: web.AppRunner | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()
        self._closed = False

    @property
    def config(self) -> ComfySimConfig:
        return self._config

    @config.setter
    def config(self, config: ComfySimConfig) -> None:
        """Change knobs while running (fault rates, latencies, names); a restart keeps them."""
        self._config = config
        if self._state is not None:
            self._state.replace_config(config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> ComfyState:
        """The current server life (queue, history, cache); replaced by a restart."""
        assert self._state is not None, "the server is not running"
        return self._state

    @property
    def output_dir(self) -> str:
        return self.folders.output

    async def _bind(self, port: int) -> None:
        state = ComfyState(self.config, self.folders, self.stats, self.dice, self.restart_soon)
        state.start()
        runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            await state.close()
            raise
        self._state, self._runner = state, runner
        self.port = runner.addresses[0][1]

    async def _unbind(self) -> None:
        for request in list(self.active.values()):
            reset_connection(request)
        self.active.clear()
        if self._state is not None:
            await self._state.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    async def restart(self, downtime_s: float | None = None) -> None:
        """Crash and come back on the same port, with nothing in memory (see the module)."""
        async with self._restart_lock:
            if self._closed:
                return
            self.stats.restarts += 1
            log.warning("simulated ComfyUI server at %s restarts", self.url)
            await self._unbind()
            self._state = None
            wait = self.config.restart_downtime_s if downtime_s is None else downtime_s
            if wait > 0:
                await asyncio.sleep(wait)
            if not self._closed:
                await self._bind(self.port)

    def restart_soon(self, downtime_s: float | None = None) -> None:
        """Start a restart from inside the server (a crash knob, ``POST /sim/restart``)."""
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self.restart(downtime_s))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._restarting is not None and not self._restarting.done():
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        await self._unbind()
        if self._own_dir:
            self._cleanup()

    async def __aenter__(self) -> ComfySimServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_comfy_sim(config: ComfySimConfig = ComfySimConfig(),  # noqa: B008
                          *, host: str = "127.0.0.1", port: int = 0) -> ComfySimServer:
    """Start a simulated ComfyUI server on ``host:port`` (0: a free port) in the running loop."""
    server = ComfySimServer(config, host)
    try:
        await server._bind(port)
    except BaseException:
        await server.close()
        raise
    log.debug("simulated ComfyUI %s at %s (output in %s)", config.version, server.url,
              server.output_dir)
    return server


def run_comfy_sim(config: ComfySimConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (``sdbatch sim --kind comfyui``); ``UsageError`` when the
    port cannot be bound."""
    asyncio.run(_serve(config, host, port, on_ready or _announce))


def _announce(url: str) -> None:
    sys.stderr.write(f"sdbatch sim: simulated ComfyUI server listening at {url} "
                     "(Ctrl-C stops it)\n")
    sys.stderr.flush()


async def _serve(config: ComfySimConfig, host: str, port: int,
                 on_ready: Callable[[str], None]) -> None:
    try:
        server = await start_comfy_sim(config, host=host, port=port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                         "another --port or stop what uses it") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("simulated ComfyUI %s (%d checkpoints) at %s, output in %s", config.version,
             len(config.checkpoints), server.url, server.output_dir)
    on_ready(server.url)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.close()
        stats = server.stats
        log.info("simulated ComfyUI stopped: %d prompts run, %d images, %d cache hits",
                 stats.prompts_executed, stats.images_saved, stats.cache_hits)
