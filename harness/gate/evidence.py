"""Every objective's figure and the evidence it rests on, read over the load window.

For each objective that applies to the profile: its value (Prometheus, the
load generator for ``source: locust``, the resilience drill for ``source:
drill``), how many samples it was computed from
(``Objective.sample_count_query``, or the load generator's counts) and the
scrape targets' up-ness over the same window. ``harness.gate.slo.evaluate`` turns
them into verdicts; a read that fails leaves a note and no figure, which the
evaluation reports as NOT VERIFIABLE, never as a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.gate.drill import DrillResult
from harness.gate.loadrun import ClientFigures
from harness.gate.slo import (
    Evidence,
    Objective,
    SloFile,
    TargetUptime,
    render_query,
    render_samples_query,
)
from harness.prometheus_api import PrometheusClient, PrometheusError


def objective_value(
    reader: PrometheusClient, objective: Objective, start: float, end: float
) -> float | None:
    """The objective's figure over the window (None: no data, or NaN)."""
    return reader.instant(render_query(objective, max(1, round(end - start))), end)


def objective_figure(
    reader: PrometheusClient, objective: Objective, start: float, end: float
) -> float | None:
    """The objective's figure over the window, NaN and Inf kept (None: no data)."""
    return reader.value(render_query(objective, max(1, round(end - start))), end)


def sample_count(
    reader: PrometheusClient, objective: Objective, start: float, end: float
) -> float | None:
    """How many samples the objective's figure rests on over the window: 0 when
    the count's series saw nothing; None when the objective has no count."""
    query = render_samples_query(objective, max(1, round(end - start)))
    if query is None:
        return None
    value = reader.value(query, end)
    return 0.0 if value is None or math.isnan(value) else value


def target_uptime(reader: PrometheusClient, start: float, end: float) -> tuple[TargetUptime, ...]:
    """Every scrape target's ``up`` over the window: lowest, average, scrape count."""
    seconds = max(1, round(end - start))
    labels = ("job", "instance")
    lowest = reader.by_labels(f"min_over_time(up[{seconds}s])", end, labels)
    average = reader.by_labels(f"avg_over_time(up[{seconds}s])", end, labels)
    scrapes = reader.by_labels(f"count_over_time(up[{seconds}s])", end, labels)
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


@dataclass(frozen=True)
class Readings:
    values: dict[str, float | None]  # objective -> figure (NaN and Inf kept: evaluate says why)
    evidence: dict[str, Evidence]  # objective -> samples and targets
    queries: dict[str, str]  # objective -> the PromQL (or load-generator figure) that ran
    sample_queries: dict[str, str]  # objective -> the PromQL that counted its samples
    targets: tuple[TargetUptime, ...] | None  # None: up-ness could not be read
    notes: tuple[str, ...]


def read_objectives(
    slo: SloFile,
    reader: PrometheusClient,
    window: tuple[float, float],
    *,
    profile: str | None = None,
    client: ClientFigures | None = None,
    drill: DrillResult | None = None,
) -> Readings:
    """The figures and evidence of ``slo``'s objectives for ``profile`` over ``window``."""
    start, end = window
    seconds = max(1, round(end - start))
    notes: list[str] = []
    targets: tuple[TargetUptime, ...] | None
    try:
        targets = target_uptime(reader, start, end)
    except PrometheusError as error:
        notes.append(f"scrape targets' up-ness: {error}")
        targets = None
    values: dict[str, float | None] = {}
    evidence: dict[str, Evidence] = {}
    queries: dict[str, str] = {}
    sample_queries: dict[str, str] = {}
    for objective in slo.objectives:
        if not objective.applies_to(profile):
            continue
        name = objective.name
        if objective.source == "drill":
            queries[name] = f"resilience drill: {objective.query}"
            values[name] = None if drill is None else drill.figure(objective.query)
            samples = None if drill is None else drill.figure_samples(objective.query)
            evidence[name] = Evidence(None if samples is None else float(samples), targets)
            if drill is None:
                notes.append(f"{name}: the resilience drill did not run")
            continue
        if objective.source == "locust":
            queries[name] = f"load generator: {objective.query}"
            values[name] = None if client is None else client.figure(objective.query)
            samples = None if client is None else client.figure_samples(objective.query)
            evidence[name] = Evidence(None if samples is None else float(samples), targets)
            continue
        queries[name] = render_query(objective, seconds)
        try:
            values[name] = objective_figure(reader, objective, start, end)
        except PrometheusError as error:
            notes.append(f"{name}: {error}")
            values[name] = None
        counted: float | None = None
        samples_query = render_samples_query(objective, seconds)
        if samples_query is not None:
            sample_queries[name] = samples_query
            try:
                counted = sample_count(reader, objective, start, end)
            except PrometheusError as error:
                notes.append(f"{name} samples: {error}")
        evidence[name] = Evidence(counted, targets)
    return Readings(values, evidence, queries, sample_queries, targets, tuple(notes))


__all__ = [
    "Readings",
    "objective_figure",
    "objective_value",
    "read_objectives",
    "sample_count",
    "target_uptime",
]
