"""The long chaos run of issue 4: 60 simulated minutes, 30+ random faults.

    python bench/chaos.py [--sim-minutes 60] [--faults 36] [--speed 120] [--seed 7]

Prints every fault injected, recovery times (p50/max) and the counts checked
against the simulator's REST truth; exits non-zero if anything was lost,
duplicated or left unannounced.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedsup.tools.chaos import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["--faults", "36"]))
