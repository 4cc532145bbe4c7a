"""Raise the parent's soft file-descriptor limit at start.

Every subscriber and scraper connection costs the parent one fd, and libzmq
aborts the whole process when an ipc accept (a control request, a worker's
uplink) meets EMFILE. Shells and supervisors often leave the soft limit at
1024 while the hard limit allows far more; an unprivileged process may raise
its soft limit up to the hard one.
"""

from __future__ import annotations

import resource

# Enough for tens of thousands of connections; above it a flood is an attack
# to refuse (CURVE, ipc), not a load to carry. Also below Linux's default
# fs.nr_open (1048576), which setrlimit cannot exceed.
SANE_CAP = 65536


def wanted_soft(soft: int, hard: int, cap: int = SANE_CAP) -> int:
    """The soft limit to set: up to the hard limit and the cap, never lower."""
    ceiling = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft == resource.RLIM_INFINITY:
        return soft
    return max(soft, ceiling)


def raise_fd_limit(cap: int = SANE_CAP) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE; return (before, after). Never raises."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted_soft(soft, hard, cap)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, target
