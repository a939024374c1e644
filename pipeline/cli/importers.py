"""``sdbatch import FILE``: turn WebUI "prompts from file" lines or kohya sample prompts into a job.

Each line becomes one prompt object carrying its own fields (steps, size, seed, ...); a line's
``--seed``/``--d`` pins that prompt's seed, other prompts use the job's ``seeds``. The output is a
job file to review and run; prompts are marked ``raw`` because neither format expands ``{a|b}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ExitStatus, JobError
from pipeline.prompts.importers import parse_kohya_line, parse_prompts_file_line


def add_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="convert a WebUI prompts-from-file list or a kohya "
                       "sample-prompt file into a job file",
                       description="Read FILE (one prompt per line) and print a job file. "
                       "--format webui reads lines like  --prompt \"a cat\" --steps 20 --seed 5 ; "
                       "--format kohya reads lines like  a cat --n bad hands --w 512 --h 768 --d 42 "
                       "--s 28 --l 7.5 .")
    p.add_argument("file", help="the prompt list")
    p.add_argument("--format", choices=("webui", "kohya"), default="webui",
                   help="the line format (default webui)")
    p.add_argument("--name", help="the job's name (default: the file's stem)")
    p.add_argument("-o", "--output", metavar="JOB", help="write the job here instead of stdout")
    p.set_defaults(func=cmd_import)


def convert(path: Path, fmt: str, name: str | None = None) -> dict[str, Any]:
    parse = parse_kohya_line if fmt == "kohya" else parse_prompts_file_line
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as exc:
        raise JobError("no such file", path=str(path), hint="check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot be read ({exc})", path=str(path),
                       hint="a prompt list is UTF-8 text, one prompt per line") from exc
    prompts = []
    for lineno, line in enumerate(lines, 1):
        fields = parse(line, lineno, str(path))
        if fields is None:
            continue
        entry: dict[str, Any] = {"prompt": fields.pop("prompt"), "raw": True}
        checkpoint = fields.pop("override_settings.sd_model_checkpoint", None)
        if checkpoint is not None:
            fields.setdefault("override_settings", {})["sd_model_checkpoint"] = checkpoint
        entry.update(fields)
        prompts.append(entry)
    if not prompts:
        raise JobError("holds no prompts", path=str(path),
                       hint="write one prompt per line; '#' starts a comment")
    return {"name": name or path.stem, "prompts": prompts, "seeds": [-1]}


def cmd_import(args: argparse.Namespace) -> int:
    job = convert(Path(args.file), args.format, args.name)
    text = (f"# Imported from {args.file} ({args.format} format) by sdbatch import.\n"
            + yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=100))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitStatus.OK
