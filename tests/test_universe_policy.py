"""Listings and delistings of a symbols = "*" stream while running: the pure
decisions (``universe.plan``) and the policy carrying them out (add,
reconfigure = make-before-break rotation, remove), under a fake clock.
Every other stream's worker is left alone."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from feedsup.config import Connection, Restart, Stream
from feedsup.supervisor import gaps
from feedsup.supervisor.policy import (
    RECONFIGURED, ROTATED, Kill, Policy, Spawn, State, StateChanged, Terminate, UnknownStream,
)
from feedsup.universe import AddSlot, Change, RemoveSlot, ReplaceSlot, Universe, plan

# Long liveness and max_age: these tests send no pings and want no age rotation.
CONN = Connection(connect_timeout=10.0, liveness_timeout=3600.0, stale_after=0.0, max_age=80000.0)
RESTART = Restart(backoff_initial=1.0, backoff_max=8.0, intensity=3, period=60.0, connect_budget=100,
                  budget_window=300.0, stable_after=30.0, stop_timeout=3.0)
TEMPLATE = Stream(name="all", market="spot", channel="aggTrade", connection=CONN)


def slot(i: int, *symbols: str) -> Stream:
    return replace(TEMPLATE, name=f"all/{i}", symbols=symbols)


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def rows(policy, now=0.0):
    return {r["name"]: r for r in policy.status(now)}


def started(*streams: Stream, now: float = 0.0) -> tuple[Policy, dict[str, int]]:
    """A policy with every stream RUNNING; name -> active instance."""
    policy = Policy(list(streams), RESTART, random.Random(0))
    spawns = of(policy.start(now), Spawn)
    for s in spawns:
        policy.on_ready(s.instance, now)
        policy.on_streaming(s.instance, now)
    return policy, {s.stream: s.instance for s in spawns}


# -- plan: pure decisions -------------------------------------------------------------

def info(*symbols: str, delisted: tuple[str, ...] = ()) -> dict:
    return {"symbols": [{"symbol": s, "status": "BREAK" if s in delisted else "TRADING", "quoteAsset": "USDT"}
                        for s in (*symbols, *delisted)]}


def test_plan_adds_a_connection_for_a_listing_when_none_has_room():
    u = Universe(TEMPLATE, limit=2)
    u.update(info("AUSDT", "BUSDT"))
    assert plan(u, u.update(info("AUSDT", "BUSDT", "CUSDT"))) == [AddSlot(slot(1, "CUSDT"))]


def test_plan_rotates_the_connection_with_room_for_a_listing():
    u = Universe(TEMPLATE, limit=3)
    u.update(info("AUSDT", "BUSDT", "DUSDT", "EUSDT"))
    assert [s.symbols for s in u.streams()] == [("AUSDT", "BUSDT", "DUSDT"), ("EUSDT",)]
    steps = plan(u, u.update(info("AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT")))
    assert steps == [ReplaceSlot(slot(1, "EUSDT", "CUSDT"), listed=("CUSDT",), delisted=())]


def test_plan_rotates_a_connection_without_a_delisted_symbol_and_names_it():
    u = Universe(TEMPLATE, limit=2)
    u.update(info("AUSDT", "BUSDT", "CUSDT"))
    steps = plan(u, u.update(info("AUSDT", "CUSDT", delisted=("BUSDT",))))
    assert steps == [ReplaceSlot(slot(0, "AUSDT"), listed=(), delisted=("BUSDT",))]


def test_plan_removes_a_connection_whose_symbols_all_left():
    u = Universe(TEMPLATE, limit=2)
    u.update(info("AUSDT", "BUSDT", "CUSDT"))
    assert plan(u, u.update(info("AUSDT", "BUSDT", delisted=("CUSDT",)))) == [RemoveSlot("all/1", ("CUSDT",))]


def test_plan_of_no_change_is_nothing():
    u = Universe(TEMPLATE, limit=2)
    u.update(info("AUSDT", "BUSDT", "CUSDT"))
    assert plan(u, u.update(info("AUSDT", "BUSDT", "CUSDT"))) == []
    assert plan(u, [Change("all/0", ("AUSDT",), ("AUSDT",))]) == [
        ReplaceSlot(slot(0, "AUSDT"), listed=(), delisted=())]


def test_universe_leaves_symbols_of_configured_streams_alone():
    u = Universe(TEMPLATE, limit=5, exclude=frozenset({"BUSDT"}))
    u.update(info("AUSDT", "BUSDT"))
    assert [s.symbols for s in u.streams()] == [("AUSDT",)]


def test_delisting_notice_is_open_and_final_whatever_the_channel():
    (notice,) = gaps.on_delisting(["aggTrade.BUSDT"], lambda t: 1234, "delisted: BUSDT")
    assert notice == gaps.Announce("aggTrade.BUSDT", {"from_ms": 1234, "to_ms": None,
                                                      "reason": "delisted: BUSDT"}, True)


# -- the policy carries them out -----------------------------------------------------

def test_reconfigure_rotates_only_that_stream_make_before_break():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    out = policy.reconfigure(slot(0, "AUSDT", "CUSDT"), 10.0)
    (spawn,) = of(out, Spawn)
    assert spawn.stream == "all/0" and RECONFIGURED in spawn.reason
    assert not of(out, Terminate) and not of(out, StateChanged), "the old worker keeps serving"
    assert policy.on_ready(spawn.instance, 10.5) == []
    handed = policy.on_streaming(spawn.instance, 11.0)
    assert of(handed, Terminate) == [Terminate(inst["all/0"], ROTATED)]
    assert rows(policy)["all/0"]["instance"] == spawn.instance and rows(policy)["all/0"]["state"] == "RUNNING"
    assert rows(policy)["all/1"]["instance"] == inst["all/1"], "the other connection is not touched"
    assert policy.on_exit(inst["all/0"], 0, "", False, 11.5) == []
    assert policy.tick(12.0) == [], "no further rotation: the new worker has the new config"


def test_reconfigure_before_ready_rotates_once_running():
    policy = Policy([slot(0, "AUSDT")], RESTART, random.Random(0))
    (first,) = of(policy.start(0.0), Spawn)
    assert of(policy.reconfigure(slot(0, "AUSDT", "CUSDT"), 0.1), Spawn) == []
    (spawn,) = of(policy.on_ready(first.instance, 0.5), Spawn)
    assert spawn.stream == "all/0" and RECONFIGURED in spawn.reason


def test_reconfigure_of_a_stream_in_backoff_starts_with_the_new_config_without_a_rotation():
    policy, inst = started(slot(0, "AUSDT"))
    policy.on_exit(inst["all/0"], 75, "connection closed", False, 1.0)
    assert rows(policy)["all/0"]["state"] == "BACKOFF"
    assert policy.reconfigure(slot(0, "AUSDT", "CUSDT"), 1.1) == []
    (spawn,) = of(policy.tick(20.0), Spawn)
    policy.on_ready(spawn.instance, 20.5)
    assert of(policy.on_streaming(spawn.instance, 21.0), Spawn) == [], "spawned at the new version"


def test_add_stream_starts_it_and_nothing_else():
    policy, inst = started(slot(0, "AUSDT"))
    out = policy.add_stream(slot(1, "CUSDT"), 5.0)
    assert [(s.stream, s.reason) for s in of(out, Spawn)] == [("all/1", "start")]
    assert not of(out, Terminate)
    assert list(rows(policy)) == ["all/0", "all/1"] and rows(policy)["all/0"]["instance"] == inst["all/0"]
    with pytest.raises(ValueError):
        policy.add_stream(slot(1, "DUSDT"), 5.0)


def test_add_stream_before_start_waits_for_start():
    policy = Policy([slot(0, "AUSDT")], RESTART, random.Random(0))
    assert policy.add_stream(slot(1, "CUSDT"), 0.0) == []
    assert sorted(s.stream for s in of(policy.start(0.0), Spawn)) == ["all/0", "all/1"]


def test_remove_stream_stops_it_for_good():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    out = policy.remove_stream("all/1", "delisted", 5.0)
    assert of(out, Terminate) == [Terminate(inst["all/1"], "delisted")]
    assert [(c.old, c.new) for c in of(out, StateChanged)] == [(State.RUNNING, State.STOPPING)]
    with pytest.raises(UnknownStream):
        policy.request_restart("all/1", 5.5)
    out = policy.on_exit(inst["all/1"], 0, "", False, 6.0)
    assert [(c.old, c.new) for c in of(out, StateChanged)] == [(State.STOPPING, State.EXITED)]
    assert not of(out, Spawn) and list(rows(policy)) == ["all/0"]
    assert policy.tick(100.0) == [] and rows(policy)["all/0"]["instance"] == inst["all/0"]


def test_remove_stream_kills_a_worker_that_ignores_term():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    policy.remove_stream("all/1", "delisted", 5.0)
    assert of(policy.tick(8.5), Kill) == [Kill(inst["all/1"], "still alive 3s after TERM (delisted)")]
    policy.on_exit(inst["all/1"], -9, "", False, 8.6)
    assert list(rows(policy)) == ["all/0"]


def test_remove_stream_in_backoff_or_with_a_successor():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    policy.on_exit(inst["all/1"], 75, "closed", False, 1.0)
    out = policy.remove_stream("all/1", "delisted", 1.5)
    assert [(c.old, c.new) for c in of(out, StateChanged)] == [(State.BACKOFF, State.EXITED)]
    assert list(rows(policy)) == ["all/0"] and policy.tick(60.0) == []
    (succ,) = of(policy.reconfigure(slot(0, "AUSDT", "CUSDT"), 61.0), Spawn)
    out = policy.remove_stream("all/0", "delisted", 61.5)
    assert sorted(t.instance for t in of(out, Terminate)) == sorted([succ.instance, inst["all/0"]])
    policy.on_exit(succ.instance, 0, "", False, 62.0)
    assert list(rows(policy)) == ["all/0"], "gone only once every worker exited"
    policy.on_exit(inst["all/0"], 0, "", False, 62.1)
    assert rows(policy) == {}


def test_a_removed_slot_wanted_again_while_stopping_restarts_with_the_new_config():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    policy.remove_stream("all/1", "delisted", 5.0)
    assert policy.add_stream(slot(1, "CUSDT"), 5.5) == []
    policy.on_exit(inst["all/1"], 0, "", False, 6.0)
    assert rows(policy)["all/1"]["state"] == "BACKOFF"
    (spawn,) = of(policy.tick(30.0), Spawn)
    assert spawn.stream == "all/1"


def test_a_sink_treats_topics_added_while_running_as_never_seen():
    """A listing's topics are new to JetStream: their first publish expects
    an empty subject, as at a cold start (an A/B partner may store it first)."""
    from feedsup.ipc import frames
    from feedsup.sinks.config import NatsSink
    from feedsup.sinks.nats import NatsSinkThread

    sink = NatsSinkThread(NatsSink(servers=("nats://127.0.0.1:1",)), "a", ["aggTrade.AUSDT"])
    sink.add_topics(["aggTrade.NEWUSDT"])
    body = frames.encode_gap_body("aggTrade.NEWUSDT", "all/1", 0, None, None, "x")
    sink.core.offer([(b"aggTrade.NEWUSDT", 5, 0, True, frames.with_seq(body, 1, 1))])
    (entry,) = sink.core.take(0.0)
    assert entry.expect_empty and "aggTrade.NEWUSDT" in sink.topics


def test_remove_stream_in_backoff_while_a_rotated_out_worker_still_stops():
    policy, inst = started(slot(0, "AUSDT"), slot(1, "BUSDT"))
    (succ,) = of(policy.reconfigure(slot(1, "BUSDT", "CUSDT"), 1.0), Spawn)
    policy.on_ready(succ.instance, 1.5)
    policy.on_streaming(succ.instance, 2.0)           # inst["all/1"] retires, still running
    policy.on_exit(succ.instance, 75, "connection closed", False, 2.5)
    assert rows(policy)["all/1"]["state"] == "BACKOFF"
    out = policy.remove_stream("all/1", "delisted", 2.6)
    assert [(c.old, c.new) for c in of(out, StateChanged)] == [(State.BACKOFF, State.EXITED)]
    assert not of(policy.tick(30.0), Spawn), "never restarted"
    policy.on_exit(inst["all/1"], 0, "", False, 30.5)
    assert list(rows(policy)) == ["all/0"]
