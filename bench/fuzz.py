"""The long fuzz run of every boundary fuzz test: the config loader, the
worker->parent uplink, the control socket and the frame normalisers.

    python bench/fuzz.py

Runs those tests with Hypothesis's "long" profile (random seeds, 5,000
examples each; CI runs 300 with a fixed seed) and prints, per test, the
examples tried and the failures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ_TESTS = ["tests/test_config_fuzz.py", "tests/test_parent_input.py", "tests/test_normalise_types.py"]


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "fuzz",
           "--hypothesis-profile=long", "--hypothesis-show-statistics", "-o", "timeout=0", *FUZZ_TESTS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tried = failed = 0
    print(f"{'test':78s} {'examples':>9s} {'failing':>8s}")
    for name, body in re.findall(r"^(tests/\S+::\S+):\n(.*?)(?=^tests/|\Z)", proc.stdout, re.S | re.M):
        passing = sum(int(n) for n in re.findall(r"(\d+) passing", body))
        failing = sum(int(n) for n in re.findall(r"(\d+) failing", body))
        tried, failed = tried + passing + failing, failed + failing
        print(f"{name:78s} {passing + failing:9d} {failing:8d}")
    print(f"{'total':78s} {tried:9d} {failed:8d}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
