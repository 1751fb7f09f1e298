"""Asset backfills, runs and sensors on a Dagster webserver, over dagster-graphql's own client.

``DagsterGraphQLClient`` (dagster-graphql) submits jobs, reads one run's status and reloads code
locations; it has no call for asset backfills, for runs by tag or for sensors. This module adds
those few queries, sent through the client's own transport:

    client = connect("http://127.0.0.1:3000")
    backfill_id = launch_asset_backfill(client, ["2026-09-01"], job_name="monthly_billing")
    status = wait_for_backfill(client, backfill_id, stall_timeout=600, timeout=6 * 3600)

Every failure raises :class:`DagsterGraphQLError` with the webserver's own message; ``typename``
names the GraphQL error type when the error came as a member of a result union (``PythonError``,
``PartitionKeysNotFoundError``, ``SensorNotFoundError``...). Waits follow progress: they fail
when nothing advanced for ``stall_timeout`` seconds, or after ``timeout`` in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit

import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport.exceptions import TransportConnectionFailed, TransportQueryError

DEFAULT_LOCATION_NAME = "gradient_billing_sync"
DEFAULT_REPOSITORY_NAME = "__repository__"

#: Run statuses after which a run changes no more.
FINISHED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
#: Backfill statuses after which a backfill launches no more runs.
FINISHED_BACKFILL_STATUSES = frozenset({"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"})
#: Of those, the ones that mean every targeted partition was materialized.
SUCCESSFUL_BACKFILL_STATUSES = frozenset({"COMPLETED", "COMPLETED_SUCCESS"})

T = TypeVar("T")


class DagsterGraphQLError(DagsterGraphQLClientError):
    """The webserver could not be reached, or answered with an error (``typename``: its type)."""

    def __init__(self, message: str, *, typename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.typename = typename

    def __str__(self) -> str:
        return self.message


class DagsterWaitTimeout(DagsterGraphQLError, TimeoutError):
    """A wait saw no progress for too long, or ran out; ``last`` is the last state seen."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class RunSummary(TypedDict):
    runId: str
    status: str
    jobName: str
    tags: dict[str, str]
    startTime: float | None
    endTime: float | None
    stepsSucceeded: int


class BackfillStatus(TypedDict):
    id: str
    status: str
    error: str | None
    #: every run the backfill launched, newest first
    runs: list[RunSummary]
    #: partition key -> status of the newest run of that partition (None: no run yet)
    partitions: dict[str, str | None]
    #: asset key -> targeted / in_progress / materialized / failed partition counts
    assets: dict[str, dict[str, int]]


class SensorTick(TypedDict):
    status: str
    timestamp: float
    runIds: list[str]
    error: str | None


class SensorStatus(TypedDict):
    id: str
    status: str
    ticks: list[SensorTick]


_ERROR = "__typename ... on Error { message } ... on PythonError { className errorChain { error { message } } }"
_RUN = "runId status jobName tags { key value } startTime endTime stats { ... on RunStatsSnapshot { stepsSucceeded } }"

_ASSET_NODES = """
query AssetNodes($pipeline: PipelineSelector) {
  assetNodes(pipeline: $pipeline) { assetKey { path } isPartitioned isMaterializable }
}"""

_LAUNCH_BACKFILL = f"""
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {{
  launchPartitionBackfill(backfillParams: $backfillParams) {{
    ... on LaunchBackfillSuccess {{ backfillId }}
    ... on RunConfigValidationInvalid {{ errors {{ message }} }}
    {_ERROR}
  }}
}}"""

_BACKFILL = f"""
query Backfill($backfillId: String!) {{
  partitionBackfillOrError(backfillId: $backfillId) {{
    ... on PartitionBackfill {{
      id status partitionNames error {{ className message }}
      runs {{ {_RUN} }}
      assetBackfillData {{ assetBackfillStatuses {{
        ... on AssetPartitionsStatusCounts {{
          assetKey {{ path }} numPartitionsTargeted numPartitionsInProgress
          numPartitionsMaterialized numPartitionsFailed
        }}
      }} }}
    }}
    {_ERROR}
  }}
}}"""

_RUNS = f"""
query Runs($filter: RunsFilter, $limit: Int) {{
  runsOrError(filter: $filter, limit: $limit) {{ ... on Runs {{ results {{ {_RUN} }} }} {_ERROR} }}
}}"""

_SENSOR = """
  ... on Sensor { id sensorState { status ticks(limit: $tickLimit) { status timestamp runIds error { message } } } }
"""

_SENSOR_QUERY = f"""
query Sensor($sensorSelector: SensorSelector!, $tickLimit: Int) {{
  sensorOrError(sensorSelector: $sensorSelector) {{ {_SENSOR} {_ERROR} }}
}}"""

_START_SENSOR = f"""
mutation StartSensor($sensorSelector: SensorSelector!, $tickLimit: Int) {{
  startSensor(sensorSelector: $sensorSelector) {{ {_SENSOR} {_ERROR} }}
}}"""

_STOP_SENSOR = f"""
mutation StopSensor($id: String) {{
  stopSensor(id: $id) {{ ... on StopSensorMutationResult {{ instigationState {{ status }} }} {_ERROR} }}
}}"""


def connect(url: str, timeout: int = 60) -> DagsterGraphQLClient:
    """The library's client for the webserver at ``url`` (``http(s)://host[:port][/prefix]``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        raise DagsterGraphQLError(f"{url!r} is not a webserver URL; e.g. http://127.0.0.1:3000")
    return DagsterGraphQLClient(
        parts.hostname,
        port_number=parts.port,
        use_https=parts.scheme == "https",
        timeout=timeout,
        path_prefix=parts.path.rstrip("/"),
    )


def execute(client: DagsterGraphQLClient, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one GraphQL operation through the client's transport; returns its ``data``."""
    try:
        return client._execute(query, dict(variables or {}))
    except DagsterGraphQLClientError as exc:
        cause = exc.__cause__
        if isinstance(cause, TransportQueryError):
            messages = "; ".join(str(e.get("message", e)) for e in cause.errors or ()) or str(cause)
            raise DagsterGraphQLError(f"GraphQL error: {messages}") from exc
        if isinstance(cause, (requests.RequestException, TransportConnectionFailed)):
            raise DagsterGraphQLError(
                f"the Dagster webserver at {client._url} is unreachable ({type(cause).__name__}); "
                "check that dagster-webserver is running and the URL is right"
            ) from exc
        raise DagsterGraphQLError(f"the Dagster webserver at {client._url} failed: {cause or exc}") from exc


def _error_text(result: Mapping[str, Any]) -> str:
    typename = result.get("__typename", "error")
    message = (result.get("message") or "").strip()
    if typename == "PythonError":
        chain = [link["error"]["message"].strip() for link in result.get("errorChain") or ()]
        return "; caused by ".join([f"{result.get('className') or 'Error'}: {message}", *chain])
    if typename == "RunConfigValidationInvalid":
        return "invalid run config: " + "; ".join(e["message"] for e in result.get("errors") or ())
    return message or typename


def _member(result: Mapping[str, Any] | None, typename: str, what: str) -> Mapping[str, Any]:
    """The ``typename`` member of a result union, or a DagsterGraphQLError naming the error member."""
    if result is None:
        raise DagsterGraphQLError(f"{what}: empty result")
    got = result.get("__typename")
    if got == typename:
        return result
    raise DagsterGraphQLError(f"{what}: {_error_text(result)}", typename=got)


def _tags(pairs: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {p["key"]: p["value"] for p in pairs or ()}


def _tag_input(tags: Mapping[str, str] | None) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in (tags or {}).items()]


def _run(raw: Mapping[str, Any]) -> RunSummary:
    return RunSummary(
        runId=raw["runId"],
        status=raw["status"],
        jobName=raw["jobName"],
        tags=_tags(raw.get("tags")),
        startTime=raw.get("startTime"),
        endTime=raw.get("endTime"),
        stepsSucceeded=int((raw.get("stats") or {}).get("stepsSucceeded") or 0),
    )


def asset_keys(
    client: DagsterGraphQLClient,
    job_name: str,
    *,
    location: str = DEFAULT_LOCATION_NAME,
    repository: str = DEFAULT_REPOSITORY_NAME,
) -> list[str]:
    """Keys (``"a/b"``) of the partitioned, materializable assets of a job."""
    selector = {"pipelineName": job_name, "repositoryName": repository, "repositoryLocationName": location}
    nodes = execute(client, _ASSET_NODES, {"pipeline": selector})["assetNodes"]
    return sorted("/".join(n["assetKey"]["path"]) for n in nodes if n["isMaterializable"] and n["isPartitioned"])


def launch_asset_backfill(
    client: DagsterGraphQLClient,
    partition_keys: Sequence[str],
    *,
    job_name: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
    title: str | None = None,
    location: str = DEFAULT_LOCATION_NAME,
    repository: str = DEFAULT_REPOSITORY_NAME,
) -> str:
    """Launch a backfill of ``partition_keys`` of the job's assets; returns the backfill id.

    The daemon's backfill loop launches the runs; ``tags`` and ``run_config`` go on every run."""
    if not partition_keys:
        raise ValueError("launch_asset_backfill needs at least one partition key")
    keys = asset_keys(client, job_name, location=location, repository=repository)
    if not keys:
        raise DagsterGraphQLError(f"job {job_name} has no partitioned, materializable assets to backfill")
    params: dict[str, Any] = {
        "assetSelection": [{"path": key.split("/")} for key in keys],
        "partitionNames": list(partition_keys),
        "tags": _tag_input(tags),
    }
    if run_config is not None:
        params["runConfigData"] = dict(run_config)
    if title is not None:
        params["title"] = title
    data = execute(client, _LAUNCH_BACKFILL, {"backfillParams": params})
    result = _member(data["launchPartitionBackfill"], "LaunchBackfillSuccess", "launching the backfill")
    return str(result["backfillId"])


def backfill_status(client: DagsterGraphQLClient, backfill_id: str) -> BackfillStatus:
    """The backfill's status, its runs, the newest run's status per partition, per-asset counts."""
    data = execute(client, _BACKFILL, {"backfillId": backfill_id})
    raw = _member(data["partitionBackfillOrError"], "PartitionBackfill", f"backfill {backfill_id}")
    runs = [_run(r) for r in raw.get("runs") or ()]
    runs.sort(key=lambda r: r["startTime"] or float("inf"), reverse=True)
    partitions: dict[str, str | None] = {key: None for key in raw.get("partitionNames") or ()}
    for run in reversed(runs):  # oldest first: the newest run of a partition wins
        key = run["tags"].get("dagster/partition")
        if key is not None:
            partitions[key] = run["status"]
    assets = {
        "/".join(entry["assetKey"]["path"]): {
            "targeted": entry["numPartitionsTargeted"],
            "in_progress": entry["numPartitionsInProgress"],
            "materialized": entry["numPartitionsMaterialized"],
            "failed": entry["numPartitionsFailed"],
        }
        for entry in (raw.get("assetBackfillData") or {}).get("assetBackfillStatuses") or ()
        if "assetKey" in entry
    }
    error = raw.get("error")
    return BackfillStatus(
        id=raw["id"],
        status=raw["status"],
        error=f"{error.get('className') or 'Error'}: {error['message'].strip()}" if error else None,
        runs=runs,
        partitions=partitions,
        assets=assets,
    )


def runs(
    client: DagsterGraphQLClient,
    tags: Mapping[str, str] | None = None,
    *,
    limit: int | None = None,
) -> list[RunSummary]:
    """Runs carrying every one of ``tags``, newest first."""
    data = execute(client, _RUNS, {"filter": {"tags": _tag_input(tags)}, "limit": limit})
    result = _member(data["runsOrError"], "Runs", "listing runs")
    return [_run(r) for r in result["results"]]


def _sensor_selector(name: str, location: str, repository: str) -> dict[str, str]:
    return {"sensorName": name, "repositoryLocationName": location, "repositoryName": repository}


def _sensor(raw: Mapping[str, Any]) -> SensorStatus:
    state = raw["sensorState"]
    ticks = [
        SensorTick(
            status=t["status"],
            timestamp=t["timestamp"],
            runIds=list(t.get("runIds") or ()),
            error=(t.get("error") or {}).get("message"),
        )
        for t in state.get("ticks") or ()
    ]
    return SensorStatus(id=raw["id"], status=state["status"], ticks=ticks)


def sensor(
    client: DagsterGraphQLClient,
    name: str,
    *,
    tick_limit: int = 5,
    location: str = DEFAULT_LOCATION_NAME,
    repository: str = DEFAULT_REPOSITORY_NAME,
) -> SensorStatus:
    """The sensor's status (``RUNNING`` / ``STOPPED``) and its newest ticks."""
    selector = _sensor_selector(name, location, repository)
    data = execute(client, _SENSOR_QUERY, {"sensorSelector": selector, "tickLimit": tick_limit})
    return _sensor(_member(data["sensorOrError"], "Sensor", f"sensor {name}"))


def start_sensor(
    client: DagsterGraphQLClient,
    name: str,
    *,
    location: str = DEFAULT_LOCATION_NAME,
    repository: str = DEFAULT_REPOSITORY_NAME,
) -> SensorStatus:
    """Turn a sensor on (the daemon evaluates it from its next loop); returns its status."""
    selector = _sensor_selector(name, location, repository)
    data = execute(client, _START_SENSOR, {"sensorSelector": selector, "tickLimit": 1})
    return _sensor(_member(data["startSensor"], "Sensor", f"starting sensor {name}"))


def stop_sensor(
    client: DagsterGraphQLClient,
    name: str,
    *,
    location: str = DEFAULT_LOCATION_NAME,
    repository: str = DEFAULT_REPOSITORY_NAME,
) -> str:
    """Turn a sensor off; returns its new status (``STOPPED``)."""
    sensor_id = sensor(client, name, tick_limit=0, location=location, repository=repository)["id"]
    data = execute(client, _STOP_SENSOR, {"id": sensor_id})
    result = _member(data["stopSensor"], "StopSensorMutationResult", f"stopping sensor {name}")
    return str(result["instigationState"]["status"])


def wait_on_progress(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    progress: Callable[[T], Hashable],
    describe: Callable[[T], str],
    *,
    stall_timeout: float,
    timeout: float,
    poll_interval: float = 2.0,
) -> T:
    """Poll ``fetch`` until ``done``; fail after ``stall_timeout`` seconds in which
    ``progress`` (a fingerprint of the state) did not change, or after ``timeout`` in all."""
    started = last_change = time.monotonic()
    state = fetch()
    seen = progress(state)
    while not done(state):
        now = time.monotonic()
        if now - last_change >= stall_timeout:
            raise DagsterWaitTimeout(f"no progress for {now - last_change:.0f}s: {describe(state)}", state)
        if now - started >= timeout:
            raise DagsterWaitTimeout(f"not done after {now - started:.0f}s: {describe(state)}", state)
        time.sleep(poll_interval)
        state = fetch()
        if progress(state) != seen:
            seen, last_change = progress(state), time.monotonic()
    return state


def backfill_succeeded(status: BackfillStatus) -> bool:
    """Whether every month of a finished backfill ran through. Every partition's newest run
    must have succeeded; ``COMPLETED_FAILED`` then only means that some month was recorded
    without being materialized in ``gradient_unit_counts`` (superseded: Gradient holds a newer
    month), which is the outcome the backfill was asked for, not a failure."""
    runs_ok = bool(status["partitions"]) and all(s == "SUCCESS" for s in status["partitions"].values())
    return runs_ok and status["status"] in {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED"}


def backfill_progress(status: BackfillStatus) -> Hashable:
    """What changes as a backfill advances: its status, each run's status and finished steps."""
    run_states = tuple(sorted((r["runId"], r["status"], r["stepsSucceeded"]) for r in status["runs"]))
    asset_counts = tuple(sorted((k, tuple(sorted(v.items()))) for k, v in status["assets"].items()))
    return status["status"], run_states, asset_counts


def describe_backfill(status: BackfillStatus) -> str:
    partitions = ", ".join(f"{k}={v or 'no run'}" for k, v in sorted(status["partitions"].items()))
    return f"backfill {status['id']} is {status['status']}; partitions: {partitions}"


def wait_for_backfill(
    client: DagsterGraphQLClient,
    backfill_id: str,
    *,
    stall_timeout: float,
    timeout: float,
    poll_interval: float = 2.0,
) -> BackfillStatus:
    """Wait until the backfill is finished and none of its runs is still going; returns the
    final status (check ``status`` for success)."""

    def done(status: BackfillStatus) -> bool:
        return status["status"] in FINISHED_BACKFILL_STATUSES and all(
            r["status"] in FINISHED_RUN_STATUSES for r in status["runs"]
        )

    return wait_on_progress(
        lambda: backfill_status(client, backfill_id),
        done,
        backfill_progress,
        describe_backfill,
        stall_timeout=stall_timeout,
        timeout=timeout,
        poll_interval=poll_interval,
    )
