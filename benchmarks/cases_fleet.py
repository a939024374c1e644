"""Case: many machines. Three agent processes pulling from Redis against one local process
driving the same three simulated backends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import jobs
from benchmarks.clients import steady_rate
from benchmarks.context import Ctx, median, spread
from benchmarks.harness import PYTHON, ROOT, Farm, _env, run_child
from benchmarks.report import CaseResult, Row

AGENTS = 3
AGENT_TIMEOUT_S = 600.0


class _Redis:
    """redis-server on a free loopback port, append-only file on (fsync every second, the
    production default), in its own directory; stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is not installed (tests/services_setup.sh "
                               "installs Debian's package)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _fleet_run(farm: Farm, redis: _Redis, job: dict[str, Any], workdir: Path, n: int
               ) -> dict[str, Any]:
    """submit -> three agents (one per simulated backend) until done -> collect."""
    from pipeline.fleet.keys import JobKeys, job_id

    redis.client.flushall()
    run_dir = workdir / f"fleet-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job_file = run_dir / "job.json"
    job_file.write_text(json.dumps(job))
    store = str(run_dir / "store")
    total = int(job["seeds"]["count"]) * (job["prompts"][0].count("|") + 1)
    submitted = run_child(["-m", "pipeline", "submit", str(job_file), "--queue", redis.url,
                           "--out", store, "--json"], timeout_s=AGENT_TIMEOUT_S)
    if submitted.returncode != 0 or submitted.report.get("enqueued") != total:
        raise RuntimeError(f"submit failed: {submitted.stderr}")
    done_key = JobKeys(job_id(store)).done
    env = _env(client=True)
    started = time.monotonic()
    agents = [subprocess.Popen(
        [PYTHON, "-m", "pipeline", "agent", "--queue", redis.url, "--backend", url,
         "--exit-when-done", "--no-fsync", "--poll-s", "0.05", "--heartbeat-s", "1", "-q"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for url in farm.urls]
    times: list[float] = []
    seen = 0
    try:
        while seen < total:
            if time.monotonic() - started > AGENT_TIMEOUT_S:
                raise RuntimeError(f"the agents did {seen} of {total} in {AGENT_TIMEOUT_S:g} s")
            now = int(redis.client.scard(done_key))
            if now > seen:
                times.extend([time.monotonic() - started] * (now - seen))
                seen = now
            if all(a.poll() is not None for a in agents) and seen < total:
                errors = b"".join(a.stderr.read() for a in agents if a.stderr).decode()[-2000:]
                raise RuntimeError(f"the agents left with {seen} of {total} done: {errors}")
            time.sleep(0.01)
        done_s = time.monotonic() - started
        cpu_s = 0.0
        for agent in agents:
            _, status, usage = os.wait4(agent.pid, 0)
            agent.returncode = os.waitstatus_to_exitcode(status)
            cpu_s += usage.ru_utime + usage.ru_stime
            if agent.returncode != 0:
                raise RuntimeError(f"an agent exited with {agent.returncode}")
        exited_s = time.monotonic() - started
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGKILL)
                agent.wait(timeout=10)
            if agent.stderr:
                agent.stderr.close()
    collected = run_child(["-m", "pipeline", "collect", "--queue", redis.url, "--out",
                           str(run_dir / "out"), "--no-fsync", "--json"],
                          timeout_s=AGENT_TIMEOUT_S)
    if collected.returncode != 0 or collected.report.get("collected") != total:
        raise RuntimeError(f"collect failed: {collected.stderr}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"steady_images_per_s": steady_rate(times), "done_s": done_s, "exited_s": exited_s,
            "agent_cpu_s": cpu_s, "submit_s": submitted.wall_s, "collect_s": collected.wall_s,
            "images": total}


def fleet(ctx: Ctx) -> CaseResult:
    latency_s = 0.2 if ctx.quick else 0.5
    per_backend = 10 if ctx.quick else 40
    total = AGENTS * per_backend
    job = jobs.sweep(total, 64, name="fleet")
    case = CaseResult(
        "fleet", "Many machines: three agents on Redis against one local process",
        f"{AGENTS} simulated backends, each {latency_s:g} s per image (64x64), {total} "
        f"variants. 'local': one `sdbatch run` process (the Python API) driving all three. "
        f"'fleet': `sdbatch submit` into a real redis-server (append-only file, fsync every "
        f"second), then {AGENTS} `sdbatch agent` processes, one per backend, writing to a "
        f"shared folder, then `sdbatch collect`. Steady images/s = slope between 20% and 80% of "
        f"the variants done (the agents' acks, read from Redis every 10 ms; the local run's "
        f"writes). Per-image overhead = backends / steady images/s - latency. Median of "
        f"{ctx.reps}, alternating.")
    local_runs: list[Any] = []
    fleet_runs: list[dict[str, Any]] = []
    redis = _Redis(ctx.workdir)
    try:
        with Farm(AGENTS, {"latency_s": latency_s}) as farm:
            for rep, arm in ctx.alternate(["local", "fleet"]):
                ctx.say(f"fleet: {arm} #{rep + 1}")
                if arm == "local":
                    run = ctx.run(farm, "sdbatch", job, extra={"timestamps": True})
                    if run.report.get("status") != "complete" or run.images != total:
                        raise RuntimeError(f"local run incomplete: {run.images} of {total}")
                    local_runs.append(run)
                else:
                    fleet_runs.append(_fleet_run(farm, redis, job, ctx.workdir, rep))
    finally:
        redis.close()
    ideal = AGENTS / latency_s
    local_rate = [r.report["steady_images_per_s"] for r in local_runs]
    fleet_rate = [r["steady_images_per_s"] for r in fleet_runs]
    ratio = [f / loc for f, loc in zip(fleet_rate, local_rate)]
    fleet_gap = [(AGENTS / r - latency_s) * 1000 for r in fleet_rate]
    local_gap = [(AGENTS / r - latency_s) * 1000 for r in local_rate]
    case.rows += [
        Row("throughput, fleet / local (steady)", median(ratio), target="~1"),
        Row("fleet: steady / ideal", median(fleet_rate) / ideal),
        Row("local: steady / ideal", median(local_rate) / ideal),
        Row("fleet: per-image overhead", median(fleet_gap), "ms", digits=1),
        Row("local: per-image overhead", median(local_gap), "ms", digits=1),
        Row("fleet: agent CPU per image", median([1000 * r["agent_cpu_s"] / r["images"]
                                                   for r in fleet_runs]), "ms", digits=1),
        Row("local: client CPU per image", median([r.per_image_ms(r.report["cpu_s"])
                                                   for r in local_runs]), "ms", digits=1),
        Row("fleet: submit, whole command", median([r["submit_s"] for r in fleet_runs]), "s",
            digits=2),
        Row("fleet: collect, whole command", median([r["collect_s"] for r in fleet_runs]), "s",
            digits=2),
    ]
    case.details = {
        "ratio": spread(ratio), "fleet_images_per_s": spread(fleet_rate),
        "local_images_per_s": spread(local_rate), "ideal_images_per_s": ideal,
        "fleet_overhead_ms": spread(fleet_gap), "local_overhead_ms": spread(local_gap),
        "fleet_done_s": spread([r["done_s"] for r in fleet_runs]),
        "fleet_agents_exited_s": spread([r["exited_s"] for r in fleet_runs]),
        "local_wall_s": spread([r.report["wall_s"] for r in local_runs]),
    }
    case.checks.append("Agents include their own interpreter start (about a second) in 'done' "
                       "and 'exited' times; the steady rates leave start and tail out.")
    return case
