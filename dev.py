#!/usr/bin/env python3
"""Bootstrap and run sdbatch from a fresh checkout with nothing but Python 3.11+.

    python3 dev.py run jobs/example.yaml   # any sdbatch command: run, plan, check, sim, grid, ...
    python3 dev.py test [pytest args]      # the test suite

The first call creates ``.venv/`` beside this file and installs sdbatch into it, editable: a
command installs what running needs (every feature: parquet/webdataset writing, the fleet's
Redis and S3 clients), ``test`` adds the test tools. Later calls reinstall only when
``pyproject.toml`` changed or more is needed. Set ``SDBATCH_VENV`` to use another directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SDBATCH_VENV", ROOT / ".venv"))
STAMP = VENV / ".sdbatch-stamp"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


RUN_EXTRAS = "parquet,fleet"
TEST_EXTRAS = "parquet,fleet,test"


def _wanted_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} {extras}"


def _installed(extras: str) -> bool:
    """Is what ``extras`` needs already installed (the test set includes the run set)?"""
    if not STAMP.exists():
        return False
    digest, _, have = STAMP.read_text().strip().partition(" ")
    return digest == _wanted_stamp("").split()[0] and set(extras.split(",")) <= set(have.split(","))


def ensure_env(extras: str = RUN_EXTRAS) -> Path:
    if sys.version_info < (3, 11):
        sys.exit(f"sdbatch needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    python = _venv_python()
    if not python.exists():
        print(f"dev.py: creating a virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not _installed(extras):
        print(f"dev.py: installing sdbatch and its dependencies ({extras}; once)",
              file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-e", f"{ROOT}[{extras}]"],
            check=True,
        )
        STAMP.write_text(_wanted_stamp(extras))
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    python = ensure_env(TEST_EXTRAS if argv[0] == "test" else RUN_EXTRAS)
    if argv[0] == "test":
        cmd = [str(python), "-m", "pytest", *argv[1:]]
    else:
        cmd = [str(python), "-m", "pipeline", *argv]
    return subprocess.call(cmd, cwd=os.getcwd())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
