"""The test suite's size and wall time, as the README's commands run it: the fast loop
(`pytest -n 2 -m "not slow"`) and the whole suite (`pytest -n 2`), one after the other in fresh processes.

Counts come from pytest's JUnit XML report (tests, failures, errors, skipped); times are the processes' wall
clock. The budgets (contributing.md): the fast loop 90 s, the whole suite 11 minutes, on 2 CPU cores.

Usage: .venv/bin/python bench/suite_time.py [--only fast|whole] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"fast": ["-n", "2", "-m", "not slow"], "whole": ["-n", "2"]}
BUDGET_S = {"fast": 90, "whole": 660}


def counts(junit: Path) -> dict[str, int]:
    """tests, failures, errors and skipped from a JUnit XML report."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def run(name: str) -> dict:
    """One pytest run of `name` ('fast' or 'whole'): its exit code, counts and wall seconds."""
    with tempfile.TemporaryDirectory(prefix="neon-suite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *RUNS[name], f"--junitxml={junit}"], cwd=ROOT,
                              env=os.environ.copy(), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        tally = counts(junit) if junit.is_file() else {}
    return {"command": f"python -m pytest {' '.join(RUNS[name])}", "exit_code": proc.returncode,
            "wall_s": seconds, "budget_s": BUDGET_S[name], **tally,
            "passed": tally.get("tests", 0) - sum(tally.get(k, 0) for k in ("failures", "errors", "skipped")),
            "tail": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}


def report(result: dict) -> str:
    """One line per run."""
    return "\n".join(f"{name}: {r['command']}: exit {r['exit_code']}, {r['passed']} passed, {r['failures']} failed, "
                     f"{r['errors']} errors, {r['skipped']} skipped in {r['wall_s']:.0f} s (budget {r['budget_s']} s)"
                     for name, r in result["runs"].items())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(RUNS), help="one of the two runs")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    names = [args.only] if args.only else list(RUNS)
    result = {"settings": {"threads": 1, "cores": os.cpu_count(), "workers": 2}, "runs": {n: run(n) for n in names}}
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
