"""Checks that tests can fail: breaks the code five tests guard, one change at a time, runs the tests that
guard it, and restores the file. Every line should read FAILS. Run by hand (it edits the package in place):
`.venv/bin/python tests/mutation_check.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file, code, the broken code, the tests that should catch it)
MUTATIONS = [
    ("neon/merge.py", "out.sub_(base).mul_(-w).add_(base)", "out.sub_(base).mul_(w).add_(base)",
     ["tests/test_merge.py"]),
    ("neon/seeding.py", "manual_seed(int(s) % (1 << 32)) for s in seeds]", "manual_seed(0) for s in seeds]",
     ["tests/test_synthetic.py"]),
    ("neon/families/edm/sampler.py", "return (top + step * (bottom - top)) ** rho",
     "return (top + step * (bottom - top)) ** (rho - 1)", ["tests/test_edm_regression.py"]),
    ("neon/stages.py", 'if not run.cache.verified("finetune", keys[b])]',
     'if not run.cache.path("finetune", keys[b]).exists()]',
     ["tests/test_faults.py::test_each_corrupted_artifact_is_detected_and_rebuilt"]),
    ("neon/threads.py", "return max(1, cores // processes), why", "return max(1, cores), why",
     ["tests/test_threads.py"]),
]


def main() -> int:
    """Apply each mutation, run its tests, restore; exit 1 if any mutation survives."""
    survived = 0
    for rel, code, broken, tests in MUTATIONS:
        path = ROOT / rel
        source = path.read_text()
        if source.count(code) != 1:
            print(f"{rel}: the code to break is no longer there once; update MUTATIONS")
            return 2
        path.write_text(source.replace(code, broken))
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                  cwd=ROOT, capture_output=True, text=True)
        finally:
            path.write_text(source)
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        verdict = "FAILS" if proc.returncode == 1 else f"SURVIVES (pytest exit {proc.returncode})"
        survived += proc.returncode != 1
        print(f"{rel}: {verdict} {failed[:1]}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
