"""The command line: ``sdbatch COMMAND`` (and ``python -m pipeline COMMAND``).

This is the one choke point where errors become exit codes (``ExitStatus``) and text. Each
subcommand lives in its own module beside this one and registers itself with ``add_parser``;
none imports this module, so there are no import circles.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Any, NoReturn

from pipeline import __version__
from pipeline.errors import ExitStatus, JobError, SdbatchError, UsageError

log = logging.getLogger("pipeline")

EPILOG = """\
examples:
  sdbatch run jobs/example.yaml                 # no backend configured: built-in simulator
  sdbatch run sweep.yaml --out out/sweep        # backends listed in the job file
  sdbatch run sweep.yaml --backend http://gpu1:7861 --backend http://user:pass@gpu2:7861
  sdbatch run sweep.yaml --limit 4              # try the first 4 variants first
  sdbatch plan sweep.yaml                       # what it will generate, and how long it takes
  sdbatch check sweep.yaml                      # are the backends up, and have they every name?
  sdbatch sim --port 7861                       # a simulated WebUI backend on its own

Rerun the same command after a crash, Ctrl-C or a closed laptop: it finishes what is missing
and requests nothing twice. Exit codes: 0 all done, 1 some failed (see failures.jsonl),
2 bad usage, job file or backends, 130 interrupted. 'sdbatch COMMAND --help' for each command.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: exit 2, with the fix
        hint = f"see '{self.prog} --help'"
        if "invalid choice:" in message:
            typed = message.split("invalid choice:", 1)[1].split("(")[0].strip().strip("'\"")
            choices = [c for c in _subcommands(self) if c != typed]
            close = difflib.get_close_matches(typed, choices, n=1, cutoff=0.6)
            if close:
                message = f"unknown command {typed!r}; did you mean {close[0]!r}?"
            else:
                message = f"unknown command {typed!r}; commands: {', '.join(choices)}"
        raise UsageError(f"{message}\n  fix: {hint}")


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


COMMANDS = ("run", "plan", "check", "sim", "grid", "reproduce", "importers", "prune", "submit",
            "agent", "status", "collect")


def _modules() -> list[Any]:
    import importlib

    modules = []
    for name in COMMANDS:
        try:
            modules.append(importlib.import_module(f"pipeline.cli.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"pipeline.cli.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdbatch", description="Batch image generation on Stable Diffusion "
                     "servers (AUTOMATIC1111 WebUI, Forge, SD.Next, ComfyUI): job file in, images "
                     "with resolved seeds and full metadata out, crash-safe and resumable.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sdbatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _modules():
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = getattr(args, "command", None)
        sub = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                sub = action.choices[command]
        flags = [o for a in (sub or parser)._actions for o in a.option_strings]
        unknown = extras[0]
        close = difflib.get_close_matches(unknown.split("=")[0], [f for f in flags
                                                                  if f != unknown], n=1)
        where = f"sdbatch {command} --help" if command else "sdbatch --help"
        guess = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"unknown argument {unknown!r}{guess}\n  fix: see '{where}'")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return ExitStatus.OK
        args = _parse(parser, argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return ExitStatus.OK
        logging.getLogger().setLevel((logging.WARNING, logging.INFO,
                                      logging.DEBUG)[min(args.verbose, 2)])
        return int(args.func(args) or ExitStatus.OK)
    except SdbatchError as exc:
        from pipeline.cli.common import redact

        kind = "job file error" if isinstance(exc, JobError) else "error"
        print(f"sdbatch: {kind}: {redact(str(exc))}", file=sys.stderr)  # no URL's password
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("sdbatch: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # `sdbatch plan | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
