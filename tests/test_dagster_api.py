"""The parts of ``pipeline.automation.dagster_api`` that need no running webserver: the URL
handed to dagster-graphql's client, and waits that follow progress instead of a fixed clock
(the daemon e2e test drives the rest against a real webserver and daemon)."""

from __future__ import annotations

import pytest

from pipeline.automation import dagster_api


@pytest.mark.parametrize(
    ("url", "graphql_url"),
    [
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000/graphql"),
        ("http://127.0.0.1:3000/", "http://127.0.0.1:3000/graphql"),
        ("https://dagster.example.com/billing/", "https://dagster.example.com/billing/graphql"),
        ("localhost:3000", "http://localhost:3000/graphql"),
    ],
)
def test_connect_points_the_library_client_at_the_webserver(url: str, graphql_url: str) -> None:
    assert dagster_api.connect(url)._url == graphql_url


def test_connect_refuses_what_is_not_a_url() -> None:
    with pytest.raises(dagster_api.DagsterGraphQLError, match="not a webserver URL"):
        dagster_api.connect("http://")


class FakeClock:
    """time.monotonic / time.sleep for dagster_api: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(dagster_api, "time", fake)
    return fake


class Counter:
    """A state that advances by one on every read."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.reads


def test_a_wait_goes_on_as_long_as_there_is_progress(clock: FakeClock) -> None:
    """Every read advances: 100 s of waiting with a 5 s stall limit, and no failure."""
    done = dagster_api.wait_on_progress(
        Counter(), lambda n: n >= 50, lambda n: n, str, stall_timeout=5, timeout=600, poll_interval=2
    )
    assert done == 50
    assert clock.now == 98


def test_a_wait_without_progress_fails_with_the_last_state(clock: FakeClock) -> None:
    with pytest.raises(dagster_api.DagsterWaitTimeout, match="no progress for 6s") as stalled:
        dagster_api.wait_on_progress(
            lambda: "QUEUED", lambda s: s == "SUCCESS", lambda s: s, lambda s: f"run is {s}",
            stall_timeout=5, timeout=600, poll_interval=2,
        )
    assert stalled.value.last == "QUEUED"
    assert "run is QUEUED" in str(stalled.value)


def test_progress_resets_the_stall_limit(clock: FakeClock) -> None:
    """QUEUED for 4 s, STARTED for 4 s, then SUCCESS: each state under the 5 s limit."""
    states = iter(["QUEUED"] * 3 + ["STARTED"] * 3 + ["SUCCESS"])
    assert dagster_api.wait_on_progress(
        lambda: next(states), lambda s: s == "SUCCESS", lambda s: s, str, stall_timeout=5, timeout=600, poll_interval=2
    ) == "SUCCESS"


def test_a_wait_that_progresses_forever_stops_at_its_cap(clock: FakeClock) -> None:
    with pytest.raises(dagster_api.DagsterWaitTimeout, match="not done after 60s"):
        dagster_api.wait_on_progress(
            Counter(), lambda n: False, lambda n: n, str, stall_timeout=5, timeout=60, poll_interval=2
        )


def test_backfill_progress_changes_when_a_run_finishes_a_step() -> None:
    def status(steps: int, run_status: str = "STARTED") -> dagster_api.BackfillStatus:
        run = dagster_api.RunSummary(
            runId="r1", status=run_status, jobName="monthly_billing", tags={}, startTime=1.0,
            endTime=None, stepsSucceeded=steps,
        )
        return dagster_api.BackfillStatus(
            id="b1", status="REQUESTED", error=None, runs=[run], partitions={"2026-09-01": run_status}, assets={}
        )

    progress = dagster_api.backfill_progress
    assert progress(status(1)) == progress(status(1))
    assert progress(status(1)) != progress(status(2))
    assert progress(status(2)) != progress(status(2, "SUCCESS"))


@pytest.mark.parametrize(
    ("backfill", "partitions", "succeeded"),
    [
        ("COMPLETED_SUCCESS", {"2026-09-01": "SUCCESS", "2026-10-01": "SUCCESS"}, True),
        # a superseded month is recorded, not materialized: Dagster calls the backfill failed
        ("COMPLETED_FAILED", {"2026-09-01": "SUCCESS", "2026-10-01": "SUCCESS"}, True),
        ("COMPLETED_FAILED", {"2026-09-01": "FAILURE", "2026-10-01": "SUCCESS"}, False),
        ("COMPLETED_SUCCESS", {"2026-09-01": None, "2026-10-01": "SUCCESS"}, False),
        ("CANCELED", {"2026-09-01": "SUCCESS"}, False),
        ("FAILED", {}, False),
    ],
)
def test_a_backfill_succeeded_when_every_months_run_did(backfill, partitions, succeeded):
    status = {"status": backfill, "partitions": partitions, "runs": [], "assets": {}, "error": None, "id": "b"}
    assert dagster_api.backfill_succeeded(status) is succeeded
