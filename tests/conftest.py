import os

import pytest
from hypothesis import settings

from feedsup.sim import SimOptions, SimServer
from harness import Collector, Feedsup, write_config

# Hypothesis: in CI (the CI variable set, as .ci/run does) the same examples
# every run, so a red build is the code's doing and replays as is; elsewhere
# (the long run, a developer's machine) new random examples each time. No
# per-example deadline in either: a loaded 2-core machine misses 200 ms.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("random", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "random"))

# (test, what, seconds) shown in the terminal summary: the issue asks to see
# how long each recovery took, not only that it happened.
TIMINGS: list[tuple[str, str, float]] = []


@pytest.fixture
def timing(request):
    def record(what: str, seconds: float) -> None:
        TIMINGS.append((request.node.name, what, seconds))
    return record


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("measured times")
    for test, what, seconds in TIMINGS:
        terminalreporter.write_line(f"{seconds:8.3f} s  {what}  ({test})")


@pytest.fixture
def start_sim():
    """Start a simulator with these SimOptions; each one started here is
    stopped at teardown, even when the test fails."""
    started: list[SimServer] = []

    def start(**options) -> SimServer:
        server = SimServer(SimOptions(**options))
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture's teardown
    knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


# How much of a failed test's feedsup log is printed: the lines that say why
# a stream did not deliver, when CI shows only a failure's output.
FAILED_LOG_LINES = 80


def print_log_tail(fs) -> None:
    lines = fs.log_path.read_text(errors="replace").splitlines()[-FAILED_LOG_LINES:]
    print(f"--- last {len(lines)} lines of {fs.log_path} ---")
    print("\n".join(lines))


@pytest.fixture
def start_feedsup(tmp_path, request):
    """Run ``feedsup run`` against a simulator with a subscriber attached
    (``collect(fs)`` makes it; default: everything on fs.pub). Both are
    stopped at teardown, newest first, even when the test fails; a failed
    test prints the end of each feedsup log."""
    started: list = []

    def start(sim, streams, collect=None, **config):
        fs = Feedsup(write_config(tmp_path, sim, list(streams), **config), tmp_path)
        started.append(fs)
        col = collect(fs) if collect is not None else Collector(fs.pub)
        started.append(col)
        return fs, col

    try:
        yield start
    finally:
        for thing in reversed(started):
            thing.close()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for thing in started:
                if isinstance(thing, Feedsup):
                    print_log_tail(thing)
    # Every frame an e2e test received matches the wire contract's schema
    # (docs/schema/frame.schema.json): the schema cannot drift from the code.
    from wire_schema import invalid_frames
    for thing in started:
        bad = invalid_frames(list(getattr(thing, "frames", [])))
        assert not bad, "frames outside docs/schema/frame.schema.json:\n" + "\n".join(
            f"{f['topic']}: {e[:3]}" for f, e in bad)


# Property tests: a fixed seed in CI (reproducible runs), random locally.
from hypothesis import settings as _hypothesis_settings  # noqa: E402
import os as _os  # noqa: E402

# The fuzz tests of each boundary (config loader, uplink, control socket,
# normalisers) take their example count from the profile: 300 here, and
# 5,000 with random seeds in the long run (python bench/fuzz.py, profile "long").
_hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, max_examples=300)
_hypothesis_settings.register_profile("dev", deadline=None, max_examples=300)
_hypothesis_settings.register_profile("long", deadline=None, max_examples=5_000)
_hypothesis_settings.load_profile("ci" if _os.environ.get("CI") else "dev")
