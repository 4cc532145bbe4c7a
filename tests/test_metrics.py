"""The Prometheus endpoint: fed status dicts, scraped over real loopback HTTP.

Every endpoint test scrapes ``/metrics`` on 127.0.0.1 (port 0) with urllib
and parses the text exposition with prometheus_client's own parser, so what
is checked is what Prometheus would see.
"""

import math
import random
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedsup.config import Connection, Restart, Stream
from feedsup.supervisor.metrics import (
    LAG_BUCKETS_MS,
    REASONS,
    STATES,
    Metrics,
    MonotonicTotals,
    classify_reason,
)
from feedsup.supervisor.policy import Policy, Restarted


# --- helpers -------------------------------------------------------------------

@pytest.fixture
def metrics():
    m = Metrics(port=0)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def scrape(m: Metrics) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from one real HTTP scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def row(name="s1", state="RUNNING", instance=1, budget=250, **stats):
    """A stream row shaped like Parent.status()['streams'][i]."""
    return {
        "name": name, "state": state, "state_reason": "ready", "instance": instance,
        "successor": None, "uptime": 1.0, "restarts": 0, "rotations": 0, "last_reason": "",
        "stats": stats, "backoff_until": None, "budget_remaining": budget,
        "pid": 1234, "msgs_per_s": 0.0, "last_msg_age": stats.get("idle"),
        "lag_ms": stats.get("lag_ms"), "drops": stats.get("drops", 0),
    }


def status(*rows, uptime=1.0, published=0, suppressed=0):
    return {"pid": 1, "uptime": uptime, "published": published, "suppressed": suppressed,
            "streams": list(rows)}


# --- classify_reason (pure) --------------------------------------------------------

@pytest.mark.parametrize("reason, label", [
    # Reasons as the workers, spawn.describe_exit and the policy word them.
    ("killed by SIGKILL", "killed"),
    ("terminated", "killed"),
    ("ping/pong timed out", "ping_timeout"),
    ("closed by server: 1008 Too many messages", "closed"),
    ("closed by server", "closed"),
    ("connection lost: ConnectionResetError: [Errno 104] Connection reset by peer", "closed"),
    ("connect failed: ConnectionRefusedError: [Errno 111] Connection refused", "connect_failed"),
    ("upgrade refused: HTTP 429", "connect_failed"),
    ("liveness timeout", "liveness"),
    ("stale: no data for 12.3s", "stale"),
    ("start timeout", "start_timeout"),
    ("rotated", "rotated"),
    ("rotation (serverShutdown)", "rotated"),
    ("rotation (max_age)", "rotated"),
    ("restart requested", "manual"),
    ("invalid symbol: FOOBAR (not listed by the exchange)", "fatal"),
    # A rejected upgrade that is retried (the URL worked before) is a connect
    # failure; when it ends the stream FATAL the policy reports "fatal".
    ("upgrade rejected: HTTP 400 (Invalid request)", "connect_failed"),
    ("fatal", "fatal"),
    ("spawn failed: [Errno 11] Resource temporarily unavailable", "spawn_failed"),
    ("restart intensity exceeded (4 restarts in 60s): killed by SIGKILL", "fatal"),
    ("exited with code 1", "other"),
    ("worker error: ValueError: boom", "other"),
    ("", "other"),
    # Wrapped reasons count under their underlying cause.
    ("successor took over (ping/pong timed out)", "ping_timeout"),
    ("rotation failed: stale: no data for 11.0s", "stale"),
    ("still alive 3s after TERM (liveness timeout)", "liveness"),
])
def test_classify_reason(reason, label):
    assert classify_reason(reason) == label


def test_classify_reason_is_idempotent_and_bounded():
    for label in REASONS:
        assert classify_reason(label) == label
    assert classify_reason("KILLED") == "killed"
    for text in ("pid 123 exited", "x" * 1000, "Connection closed 1006", "💥"):
        assert classify_reason(text) in REASONS


# --- MonotonicTotals (pure) ----------------------------------------------------------

def test_totals_add_deltas_and_restart_from_zero_for_a_new_instance():
    t = MonotonicTotals()
    assert t.advance("s1", "msgs", 1, 100) == 100
    assert t.advance("s1", "msgs", 1, 250) == 150
    assert t.advance("s1", "msgs", 1, 250) == 0
    # A restarted worker counts from 0, even when it already passed the old value.
    assert t.advance("s1", "msgs", 2, 400) == 400
    # A decrease within one instance is a reset too.
    assert t.advance("s1", "msgs", 2, 10) == 10
    # Streams and keys are independent.
    assert t.advance("s2", "msgs", 2, 5) == 5
    assert t.advance("s1", "drops", 2, 7) == 7


# --- the endpoint ------------------------------------------------------------------------

def test_state_gauge_switches_with_the_stream_state(metrics):
    metrics.update(status(row("s1", "STARTING", msgs=0), row("s2", "RUNNING", msgs=0)))
    s = scrape(metrics)
    for state in STATES:
        assert value(s, "feedsup_stream_state", stream="s1", state=state) == (state == "STARTING")
        assert value(s, "feedsup_stream_state", stream="s2", state=state) == (state == "RUNNING")

    metrics.update(status(row("s1", "BACKOFF", instance=None), row("s2", "FATAL", instance=None)))
    s = scrape(metrics)
    for state in STATES:
        assert value(s, "feedsup_stream_state", stream="s1", state=state) == (state == "BACKOFF")
        assert value(s, "feedsup_stream_state", stream="s2", state=state) == (state == "FATAL")


def test_worker_counters_stay_monotonic_across_a_worker_restart(metrics):
    def totals():
        s = scrape(metrics)
        return (value(s, "feedsup_messages_total", stream="s1"),
                value(s, "feedsup_drops_total", stream="s1"),
                value(s, "feedsup_malformed_total", stream="s1"))

    metrics.update(status(row(instance=1, msgs=100, drops=2, malformed=1)))
    assert totals() == (100, 2, 1)
    metrics.update(status(row(instance=1, msgs=250, drops=2, malformed=3)))
    assert totals() == (250, 2, 3)
    # The worker died: BACKOFF still shows its last stats, which add nothing.
    metrics.update(status(row(state="BACKOFF", instance=None, msgs=250, drops=2, malformed=3)))
    assert totals() == (250, 2, 3)
    # The new worker starts with empty stats (no LIVE yet), then counts from 0.
    metrics.update(status(row(state="STARTING", instance=2)))
    assert totals() == (250, 2, 3)
    metrics.update(status(row(instance=2, msgs=30, drops=0, malformed=0)))
    assert totals() == (280, 2, 3)
    # A rotation hands over to a successor that already counted past the old value.
    metrics.update(status(row(instance=3, msgs=500, drops=1, malformed=0)))
    assert totals() == (780, 3, 3)
    # A decrease within the same instance is treated as a reset, never subtracted.
    metrics.update(status(row(instance=3, msgs=20, drops=1, malformed=0)))
    assert totals() == (800, 3, 3)


def test_gaps_and_backfilled_are_zero_until_reported(metrics):
    metrics.update(status(row(msgs=1)))
    s = scrape(metrics)
    assert value(s, "feedsup_gaps_total", stream="s1") == 0
    assert value(s, "feedsup_backfilled_total", stream="s1") == 0
    metrics.update(status(row(msgs=2, gaps=2, backfilled=40)))
    metrics.update(status(row(msgs=3, gaps=3, backfilled=55)))
    s = scrape(metrics)
    assert value(s, "feedsup_gaps_total", stream="s1") == 3
    assert value(s, "feedsup_backfilled_total", stream="s1") == 55


def test_last_message_age_follows_idle_and_is_nan_when_unknown(metrics):
    metrics.update(status(row("s1", idle=2.5, msgs=1), row("s2", msgs=0, idle=None),
                          row("s3", "BACKOFF", instance=None, idle=0.1)))
    s = scrape(metrics)
    assert value(s, "feedsup_last_message_age_seconds", stream="s1") == 2.5
    # No data yet, or no worker (the dead worker's idle is frozen, not an age).
    assert math.isnan(value(s, "feedsup_last_message_age_seconds", stream="s2"))
    assert math.isnan(value(s, "feedsup_last_message_age_seconds", stream="s3"))


def test_parent_level_values_match_status(metrics):
    metrics.update(status(row(budget=249), uptime=12.5, published=1000, suppressed=7))
    metrics.update(status(row(budget=247), uptime=13.5, published=1600, suppressed=9))
    s = scrape(metrics)
    assert value(s, "feedsup_connect_budget_remaining") == 247
    assert value(s, "feedsup_uptime_seconds") == 13.5
    assert value(s, "feedsup_published_total") == 1600
    assert value(s, "feedsup_duplicates_suppressed_total") == 9


def test_restarts_are_counted_by_classified_reason(metrics):
    metrics.update(status(row("s1")))
    s = scrape(metrics)
    # Every reason exists at 0 before the first restart, so increase() sees it.
    for reason in REASONS:
        assert value(s, "feedsup_restarts_total", stream="s1", reason=reason) == 0

    metrics.count_restart("s1", "killed by SIGKILL")
    metrics.count_restart("s1", "closed by server: 1008 Too many messages")
    metrics.count_restart("s1", "closed by server: 1006")
    metrics.count_restart("s1", "ping_timeout")  # already classified
    metrics.count_restart("s2", "something nobody foresaw")
    s = scrape(metrics)
    assert value(s, "feedsup_restarts_total", stream="s1", reason="killed") == 1
    assert value(s, "feedsup_restarts_total", stream="s1", reason="closed") == 2
    assert value(s, "feedsup_restarts_total", stream="s1", reason="ping_timeout") == 1
    assert value(s, "feedsup_restarts_total", stream="s2", reason="other") == 1
    reasons = {dict(labels)["reason"] for name, labels in s if name == "feedsup_restarts_total"}
    assert reasons == set(REASONS)


def test_lag_histogram(metrics):
    for lag in (0.5, 3, 3, 150, 20_000):
        metrics.observe_lag("s1", lag)
    metrics.observe_lag("s1", -4)        # clock skew: recorded as 0
    metrics.observe_lag("s1", None)      # no event time yet: ignored
    metrics.observe_lag("s1", math.nan)  # ignored
    s = scrape(metrics)
    assert value(s, "feedsup_exchange_lag_ms_count", stream="s1") == 6
    assert value(s, "feedsup_exchange_lag_ms_sum", stream="s1") == 0.5 + 3 + 3 + 150 + 20_000
    assert value(s, "feedsup_exchange_lag_ms_bucket", stream="s1", le="1.0") == 2
    assert value(s, "feedsup_exchange_lag_ms_bucket", stream="s1", le="5.0") == 4
    assert value(s, "feedsup_exchange_lag_ms_bucket", stream="s1", le="200.0") == 5
    assert value(s, "feedsup_exchange_lag_ms_bucket", stream="s1", le="10000.0") == 5
    assert value(s, "feedsup_exchange_lag_ms_bucket", stream="s1", le="+Inf") == 6
    assert LAG_BUCKETS_MS[0] == 1 and LAG_BUCKETS_MS[-1] == 10_000


def test_values_match_a_real_policy_status_through_a_restart(metrics):
    """Drive the real restart policy with a fake clock; scrape what it reports."""
    conn = Connection(connect_timeout=10.0, liveness_timeout=5.0, stale_after=10.0, max_age=1000.0)
    restart = Restart(backoff_initial=1.0, backoff_max=8.0, intensity=3, period=60.0, connect_budget=100,
                      budget_window=300.0, stable_after=30.0, stop_timeout=3.0)
    streams = [Stream(name="s1", market="spot", channel="aggTrade", symbols=("BTCUSDT",), connection=conn)]
    policy = Policy(streams, restart, random.Random(0))

    def feed(now, actions=()):
        for action in actions:
            if isinstance(action, Restarted):
                metrics.count_restart(action.stream, action.reason)
        metrics.update({"uptime": now, "published": 0, "suppressed": 0, "streams": policy.status(now)})
        return scrape(metrics)

    policy.start(0.0)
    policy.on_ready(1, 0.5)
    policy.on_liveness(1, {"msgs": 40, "drops": 0, "malformed": 0, "idle": 0.2}, 1.0)
    s = feed(1.0)
    assert value(s, "feedsup_stream_state", stream="s1", state="RUNNING") == 1
    assert value(s, "feedsup_messages_total", stream="s1") == 40
    assert value(s, "feedsup_connect_budget_remaining") == 99
    assert value(s, "feedsup_last_message_age_seconds", stream="s1") == 0.2

    s = feed(2.0, policy.on_exit(1, 1, "ping/pong timed out", False, 2.0))
    assert value(s, "feedsup_stream_state", stream="s1", state="BACKOFF") == 1
    assert value(s, "feedsup_stream_state", stream="s1", state="RUNNING") == 0
    assert value(s, "feedsup_restarts_total", stream="s1", reason="ping_timeout") == 1

    policy.tick(10.0)  # backoff elapsed: worker 2 spawns
    policy.on_ready(2, 10.5)
    policy.on_liveness(2, {"msgs": 15, "drops": 1, "malformed": 0, "idle": 0.1}, 11.0)
    s = feed(11.0)
    assert value(s, "feedsup_stream_state", stream="s1", state="RUNNING") == 1
    assert value(s, "feedsup_messages_total", stream="s1") == 55
    assert value(s, "feedsup_drops_total", stream="s1") == 1
    assert value(s, "feedsup_connect_budget_remaining") == 98


# --- lifecycle ---------------------------------------------------------------------------

def test_instances_are_independent_and_stop_releases_the_port():
    a, b = Metrics(port=0), Metrics(port=0)
    a.start()
    try:
        b.start()
        try:
            assert a.port != b.port and a.port > 0
            a.update(status(row(msgs=5)))
            b.update(status(row(msgs=9)))
            assert value(scrape(a), "feedsup_messages_total", stream="s1") == 5
            assert value(scrape(b), "feedsup_messages_total", stream="s1") == 9
        finally:
            b.stop()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{b.port}/metrics", timeout=5)
        # Freed: a new endpoint can serve on the same port (as after a parent restart).
        again = Metrics(port=b.port)
        again.start()
        try:
            assert again.port == b.port
            assert value(scrape(again), "feedsup_uptime_seconds") == 0
        finally:
            again.stop()
    finally:
        a.stop()
    a.stop()  # idempotent


def test_start_twice_is_an_error(metrics):
    with pytest.raises(RuntimeError):
        metrics.start()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_serves_on_ipv6_loopback():
    m = Metrics(port=0, host="::1")
    try:
        m.start()
    except OSError:
        pytest.skip("::1 not available")
    try:
        m.update(status(row(msgs=3)))
        with urllib.request.urlopen(f"http://[::1]:{m.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'feedsup_messages_total{stream="s1"} 3.0' in text
    finally:
        m.stop()


def test_a_stream_removed_while_running_shows_exited(metrics):
    """A connection of a symbols = "*" stream stopped for good (every symbol
    delisted) leaves status; its state gauge must not stay at STOPPING."""
    metrics.update(status(row("all/0", "RUNNING", msgs=0), row("all/1", "STOPPING", msgs=0)))
    metrics.update(status(row("all/0", "RUNNING", msgs=0)))
    s = scrape(metrics)
    for state in STATES:
        assert value(s, "feedsup_stream_state", stream="all/1", state=state) == (state == "EXITED")
        assert value(s, "feedsup_stream_state", stream="all/0", state=state) == (state == "RUNNING")
    assert math.isnan(value(s, "feedsup_last_message_age_seconds", stream="all/1"))
