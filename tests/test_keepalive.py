from feedsup.workers.keepalive import Pinger


def test_first_ping_after_one_interval_not_two():
    p = Pinger(interval=20, timeout=10)
    p.start(0.0)
    assert p.poll(19.9) is None
    assert p.poll(20.0) == b"1"


def test_missing_pong_times_out_exactly_at_timeout():
    p = Pinger(interval=20, timeout=10)
    p.start(0.0)
    assert p.poll(20.0) == b"1"
    assert p.poll(29.9) is None
    assert p.poll(30.0) == "timeout"


def test_pong_echoing_payload_clears_deadline():
    p = Pinger(interval=20, timeout=10)
    p.start(0.0)
    p.poll(20.0)
    p.on_pong(b"1")
    assert p.poll(35.0) is None
    assert p.poll(40.0) == b"2"


def test_unsolicited_or_stale_pong_does_not_keep_alive():
    p = Pinger(interval=5, timeout=4)
    p.start(0.0)
    p.poll(5.0)
    p.on_pong(b"")          # unsolicited, empty
    p.on_pong(b"0")         # older than the outstanding ping
    assert p.poll(9.0) == "timeout"


def test_detection_bound_is_interval_plus_timeout_after_last_pong():
    p = Pinger(interval=2, timeout=1)
    p.start(0.0)
    now, verdict = 0.0, None
    while verdict != "timeout":
        now += 0.01
        verdict = p.poll(now)
    assert 3.0 - 1e-6 <= now <= 3.0 + 0.011


def test_next_deadline_includes_pong_deadline():
    p = Pinger(interval=20, timeout=10)
    p.start(0.0)
    assert p.next_deadline() == 20.0
    p.poll(20.0)
    assert p.next_deadline() == 30.0
