"""Results: one ``CaseResult`` per case, rendered as a text table, Markdown and JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One figure: ``value`` in ``unit``; ``target`` and ``met`` when the issue sets one."""

    measure: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    digits: int = 3

    def shown(self) -> str:
        value = self.value
        if isinstance(value, float):
            text = f"{value:.{self.digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        return f"{text} {self.unit}".strip()

    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.met]


@dataclass
class CaseResult:
    key: str
    title: str
    setup: str  # what was run, in one or two sentences
    rows: list[Row] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # evidence the sims were not the bottleneck
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions = {}
    for package in ("aiohttp", "orjson", "pillow", "webuiapi", "pybase64"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - not installed
            versions[package] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_gb, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "pipeline")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe(info: dict[str, Any]) -> str:
    dirty = " (pipeline/ modified)" if info.get("dirty") else ""
    return (f"{info['date']} | {info['nproc']} CPUs, {info['cpu']}, {info['memory_gb']} GB | "
            f"Python {info['python']} | {info['platform']} | commit {info['commit']}{dirty}")


def render_text(cases: list[CaseResult], info: dict[str, Any], mode: str) -> str:
    header = ("case", "measure", "result", "target", "")
    lines: list[tuple[str, ...]] = [header]
    for case in cases:
        if case.error:
            lines.append((case.title, "ERROR", case.error.splitlines()[-1][:60], "", ""))
        for n, row in enumerate(case.rows):
            lines.append((case.title if n == 0 else "", row.measure, row.shown(), row.target,
                          row.verdict()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"sdbatch benchmarks ({mode}) - {describe(info)}", ""]
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    missed = [f"{c.title}: {r.measure}" for c in cases for r in c.rows if r.met is False]
    out.append("")
    out.append("missed targets: " + ("; ".join(missed) if missed else "none"))
    return "\n".join(out)


def render_markdown(cases: list[CaseResult], info: dict[str, Any], mode: str) -> str:
    out = [f"# sdbatch benchmark results ({mode})", "", f"Machine: {describe(info)}", "",
           "| case | measure | result | target | |", "|---|---|---|---|---|"]
    for case in cases:
        if case.error:
            out.append(f"| {case.title} | ERROR | {case.error.splitlines()[-1][:80]} | | |")
        for n, row in enumerate(case.rows):
            out.append(f"| {case.title if n == 0 else ''} | {row.measure} | {row.shown()} | "
                       f"{row.target} | {row.verdict()} |")
    for case in cases:
        out += ["", f"## {case.title}", "", case.setup, ""]
        for check in case.checks:
            out.append(f"- {check}")
        if case.details:
            out += ["", "```json", json.dumps(case.details, indent=1, default=str)[:6000], "```"]
        out.append(f"\n({case.seconds:.0f} s)")
    return "\n".join(out) + "\n"


def to_json(cases: list[CaseResult], info: dict[str, Any], mode: str) -> str:
    return json.dumps({"mode": mode, "machine": info,
                       "cases": [dataclasses.asdict(c) for c in cases]}, indent=1, default=str)
