import pytest

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
