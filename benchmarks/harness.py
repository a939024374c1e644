"""Process plumbing for the benchmarks: simulated backends in child processes, clients in
others, CPU time and peak RSS of each read from the kernel, never mixed.

    with Farm(count=16, config={"latency_s": 0.5}) as farm:
        result = run_client("sdbatch", job, farm.urls, workdir)   # a separate process
        farm.cpu_s()        # CPU seconds the simulated backends have used so far
        farm.stats()        # summed /sim/stats counters of every server
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
FARM_START_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 900.0


def proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a live process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of a live process; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def _env(*, client: bool = False) -> dict[str, str]:
    """The children's environment. Clients import ``pipeline`` from ``$SDBATCH_BENCH_PIPELINE``
    when set (a scratch copy holding a candidate fix: A/B it against the same backends);
    the simulated backends always run this checkout's code."""
    env = dict(os.environ)
    paths = [str(ROOT)]
    scratch = env.get("SDBATCH_BENCH_PIPELINE")
    if client and scratch:
        paths.insert(0, scratch)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Farm:
    """``count`` simulated backends spread over ``processes`` child processes."""

    def __init__(self, count: int, config: dict[str, Any] | None = None, *,
                 processes: int | None = None, fault_seed_base: int = 0,
                 photo_sizes: Sequence[tuple[int, int]] = (), pool: bool = False) -> None:
        self.count = count
        self.photo_sizes = list(photo_sizes)
        self.pool = pool  # pictures drawn and encoded once per size (simfarm --pool)
        self.config = config or {}
        self.processes = processes or (1 if count <= 16 else 2)
        self.fault_seed_base = fault_seed_base
        self.urls: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        try:
            share = [self.count // self.processes + (1 if i < self.count % self.processes else 0)
                     for i in range(self.processes)]
            seed = self.fault_seed_base
            for n in share:
                if n == 0:
                    continue
                argv = [PYTHON, "-m", "benchmarks.simfarm", "--count", str(n),
                        "--config", json.dumps(self.config), "--fault-seed-base", str(seed)]
                if self.pool:
                    argv.append("--pool")
                if self.photo_sizes:
                    argv += ["--photo", ",".join(f"{w}x{h}" for w, h in self.photo_sizes)]
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=_env())
                seed += n
                self._procs.append(proc)
            deadline = time.monotonic() + FARM_START_TIMEOUT_S
            for proc in self._procs:
                assert proc.stdout is not None
                line = _readline_until(proc, deadline)
                self.urls.extend(json.loads(line)["urls"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self._procs = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(pid) for pid in self.pids)

    def stats(self) -> dict[str, Any]:
        """Counters of every server, summed (and ``per_server`` for the loads)."""
        total: dict[str, Any] = {"requests": 0, "generations": 0, "checkpoint_loads": 0,
                                 "max_in_flight": 0, "faults": {}}
        for url in self.urls:
            with urllib.request.urlopen(f"{url}/sim/stats", timeout=10) as resp:
                stats = json.loads(resp.read())
            for key in ("requests", "generations", "checkpoint_loads"):
                total[key] += stats[key]
            total["max_in_flight"] = max(total["max_in_flight"], stats["max_in_flight"])
            for kind, n in stats["faults"].items():
                total["faults"][kind] = total["faults"].get(kind, 0) + n
        return total

    def reset_config(self, changes: dict[str, Any]) -> None:
        for url in self.urls:
            req = urllib.request.Request(f"{url}/sim/config", data=json.dumps(changes).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10):
                pass


class Farms:
    """Several farms (backends of different configs) used as one: urls in the order given."""

    def __init__(self, farms: Sequence[Farm]) -> None:
        self.farms = list(farms)
        self.urls: list[str] = []

    def __enter__(self) -> Self:
        try:
            for farm in self.farms:
                farm.__enter__()
                self.urls.extend(farm.urls)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for farm in self.farms:
            farm.__exit__(None, None, None)

    @property
    def pids(self) -> list[int]:
        return [pid for farm in self.farms for pid in farm.pids]

    @property
    def processes(self) -> int:
        return len(self.pids)

    def cpu_s(self) -> float:
        return sum(farm.cpu_s() for farm in self.farms)

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {"requests": 0, "generations": 0, "checkpoint_loads": 0,
                                 "max_in_flight": 0, "faults": {}}
        for farm in self.farms:
            stats = farm.stats()
            for key in ("requests", "generations", "checkpoint_loads"):
                total[key] += stats[key]
            total["max_in_flight"] = max(total["max_in_flight"], stats["max_in_flight"])
            for kind, n in stats["faults"].items():
                total["faults"][kind] = total["faults"].get(kind, 0) + n
        return total

    def reset_config(self, changes: dict[str, Any]) -> None:
        for farm in self.farms:
            farm.reset_config(changes)


def _readline_until(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not result or not result[0]:
        raise RuntimeError(f"simulated backends did not start (exit code {proc.poll()})")
    return result[0]


@dataclass
class ChildResult:
    """What a child process reported, plus what the kernel says about it."""

    report: dict[str, Any]
    returncode: int
    cpu_total_s: float  # whole process: interpreter start, imports, run
    maxrss_kb: int
    wall_s: float
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    stderr: str = ""


def run_child(argv: Sequence[str], *, sample_rss_s: float | None = None,
              timeout_s: float = CLIENT_TIMEOUT_S, env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> ChildResult:
    """Run ``python argv...`` to the end; rusage from ``wait4``; optionally sample VmRSS."""
    started = time.monotonic()
    proc = subprocess.Popen([PYTHON, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=env or _env(client=True))
    series: list[tuple[float, int]] = []
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for reader in readers:
        reader.start()
    status = None
    usage = None
    while status is None:
        pid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = wstatus, rusage
            break
        if sample_rss_s is not None:
            rss, _ = proc_rss_kb(proc.pid)
            if rss:
                series.append((time.monotonic() - started, rss))
        if time.monotonic() - started > timeout_s:
            proc.kill()
        time.sleep(sample_rss_s or 0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    assert usage is not None
    stdout = b"".join(out_chunks).decode(errors="replace")
    stderr = b"".join(err_chunks).decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    return ChildResult(report, proc.returncode, usage.ru_utime + usage.ru_stime,
                       usage.ru_maxrss, time.monotonic() - started, series, stderr[-4000:])


def client_env(pipeline_root: str | None = None) -> dict[str, str]:
    """The environment of a measured client: this checkout, or ``pipeline_root`` first."""
    env = _env(client=True)
    if pipeline_root:
        env["PYTHONPATH"] = pipeline_root + os.pathsep + env["PYTHONPATH"]
    return env


def run_client(mode: str, job: dict[str, Any], urls: Sequence[str], workdir: Path, *,
               concurrency: int = 1, sample_rss_s: float | None = None,
               extra: dict[str, Any] | None = None, pipeline_root: str | None = None,
               timeout_s: float = CLIENT_TIMEOUT_S) -> ChildResult:
    """One measured client run in its own process, writing into a fresh directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("spec-*.json")))
    out = workdir / f"out-{mode}-{n}"
    spec_file = workdir / f"spec-{n}.json"
    spec_file.write_text(json.dumps({"job": job, "urls": list(urls), "concurrency": concurrency,
                                     "out": str(out), **(extra or {})}))
    env = client_env(pipeline_root)
    result = run_child(["-m", "benchmarks.clients", mode, "--spec", str(spec_file)],
                       sample_rss_s=sample_rss_s, env=env, cwd=workdir, timeout_s=timeout_s)
    if result.returncode != 0 or not result.report:
        raise RuntimeError(f"{mode} client failed (exit {result.returncode}):\n{result.stderr}")
    result.report["out"] = str(out)
    return result


# --- one measured run, with the servers' side of it --------------------------------------------

@dataclass
class Measured:
    """A client run against a farm: the client's figures and the servers' over the same span."""

    report: dict[str, Any]  # what the client measured inside itself (see clients.py)
    client_cpu_total_s: float  # the whole client process, interpreter start included
    client_maxrss_kb: int
    server_cpu_s: float  # every simulated backend's process, over the client's lifetime
    server_stats: dict[str, Any]  # /sim/stats counters, difference over the run
    elapsed_s: float  # the client process, start to exit
    rss_series: list[tuple[float, int]] = field(default_factory=list)

    @property
    def images(self) -> int:
        return int(self.report.get("images", 0))

    def per_image_ms(self, seconds: float) -> float:
        return 1000.0 * seconds / max(1, self.images)


def _diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _diff(value, before.get(key, {}))
        elif key == "max_in_flight":
            out[key] = value
        else:
            out[key] = value - before.get(key, 0)
    return out


def measured_run(farm: Farm | Farms, mode: str, job: dict[str, Any], workdir: Path, *,
                 concurrency: int = 1, sample_rss_s: float | None = None,
                 pipeline_root: str | None = None, extra: dict[str, Any] | None = None,
                 timeout_s: float = CLIENT_TIMEOUT_S) -> Measured:
    stats0, cpu0 = farm.stats(), farm.cpu_s()
    child = run_client(mode, job, farm.urls, workdir, concurrency=concurrency,
                       sample_rss_s=sample_rss_s, pipeline_root=pipeline_root, extra=extra,
                       timeout_s=timeout_s)
    cpu1, stats1 = farm.cpu_s(), farm.stats()
    return Measured(child.report, child.cpu_total_s, child.maxrss_kb, cpu1 - cpu0,
                    _diff(stats1, stats0), child.wall_s, child.rss_series)
