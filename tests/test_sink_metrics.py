"""Sink gauges follow Parent.status()["sink"]; 0 without a sink."""

from __future__ import annotations

from feedsup.supervisor.metrics import Metrics


def gauge(m: Metrics, key: str) -> float:
    return m.registry.get_sample_value(f"feedsup_sink_{key}")


def test_sink_gauges_follow_status():
    m = Metrics(port=0)
    m.update({"streams": [], "sink": None})
    assert gauge(m, "connected") == 0 and gauge(m, "acked") == 0
    m.update({"streams": [], "sink": {"connected": "nats://127.0.0.1:4222", "acked": 120, "duplicates": 60,
                                      "pending": 3, "dropped": 0, "last_error": None}})
    assert gauge(m, "connected") == 1 and gauge(m, "acked") == 120
    assert gauge(m, "duplicates") == 60 and gauge(m, "pending") == 3 and gauge(m, "dropped") == 0
    m.update({"streams": [], "sink": {"connected": None, "acked": 120, "pending": 900, "dropped": 40}})
    assert gauge(m, "connected") == 0 and gauge(m, "pending") == 900 and gauge(m, "dropped") == 40
