"""Check an output directory against its job: ``python -m benchmarks.verify --out DIR --job FILE``.

Every expected ``(id, image_index)`` exactly once in the manifest, every file's sha256 as
recorded. Run as a child process with the client's ``PYTHONPATH``, so the expected ids are those
of the ``pipeline`` package under test (``--pipeline DIR``): variant ids are derived from the
payload, and the payload's rules differ between versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def verify_output(out: Path, job: dict[str, Any]) -> dict[str, int]:
    from pipeline import api, expand

    plan = expand.build_plan(api.job_from_dict(job))
    expected = {(v.id, i) for v in expand.variants(plan) for i in range(v.images_expected)}
    seen: Counter[tuple[str, int]] = Counter()
    bad_hash = missing_file = 0
    with (out / "manifest.jsonl").open("rb") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("kind") != "generation":
                continue
            seen[(record["id"], record["image_index"])] += 1
            path = out / record["file"]
            if not path.is_file():
                missing_file += 1
            elif hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
                bad_hash += 1
    return {"expected": len(expected), "recorded": sum(seen.values()),
            "missing": len(expected - set(seen)),
            "duplicated": sum(1 for n in seen.values() if n > 1),
            "unexpected": len(set(seen) - expected), "sha256_mismatch": bad_hash,
            "file_missing": missing_file}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--job", type=Path, required=True, help="the job as a JSON file")
    args = parser.parse_args()
    result = verify_output(args.out, json.loads(args.job.read_text()))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
