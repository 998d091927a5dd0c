"""One gate run, wired together: stack → suites → load → drill under load → SLOs → reports.

Exit codes: 0 go, 1 no-go, 2 a broken run (bad SLO file, the stack or the
load generator failed): a broken run never pretends to be a verdict.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.exceptions import ConfigurationError, HarnessError, SloFileError
from harness.gate.acceptance import CRITERIA, assess
from harness.gate.buckets import objective_buckets
from harness.gate.cpu import CpuUse, sample_cpu
from harness.gate.crosscheck import cross_check
from harness.gate.drill import DrillPlan, DrillResult, run_drill_under_load
from harness.gate.evidence import read_objectives
from harness.gate.loadrun import ClientFigures, LoadRunConfig, run_load
from harness.gate.memory import PeakMemory, megabytes, tree_rss_bytes
from harness.gate.prometheus import PrometheusReader, QueryError
from harness.gate.recovery import DrillStatus
from harness.gate.report import (
    format_samples,
    format_value,
    status_text,
    value_with_bucket,
    write_reports,
)
from harness.gate.result import GateResult
from harness.gate.slo import (
    DEFAULT_SLO_FILE,
    SloFile,
    Verdict,
    evaluate,
    load_slo_file,
    verdict,
)
from harness.gate.suites import SuiteResults, run_suites
from harness.prometheus_api import wait_for_stack_targets
from harness.providers import RunningStack, StackRequest, Supervisor, open_stack
from harness.stack import Stack
from loadtests.profiles import PROFILES

EXIT_GO, EXIT_NO_GO, EXIT_BROKEN = 0, 1, 2
Progress = Callable[[str], None]

# Latency and traffic over time, for the report's plots (server side).
_USER_ROUTES = 'route!~"/health|/ready|/metrics|/openapi.json|/status"'
_BUCKETS = f"sum by (le) (rate(http_server_request_duration_seconds_bucket{{{_USER_ROUTES}}}[15s]))"
SERIES_QUERIES = {
    "latency p50": f"histogram_quantile(0.50, {_BUCKETS}) * 1000",
    "latency p95": f"histogram_quantile(0.95, {_BUCKETS}) * 1000",
    "requests/s": f"sum(rate(http_server_request_duration_seconds_count{{{_USER_ROUTES}}}[15s]))",
    "errors/s": 'sum(rate(http_server_request_duration_seconds_count{status=~"5..|429"}[15s]))'
    " or vector(0)",
}


def print_progress(line: str) -> None:
    print(f"gate: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class GateConfig:
    profile: str = "sla"
    provider: str = "local"
    stack_json: Path | None = None
    slo_file: Path = DEFAULT_SLO_FILE
    reports_dir: Path = Path("reports")
    profile_scale: float = 1.0
    processes: int = 1
    arrival_rate: float = 0.0
    run_suites: bool = True
    recovery_drill: bool = True  # the resilience drill under load (after the SLO window)
    drill_plan: str = "full"  # "full" or "short" (four faults)
    drill_hold_s: float = 10.0  # how long a freeze or cut-off lasts
    suite_args: tuple[str, ...] = ()
    baseline: str = "auto"  # "auto" (last passing run of this profile), "none", or a report.json
    service_env: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigurationError(
                f"unknown profile {self.profile!r} (choose one of: {', '.join(PROFILES)})"
            )
        if self.profile_scale <= 0:
            raise ConfigurationError("--profile-scale must be positive")
        if self.processes < 1:
            raise ConfigurationError("--processes must be at least 1")
        if self.arrival_rate < 0:
            raise ConfigurationError("--arrival-rate cannot be negative")
        if self.provider == "external" and self.stack_json is None:
            raise ConfigurationError("--provider external needs --stack-json FILE")
        if self.drill_plan not in ("full", "short"):
            raise ConfigurationError(f"--drill-plan must be full or short, not {self.drill_plan!r}")
        if self.drill_hold_s <= 0:
            raise ConfigurationError("--drill-hold must be positive")

    @property
    def load_mode(self) -> str:
        if self.arrival_rate > 0:
            return f"open arrival model at {self.arrival_rate:g} requests/s"
        return "closed model (each user waits 1-3 s between tasks)"


def _gateway(stack: Stack) -> str:
    if not stack.haproxy_url:
        raise ConfigurationError("this stack has no HAProxy URL to send the load through")
    return stack.haproxy_url


def _prometheus(stack: Stack) -> str:
    if not stack.prometheus_url:
        raise ConfigurationError("this stack has no Prometheus URL to read the SLOs from")
    return stack.prometheus_url


def find_baseline(config: GateConfig, reports_dir: Path) -> tuple[dict[str, float], str | None]:
    """Objective values of the last passing run of the same profile."""
    if config.baseline == "none":
        return {}, None
    candidates: list[Path]
    if config.baseline != "auto":
        candidates = [Path(config.baseline)]
    else:
        candidates = sorted(reports_dir.glob("*/report.json"), reverse=True)
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            if config.baseline != "auto":
                raise ConfigurationError(f"--baseline {path}: not a readable report.json") from None
            continue
        if data.get("verdict") != Verdict.GO.value or data.get("profile") != config.profile:
            continue
        values = {
            item["objective"]["name"]: item["value"]
            for item in data.get("objectives", [])
            if item.get("value") is not None
        }
        return values, str(path)
    return {}, None


class GateRun:
    def __init__(self, config: GateConfig, *, progress: Progress = print_progress) -> None:
        self.config = config
        self.progress = progress
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{config.profile}"
        self.out_dir = config.reports_dir / self.run_id

    def run(self) -> int:
        try:
            slo = load_slo_file(self.config.slo_file)
        except HarnessError as error:
            self.progress(f"broken run: {error}")
            return EXIT_BROKEN
        except SloFileError as error:
            self.progress(f"broken run: {error}")
            return EXIT_BROKEN
        try:
            result = self._run(slo)
        except HarnessError as error:
            # no half-written report: the error itself carries the evidence (log tails)
            shutil.rmtree(self.out_dir, ignore_errors=True)
            self.progress(f"broken run: {error}")
            return EXIT_BROKEN
        paths = write_reports(result, self.out_dir)
        self._say_summary(result, paths)
        return EXIT_GO if result.verdict is Verdict.GO else EXIT_NO_GO

    def _stack(self, resources: ExitStack) -> RunningStack:
        """The stack, and the supervisor that can kill and restart its parts (if any)."""
        request = StackRequest(
            provider=self.config.provider,
            stack_json=self.config.stack_json,
            # tokens that expire during the run, so refreshes are part of the load
            service_env=(("ATENDEAI_ACCESS_TOKEN_TTL_SECONDS", "120"), *self.config.service_env)
            if self.config.provider != "external"
            else (),
        )
        return resources.enter_context(open_stack(request, progress=self.progress))

    def _run(self, slo: SloFile) -> GateResult:
        timings: dict[str, float] = {}
        notes: list[str] = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.progress(f"run {self.run_id}: reports in {self.out_dir}")
        with ExitStack() as resources:
            started = time.monotonic()
            running = self._stack(resources)
            stack, supervisor = running.stack, running.supervisor
            timings["stack start"] = time.monotonic() - started
            secrets_dir = Path(resources.enter_context(tempfile.TemporaryDirectory()))
            stack_json = secrets_dir / "stack.json"
            stack.write_json(stack_json)

            suites: SuiteResults | None = None
            if self.config.run_suites:
                self.progress("running the suites (pytest, JUnit XML)")
                started = time.monotonic()
                suites = run_suites(
                    stack_json,
                    self.out_dir / "suites-junit.xml",
                    extra_args=self.config.suite_args,
                    timeout_s=1800,
                    progress=self.progress,
                )
                timings["suites"] = time.monotonic() - started
                self.progress(
                    f"suites: {suites.count('passed')} passed, {suites.count('failed')} failed, "
                    f"{suites.count('error')} errors, {suites.count('skipped')} skipped"
                )

            # a request made before Prometheus's first scrape of its instance is
            # in that first sample: no increase, so the window would not see it
            self.progress("waiting for Prometheus's first scrape of every target")
            wait_for_stack_targets(stack, timeout_s=30)
            pids = supervisor.pids() if supervisor is not None else []
            idle = tree_rss_bytes(pids)
            gateway = _gateway(stack)
            reader = PrometheusReader(_prometheus(stack))
            profile = PROFILES[self.config.profile].scaled(self.config.profile_scale)
            self.progress(
                f"load: profile {profile.name} ({profile.description}), about "
                f"{profile.duration_s:.0f} s, {self.config.load_mode}, through {gateway}"
            )
            load = LoadRunConfig(
                profile=self.config.profile,
                host=gateway,
                stack_json=stack_json,
                out_dir=self.out_dir / "load",
                profile_scale=self.config.profile_scale,
                processes=self.config.processes,
                arrival_rate=self.config.arrival_rate,
                target_users=profile.peak_users,
            )
            started = time.monotonic()
            components = _component_pids(supervisor)
            cpu_before = sample_cpu(components)
            with PeakMemory(pids) as peak:
                client = run_load(
                    load, progress=self.progress, timeout_s=profile.duration_s * 2 + 300
                )
            timings["load"] = time.monotonic() - started
            cpu_after = sample_cpu(components)
            if client.capacity is not None:
                notes.append(client.capacity.line)
            notes.extend(
                f"client-side figures are unreliable: {why}" for why in client.unreliable_because
            )
            window = (client.started_at, client.ended_at)
            self._wait_for_last_scrape(reader, window[1])
            cpu = (
                CpuUse.between(
                    cpu_before,
                    cpu_after,
                    window_s=timings["load"],
                    requests=client.aggregated.requests,
                    hashing=self._hashing(reader, window, notes),
                )
                if components
                else None
            )
            if cpu is None:
                notes.append("CPU not measured: the provider did not start the processes")
            # the SLO window's own figures, before the drill breaks anything
            series = self._series(reader, client, window, notes)
            endpoint_p95_ms = self._endpoint_p95(reader, window, notes)
            try:
                targets = reader.targets()
            except Exception as error:  # reported, not fatal: the SLOs already came back
                notes.append(f"could not read the Prometheus targets: {error}")
                targets = None
            memory = {"idle": megabytes(idle), "peak": megabytes(peak.peak)}
            if not pids:
                notes.append("memory not measured: the provider did not start the processes")

            # the drill: a second load of the same users while the fault plan runs
            started = time.monotonic()
            drill = self._drill(stack, supervisor, load, profile.peak_users, reader)
            timings["drill under load"] = time.monotonic() - started
            if drill.status is not DrillStatus.NOT_VERIFIABLE or drill.faults:
                # Prometheus may have been killed and restarted: the SLO window's
                # samples are in its TSDB; wait until every target is scraped again
                wait_for_stack_targets(stack, timeout_s=60)

            baseline, baseline_from = find_baseline(self.config, self.config.reports_dir)
            readings = read_objectives(
                slo, reader, window, profile=self.config.profile, client=client, drill=drill
            )
            notes.extend(readings.notes)
            results = evaluate(
                slo,
                readings.values,
                baseline,
                profile=self.config.profile,
                evidence=readings.evidence,
            )
            buckets, bucket_notes = objective_buckets(results, reader, window[1])
            notes.extend(bucket_notes)
            notes.extend(
                f"objective {o.name} does not apply to the {self.config.profile} profile"
                for o in slo.objectives
                if not o.applies_to(self.config.profile)
            )

        drill_failed = drill.status is DrillStatus.FAIL
        if drill_failed:
            notes.append(f"the resilience drill failed: the verdict is no-go ({drill.reason})")
        return GateResult(
            run_id=self.run_id,
            profile=self.config.profile,
            provider=self.config.provider,
            load_mode=self.config.load_mode,
            verdict=(
                Verdict.NO_GO
                if drill_failed or (suites is not None and not suites.ok)
                else verdict(results)
            ),
            window=window,
            objectives=tuple(results),
            queries=readings.queries,
            sample_queries=readings.sample_queries,
            target_uptime=readings.targets,
            cross_checks=tuple(cross_check(results, client, buckets)),
            buckets=buckets,
            acceptance=tuple(assess(CRITERIA, suites, results, drill)),
            suites=suites,
            client=client,
            memory_mb=memory,
            cpu=cpu,
            series=series,
            targets=targets,
            notes=tuple(notes)
            + (("the suites failed: the verdict is no-go",) if suites and not suites.ok else ()),
            timings_s=timings,
            baseline_from=baseline_from,
            recovery=drill,
            endpoint_p95_ms=endpoint_p95_ms,
        )

    def _endpoint_p95(
        self, reader: PrometheusReader, window: tuple[float, float], notes: list[str]
    ) -> dict[str, float]:
        """The services' own p95 per route over the window, beside the client's."""
        seconds = max(1, round(window[1] - window[0]))
        query = (
            "histogram_quantile(0.95, sum by (le, method, route) "
            f"(rate(http_server_request_duration_seconds_bucket[{seconds}s])))"
        )
        try:
            by_route = reader.by_labels(query, window[1], ("method", "route"))
        except QueryError as error:
            notes.append(f"per-endpoint server p95: {error}")
            return {}
        return {label: value * 1000 for label, value in sorted(by_route.items())}

    def _hashing(
        self, reader: PrometheusReader, window: tuple[float, float], notes: list[str]
    ) -> dict[str, tuple[float, int]]:
        """bcrypt's CPU seconds and count per operation over the window, from
        the services' own counters (empty when they do not publish them)."""
        seconds = max(1, round(window[1] - window[0]))
        try:
            cpu = reader.by_labels(
                f"sum by (operation) (increase(password_hashing_cpu_seconds_total[{seconds}s]))",
                window[1],
                ("operation",),
            )
            counts = reader.by_labels(
                f"sum by (operation) (increase(password_hashing_total[{seconds}s]))",
                window[1],
                ("operation",),
            )
        except QueryError as error:
            notes.append(f"password hashing CPU: {error}")
            return {}
        return {op: (cpu[op], round(counts.get(op, 0))) for op in sorted(cpu)}

    def _drill(
        self,
        stack: Stack,
        supervisor: Supervisor | None,
        load: LoadRunConfig,
        users: int,
        reader: PrometheusReader,
    ) -> DrillResult:
        if not self.config.recovery_drill:
            self.progress("resilience drill: skipped (--no-drill)")
            return DrillResult.not_verifiable("the drill was skipped (--no-drill)")
        plan = DrillPlan.for_users(
            users, short=self.config.drill_plan == "short", hold_s=self.config.drill_hold_s
        )
        drill_load = dataclasses.replace(
            load, profile="resilience", out_dir=self.out_dir / "drill", target_users=users
        )
        result, _ = run_drill_under_load(
            stack, supervisor, plan, load=drill_load, reader=reader, progress=self.progress
        )
        self.progress(f"resilience drill: {result.status.value}: {result.reason}")
        return result

    def _wait_for_last_scrape(self, reader: PrometheusReader, end: float) -> None:
        """Wait until Prometheus has scraped past the end of the window."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                newest = reader.instant("max(timestamp(up))", time.time())
            except QueryError:
                newest = None
            if newest is not None and newest >= end:
                return
            time.sleep(0.5)
        self.progress("warning: Prometheus did not scrape past the load window within 30 s")

    def _series(
        self,
        reader: PrometheusReader,
        client: ClientFigures,
        window: tuple[float, float],
        notes: list[str],
    ) -> dict[str, list[tuple[float, float]]]:
        series: dict[str, list[tuple[float, float]]] = {}
        step = max(1, round((window[1] - window[0]) / 150))
        for name, query in SERIES_QUERIES.items():
            try:
                series[name] = reader.series(query, window[0], window[1], step)
            except QueryError as error:
                notes.append(f"plot {name}: {error}")
        series["latency p95 (client)"] = [
            (float(p.timestamp), p.p95_ms) for p in client.history if p.p95_ms is not None
        ]
        series["users"] = [(float(p.timestamp), float(p.users)) for p in client.history]
        return series

    def _say_summary(self, result: GateResult, paths: dict[str, Path]) -> None:
        self.progress(f"verdict: {result.verdict.value.upper()}")
        for r in result.objectives:
            self.progress(
                f"  {status_text(r):14} {r.objective.name:14} "
                f"{value_with_bucket(r, result.buckets):>12}  "
                f"({r.objective.comparator} {format_value(r, r.objective.threshold)}; "
                f"samples {format_samples(r)})"
            )
            if not r.verifiable:
                self.progress(f"    {r.reason}")
        if (drill := result.recovery) is not None:
            self.progress(f"  resilience drill {drill.status.value}: {drill.reason}")
        self.progress(f"report: {paths['html']}")


def _component_pids(supervisor: Supervisor | None) -> dict[str, int]:
    """Each running component's main pid (empty without a supervisor)."""
    if supervisor is None:
        return {}
    pids = {name: supervisor.pid(name) for name in supervisor.components}
    return {name: pid for name, pid in pids.items() if pid is not None}
