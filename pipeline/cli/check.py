"""``sdbatch check JOB``: ask every backend what it has and check the job's names against it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from pipeline import expand
from pipeline.backends.preflight import Verdict, inspect_all, job_requirements, judge


def add_parser(sub: Any) -> None:
    from pipeline.cli.common import add_job_selection as _add_job_selection

    p = sub.add_parser("check", help="preflight: are the backends up, and do they have every "
                       "checkpoint, sampler, scheduler, LoRA and VAE the job names?",
                       description="Ask every backend (concurrently) whether it is reachable, "
                       "accepts the credentials, which server it is, what is loaded, and its "
                       "lists; check every name the job uses exactly against each. Exit 0 when "
                       "the job can run, 2 when it cannot.")
    _add_job_selection(p)
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.cli.common import resolve_backends
    from pipeline.errors import UsageError
    from pipeline.job.load import load_job

    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    if not backends:
        raise UsageError("the job lists no backends; name one with --backend URL")
    plan = expand.build_plan(spec)

    async def ask() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            return await inspect_all(session, backends)

    verdict = judge(job_requirements(plan), asyncio.run(ask()), spec)
    if args.json:
        sys.stdout.write(orjson.dumps(as_json(verdict)).decode() + "\n")
    else:
        print_verdict(verdict)
    return 0 if verdict.ok else 2


def as_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "ok": verdict.ok,
        "problems": list(verdict.problems),
        "backends": [{"backend": i.label, "reachable": i.reachable, "error": i.error,
                      "auth_rejected": i.auth_rejected, "server": i.server,
                      "loaded_model": i.loaded_model,
                      "dynamic_prompts": i.dynamic_prompts,
                      "lists": {k: list(v) for k, v in i.shown.items()}} for i in verdict.infos],
        "names": [{"kind": f.kind, "name": f.name, "available_on": list(f.available_on),
                   "missing_on": list(f.missing_on), "suggestions": list(f.suggestions)}
                  for f in verdict.findings],
    }


def print_verdict(verdict: Verdict) -> None:
    console = Console(highlight=False)
    table = Table(title="backends", title_justify="left")
    for col in ("backend", "state", "server", "loaded", "checkpoints", "samplers", "schedulers",
                "LoRAs", "VAEs", "embeddings"):
        table.add_column(col)
    for i in verdict.infos:
        state = "[green]ok[/]" if i.reachable and not i.auth_rejected else (
            "[red]auth rejected[/]" if i.auth_rejected else "[red]down[/]")
        table.add_row(i.label, state, i.server or (i.error[:60] if i.error else "-"),
                      i.loaded_model or "-",
                      *(str(len(i.shown[k])) if k in i.shown else "-" for k in
                        ("checkpoint", "sampler", "scheduler", "lora", "vae", "embedding")))
    console.print(table)
    if verdict.findings:
        names = Table(title="names the job uses", title_justify="left")
        for col in ("kind", "name", "on", "missing on", "did you mean"):
            names.add_column(col)
        for f in verdict.findings:
            names.add_row(f.kind, f.name, ", ".join(f.available_on) or "[red]none[/]",
                          ", ".join(f.missing_on) or "-",
                          ", ".join(f.suggestions) if f.missing_on else "")
        console.print(names)
    if verdict.ok:
        console.print("[green]ok: the job can run[/]")
    for problem in verdict.problems:
        console.print(f"[red]problem:[/] {problem}", markup=True)
