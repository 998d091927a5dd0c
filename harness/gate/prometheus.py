"""Figures read back from Prometheus over exactly the load window."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from prometheus_api_client import PrometheusConnect

from harness.gate.slo import Objective, TargetUptime, render_query, render_samples_query


class QueryError(RuntimeError):
    """A query failed or did not return one number; the message shows the query."""


class PrometheusReader:
    def __init__(self, url: str, *, timeout_s: int = 30) -> None:
        self.url = url
        self._client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_s)

    def instant(self, query: str, at: float) -> float | None:
        """One number at time ``at`` (None when the query has no data or gives NaN)."""
        value = self.instant_raw(query, at)
        return None if value is None or math.isnan(value) else value

    def instant_raw(self, query: str, at: float) -> float | None:
        """One number at time ``at`` as Prometheus gave it, NaN and Inf included
        (None when the query has no data)."""
        try:
            result = self._client.custom_query(query, params={"time": f"{at:.3f}"})
        except Exception as error:  # the client raises several types; keep the query
            raise QueryError(f"{error} -- query: {query}") from None
        if isinstance(result, list):
            if not result:
                return None
            if len(result) > 1:
                raise QueryError(f"{len(result)} series where one was expected -- query: {query}")
            value = float(result[0]["value"][1])
        else:  # a scalar: [time, "value"]
            value = float(result[1])
        return value

    def by_labels(self, query: str, at: float, labels: tuple[str, ...]) -> dict[str, float]:
        """One number per series at ``at``, keyed by the series' ``labels`` joined by a space."""
        try:
            result = self._client.custom_query(query, params={"time": f"{at:.3f}"})
        except Exception as error:
            raise QueryError(f"{error} -- query: {query}") from None
        values = {
            " ".join(item["metric"].get(label, "") for label in labels): float(item["value"][1])
            for item in result
        }
        return {key: value for key, value in values.items() if not math.isnan(value)}

    def objective_value(self, objective: Objective, start: float, end: float) -> float | None:
        return self.instant(render_query(objective, max(1, round(end - start))), end)

    def objective_figure(self, objective: Objective, start: float, end: float) -> float | None:
        """The objective's figure over the window, NaN and Inf kept (None: no data)."""
        return self.instant_raw(render_query(objective, max(1, round(end - start))), end)

    def sample_count(self, objective: Objective, start: float, end: float) -> float | None:
        """How many samples the objective's figure rests on over the window: 0 when
        the count's series saw nothing; None when the objective has no count."""
        query = render_samples_query(objective, max(1, round(end - start)))
        if query is None:
            return None
        value = self.instant_raw(query, end)
        return 0.0 if value is None or math.isnan(value) else value

    def target_uptime(self, start: float, end: float) -> tuple[TargetUptime, ...]:
        """Every scrape target's ``up`` over the window: lowest, average, scrape count."""
        seconds = max(1, round(end - start))
        labels = ("job", "instance")
        lowest = self.by_labels(f"min_over_time(up[{seconds}s])", end, labels)
        average = self.by_labels(f"avg_over_time(up[{seconds}s])", end, labels)
        scrapes = self.by_labels(f"count_over_time(up[{seconds}s])", end, labels)
        return tuple(
            TargetUptime(
                job=key.split(" ", 1)[0],
                instance=key.split(" ", 1)[1],
                min_up=lowest[key],
                avg_up=average.get(key, lowest[key]),
                scrapes=int(scrapes.get(key, 0)),
            )
            for key in sorted(lowest)
        )

    def series(
        self, query: str, start: float, end: float, step_s: int
    ) -> list[tuple[float, float]]:
        """``[(unix time, value), ...]`` of a query that returns one series."""
        try:
            result = self._client.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(start, UTC),
                end_time=datetime.fromtimestamp(end, UTC),
                step=f"{step_s}s",
            )
        except Exception as error:
            raise QueryError(f"{error} -- query: {query}") from None
        if not result:
            return []
        return [(float(t), float(v)) for t, v in result[0]["values"] if not math.isnan(float(v))]

    def targets(self) -> tuple[int, int]:
        """(targets up, targets in all)."""
        values = self._client.custom_query("up")
        up = sum(1 for item in values if float(item["value"][1]) == 1)
        return up, len(values)
