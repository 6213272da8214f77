"""Run the adversarial privacy suite through ``p3m anonymize`` and print its table (case, result, seconds).

The cases come from tests/fixtures/privacy_suite.py (``--full``: the full
sizes, a 12000x300 panorama and a 6000x4000 photo). Each runs as its own
``python -m p3m anonymize`` process with ``PYTHONPATH`` set to ``--src``
(default: this checkout), so an earlier version can be put through the same
attacks; the outputs are always checked with this checkout's detector.

    python scripts/privacy_suite.py --full
    git worktree add /tmp/p3m-main main && python scripts/privacy_suite.py --src /tmp/p3m-main/src
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_suite():
    spec = importlib.util.spec_from_file_location("privacy_suite", ROOT / "tests" / "fixtures" / "privacy_suite.py")
    module = sys.modules.setdefault("privacy_suite", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size cases")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="src folder of the p3m version to attack")
    args = parser.parse_args()
    suite = load_suite()
    env = {**os.environ, "PYTHONPATH": str(args.src)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("| case | attack | result | seconds | problems |")
        print("| --- | --- | --- | --- | --- |")
        for case in suite.build(tmp / "cases", args.full):
            out, masks, report = tmp / case.name / "out", tmp / case.name / "masks", tmp / case.name / "report.json"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "p3m", "anonymize", *suite.command(case, out, masks, report)],
                                  env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            problems = suite.check(case, done.returncode, out, masks, report, done.stdout + done.stderr)
            result = {0: "anonymized", 1: "refused"}.get(done.returncode, f"exit {done.returncode}")
            print(f"| {case.name} | {case.what} | {result} | {seconds:.1f} | {'; '.join(problems) or 'none'} |",
                  flush=True)


if __name__ == "__main__":
    main()
