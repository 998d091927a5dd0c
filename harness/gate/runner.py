"""One gate run as a pipeline of stages: stack → suites → load → drill under load
→ SLOs → verdict → reports.

``GateRun.execute()`` returns the ``GateResult`` (and writes the reports);
``GateRun.run()`` only maps it to an exit code: 0 go, 1 no-go, 2 a broken run
(bad SLO file, the stack or the load generator failed): a broken run never
pretends to be a verdict, and leaves no half-written report behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.exceptions import ConfigurationError, HarnessError
from harness.gate.acceptance import CRITERIA, assess
from harness.gate.crosscheck import cross_check
from harness.gate.drill import DrillPlan, DrillResult
from harness.gate.loadrun import LoadRunConfig
from harness.gate.report import (
    format_samples,
    format_value,
    status_text,
    value_with_bucket,
    write_reports,
)
from harness.gate.result import GateResult
from harness.gate.slo import DEFAULT_SLO_FILE, SloFile, Verdict, load_slo_file
from harness.gate.stages import (
    Evaluation,
    LoadStage,
    WindowFigures,
    drill_stage,
    evaluation_stage,
    gateway_url,
    load_stage,
    prometheus_url,
    suites_stage,
    window_figures,
)
from harness.gate.status import CheckStatus
from harness.gate.suites import SuiteResults
from harness.gate.verdict import decide_verdict
from harness.progress import Progress, printer
from harness.prometheus_api import PrometheusClient, wait_for_stack_targets
from harness.providers import RunningStack, StackRequest, open_stack
from harness.providers.prometheus import (
    PrometheusSettings,
    at_deployment_evaluation_interval,
    deployment_interval_s,
)
from loadtests.profiles import PROFILES

EXIT_GO, EXIT_NO_GO, EXIT_BROKEN = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C

print_progress = printer("gate")


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
    # how often Prometheus scrapes over the load window (None: as the Docker
    # deployment does, 15 s); every second for the suites and the drill
    load_scrape_interval_s: float | None = None

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
        if self.load_scrape_interval_s is not None:
            if self.load_scrape_interval_s <= 0:
                raise ConfigurationError("--load-scrape-interval must be positive")
            if self.provider == "external":
                raise ConfigurationError(
                    "--load-scrape-interval does not apply to --provider external: "
                    "the gate does not reconfigure a Prometheus it did not start"
                )

    def scrape_interval_over_load_s(self) -> float | None:
        """Prometheus's scrape interval over the load window: the one asked for, or
        the deployment's; None on an external stack (left as it runs)."""
        if self.provider == "external":
            return None
        if self.load_scrape_interval_s is not None:
            return self.load_scrape_interval_s
        return deployment_interval_s("scrape_interval")

    @property
    def load_mode(self) -> str:
        if self.arrival_rate > 0:
            return f"open arrival model at {self.arrival_rate:g} requests/s"
        return "closed model (each user waits 1-3 s between tasks)"


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
            stored = GateResult.read(path)
        except ConfigurationError as error:
            if config.baseline != "auto":
                raise ConfigurationError(f"--baseline {error}") from None
            continue  # a report of an older harness or a broken file: not a baseline
        if stored.verdict is Verdict.GO and stored.profile == config.profile:
            return stored.objective_values(), str(path)
    return {}, None


class GateRun:
    def __init__(self, config: GateConfig, *, progress: Progress = print_progress) -> None:
        self.config = config
        self.progress = progress
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{config.profile}"
        self.out_dir = config.reports_dir / self.run_id

    def run(self) -> int:
        """The run as an exit code: 0 go, 1 no-go, 2 broken (the error is said)."""
        try:
            result = self.execute()
        except HarnessError as error:
            self.progress(f"broken run: {error}")
            return EXIT_BROKEN
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (harness.cli)
            self.progress("interrupted: everything the run started was stopped; no report")
            return EXIT_INTERRUPTED
        return EXIT_GO if result.verdict is Verdict.GO else EXIT_NO_GO

    def execute(self) -> GateResult:
        """Run every stage, write the reports, return what was found. A broken
        run raises its ``HarnessError`` (with the evidence) and an interrupted one
        ``KeyboardInterrupt``; neither leaves a report."""
        slo = load_slo_file(self.config.slo_file)
        # read before anything starts: a bad --baseline FILE is a broken run at once
        baseline = find_baseline(self.config, self.config.reports_dir)
        try:
            result = self._stages(slo, baseline)
        except (HarnessError, KeyboardInterrupt):
            shutil.rmtree(self.out_dir, ignore_errors=True)
            raise
        paths = write_reports(result, self.out_dir)
        self._say_summary(result, paths)
        return result

    def _open_stack(self, resources: ExitStack) -> RunningStack:
        """The stack, and the supervisor that can kill and restart its parts (if any)."""
        if self.config.provider == "external":  # started elsewhere: nothing to set
            request = StackRequest(provider="external", stack_json=self.config.stack_json)
        else:
            request = StackRequest(
                provider=self.config.provider,
                stack_json=self.config.stack_json,  # refused here: it names no stack to start
                # tokens that expire during the run, so refreshes are part of the load
                service_env=(
                    ("ATENDEAI_ACCESS_TOKEN_TTL_SECONDS", "120"),
                    *self.config.service_env,
                ),
                # scrapes every second for the suites and the drill (their windows
                # are seconds long; the load's window has the deployment's, see
                # load_stage), the rules as often as the deployment: the gate reads none
                prometheus=at_deployment_evaluation_interval(PrometheusSettings()),
            )
        return resources.enter_context(open_stack(request, progress=self.progress))

    def _load_config(self, gateway: str, stack_json: Path, users: int) -> LoadRunConfig:
        return LoadRunConfig(
            profile=self.config.profile,
            host=gateway,
            stack_json=stack_json,
            out_dir=self.out_dir / "load",
            profile_scale=self.config.profile_scale,
            processes=self.config.processes,
            arrival_rate=self.config.arrival_rate,
            target_users=users,
        )

    def _drill_plan(self, users: int) -> DrillPlan | None:
        if not self.config.recovery_drill:
            return None
        return DrillPlan.for_users(
            users, short=self.config.drill_plan == "short", hold_s=self.config.drill_hold_s
        )

    def _stages(self, slo: SloFile, baseline: tuple[dict[str, float], str | None]) -> GateResult:
        config, progress = self.config, self.progress
        timings: dict[str, float] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        progress(f"run {self.run_id}: reports in {self.out_dir}")
        with ExitStack() as resources:
            started = time.monotonic()
            running = self._open_stack(resources)
            stack, supervisor = running.stack, running.supervisor
            timings["stack start"] = time.monotonic() - started
            secrets_dir = Path(resources.enter_context(tempfile.TemporaryDirectory()))
            stack_json = secrets_dir / "stack.json"
            stack.write_json(stack_json)

            suites: SuiteResults | None = None
            if config.run_suites:
                started = time.monotonic()
                suites = suites_stage(
                    stack_json,
                    self.out_dir / "suites-junit.xml",
                    extra_args=config.suite_args,
                    progress=progress,
                )
                timings["suites"] = time.monotonic() - started

            # a request made before Prometheus's first scrape of its instance is
            # in that first sample: no increase, so the window would not see it
            progress("waiting for Prometheus's first scrape of every target")
            wait_for_stack_targets(stack, timeout_s=30)
            gateway = gateway_url(stack)
            reader = resources.enter_context(PrometheusClient(prometheus_url(stack)))
            profile = PROFILES[config.profile].scaled(config.profile_scale)
            progress(
                f"load: profile {profile.name} ({profile.description}), about "
                f"{profile.duration_s:.0f} s, {config.load_mode}, through {gateway}"
            )
            load_config = self._load_config(gateway, stack_json, profile.peak_users)
            load = load_stage(
                load_config,
                profile,
                supervisor,
                reader,
                scrape_interval_s=config.scrape_interval_over_load_s(),
                progress=progress,
            )
            timings["load"] = load.duration_s
            # the SLO window's own figures, before the drill breaks anything
            figures = window_figures(reader, load)

            started = time.monotonic()
            drill = drill_stage(
                stack,
                supervisor,
                load_config,
                reader,
                users=profile.peak_users,
                plan=self._drill_plan(profile.peak_users),
                out_dir=self.out_dir / "drill",
                progress=progress,
            )
            timings["drill under load"] = time.monotonic() - started
            if drill.status is not CheckStatus.NOT_VERIFIABLE or drill.faults:
                # Prometheus may have been killed and restarted: the SLO window's
                # samples are in its TSDB; wait until every target is scraped again
                wait_for_stack_targets(stack, timeout_s=60)

            evaluation = evaluation_stage(
                slo,
                reader,
                load.evidence_window,
                profile=config.profile,
                client=load.client,
                drill=drill,
                baseline=baseline[0],
            )

        return self._result(suites, load, figures, drill, evaluation, timings, baseline[1])

    def _result(
        self,
        suites: SuiteResults | None,
        load: LoadStage,
        figures: WindowFigures,
        drill: DrillResult,
        evaluation: Evaluation,
        timings: dict[str, float],
        baseline_from: str | None,
    ) -> GateResult:
        """What the stages found, decided and put together."""
        decision = decide_verdict(evaluation.results, suites, drill)
        results, readings = evaluation.results, evaluation.readings
        return GateResult(
            run_id=self.run_id,
            profile=self.config.profile,
            provider=self.config.provider,
            load_mode=self.config.load_mode,
            verdict=decision.verdict,
            window=load.window,
            evidence_window=load.evidence_window,
            objectives=results,
            queries=readings.queries,
            sample_queries=readings.sample_queries,
            target_uptime=readings.targets,
            cross_checks=tuple(cross_check(results, load.client, evaluation.buckets)),
            buckets=evaluation.buckets,
            acceptance=tuple(assess(CRITERIA, suites, results, drill)),
            suites=suites,
            client=load.client,
            memory_mb=load.memory_mb,
            cpu=load.cpu,
            series=figures.series,
            targets=figures.targets,
            prometheus_intervals_s=load.prometheus_intervals_s,
            hashing_p95_ms=figures.hashing_p95_ms,
            notes=load.notes + figures.notes + evaluation.notes + decision.notes,
            timings_s=timings,
            baseline_from=baseline_from,
            recovery=drill,
            endpoint_p95_ms=figures.endpoint_p95_ms,
        )

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
