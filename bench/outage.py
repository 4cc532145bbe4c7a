"""An exchange-wide outage across eight streams (issue 9).

    python bench/outage.py [--outage 90] [--mode reset|503] [--backoff-max 10] [--speed 120]

Eight streams (kline and aggTrade per symbol, bookTicker, depth) against the
simulator; the whole exchange goes down for ``--outage`` seconds (every
connection reset, upgrades refused, REST 5xx). Prints whether any stream
went FATAL, how long after the outage's end each stream delivered fresh live
data again, and the counts checked against the simulator's REST truth; exits
non-zero if anything was lost, duplicated or left unannounced, or a stream
went FATAL.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedsup.tools.chaos import OutageOptions, OutageRun  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage", type=float, default=90)
    ap.add_argument("--mode", choices=("reset", "503"), default="reset")
    ap.add_argument("--backoff-max", type=float, default=10)
    ap.add_argument("--speed", type=float, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    opts = OutageOptions(outage_s=args.outage, mode=args.mode, backoff_max=args.backoff_max, speed=args.speed,
                         seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="feedsup-outage-") as tmp:
        report = OutageRun(opts, Path(tmp)).run()
    print(report.summary())
    return 1 if report.problems or report.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
