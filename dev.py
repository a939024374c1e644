#!/usr/bin/env python3
"""Bootstrap and run sdbatch from a fresh checkout with nothing but Python 3.11+.

    python3 dev.py run jobs/example.yaml   # any sdbatch command: run, plan, check, sim, grid, ...
    python3 dev.py test [pytest args]      # the test suite

The first call creates ``.venv/`` beside this file and installs sdbatch into it (editable, with
its test extras); later calls reinstall only when ``pyproject.toml`` changed. Set
``SDBATCH_VENV`` to use another directory.
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


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> Path:
    if sys.version_info < (3, 11):
        sys.exit(f"sdbatch needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    python = _venv_python()
    if not python.exists():
        print(f"dev.py: creating a virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text().strip() != _wanted_stamp():
        print("dev.py: installing sdbatch and its dependencies (once)", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-e", f"{ROOT}[test]"],
            check=True,
        )
        STAMP.write_text(_wanted_stamp())
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    python = ensure_env()
    if argv[0] == "test":
        cmd = [str(python), "-m", "pytest", *argv[1:]]
    else:
        cmd = [str(python), "-m", "pipeline", *argv]
    return subprocess.call(cmd, cwd=os.getcwd())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
