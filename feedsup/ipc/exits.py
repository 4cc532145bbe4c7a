"""How a worker process ends: the exit codes and reason prefixes both sides read.

The worker writes them (``workers/runtime.py``, ``workers/__main__.py``), the
parent's policy reads them (``supervisor/policy.py``, ``classify_exit``). The
numbers are sysexits(3) values (70, the parent is gone, is
``procs.EXIT_ORPHAN``: its watchdog exits with it), also what supervisord sees from ``feedsup run``.
"""

from __future__ import annotations

EX_STOPPED = 0     # terminated on the parent's request
EX_TEMPFAIL = 75   # the connection ended; a restart may help
EX_CONFIG = 78     # retrying cannot fix this (bad config, symbol, credentials)

# Reason prefixes of a refused WebSocket upgrade. After the same URL worked,
# the policy retries UPGRADE_REJECTED (counted) instead of giving up.
UPGRADE_REFUSED = "upgrade refused"
UPGRADE_REJECTED = "upgrade rejected"

# The worker shell's reasons for a crash it caught (workers/__main__.py):
# our bug, not the network's, even though it exits with EX_TEMPFAIL.
WORKER_RETURNED = "worker returned"
WORKER_ERROR = "worker error"
WORKER_CRASHED = (WORKER_ERROR, WORKER_RETURNED)
