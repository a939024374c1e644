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
from rich.text import Text  # names from servers and jobs are never markup

from pipeline import expand
from pipeline.backends.preflight import Verdict, inspect_all, job_requirements, judge
from pipeline.errors import ExitStatus


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
    p.add_argument("--probe", action="store_true",
                   help="also prove each backend honours every name: one tiny generation "
                        "(64x64, 1 step) per distinct checkpoint/LoRA/sampler/scheduler/VAE "
                        "combination the job uses, with the infotext read back (its cost is "
                        "printed first)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="with --probe: do not ask before spending the probe's generations")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.cli.common import resolve_backends, run_stoppable
    from pipeline.errors import UsageError
    from pipeline.job.load import load_job

    spec = load_job(args.job)
    backends = resolve_backends(spec, args.backend, args.concurrency, args.subpath)
    if not backends:
        raise UsageError("the job lists no backends; name one with --backend URL (or run "
                         "'sdbatch sim' and point at it)")
    plan = expand.build_plan(spec)

    async def ask() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            return await inspect_all(session, backends, job=spec)

    verdict = judge(job_requirements(plan), run_stoppable(ask()), spec)  # SIGTERM: exit 130
    reachable = [i for i in verdict.infos if i.reachable and not i.auth_rejected]
    problems = list(verdict.problems)
    if not reachable:
        problems.insert(0, "no backend answered, so nothing could be checked: start the "
                           "backends (or fix their URLs) and run 'sdbatch check' again")
    elif args.probe and not verdict.problems:
        problems += _probe(plan, verdict, backends, quiet=args.json, ask=not args.yes)
    if args.json:
        data = as_json(verdict)
        data["ok"], data["problems"] = not problems, problems
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        print_verdict(verdict, problems, plain=not sys.stdout.isatty())
    return ExitStatus.OK if not problems else ExitStatus.USAGE


def _probe(plan: Any, verdict: Verdict, backends: list[Any], *, quiet: bool, ask: bool
           ) -> list[str]:
    """``check --probe``: tiny generations that prove each name is honoured, not substituted."""
    from pipeline.backends.probe import name_combinations, probe_cost, probe_names

    combos = name_combinations(plan)
    cost = probe_cost(combos, verdict)
    say = (lambda text: print(text, file=sys.stderr)) if quiet else print
    say(f"probe: {cost.describe()}")
    if ask and sys.stdin.isatty():
        if input("go ahead? [y/N] ").strip().lower() not in ("y", "yes"):
            return ["the probe was not run (answer y, or pass --yes)"]

    async def run() -> dict[str, list[Any]]:
        async with aiohttp.ClientSession() as session:
            return await probe_names(session, backends, verdict, combos, plan=plan)

    problems = []
    for label, findings in asyncio.run(run()).items():
        for f in findings:
            if f.ok:
                say(f"probe {label}: {f.combo.describe()}: honoured ({f.elapsed_s:.1f} s)")
                continue
            what = "; ".join(f.substituted) or f.error
            problems.append(f"{label} did not honour {f.combo.describe()}: {what}")
    return problems


def as_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "ok": verdict.ok,
        "problems": list(verdict.problems),
        "backends": [{"backend": i.label, "reachable": i.reachable, "error": i.error,
                      "auth_rejected": i.auth_rejected, "server": i.server, "kind": i.kind,
                      "version": i.version, "loaded_model": i.loaded_model,
                      "dynamic_prompts": i.dynamic_prompts,
                      "lists": {k: list(v) for k, v in i.shown.items()}} for i in verdict.infos],
        "names": [{"kind": f.kind, "name": f.name, "available_on": list(f.available_on),
                   "missing_on": list(f.missing_on), "suggestions": _suggestions(f)}
                  for f in verdict.findings],
    }


def _suggestions(finding: Any) -> list[str]:
    """Real names close to the one asked for: never the name itself."""
    return [s for s in finding.suggestions if s.lower() != finding.name.lower()]


LISTS = (("checkpoint", "checkpoints"), ("sampler", "samplers"), ("scheduler", "schedulers"),
         ("lora", "LoRAs"), ("vae", "VAEs"), ("embedding", "embeddings"))


def print_verdict(verdict: Verdict, problems: list[str], *, plain: bool) -> None:
    """A table on a terminal; plain lines (nothing cut) when piped or redirected."""
    console = Console(highlight=False, width=None if not plain else 10_000)
    down = [i.label for i in verdict.infos if not i.reachable or i.auth_rejected]
    if plain:
        for i in verdict.infos:
            state = "ok" if i.reachable and not i.auth_rejected else (
                "auth rejected" if i.auth_rejected else "down")
            lists = ", ".join(f"{len(i.shown[k])} {label}" for k, label in LISTS if k in i.shown)
            detail = (f"{i.server or i.kind}; loaded {i.loaded_model or '-'}; {lists}"
                      if state == "ok" else i.error)
            print(f"backend {i.label}: {state}: {detail}")
        for f in verdict.findings:
            where = ", ".join(f.available_on) or "no backend"
            line = f"{f.kind} {f.name!r}: on {where}"
            if f.missing_on:
                line += f"; missing on {', '.join(f.missing_on)}"
                if _suggestions(f):
                    line += f"; did you mean {', '.join(map(repr, _suggestions(f)))}?"
            if down:
                line += f"; not checked on {', '.join(down)} (down)"
            print(line)
    else:
        table = Table(title="backends", title_justify="left")
        for col in ("backend", "state", "server", "loaded", *(label for _, label in LISTS)):
            table.add_column(col, overflow="fold")
        for i in verdict.infos:
            state = Text("ok", style="green") if i.reachable and not i.auth_rejected else (
                Text("auth rejected" if i.auth_rejected else "down", style="red"))
            table.add_row(Text(i.label), state, Text(i.server or i.error or "-"),
                          Text(i.loaded_model or "-"),
                          *(str(len(i.shown[k])) if k in i.shown else "-" for k, _ in LISTS))
        console.print(table)
        if verdict.findings:
            names = Table(title="names the job uses", title_justify="left")
            for col in ("kind", "name", "on", "missing on", "did you mean"):
                names.add_column(col, overflow="fold")
            for f in verdict.findings:
                names.add_row(f.kind, Text(f.name),
                              Text(", ".join(f.available_on)) or Text("none", style="red"),
                              Text(", ".join(f.missing_on) or "-"),
                              Text(", ".join(_suggestions(f)) if f.missing_on else ""))
            console.print(names)
        if down and verdict.findings:
            console.print(f"not checked on {', '.join(down)}: down", style="yellow",
                          markup=False)
    for note in verdict.notes:  # answers that could not be used: those names go unchecked
        _say(console, plain, f"note: {note}", "yellow")
    if not problems:
        note = f" (not checked on {', '.join(down)}: down)" if down else ""
        _say(console, plain, f"ok: the job can run{note}", "green")
    for problem in problems:
        _say(console, plain, f"problem: {problem}", "red")


def _say(console: Console, plain: bool, text: str, style: str) -> None:
    if plain:
        print(text)
    else:
        console.print(text, style=style, markup=False)
