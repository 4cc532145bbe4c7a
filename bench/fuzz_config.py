"""Long fuzz run of the config loader: prints cases tried, how many loaded,
how many were refused, and every failure (anything but Config/ConfigError).

    python bench/fuzz_config.py [--examples 20000] [--seconds 100]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from config_fuzz import check_one, documents, near_valid, raw_texts, render  # noqa: E402
from feedsup.config import Config  # noqa: E402


CHUNK = 500


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100_000, help="at most this many cases")
    parser.add_argument("--seconds", type=float, default=90.0, help="stop after about this long")
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    failures: list[tuple[str, str]] = []
    deadline = time.monotonic() + args.seconds
    folder = Path(tempfile.mkdtemp(prefix="feedsup-fuzz-"))

    # Rounds of CHUNK cases, each with a fresh random seed, until the time or
    # case budget is spent: one long Hypothesis run cannot be stopped on time.
    @settings(max_examples=CHUNK, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(documents.map(render), near_valid().map(render), raw_texts))
    def run(text: str) -> None:
        counts["tried"] += 1
        try:
            result = check_one(folder / "feedsup.toml", text)
        except BaseException as exc:   # noqa: BLE001: the point is to see everything
            counts["failed"] += 1
            failures.append((f"{type(exc).__name__}: {exc}"[:300], text[:300]))
            return
        counts["loaded" if isinstance(result, Config) else "refused"] += 1

    started = time.monotonic()
    while time.monotonic() < deadline and counts["tried"] < args.examples:
        run()
    took = time.monotonic() - started
    print(f"{'cases tried':>14}  {counts['tried']}")
    print(f"{'loaded':>14}  {counts['loaded']}")
    print(f"{'refused (78)':>14}  {counts['refused']}")
    print(f"{'failures':>14}  {counts['failed']}")
    print(f"{'seconds':>14}  {took:.1f}")
    for error, text in failures[:20]:
        print(f"\n{error}\n--- input ---\n{text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
