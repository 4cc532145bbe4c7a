import resource

from feedsup.supervisor.fdlimit import SANE_CAP, raise_fd_limit, wanted_soft

INF = resource.RLIM_INFINITY


def test_soft_limit_goes_up_to_the_hard_limit_within_the_cap():
    assert wanted_soft(1024, 4096) == 4096
    assert wanted_soft(1024, 1 << 20) == SANE_CAP
    assert wanted_soft(1024, INF) == SANE_CAP


def test_soft_limit_is_never_lowered():
    assert wanted_soft(200_000, 1 << 20) == 200_000
    assert wanted_soft(INF, INF) == INF
    assert wanted_soft(512, 512) == 512


def test_raise_fd_limit_reports_before_and_after():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = raise_fd_limit()
        assert before == min(256, hard)
        assert after == resource.getrlimit(resource.RLIMIT_NOFILE)[0] == wanted_soft(before, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
