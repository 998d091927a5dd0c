"""The one client of the Prometheus HTTP API: instant and range queries,
targets, rules and alerts.

Every call raises ``PrometheusError`` naming the endpoint, the query and what
Prometheus answered, so a failed assertion shows the PromQL that failed.
``wait_for_targets`` and ``wait_for_alert`` poll with a deadline (never a
bare sleep) and time out with the last state seen as evidence. Reading an
SLO objective over a window is the gate's (``harness.gate.evidence``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from harness.exceptions import ConfigurationError, PrometheusError, WaitTimeout
from harness.processes import wait_until
from harness.stack import Stack


@dataclass(frozen=True)
class Target:
    job: str
    instance: str
    health: str
    last_error: str
    scrape_url: str


@dataclass(frozen=True)
class Alert:
    name: str
    state: str  # "pending" or "firing"
    labels: Mapping[str, str]


class PrometheusClient:
    """``PrometheusClient(url)``: synchronous, one ``httpx.Client``; close it or use ``with``.

    A refused connection is tried three times more (0, 0.5, 1 s apart): a
    Prometheus that is restarting is read once it is back.
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, transport=httpx.HTTPTransport(retries=3)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The ``data`` of a successful answer: the one place where what httpx raises,
        and every answer that is not a success, becomes a ``PrometheusError``."""
        request = f"GET {self.url}{path} {dict(params or {})}"
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as error:
            raise PrometheusError(f"{request}: {type(error).__name__}: {error}") from error
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"{request}: answered {response.status_code}, not JSON: {response.text[:300]}"
            ) from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"{request}: answered {response.status_code}: "
                f"{body.get('errorType', '')} {body.get('error', body)}"
            )
        return body["data"]

    # -- configuration

    def scrape_interval_s(self) -> float:
        """The global scrape interval of the running configuration (1 s locally, 15 s
        in the compose deployment): how long "the next scrape" can take."""
        return self.intervals_s()[0]

    def evaluation_interval_s(self) -> float:
        """The global rule evaluation interval of the running configuration (1 s on
        the local stack of the tests, 15 s in the compose deployment and on the
        release gate's stacks): how long a recording rule or alert can lag."""
        return self.intervals_s()[1]

    def intervals_s(self) -> tuple[float, float]:
        """(scrape, rule evaluation) global intervals of the running configuration,
        read in one request."""
        import yaml

        from harness.providers.prometheus import parse_duration

        config = yaml.safe_load(self._get("/api/v1/status/config")["yaml"])
        settings = config.get("global", {})
        # Prometheus's own default for both is one minute
        return (
            parse_duration(settings.get("scrape_interval", "1m")),
            parse_duration(settings.get("evaluation_interval", "1m")),
        )

    # -- queries

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, at unix time ``at`` (default: now); the result list
        (``[]`` when the query matched nothing; a scalar as one series without labels)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        data = self._get("/api/v1/query", params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of an instant query as Prometheus gave it, NaN and Inf
        included (``None`` when empty; error when several series)."""
        result = self.query(promql, at)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def instant(self, promql: str, at: float | None = None) -> float | None:
        """``value``, with NaN as ``None`` (no figure)."""
        value = self.value(promql, at)
        return None if value is None or math.isnan(value) else value

    def by_labels(self, promql: str, at: float, labels: tuple[str, ...]) -> dict[str, float]:
        """One number per series at ``at``, keyed by the series' ``labels`` joined by a
        space; NaN left out."""
        values = {
            " ".join(item["metric"].get(label, "") for label in labels): float(item["value"][1])
            for item in self.query(promql, at)
        }
        return {key: value for key, value in values.items() if not math.isnan(value)}

    def series(
        self, promql: str, start: float, end: float, step_s: int
    ) -> list[tuple[float, float]]:
        """``[(unix time, value), ...]`` of a range query that returns one series
        (start and end in whole seconds; NaN left out)."""
        params = {"query": promql, "start": str(round(start)), "end": str(round(end))}
        result = self._get("/api/v1/query_range", {**params, "step": f"{step_s}s"})["result"]
        if not result:
            return []
        return [(float(t), float(v)) for t, v in result[0]["values"] if not math.isnan(float(v))]

    def up_counts(self) -> tuple[int, int]:
        """(targets whose ``up`` is 1 now, targets with an ``up`` series)."""
        values = self.query("up")
        return sum(1 for item in values if float(item["value"][1]) == 1), len(values)

    # -- targets

    def targets(self) -> list[Target]:
        data = self._get("/api/v1/targets", {"state": "active"})
        return [
            Target(
                job=t["labels"].get("job", ""),
                instance=t["labels"].get("instance", ""),
                health=t["health"],
                last_error=t.get("lastError", ""),
                scrape_url=t.get("scrapeUrl", ""),
            )
            for t in data["activeTargets"]
        ]

    def wait_for_targets(self, expected: int, *, timeout: float = 30.0) -> list[Target]:
        """Wait until ``expected`` targets are active and every one is up."""

        def all_up() -> list[Target] | None:
            found = self.targets()
            if len(found) == expected and all(t.health == "up" for t in found):
                return found
            return None

        def describe() -> str:
            return "; ".join(
                f"{t.job}/{t.instance}={t.health}" + (f" ({t.last_error})" if t.last_error else "")
                for t in self.targets()
            )

        try:
            return wait_until(
                all_up,
                timeout=timeout,
                interval=0.1,
                what=f"Prometheus to see {expected} targets up",
                retry_on=(PrometheusError,),
            )
        except WaitTimeout as error:
            raise PrometheusError(f"{error}; targets now: {describe()}") from error

    # -- rules and alerts

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group (``name``, ``type``, ``query``, ``health``, ``lastError``)."""
        data = self._get("/api/v1/rules")
        return [rule for group in data["groups"] for rule in group["rules"]]

    def alerts(self) -> list[Alert]:
        data = self._get("/api/v1/alerts")
        return [
            Alert(name=a["labels"]["alertname"], state=a["state"], labels=dict(a["labels"]))
            for a in data["alerts"]
        ]

    def wait_for_alert(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        states: Iterable[str] = ("firing",),
        timeout: float = 60.0,
    ) -> Alert:
        """Wait until alert ``name`` (with these labels) is in one of ``states``."""
        wanted_states = tuple(states)
        wanted = dict(labels or {})

        def matching() -> Alert | None:
            for alert in self.alerts():
                if alert.name != name or alert.state not in wanted_states:
                    continue
                if all(alert.labels.get(k) == v for k, v in wanted.items()):
                    return alert
            return None

        try:
            return wait_until(
                matching,
                timeout=timeout,
                interval=0.25,
                what=f"alert {name} {wanted} to be {'/'.join(wanted_states)}",
                retry_on=(PrometheusError,),
            )
        except WaitTimeout as error:
            now = [(a.name, a.state, dict(a.labels)) for a in self.alerts()]
            raise PrometheusError(f"{error}; alerts now: {now}") from error


def wait_for_stack_targets(stack: Stack, *, timeout_s: float = 30.0) -> list[Target]:
    """Wait until the stack's Prometheus has scraped every one of its targets.

    The expected count is ``stack.extra["prometheus_targets"]`` (written by the
    local provider); without it, every active target must be up. Prometheus
    2.42 hands new targets to its scrapers on a fixed 5 s tick, so this takes
    about 5 s after Prometheus started.
    """
    if not stack.prometheus_url:
        raise ConfigurationError("this stack has no Prometheus (stack.prometheus_url is empty)")
    with PrometheusClient(stack.prometheus_url) as client:
        expected = stack.extra.get("prometheus_targets")
        if expected is None:
            expected_count = len(
                wait_until(client.targets, timeout=timeout_s, what="any Prometheus target")
            )
        else:
            expected_count = int(expected)
        return client.wait_for_targets(expected_count, timeout=timeout_s)


__all__ = ["Alert", "PrometheusClient", "PrometheusError", "Target", "wait_for_stack_targets"]
