"""The ``feedsup`` command: run, check, status, tail, restart, sim."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from feedsup.config import ConfigError, load_config
from feedsup.ipc.exits import EX_CONFIG

DEFAULT_CONFIG = "conf/feedsup.toml"


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"feedsup: config error: {exc}", err=True)
        sys.exit(EX_CONFIG)


@click.group()
@click.version_option(package_name="feedsup")
def main() -> None:
    """Multiprocess feed supervisor for Binance WebSocket streams."""


@main.command()
@click.option("-c", "--config", "path", default=DEFAULT_CONFIG, show_default=True, help="feedsup TOML file")
def run(path: str) -> None:
    """Start the parent and one worker per stream; serve until SIGTERM/SIGINT."""
    from feedsup import logs
    from feedsup.supervisor.parent import Parent

    config = _load(path)
    logs.setup(config.log_format)
    if config.universes:                 # symbols = "*": this shard's symbols, from exchangeInfo
        from feedsup.restlimit import BudgetUnavailable
        from feedsup.supervisor.refresh import start_fetch
        from feedsup.universe import resolve
        try:
            config = resolve(config, fetch=start_fetch(config.state_file))
        except ConfigError as exc:             # the expanded streams exceed the budget, say
            click.echo(f"feedsup: config error: {exc}", err=True)
            sys.exit(EX_CONFIG)
        except (OSError, ValueError, BudgetUnavailable) as exc:   # unreachable, unreadable, banned: retry later
            click.echo(f"feedsup: exchangeInfo for symbols = \"*\" failed: {exc}", err=True)
            sys.exit(69)
    sys.exit(Parent(config).run())


@main.command()
@click.option("-c", "--config", "path", default=DEFAULT_CONFIG, show_default=True, help="feedsup TOML file")
def check(path: str) -> None:
    """Validate a config file and the account credentials it names; exit 78 on any error."""
    from feedsup.credentials import load_credentials

    config = _load(path)
    for stream in config.streams:
        if stream.channel == "account":
            try:
                load_credentials(stream)   # presence and file permissions; values never shown
            except ConfigError as exc:
                click.echo(f"feedsup: config error: {exc}", err=True)
                sys.exit(EX_CONFIG)
    wild = f", {len(config.universes)} whole-market" if config.universes else ""
    if config.universes:                 # count their connections too, if the exchange answers
        from feedsup.restlimit import BudgetUnavailable
        from feedsup.supervisor.refresh import start_fetch
        from feedsup.universe import resolve
        try:
            # Charged to the REST weight budget that `run` and its workers share, so a ban holds.
            expanded = resolve(config, fetch=start_fetch(config.state_file))
        except ConfigError as exc:
            click.echo(f"feedsup: config error: {exc}", err=True)
            sys.exit(EX_CONFIG)
        except (OSError, ValueError, BudgetUnavailable) as exc:
            wild += f" not expanded: exchangeInfo failed: {exc}"
        else:
            wild += f": {len(expanded.streams)} connections"
    click.echo(f"{path}: ok ({len(config.streams)} streams{wild})")


def _control_option(fn):
    fn = click.option("-c", "--config", "path", default=None,
                      help="read the control endpoint from this config")(fn)
    return click.option("--control", default=None, help="control endpoint (overrides the config)")(fn)


def _control_endpoint(control: str | None, path: str | None) -> str:
    if control:
        return control
    return _load(path or DEFAULT_CONFIG).control


def _ask(endpoint: str, cmd: str, **args: Any) -> dict[str, Any]:
    from feedsup.ipc.client import ControlError, request

    try:
        return request(endpoint, cmd, **args)
    except ControlError as exc:
        click.echo(f"feedsup: {exc}", err=True)
        sys.exit(1)


@main.command()
@_control_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="refresh every --interval seconds")
@click.option("--interval", default=1.0, show_default=True)
def status(control: str | None, path: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Per-stream state, pid, uptime, restarts, rates, lag and drops."""
    endpoint = _control_endpoint(control, path)
    while True:
        reply = _ask(endpoint, "status")
        if as_json:
            click.echo(json.dumps(reply, default=str))
        else:
            if watch:
                click.clear()
            click.echo(format_status(reply))
        if not watch:
            return
        time.sleep(interval)  # a display refresh period, not synchronisation


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


STATUS_COLUMNS = ("STREAM", "STATE", "PID", "UPTIME", "RESTARTS", "MSG/S", "LAST MSG", "LAG MS", "DROPS",
                  "LAST REASON")


def format_status(reply: dict[str, Any]) -> str:
    rows = [STATUS_COLUMNS]
    for s in reply.get("streams", []):
        rows.append((
            s.get("name", "?"), s.get("state", "?"), _fmt(s.get("pid")), _fmt(s.get("uptime"), ".0f"),
            _fmt(s.get("restarts")), _fmt(s.get("msgs_per_s"), ".1f"), _fmt(s.get("last_msg_age"), ".1f"),
            _fmt(s.get("lag_ms")), _fmt(s.get("drops")), s.get("last_reason") or "-",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(STATUS_COLUMNS) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]) for r in rows]
    for s in reply.get("streams", []):
        progress = (s.get("stats") or {}).get("backfill")
        if isinstance(progress, dict):
            lines.append(f"  backfill {s.get('name', '?')}: {format_backfill(progress)}")
    lines.append(f"pid {reply.get('pid')}  up {reply.get('uptime', 0):.0f}s  published {reply.get('published')}"
                 f"  duplicates suppressed {reply.get('suppressed')}")
    if isinstance(reply.get("sink"), dict):
        lines.append(format_sink(reply["sink"]))
    relay = reply.get("relay")
    if isinstance(relay, dict) and relay.get("state") != "RUNNING":
        lines.append(f"relay (tcp endpoints) {relay.get('state')}: {relay.get('last_exit')}"
                     f" (restarted {relay.get('restarts')} times)")
    if reply.get("tcp_refusing"):
        lines.append(f"tcp endpoints closed to new connections: {reply['tcp_refusing']}"
                     f" (closed {reply.get('tcp_closures')} times, {reply.get('tcp_refused')} attempts refused)")
    return "\n".join(lines)


def format_sink(sink: dict[str, Any]) -> str:
    """The ``[sink.nats]`` line: where it is connected, what JetStream
    acknowledged, what waits and what was dropped, the last error."""
    where = (f"connected {sink['connected']}" if sink.get("connected")
             else f"not connected ({', '.join(sink.get('servers') or ())})")
    return (f"sink nats {sink.get('stream', '?')}: {where}  acked {_fmt(sink.get('acked'))}"
            f"  pending {_fmt(sink.get('pending'))}  dropped {_fmt(sink.get('dropped'))}"
            f"  last error: {sink.get('last_error') or '-'}")


def format_backfill(p: dict[str, Any]) -> str:
    """One running REST backfill: topic, rows so far, what is left, time left."""
    text = f"{p.get('topic', '?')}, {p.get('rows', 0)} rows fetched, "
    remaining = p.get("remaining")
    if remaining is None:
        text += "end not known yet"
    elif p.get("unit") == "ms":
        text += f"{remaining / 60_000:.1f} min of klines left"
    else:
        text += f"{remaining} ids left"
    left = p.get("topics_left") or 0
    if left:
        text += f" (+{left} topic{'s' if left > 1 else ''})"
    if p.get("eta_s") is not None:
        text += f", about {p['eta_s']:.0f} s"
    return text


@main.command()
@click.argument("topics", nargs=-1)
@click.option("-c", "--config", "path", default=None, help="read the PUB endpoint from this config")
@click.option("--pub", default=None, help="PUB endpoint (overrides the config)")
@click.option("-n", "--count", default=0, help="stop after this many frames (0: run until Ctrl-C)")
@click.option("--nats", "nats", is_flag=True, help="read from JetStream ([sink.nats] of the config) instead of PUB")
@click.option("--nats-servers", default=None, help="NATS URLs, comma-separated (implies --nats)")
@click.option("--durable", default=None, help="JetStream durable consumer name: resume after its last ack")
@click.option("--since", default="all", help='JetStream start: "all", "new" or seconds ago (new consumers)')
def tail(topics: tuple[str, ...], path: str | None, pub: str | None, count: int, nats: bool,
         nats_servers: str | None, durable: str | None, since: str) -> None:
    """Print live frames; TOPICS are prefixes such as kline.BTCUSDT (default: all)."""
    from feedsup.ipc.client import Subscriber

    if nats or nats_servers:
        return _tail_nats(topics, path, nats_servers, durable, since, count)
    endpoint = pub or _load(path or DEFAULT_CONFIG).pub
    seen = 0
    with Subscriber(endpoint, topics or ("",)) as sub:
        try:
            for frame in sub:
                click.echo(format_frame(frame))
                seen += 1
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
        if sub.gaps:
            click.echo(f"# {len(sub.gaps)} seq gaps, {sub.tracker.missed} frames missed", err=True)


def _tail_nats(topics: tuple[str, ...], path: str | None, servers: str | None, durable: str | None,
               since: str, count: int) -> None:
    import time

    from feedsup.ipc.jetstream import JetStreamConsumer
    from feedsup.sinks.config import NatsSink

    sink = _load(path or DEFAULT_CONFIG).sink if servers is None or path else None
    if servers is None and sink is None:
        raise click.UsageError("no [sink.nats] in the config: give --nats-servers")
    sink = sink or NatsSink(servers=())
    start = since if since in ("all", "new") else time.time() - float(since)
    with JetStreamConsumer(servers.split(",") if servers else list(sink.servers), topics or ("",),
                           durable=durable, stream=sink.stream, subject_prefix=sink.subject_prefix,
                           start=start) as consumer:
        try:
            for seen, frame in enumerate(consumer, 1):
                flags = " redelivered" if frame.get("redelivered") else ""
                click.echo(f"{format_frame(frame)} js={frame['js_seq']} source={frame.get('source')}{flags}")
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass


def format_frame(frame: dict[str, Any]) -> str:
    data = frame.get("data")
    body = " ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else str(data)
    flags = " backfill" if frame.get("backfill") else ""
    return f"{frame.get('topic')} #{frame.get('seq')}{flags} {body}"


@main.command()
@click.argument("stream")
@_control_option
def restart(stream: str, control: str | None, path: str | None) -> None:
    """Ask the parent to restart STREAM."""
    _ask(_control_endpoint(control, path), "restart", stream=stream)
    click.echo(f"restart requested: {stream}")


def _add_sim() -> None:
    from feedsup.sim.cli import sim

    main.add_command(sim, "sim")


_add_sim()

if __name__ == "__main__":
    main()
