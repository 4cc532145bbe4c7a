"""The whole market: symbol filters, shards, connection split, live listings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from feedsup.config import Stream
from feedsup.universe import (
    Shard, assign, expand, fetch_exchange_info, in_shard, parse_shard, per_connection, select, shard_of,
)


def info(*entries: tuple[str, str, str]) -> dict:
    return {"symbols": [{"symbol": s, "quoteAsset": q, "status": st_} for s, q, st_ in entries]}


def test_parse_shard():
    assert parse_shard("2/3") == Shard(2, 3)
    for bad in ("0/3", "4/3", "a/b", "3", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_select_filters_status_quote_and_contract_type():
    body = info(("BTCUSDT", "USDT", "TRADING"), ("ETHBTC", "BTC", "TRADING"), ("OLDUSDT", "USDT", "BREAK"))
    body["symbols"].append({"symbol": "BTCUSDT_250627", "quoteAsset": "USDT", "status": "TRADING",
                            "contractType": "CURRENT_QUARTER"})
    assert select(body) == ["BTCUSDT", "ETHBTC"]
    assert select(body, quote_assets=["USDT"]) == ["BTCUSDT"]
    assert select(body, quote_assets=["USDT"], contract_types=()) == ["BTCUSDT", "BTCUSDT_250627"]


def test_shards_are_stable_and_partition():
    symbols = [f"S{i}USDT" for i in range(2000)]
    shards = [[s for s in symbols if in_shard(s, Shard(k, 3))] for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(symbols)            # no overlap, nothing left out
    assert all(550 < len(s) < 780 for s in shards)                # about a third each
    assert shard_of("BTCUSDT", 3) == shard_of("btcusdt", 3) == 1   # fixed forever: CRC-32, not hash()


def test_per_connection_honours_caps_and_intervals():
    assert per_connection("spot", "aggTrade") == 1024
    assert per_connection("usdm", "aggTrade") == 200
    assert per_connection("spot", "kline", intervals=3) == 341
    assert per_connection("spot", "trade", target=300) == 300
    assert per_connection("spot", "trade", target=5000) == 1024


def test_listing_and_delisting_touch_one_connection():
    universe = [f"S{i:03d}USDT" for i in range(250)]
    slots, changed = assign([], universe, 100)
    assert [len(s) for s in slots] == [100, 100, 50] and changed == {0, 1, 2}
    # S100USDT (in slot 1) is delisted, NEWUSDT listed: slot 1 loses one, the listing fills slot 1's room
    slots2, changed = assign(slots, [s for s in universe if s != "S100USDT"] + ["NEWUSDT"], 100)
    assert changed == {1}
    assert slots2[0] == slots[0] and slots2[2] == slots[2]
    assert "NEWUSDT" in slots2[1] and "S100USDT" not in slots2[1]
    # the last connection's symbols all delisted: it goes away, the others stay
    slots3, changed = assign(slots2, [s for s in universe if s < "S200USDT" and s != "S100USDT"] + ["NEWUSDT"], 100)
    assert len(slots3) == 2 and changed == {2}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sets(st.integers(0, 400), max_size=300), min_size=1, max_size=5), st.integers(1, 120))
def test_assign_keeps_every_symbol_once_within_the_limit(universes, limit):
    slots: list = []
    for u in universes:
        names = [f"S{i}" for i in u]
        before = slots
        slots, changed = assign(slots, names, limit)
        flat = [s for slot in slots for s in slot]
        assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
        assert all(len(slot) <= limit for slot in slots)
        for i, slot in enumerate(slots):
            if i not in changed and i < len(before):
                assert slot == before[i]


def test_whole_market_from_the_simulator(start_sim):
    """300 symbols from the simulator's exchangeInfo: 3 shards, 2-3 connections each."""
    symbols = tuple(f"C{i:03d}USDT" for i in range(300)) + ("ETHBTC",)
    sim = start_sim(symbols=symbols, trade_rate=0.1, book_rate=0.1)
    body = fetch_exchange_info(sim.base_url, "spot")
    template = Stream(name="all", market="spot", channel="aggTrade")
    per_host = []
    for k in (1, 2, 3):
        mine = select(body, quote_assets=["USDT"], shard=Shard(k, 3))
        slots, _ = assign([], mine, per_connection("spot", "aggTrade", target=40))
        streams = expand(template, slots)
        assert [s.name for s in streams] == [f"all/{i}" for i in range(len(slots))]
        assert all(len(s.symbols) <= 40 for s in streams)
        per_host.append([sym for s in streams for sym in s.symbols])
    flat = sum(per_host, [])
    assert sorted(flat) == sorted(symbols[:300])                 # the whole USDT market, once


def test_universe_reports_only_changed_connections():
    from feedsup.universe import Change, Universe

    u = Universe(Stream(name="all", market="spot", channel="trade"), limit=2, quote_assets=("USDT",))
    day1 = info(("AUSDT", "USDT", "TRADING"), ("BUSDT", "USDT", "TRADING"), ("CUSDT", "USDT", "TRADING"))
    assert u.update(day1) == [Change("all/0", (), ("AUSDT", "BUSDT")), Change("all/1", (), ("CUSDT",))]
    assert [s.name for s in u.streams()] == ["all/0", "all/1"]
    day2 = info(("AUSDT", "USDT", "TRADING"), ("BUSDT", "USDT", "BREAK"), ("CUSDT", "USDT", "TRADING"),
                ("DUSDT", "USDT", "TRADING"))
    # BUSDT halted/delisted and DUSDT listed: all/0 swaps one symbol, all/1 untouched
    assert u.update(day2) == [Change("all/0", ("AUSDT", "BUSDT"), ("AUSDT", "DUSDT"))]
    assert u.update({"symbols": []}) == []          # a bad answer never empties the market
    assert u.update(info(("AUSDT", "USDT", "TRADING"), ("DUSDT", "USDT", "TRADING"))) == [
        Change("all/1", ("CUSDT",), ())]


def test_config_wildcard_stream_and_shard(tmp_path):
    from feedsup.config import ConfigError, load_config
    from feedsup.universe import Wildcard

    path = tmp_path / "f.toml"
    path.write_text('[feedsup]\nshard = "2/3"\n[[stream]]\nname = "all"\nmarket = "spot"\nchannel = "kline"\n'
                    'symbols = "*"\nintervals = ["1m"]\nquote_assets = ["usdt"]\nstreams_per_connection = 300\n')
    config = load_config(str(path))
    assert config.streams == () and config.shard == "2/3"
    (w,) = config.universes
    assert w == Wildcard(w.template, ("USDT",), 300) and w.template.intervals == ("1m",)
    for text, key in [('shard = "4/3"', "feedsup.shard"), ("streams_per_connection = 2000", 'stream "all".'
                                                                                            "streams_per_connection")]:
        bad = path.read_text().replace('shard = "2/3"', text) if "shard" in text else \
            path.read_text().replace("streams_per_connection = 300", text)
        path.write_text(bad)
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert caught.value.key == key
        path.write_text(bad.replace(text, 'shard = "2/3"' if "shard" in text else "streams_per_connection = 300"))


def test_resolve_expands_for_this_shard_and_leaves_configured_symbols_alone(tmp_path):
    from dataclasses import replace as dc_replace

    from feedsup.config import Config
    from feedsup.universe import Wildcard, resolve

    body = info(*[(f"S{i:02d}USDT", "USDT", "TRADING") for i in range(30)], ("XBTC", "BTC", "TRADING"))
    plain = Stream(name="btc", market="spot", channel="trade", symbols=("S00USDT",))
    config = Config(path="", streams=(plain,), shard="1/2", universes=(
        Wildcard(Stream(name="all", market="spot", channel="trade"), ("USDT",), 5),))
    out = resolve(config, fetch=lambda url, market: body)
    expanded = [s for s in out.streams if s.name.startswith("all/")]
    mine = [sym for s in expanded for sym in s.symbols]
    assert "S00USDT" not in mine and all(in_shard(s, Shard(1, 2)) for s in mine)
    assert all(len(s.symbols) <= 5 for s in expanded) and out.streams[0] == plain
    other = resolve(dc_replace(config, shard="2/2"), fetch=lambda url, market: body)
    theirs = [sym for s in other.streams[1:] for sym in s.symbols]
    assert sorted(mine + theirs + ["S00USDT"]) == [f"S{i:02d}USDT" for i in range(30)]


def test_run_exits_69_when_exchange_info_is_unreachable(tmp_path):
    import subprocess
    import sys

    from feedsup.sinks.cluster import free_ports

    port = free_ports(1)[0]                           # nothing listens there
    path = tmp_path / "f.toml"
    path.write_text(f'[feedsup]\npub = "ipc://{tmp_path}/pub"\ncontrol = "ipc://{tmp_path}/ctl"\n'
                    f'[binance.spot]\nrest_url = "http://127.0.0.1:{port}"\nws_url = "ws://127.0.0.1:{port}"\n'
                    '[[stream]]\nname = "all"\nmarket = "spot"\nchannel = "trade"\nsymbols = "*"\n')
    check = subprocess.run([sys.executable, "-m", "feedsup.cli", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "1 whole-market" in check.stdout
    run = subprocess.run([sys.executable, "-m", "feedsup.cli", "run", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 69 and "exchangeInfo" in run.stderr


# -- config checks count the expanded streams -----------------------------------------

PLAIN = '[[stream]]\nname = "p"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["BTCUSDT"]\n'


def wild(name: str, channel: str, quotes: str = "") -> str:
    """A symbols = "*" stream; no ``quotes``: any quote asset."""
    text = f'[[stream]]\nname = "{name}"\nmarket = "spot"\nchannel = "{channel}"\nsymbols = "*"\n'
    return text + (f"quote_assets = {quotes}\n" if quotes else "")


def load_text(tmp_path, text):
    from feedsup.config import load_config

    path = tmp_path / "f.toml"
    path.write_text(text)
    return load_config(str(path))


def config_error(tmp_path, text):
    from feedsup.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value


def test_two_whole_market_streams_on_the_same_topics_are_refused(tmp_path):
    a = wild("a", "aggTrade", '["USDT"]')
    err = config_error(tmp_path, a + wild("b", "aggTrade"))
    assert err.key == 'stream "b".topic_prefix' and 'stream "a"' in err.reason
    # other quote assets, another channel or a topic_prefix: no shared topic
    load_text(tmp_path, a + wild("b", "aggTrade", '["BTC"]'))
    load_text(tmp_path, a + wild("b", "trade"))
    load_text(tmp_path, a + wild("b", "aggTrade") + 'topic_prefix = "x."\n')


def test_a_whole_market_stream_counts_toward_the_connection_budget_at_load(tmp_path):
    text = "[restart]\nconnect_budget = 1\nbudget_window = 300\n" + PLAIN + wild("a", "trade")
    err = config_error(tmp_path, text)
    assert err.key == "restart.connect_budget" and "2 connections" in err.reason


def test_resolve_counts_the_expanded_connections_against_the_budget(tmp_path):
    from dataclasses import replace as dc_replace

    from feedsup.config import ConfigError
    from feedsup.universe import resolve

    config = load_text(tmp_path, "[restart]\nconnect_budget = 3\nbudget_window = 300\n"
                       + wild("all", "trade", '["USDT"]') + "streams_per_connection = 10\n")
    body = info(*[(f"S{i:02d}USDT", "USDT", "TRADING") for i in range(30)])
    assert [s.name for s in resolve(config, fetch=lambda url, market: body).streams] == ["all/0", "all/1", "all/2"]
    more = info(*[(f"S{i:02d}USDT", "USDT", "TRADING") for i in range(31)])
    with pytest.raises(ConfigError) as caught:
        resolve(config, fetch=lambda url, market: more)
    assert caught.value.key == "restart.connect_budget" and "4 connections" in caught.value.reason
    assert 'symbols = "*"' in caught.value.reason
    assert resolve(dc_replace(config, restart=dc_replace(config.restart, connect_budget=4)),
                   fetch=lambda url, market: more).streams[-1].name == "all/3"


def test_check_resolves_whole_market_streams_when_the_exchange_answers(start_sim, tmp_path):
    import subprocess
    import sys

    sim = start_sim(symbols=tuple(f"S{i:02d}USDT" for i in range(30)))
    text = (f'[binance.spot]\nrest_url = "{sim.base_url}"\nws_url = "{sim.ws_url}"\n'
            "[restart]\nconnect_budget = 2\nbudget_window = 300\n"
            + wild("all", "trade", '["USDT"]') + "streams_per_connection = 10\n")
    path = tmp_path / "f.toml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "check", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 78 and "restart.connect_budget" in out.stderr and "3 connections" in out.stderr
    path.write_text(text.replace("connect_budget = 2", "connect_budget = 3"))
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "check", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "3 connections" in out.stdout, out.stdout + out.stderr


def test_check_honours_a_ban_in_the_shared_rest_budget(start_sim, tmp_path):
    """``feedsup check`` fetches exchangeInfo through the same REST weight
    budget as ``feedsup run``: a 418 ban recorded there (by a parent) holds,
    and nothing is sent to the exchange."""
    import subprocess
    import sys
    import urllib.request

    from feedsup.restlimit import SharedBudget

    sim = start_sim(symbols=tuple(f"S{i:02d}USDT" for i in range(30)))
    text = (f'[feedsup]\nstate_file = "state.json"\n'
            f'[binance.spot]\nrest_url = "{sim.base_url}"\nws_url = "{sim.ws_url}"\n'
            + wild("all", "trade", '["USDT"]') + "streams_per_connection = 10\n")
    path = tmp_path / "f.toml"
    path.write_text(text)
    SharedBudget.for_market(str(tmp_path), "spot", rest_url=sim.base_url).observe(418, {"Retry-After": "600"})
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "check", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "not expanded" in out.stdout and "418" in out.stdout, out.stdout + out.stderr
    with urllib.request.urlopen(f"{sim.base_url}/api/v3/ping", timeout=10) as reply:
        assert reply.headers["X-MBX-USED-WEIGHT-1M"] == "1", "check sent nothing to the banned exchange"
