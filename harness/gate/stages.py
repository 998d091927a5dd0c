"""The gate's stages: each takes what it needs and returns its data and its notes.

``GateRun.execute`` (runner.py) calls them in order: the stack, the suites, the
load over the SLO window (with the figures read back over that window), the
drill under load, the evaluation of the objectives; ``decide_verdict``
(verdict.py) turns their data into go / no-go. No stage writes to another's
state: what one needs from an earlier one is passed in.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness.exceptions import ConfigurationError, PrometheusError
from harness.gate.buckets import Bucket, objective_buckets
from harness.gate.cpu import CpuUse, sample_cpu
from harness.gate.drill import DrillPlan, DrillResult, run_drill_under_load
from harness.gate.evidence import Readings, read_objectives
from harness.gate.loadrun import ClientFigures, LoadRunConfig, run_load
from harness.gate.memory import PeakMemory, megabytes, tree_rss_bytes
from harness.gate.scrapes import evidence_window, quiet_start, scraping_every
from harness.gate.slo import ObjectiveResult, SloFile, evaluate
from harness.gate.suites import SuiteResults, run_suites
from harness.progress import Progress
from harness.prometheus_api import PrometheusClient
from harness.providers import Supervisor
from harness.stack import Stack
from loadtests.profiles import Profile

# Latency and traffic over time, for the report's plots (server side).
_USER_ROUTES = 'route!~"/health|/ready|/metrics|/openapi.json|/status"'


def series_queries(scrape_s: float) -> dict[str, str]:
    """The plots' queries: rates over 15 s, or four scrape intervals when scrapes
    are further apart (a rate needs two scrapes in its range)."""
    rate_range = f"{max(15, math.ceil(4 * scrape_s))}s"
    buckets = (
        "sum by (le) (rate(http_server_request_duration_seconds_bucket"
        f"{{{_USER_ROUTES}}}[{rate_range}]))"
    )
    errors = 'http_server_request_duration_seconds_count{status=~"5..|429"}'
    return {
        "latency p50": f"histogram_quantile(0.50, {buckets}) * 1000",
        "latency p95": f"histogram_quantile(0.95, {buckets}) * 1000",
        "requests/s": (
            f"sum(rate(http_server_request_duration_seconds_count{{{_USER_ROUTES}}}[{rate_range}]))"
        ),
        "errors/s": f"sum(rate({errors}[{rate_range}])) or vector(0)",
    }


Series = list[tuple[float, float]]


def gateway_url(stack: Stack) -> str:
    if not stack.haproxy_url:
        raise ConfigurationError("this stack has no HAProxy URL to send the load through")
    return stack.haproxy_url


def prometheus_url(stack: Stack) -> str:
    if not stack.prometheus_url:
        raise ConfigurationError("this stack has no Prometheus URL to read the SLOs from")
    return stack.prometheus_url


# --- the suites ------------------------------------------------------------------


def suites_stage(
    stack_json: Path, junit_path: Path, *, extra_args: tuple[str, ...], progress: Progress
) -> SuiteResults:
    """The pytest suites against the running stack, as JUnit outcomes."""
    progress("running the suites (pytest, JUnit XML)")
    suites = run_suites(
        stack_json, junit_path, extra_args=extra_args, timeout_s=1800, progress=progress
    )
    progress(
        f"suites: {suites.count('passed')} passed, {suites.count('failed')} failed, "
        f"{suites.count('error')} errors, {suites.count('skipped')} skipped"
    )
    return suites


# --- the load over the SLO window ------------------------------------------------------


@dataclass(frozen=True)
class LoadStage:
    """The SLO window's load and what the stack spent serving it."""

    client: ClientFigures
    duration_s: float
    cpu: CpuUse | None
    memory_mb: dict[str, float | None]
    notes: tuple[str, ...]
    # what Prometheus's figures are read over: the load window with a scrape of
    # every target on each side and nothing else in it (harness.gate.scrapes)
    evidence_window: tuple[float, float]
    # (scrape, rule evaluation) intervals of the stack's Prometheus over that window
    prometheus_intervals_s: tuple[float, float]

    @property
    def window(self) -> tuple[float, float]:
        return (self.client.started_at, self.client.ended_at)


def load_stage(
    load: LoadRunConfig,
    profile: Profile,
    supervisor: Supervisor | None,
    reader: PrometheusClient,
    *,
    scrape_interval_s: float | None,
    progress: Progress,
) -> LoadStage:
    """Run the profile over an evidence window (``harness.gate.scrapes``), with
    Prometheus scraping every ``scrape_interval_s`` (None: as it does); sample
    the stack's CPU and memory over the load."""
    with scraping_every(scrape_interval_s, supervisor, reader, progress=progress) as intervals:
        start = quiet_start(reader, progress=progress)
        pids = supervisor.pids() if supervisor is not None else []
        idle = tree_rss_bytes(pids)
        components = component_pids(supervisor)
        started = time.monotonic()
        cpu_before = sample_cpu(components)
        with PeakMemory(pids) as peak:
            client = run_load(load, progress=progress, timeout_s=profile.duration_s * 2 + 300)
        duration_s = time.monotonic() - started
        cpu_after = sample_cpu(components)
        window = (client.started_at, client.ended_at)
        evidence = evidence_window(reader, start, window[1], progress=progress)
    notes = [client.capacity.line] if client.capacity is not None else []
    notes += [f"client-side figures are unreliable: {why}" for why in client.unreliable_because]
    cpu = None
    if components:
        hashing, hashing_notes = password_hashing(reader, window)
        notes += hashing_notes
        cpu = CpuUse.between(
            cpu_before,
            cpu_after,
            window_s=duration_s,
            requests=client.aggregated.requests,
            hashing=hashing,
        )
    else:
        notes.append("CPU not measured: the provider did not start the processes")
    if not pids:
        notes.append("memory not measured: the provider did not start the processes")
    return LoadStage(
        client=client,
        duration_s=duration_s,
        cpu=cpu,
        memory_mb={"idle": megabytes(idle), "peak": megabytes(peak.peak)},
        notes=tuple(notes),
        evidence_window=evidence,
        prometheus_intervals_s=intervals,
    )


def component_pids(supervisor: Supervisor | None) -> dict[str, int]:
    """Each running component's main pid (empty without a supervisor)."""
    if supervisor is None:
        return {}
    pids = {name: supervisor.pid(name) for name in supervisor.components}
    return {name: pid for name, pid in pids.items() if pid is not None}


def password_hashing(
    reader: PrometheusClient, window: tuple[float, float]
) -> tuple[dict[str, tuple[float, int]], tuple[str, ...]]:
    """bcrypt's CPU seconds and count per operation over the window, from the
    services' own counters (empty when they do not publish them).

    Each counter's last scrape before the window is subtracted from its newest
    scrape, read now, once Prometheus is past the window.
    ``increase()`` over the window would not do: its first sample falls up to a
    scrape interval inside the window, so the sign-ins of the first second (all
    of them in a short run) went uncounted.
    """
    read_at = time.time()
    offset_ms = max(1, round(1000 * (read_at - window[0])))

    def grown(counter: str) -> str:  # summed first: an instance first scraped late starts at 0
        by = "sum by (operation)"
        return f"{by} ({counter}) - {by} ({counter} offset {offset_ms}ms)"

    try:
        cpu = reader.by_labels(grown("password_hashing_cpu_seconds_total"), read_at, ("operation",))
        counts = reader.by_labels(grown("password_hashing_total"), read_at, ("operation",))
    except PrometheusError as error:
        return {}, (f"password hashing CPU: {error}",)
    return {op: (cpu[op], round(counts.get(op, 0))) for op in sorted(cpu)}, ()


# --- the window's own figures (before the drill breaks anything) -----------------------


@dataclass(frozen=True)
class WindowFigures:
    """The plots, the per-endpoint p95 and the targets, over the SLO window."""

    series: dict[str, Series]
    endpoint_p95_ms: dict[str, float]
    targets: tuple[int, int] | None
    notes: tuple[str, ...]
    # password hashing's p95 per operation and phase (queued, running), in ms
    hashing_p95_ms: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def window_figures(reader: PrometheusClient, load: LoadStage) -> WindowFigures:
    """What the report shows of the load's evidence window besides the objectives."""
    client, window = load.client, load.evidence_window
    notes: list[str] = []
    series: dict[str, Series] = {}
    step = max(1, round((window[1] - window[0]) / 150))
    for name, query in series_queries(load.prometheus_intervals_s[0]).items():
        try:
            series[name] = reader.series(query, window[0], window[1], step)
        except PrometheusError as error:
            notes.append(f"plot {name}: {error}")
    series["latency p95 (client)"] = [
        (float(p.timestamp), p.p95_ms) for p in client.history if p.p95_ms is not None
    ]
    series["users"] = [(float(p.timestamp), float(p.users)) for p in client.history]
    endpoint_p95_ms, endpoint_notes = endpoint_p95(reader, window)
    notes += endpoint_notes
    hashing_p95_ms, hashing_notes = hashing_p95(reader, window)
    notes += hashing_notes
    try:
        targets = reader.up_counts()
    except PrometheusError as error:  # reported, not fatal: the SLOs come from the TSDB
        notes.append(f"could not read the Prometheus targets: {error}")
        targets = None
    return WindowFigures(series, endpoint_p95_ms, targets, tuple(notes), hashing_p95_ms)


def endpoint_p95(
    reader: PrometheusClient, window: tuple[float, float]
) -> tuple[dict[str, float], tuple[str, ...]]:
    """The services' own p95 per route over the window, beside the client's."""
    try:
        by_route = _p95_ms_by(
            reader, window, "http_server_request_duration_seconds", ("method", "route")
        )
    except PrometheusError as error:
        return {}, (f"per-endpoint server p95: {error}",)
    return by_route, ()


def hashing_p95(
    reader: PrometheusClient, window: tuple[float, float]
) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """Password hashing's p95 per operation and phase over the window, in ms: how
    long a hash waited for the hashing thread (``queued``) and ran (``running``:
    bcrypt's CPU and the waits for a core). Empty when the services publish no
    ``password_hashing_duration_seconds`` or nothing was hashed."""
    try:
        by_label = _p95_ms_by(
            reader, window, "password_hashing_duration_seconds", ("operation", "phase")
        )
    except PrometheusError as error:
        return {}, (f"password hashing p95: {error}",)
    figures: dict[str, dict[str, float]] = {}
    for label, value in by_label.items():
        operation, phase = label.split(" ", 1)
        if math.isfinite(value):
            figures.setdefault(operation, {})[phase] = value
    return figures, ()


def _p95_ms_by(
    reader: PrometheusClient, window: tuple[float, float], histogram: str, labels: tuple[str, ...]
) -> dict[str, float]:
    """``histogram``'s p95 over the window per ``labels`` (joined by a space), in ms,
    in label order; ``PrometheusError`` when it cannot be read."""
    seconds = max(1, round(window[1] - window[0]))
    query = (
        f"histogram_quantile(0.95, sum by (le, {', '.join(labels)}) "
        f"(rate({histogram}_bucket[{seconds}s])))"
    )
    by_label = reader.by_labels(query, window[1], labels)
    return {label: value * 1000 for label, value in sorted(by_label.items())}


# --- the drill under load --------------------------------------------------------------


def drill_stage(
    stack: Stack,
    supervisor: Supervisor | None,
    load: LoadRunConfig,
    reader: PrometheusClient,
    *,
    users: int,
    plan: DrillPlan | None,
    out_dir: Path,
    progress: Progress,
) -> DrillResult:
    """The fault plan under a second load of the same users (``plan`` None: skipped)."""
    if plan is None:
        progress("resilience drill: skipped (--no-drill)")
        return DrillResult.not_verifiable("the drill was skipped (--no-drill)")
    drill_load = dataclasses.replace(
        load, profile="resilience", out_dir=out_dir, target_users=users
    )
    result, _ = run_drill_under_load(
        stack, supervisor, plan, load=drill_load, reader=reader, progress=progress
    )
    progress(f"resilience drill: {result.status.value}: {result.reason}")
    return result


# --- the objectives --------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Every objective judged over the SLO window, with what it rests on."""

    results: tuple[ObjectiveResult, ...]
    readings: Readings
    buckets: dict[str, Bucket]
    notes: tuple[str, ...]


def evaluation_stage(
    slo: SloFile,
    reader: PrometheusClient,
    window: tuple[float, float],
    *,
    profile: str,
    client: ClientFigures,
    drill: DrillResult,
    baseline: dict[str, float],
) -> Evaluation:
    readings = read_objectives(slo, reader, window, profile=profile, client=client, drill=drill)
    results = evaluate(slo, readings.values, baseline, profile=profile, evidence=readings.evidence)
    buckets, bucket_notes = objective_buckets(results, reader, window[1])
    notes = [*readings.notes, *bucket_notes]
    notes += [
        f"objective {o.name} does not apply to the {profile} profile"
        for o in slo.objectives
        if not o.applies_to(profile)
    ]
    return Evaluation(tuple(results), readings, buckets, tuple(notes))


__all__ = [
    "Evaluation",
    "LoadStage",
    "WindowFigures",
    "component_pids",
    "drill_stage",
    "endpoint_p95",
    "evaluation_stage",
    "gateway_url",
    "hashing_p95",
    "load_stage",
    "password_hashing",
    "prometheus_url",
    "series_queries",
    "suites_stage",
    "window_figures",
]
