"""A small, typed, synchronous client for the Dagster webserver's GraphQL API (httpx).

What operators and tests need from a running deployment: wait for the webserver and the code
location, launch asset backfills of months, follow backfills and runs, turn sensors on and off.

    with DagsterWebserver("http://127.0.0.1:3000") as dagster:
        dagster.wait_until_ready(timeout=60)
        backfill_id = dagster.launch_asset_backfill(["2026-09-01", "2026-10-01"], job_name="monthly_billing")
        status = dagster.wait_for_backfill(backfill_id, timeout=600)

Every failure raises :class:`DagsterGraphQLError` with the webserver's own message (an
unreachable webserver, a GraphQL error, or an error member of a result union such as
``PythonError`` or ``PartitionKeysNotFoundError``); waits that run out raise
:class:`DagsterWaitTimeout` with the last state seen.

Queries are written against the schema of the installed ``dagster-graphql`` (1.13).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict, TypeVar

import httpx

__all__ = [
    "DEFAULT_LOCATION_NAME",
    "DEFAULT_REPOSITORY_NAME",
    "FINISHED_BACKFILL_STATUSES",
    "FINISHED_RUN_STATUSES",
    "BackfillStatus",
    "DagsterGraphQLError",
    "DagsterWaitTimeout",
    "DagsterWebserver",
    "RunSummary",
    "SUCCESSFUL_BACKFILL_STATUSES",
    "SensorStatus",
    "SensorTick",
]

DEFAULT_LOCATION_NAME = "gradient_billing_sync"
DEFAULT_REPOSITORY_NAME = "__repository__"

#: Run statuses after which a run changes no more.
FINISHED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
#: Backfill (bulk action) statuses after which a backfill launches no more runs.
FINISHED_BACKFILL_STATUSES = frozenset({"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"})
#: Of those, the ones that mean every targeted partition was materialized.
SUCCESSFUL_BACKFILL_STATUSES = frozenset({"COMPLETED", "COMPLETED_SUCCESS"})

T = TypeVar("T")


class DagsterGraphQLError(Exception):
    """The webserver could not be reached, or answered with an error.

    ``typename`` is the GraphQL error type when the error came as a member of a result union
    (e.g. ``PythonError``, ``SensorNotFoundError``), else None.
    """

    def __init__(self, message: str, *, typename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.typename = typename


class DagsterWaitTimeout(DagsterGraphQLError, TimeoutError):
    """A wait ran out; ``last`` is the last state seen (None when nothing was found)."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class RunSummary(TypedDict):
    runId: str
    status: str
    jobName: str
    tags: dict[str, str]
    creationTime: float | None
    startTime: float | None
    endTime: float | None


class BackfillStatus(TypedDict):
    id: str
    status: str
    isAssetBackfill: bool
    numPartitions: int | None
    partitionNames: list[str]
    tags: dict[str, str]
    error: str | None
    #: every run the backfill launched, newest first
    runs: list[RunSummary]
    #: partition key -> status of the newest run of that partition (None: no run yet)
    partitions: dict[str, str | None]
    #: per asset: targeted / in progress / materialized / failed partition counts
    assets: dict[str, dict[str, int]]


class SensorTick(TypedDict):
    tickId: str
    status: str
    timestamp: float
    runIds: list[str]
    runKeys: list[str]
    skipReason: str | None
    error: str | None


class SensorStatus(TypedDict):
    id: str
    name: str
    status: str
    minIntervalSeconds: int
    ticks: list[SensorTick]


_RUN_FIELDS = "runId status jobName tags { key value } creationTime startTime endTime"

_ERROR_FRAGMENT = """
    __typename
    ... on Error { message }
    ... on PythonError { className errorChain { error { message } } }
"""

# the error members of LaunchBackfillResult that do not implement ``Error``
_LAUNCH_ERROR_FRAGMENT = """
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
"""

_READY_QUERY = """
query Ready {
  version
  locationStatusesOrError {
    __typename
    ... on WorkspaceLocationStatusEntries { entries { name loadStatus } }
    ... on PythonError { message }
  }
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

_DAEMONS_QUERY = """
query Daemons {
  instance {
    daemonHealth {
      allDaemonStatuses { daemonType required healthy lastHeartbeatTime lastHeartbeatErrors { message } }
    }
  }
}
"""

_ASSET_NODES_QUERY = """
query AssetNodes($pipeline: PipelineSelector) {
  assetNodes(pipeline: $pipeline) { assetKey { path } isPartitioned isMaterializable }
}
"""

_LAUNCH_BACKFILL = (
    """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
"""
    + _ERROR_FRAGMENT
    + _LAUNCH_ERROR_FRAGMENT
    + """
  }
}
"""
)

_BACKFILL_QUERY = (
    """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    ... on PartitionBackfill {
      id
      status
      isAssetBackfill
      numPartitions
      partitionNames
      tags { key value }
      error { message className }
      runs { %s }
      partitionStatuses { results { partitionName runId runStatus } }
      assetBackfillData {
        assetBackfillStatuses {
          __typename
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsInProgress
            numPartitionsMaterialized
            numPartitionsFailed
          }
          ... on UnpartitionedAssetStatus {
            assetKey { path }
            inProgress
            materialized
            failed
          }
        }
      }
    }
"""
    % _RUN_FIELDS
    + _ERROR_FRAGMENT
    + """
  }
}
"""
)

_RUNS_QUERY = (
    """
query Runs($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    ... on Runs { results { %s } }
"""
    % _RUN_FIELDS
    + _ERROR_FRAGMENT
    + """
  }
}
"""
)

_SENSOR_FIELDS = """
    ... on Sensor {
      id
      name
      minIntervalSeconds
      sensorState {
        status
        ticks(limit: $tickLimit) {
          tickId status timestamp runIds runKeys skipReason error { message }
        }
      }
    }
"""

_SENSOR_QUERY = (
    """
query Sensor($sensorSelector: SensorSelector!, $tickLimit: Int) {
  sensorOrError(sensorSelector: $sensorSelector) {
"""
    + _SENSOR_FIELDS
    + _ERROR_FRAGMENT
    + """
  }
}
"""
)

_START_SENSOR = (
    """
mutation StartSensor($sensorSelector: SensorSelector!, $tickLimit: Int) {
  startSensor(sensorSelector: $sensorSelector) {
"""
    + _SENSOR_FIELDS
    + _ERROR_FRAGMENT
    + """
  }
}
"""
)

_STOP_SENSOR = (
    """
mutation StopSensor($id: String) {
  stopSensor(id: $id) {
    ... on StopSensorMutationResult { instigationState { status } }
"""
    + _ERROR_FRAGMENT
    + """
  }
}
"""
)


def _tags(pairs: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {p["key"]: p["value"] for p in pairs or ()}


def _run(raw: Mapping[str, Any]) -> RunSummary:
    return RunSummary(
        runId=raw["runId"],
        status=raw["status"],
        jobName=raw["jobName"],
        tags=_tags(raw.get("tags")),
        creationTime=raw.get("creationTime"),
        startTime=raw.get("startTime"),
        endTime=raw.get("endTime"),
    )


def _asset_key(path: Sequence[str]) -> str:
    return "/".join(path)


def _key_input(asset_key: str | Sequence[str]) -> dict[str, list[str]]:
    """``"a/b"`` or ``["a", "b"]`` -> ``{"path": ["a", "b"]}``."""
    path = asset_key.split("/") if isinstance(asset_key, str) else list(asset_key)
    return {"path": path}


def _error_text(result: Mapping[str, Any]) -> str:
    typename = result.get("__typename", "error")
    message = result.get("message") or ""
    if typename == "PythonError":
        chain = [link["error"]["message"].strip() for link in result.get("errorChain") or () if link.get("error")]
        head = f"{result.get('className') or 'Error'}: {message.strip()}"
        return "; caused by ".join([head, *chain])
    if typename == "RunConfigValidationInvalid":
        return "invalid run config: " + "; ".join(e["message"] for e in result.get("errors") or ())
    if typename == "InvalidStepError":
        return f"invalid step: {result.get('invalidStepKey')}"
    if typename == "InvalidOutputError":
        return f"invalid output {result.get('invalidOutputName')} of step {result.get('stepKey')}"
    return message.strip() or typename


class DagsterWebserver:
    """A Dagster webserver (``dagster-webserver`` / ``dagster dev``) at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout, headers=dict(headers or {}))
        self._owns_client = client is None

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> DagsterWebserver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def graphql_url(self) -> str:
        return f"{self.base_url}/graphql"

    def execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one GraphQL operation; returns its ``data``. Raises on transport or GraphQL errors."""
        try:
            response = self._client.post(self.graphql_url, json={"query": query, "variables": dict(variables or {})})
        except httpx.HTTPError as exc:
            raise DagsterGraphQLError(
                f"the Dagster webserver at {self.base_url} is unreachable ({type(exc).__name__}: {exc}); "
                "check that dagster-webserver is running and the URL is right"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DagsterGraphQLError(
                f"the Dagster webserver at {self.base_url} answered HTTP {response.status_code} "
                f"without a GraphQL body: {response.text[:300]!r}"
            )
        errors = body.get("errors")
        if errors:
            messages = "; ".join(str(e.get("message", e)) for e in errors)
            raise DagsterGraphQLError(f"GraphQL error: {messages}")
        # the webserver answers 500 with a normal body when a field resolves to PythonError:
        # the body, not the status, says what happened
        if body.get("data") is None:
            raise DagsterGraphQLError(
                f"the Dagster webserver at {self.base_url} answered HTTP {response.status_code}: {response.text[:300]!r}"
            )
        return body["data"]

    @staticmethod
    def _expect(result: Mapping[str, Any] | None, typename: str | None, what: str) -> Mapping[str, Any]:
        """The member of a result union, or a DagsterGraphQLError naming the error member."""
        if result is None:
            raise DagsterGraphQLError(f"{what}: empty result")
        got = result.get("__typename")
        if typename is None or got == typename:
            return result
        raise DagsterGraphQLError(f"{what}: {_error_text(result)}", typename=got)

    def _poll(
        self,
        fetch: Callable[[], T],
        done: Callable[[T], bool],
        timeout: float,
        poll_interval: float,
        describe: Callable[[T | None], str],
    ) -> T:
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            last = fetch()
            if done(last):
                return last
            if time.monotonic() >= deadline:
                raise DagsterWaitTimeout(f"timed out after {timeout:.0f}s: {describe(last)}", last)
            time.sleep(poll_interval)

    # ------------------------------------------------------------------ readiness

    def version(self) -> str:
        return str(self.execute("query Version { version }")["version"])

    def location_statuses(self) -> dict[str, str]:
        """Code location name -> ``LOADED`` / ``LOADING``; raises when a location failed to load."""
        data = self.execute(_READY_QUERY)
        workspace = self._expect(data["workspaceOrError"], "Workspace", "workspace")
        statuses: dict[str, str] = {}
        for entry in workspace["locationEntries"]:
            loaded = entry.get("locationOrLoadError")
            if loaded and loaded.get("__typename") == "PythonError":
                raise DagsterGraphQLError(
                    f"code location {entry['name']} failed to load: {loaded.get('message', '').strip()}",
                    typename="PythonError",
                )
            statuses[entry["name"]] = entry["loadStatus"]
        return statuses

    def wait_until_ready(
        self,
        timeout: float = 120.0,
        *,
        location_name: str | None = DEFAULT_LOCATION_NAME,
        poll_interval: float = 0.5,
        is_alive: Callable[[], bool] | None = None,
    ) -> str:
        """Wait until the webserver answers GraphQL and ``location_name`` (if given) is loaded.

        Returns the Dagster version. A code location that fails to load raises at once with
        its error; ``is_alive`` (e.g. ``lambda: process.poll() is None``) stops the wait as soon
        as the webserver process has died.
        """
        deadline = time.monotonic() + timeout
        last_problem = "no answer yet"
        while True:
            if is_alive is not None and not is_alive():
                raise DagsterGraphQLError(f"the Dagster webserver at {self.base_url} exited before it was ready")
            try:
                version = self.version()
                if location_name is None:
                    return version
                statuses = self.location_statuses()
                status = statuses.get(location_name)
                if status == "LOADED":
                    return version
                last_problem = (
                    f"code location {location_name} is {status.lower()}"
                    if status
                    else f"no code location {location_name} (locations: {', '.join(statuses) or 'none'})"
                )
            except DagsterGraphQLError as exc:
                if exc.typename == "PythonError":  # a location failed to load: waiting will not help
                    raise
                last_problem = exc.message
            if time.monotonic() >= deadline:
                raise DagsterWaitTimeout(
                    f"the Dagster webserver at {self.base_url} was not ready after {timeout:.0f}s: {last_problem}"
                )
            time.sleep(poll_interval)

    def daemon_statuses(self) -> dict[str, dict[str, Any]]:
        """Daemon type -> ``{"required", "healthy", "lastHeartbeatTime", "errors"}``."""
        data = self.execute(_DAEMONS_QUERY)
        return {
            d["daemonType"]: {
                "required": d["required"],
                "healthy": bool(d["healthy"]),
                "lastHeartbeatTime": d["lastHeartbeatTime"],
                "errors": [e["message"] for e in d["lastHeartbeatErrors"]],
            }
            for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]
        }

    def wait_for_daemons(
        self,
        timeout: float = 120.0,
        *,
        daemon_types: Iterable[str] | None = None,
        poll_interval: float = 1.0,
    ) -> dict[str, dict[str, Any]]:
        """Wait until ``dagster-daemon`` heartbeats: every required daemon (or the given types)
        is healthy. Returns the statuses."""
        wanted = set(daemon_types) if daemon_types is not None else None

        def unhealthy(statuses: dict[str, dict[str, Any]]) -> list[str]:
            names = wanted if wanted is not None else {k for k, v in statuses.items() if v["required"]}
            return sorted(n for n in names if not statuses.get(n, {}).get("healthy"))

        def describe(statuses: dict[str, dict[str, Any]] | None) -> str:
            if not statuses:
                return "no daemon status"
            return "daemons not healthy: " + ", ".join(
                f"{n} ({'; '.join(statuses.get(n, {}).get('errors') or ['no heartbeat'])[:300]})" for n in unhealthy(statuses)
            )

        return self._poll(self.daemon_statuses, lambda s: not unhealthy(s), timeout, poll_interval, describe)

    # ------------------------------------------------------------------ assets and backfills

    def asset_keys(
        self,
        job_name: str | None = None,
        *,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
        partitioned_only: bool = True,
    ) -> list[str]:
        """Keys (``"a/b"`` form) of the materializable assets of a job, or of the whole workspace."""
        variables: dict[str, Any] = {}
        if job_name is not None:
            variables["pipeline"] = {
                "pipelineName": job_name,
                "repositoryName": repository_name,
                "repositoryLocationName": repository_location_name,
            }
        nodes = self.execute(_ASSET_NODES_QUERY, variables)["assetNodes"]
        return sorted(
            _asset_key(n["assetKey"]["path"])
            for n in nodes
            if n["isMaterializable"] and (n["isPartitioned"] or not partitioned_only)
        )

    def launch_asset_backfill(
        self,
        partition_keys: list[str],
        asset_keys: list[str] | None = None,
        tags: dict[str, str] | None = None,
        *,
        job_name: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        title: str | None = None,
        description: str | None = None,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
    ) -> str:
        """Launch an asset backfill of ``partition_keys``; returns the backfill id.

        ``asset_keys`` (``"a/b"`` or ``"name"``) chooses the assets; without it, the assets of
        ``job_name``, or else every materializable partitioned asset of the workspace. The
        backfill daemon (``dagster-daemon``) launches its runs; ``tags`` and ``run_config``
        (e.g. ops config, or ``{"execution": {"config": {"in_process": {}}}}``) go on every run.
        """
        if not partition_keys:
            raise ValueError("launch_asset_backfill needs at least one partition key")
        if asset_keys is None:
            asset_keys = self.asset_keys(
                job_name, repository_location_name=repository_location_name, repository_name=repository_name
            )
            if not asset_keys:
                where = f"job {job_name}" if job_name else "the workspace"
                raise DagsterGraphQLError(f"no partitioned, materializable assets in {where} to backfill")
        params: dict[str, Any] = {
            "assetSelection": [_key_input(k) for k in asset_keys],
            "partitionNames": list(partition_keys),
            "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()],
        }
        if run_config is not None:
            params["runConfigData"] = dict(run_config)
        if title is not None:
            params["title"] = title
        if description is not None:
            params["description"] = description
        data = self.execute(_LAUNCH_BACKFILL, {"backfillParams": params})
        result = self._expect(data["launchPartitionBackfill"], "LaunchBackfillSuccess", "launching the backfill")
        return str(result["backfillId"])

    def backfill_status(self, backfill_id: str) -> BackfillStatus:
        """The backfill's status, its runs, the newest run status per partition, per-asset counts."""
        data = self.execute(_BACKFILL_QUERY, {"backfillId": backfill_id})
        raw = self._expect(data["partitionBackfillOrError"], "PartitionBackfill", f"backfill {backfill_id}")
        runs = sorted((_run(r) for r in raw.get("runs") or ()), key=lambda r: r["creationTime"] or 0, reverse=True)
        partition_names = list(raw.get("partitionNames") or ())
        partitions: dict[str, str | None] = {key: None for key in partition_names}
        job_statuses = (raw.get("partitionStatuses") or {}).get("results")
        if job_statuses:  # job backfills: one entry per partition
            for entry in job_statuses:
                partitions[entry["partitionName"]] = entry.get("runStatus")
        else:  # asset backfills: from the runs' partition tags, newest run wins
            for run in reversed(runs):
                key = run["tags"].get("dagster/partition")
                if key is not None:
                    partitions[key] = run["status"]
        assets: dict[str, dict[str, int]] = {}
        for entry in (raw.get("assetBackfillData") or {}).get("assetBackfillStatuses") or ():
            key = _asset_key(entry["assetKey"]["path"])
            if entry.get("__typename") == "AssetPartitionsStatusCounts":
                assets[key] = {
                    "targeted": entry["numPartitionsTargeted"],
                    "in_progress": entry["numPartitionsInProgress"],
                    "materialized": entry["numPartitionsMaterialized"],
                    "failed": entry["numPartitionsFailed"],
                }
            else:
                assets[key] = {
                    "targeted": 1,
                    "in_progress": int(bool(entry.get("inProgress"))),
                    "materialized": int(bool(entry.get("materialized"))),
                    "failed": int(bool(entry.get("failed"))),
                }
        error = raw.get("error")
        return BackfillStatus(
            id=raw["id"],
            status=raw["status"],
            isAssetBackfill=bool(raw.get("isAssetBackfill")),
            numPartitions=raw.get("numPartitions"),
            partitionNames=partition_names,
            tags=_tags(raw.get("tags")),
            error=f"{error.get('className') or 'Error'}: {error['message'].strip()}" if error else None,
            runs=runs,
            partitions=partitions,
            assets=assets,
        )

    def wait_for_backfill(self, backfill_id: str, timeout: float = 600.0, *, poll_interval: float = 2.0) -> BackfillStatus:
        """Wait until the backfill is finished (completed, failed or canceled) and none of its
        runs is still going; returns the final status (check ``status`` for success)."""

        def done(status: BackfillStatus) -> bool:
            return status["status"] in FINISHED_BACKFILL_STATUSES and all(
                r["status"] in FINISHED_RUN_STATUSES for r in status["runs"]
            )

        def describe(status: BackfillStatus | None) -> str:
            if status is None:
                return f"backfill {backfill_id}: no status"
            return (
                f"backfill {backfill_id} is {status['status']}; partitions: "
                + ", ".join(f"{k}={v or 'no run'}" for k, v in sorted(status["partitions"].items()))
            )

        return self._poll(lambda: self.backfill_status(backfill_id), done, timeout, poll_interval, describe)

    # ------------------------------------------------------------------ runs

    def runs(
        self,
        tags: Mapping[str, str] | None = None,
        job_name: str | None = None,
        *,
        statuses: Iterable[str] | None = None,
        run_ids: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[RunSummary]:
        """Runs matching every tag (and job / statuses / ids), newest first."""
        run_filter: dict[str, Any] = {}
        if tags:
            run_filter["tags"] = [{"key": k, "value": str(v)} for k, v in tags.items()]
        if job_name:
            run_filter["pipelineName"] = job_name
        if statuses:
            run_filter["statuses"] = list(statuses)
        if run_ids:
            run_filter["runIds"] = list(run_ids)
        data = self.execute(_RUNS_QUERY, {"filter": run_filter, "limit": limit})
        result = self._expect(data["runsOrError"], None, "listing runs")
        if "results" not in result:
            raise DagsterGraphQLError(f"listing runs: {_error_text(result)}", typename=result.get("__typename"))
        return [_run(r) for r in result["results"]]

    def run(self, run_id: str) -> RunSummary:
        found = self.runs(run_ids=[run_id], limit=1)
        if not found:
            raise DagsterGraphQLError(f"run {run_id} not found", typename="RunNotFoundError")
        return found[0]

    def wait_for_run(
        self,
        run_id: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        job_name: str | None = None,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> RunSummary:
        """Wait until a run is finished (SUCCESS, FAILURE or CANCELED) and return it.

        With ``run_id``, that run; otherwise the newest run matching ``tags`` / ``job_name``,
        waiting for one to appear first (e.g. a run a sensor is about to launch).
        """
        if run_id is None and not tags and not job_name:
            raise ValueError("wait_for_run needs a run id, tags or a job name")

        def fetch() -> RunSummary | None:
            if run_id is not None:
                found = self.runs(run_ids=[run_id], limit=1)
            else:
                found = self.runs(tags=tags, job_name=job_name, limit=1)
            return found[0] if found else None

        def describe(run: RunSummary | None) -> str:
            wanted = run_id or ", ".join([*(f"{k}={v}" for k, v in (tags or {}).items()), *([job_name] if job_name else [])])
            if run is None:
                return f"no run matching {wanted}"
            return f"run {run['runId']} ({run['jobName']}) is {run['status']}"

        run = self._poll(
            fetch, lambda r: r is not None and r["status"] in FINISHED_RUN_STATUSES, timeout, poll_interval, describe
        )
        assert run is not None
        return run

    # ------------------------------------------------------------------ sensors

    @staticmethod
    def _sensor_selector(name: str, repository_location_name: str, repository_name: str) -> dict[str, str]:
        return {
            "sensorName": name,
            "repositoryLocationName": repository_location_name,
            "repositoryName": repository_name,
        }

    @staticmethod
    def _sensor(raw: Mapping[str, Any]) -> SensorStatus:
        state = raw["sensorState"]
        return SensorStatus(
            id=raw["id"],
            name=raw["name"],
            status=state["status"],
            minIntervalSeconds=raw["minIntervalSeconds"],
            ticks=[
                SensorTick(
                    tickId=str(t["tickId"]),
                    status=t["status"],
                    timestamp=t["timestamp"],
                    runIds=list(t.get("runIds") or ()),
                    runKeys=list(t.get("runKeys") or ()),
                    skipReason=t.get("skipReason"),
                    error=(t.get("error") or {}).get("message"),
                )
                for t in state.get("ticks") or ()
            ],
        )

    def sensor(
        self,
        name: str,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
        *,
        tick_limit: int = 10,
    ) -> SensorStatus:
        """The sensor's status (``RUNNING`` / ``STOPPED``) and its newest ticks."""
        selector = self._sensor_selector(name, repository_location_name, repository_name)
        data = self.execute(_SENSOR_QUERY, {"sensorSelector": selector, "tickLimit": tick_limit})
        return self._sensor(self._expect(data["sensorOrError"], "Sensor", f"sensor {name}"))

    def start_sensor(
        self,
        name: str,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
    ) -> SensorStatus:
        """Turn a sensor on (the daemon evaluates it from its next loop); returns its status."""
        selector = self._sensor_selector(name, repository_location_name, repository_name)
        data = self.execute(_START_SENSOR, {"sensorSelector": selector, "tickLimit": 1})
        return self._sensor(self._expect(data["startSensor"], "Sensor", f"starting sensor {name}"))

    def stop_sensor(
        self,
        name: str,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
    ) -> str:
        """Turn a sensor off; returns its new status (``STOPPED``)."""
        sensor = self.sensor(name, repository_location_name, repository_name, tick_limit=0)
        data = self.execute(_STOP_SENSOR, {"id": sensor["id"]})
        result = self._expect(data["stopSensor"], "StopSensorMutationResult", f"stopping sensor {name}")
        return str(result["instigationState"]["status"])

    def wait_for_sensor_tick(
        self,
        name: str,
        *,
        after: float = 0.0,
        timeout: float = 120.0,
        poll_interval: float = 1.0,
        repository_location_name: str = DEFAULT_LOCATION_NAME,
        repository_name: str = DEFAULT_REPOSITORY_NAME,
    ) -> SensorTick:
        """Wait for a finished tick (success, skipped or failure) newer than ``after`` (epoch s)."""

        def fetch() -> SensorTick | None:
            ticks = self.sensor(name, repository_location_name, repository_name, tick_limit=5)["ticks"]
            finished = [t for t in ticks if t["status"] != "STARTED" and t["timestamp"] > after]
            return max(finished, key=lambda t: t["timestamp"]) if finished else None

        tick = self._poll(
            fetch,
            lambda t: t is not None,
            timeout,
            poll_interval,
            lambda _: f"sensor {name} evaluated no tick after {after:.0f}",
        )
        assert tick is not None
        return tick
