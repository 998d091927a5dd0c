"""The resilience drill: the fault plan runs while the load's users work.

A second load run (the ``resilience`` shape: the gate profile's users, a
ramp, then a hold long enough for the plan) carries the users; a thread of
the gate breaks one component at a time (``harness.gate.faultplan``) through
the provider's ``Supervisor``, with a quiet interval before and after each
fault. A canary (``harness.gate.recovery.Canary``: its own accounts, through
HAProxy) decides when the platform is *served again* (reads in a row and a
sign-in) and HAProxy's stats page when every server is *back in rotation*,
both timed from the end of the fault (the kill itself, or the resume).

After the load, for each fault window (from the fault to served again and
back in rotation): requests and failures on the client side (Locust's
per-second counts, ``--evidence-dir``) and on the server side (Prometheus,
or NOT VERIFIABLE when scrapes are missing from the window, as when
Prometheus itself was killed); availability over the window and over the
whole drill; the availability of the reads that do not depend on the failed
component; and the ledger of writes checked against the database
(``harness.gate.ledger``): nothing acknowledged may be lost.

Every fault is undone when its step ends, even on error or Ctrl-C.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.exceptions import (
    ConfigurationError,
    FaultNotSupported,
    HarnessError,
    NotReadyYet,
    PrometheusError,
    WaitTimeout,
)
from harness.gate.faultplan import Fault, FaultKind, fault_plan
from harness.gate.ledger import LedgerResult, check_ledger, read_ledger
from harness.gate.loadrun import ClientFigures, LoadRunConfig, run_load
from harness.gate.recovery import CONSISTENT_READS, Canary, describe_servers, haproxy_servers
from harness.gate.status import CheckStatus
from harness.processes import wait_until
from harness.progress import Progress

if TYPE_CHECKING:
    from harness.prometheus_api import PrometheusClient
    from harness.providers import Supervisor
    from harness.stack import Stack


PROBE_ROUTES = ("/health", "/status", "/ready", "/metrics")
#: Answers that are the platform failing cleanly (its JSON error shape, fast).
CLEAN_FAILURES = frozenset({"503", "429"})
#: Seconds around a fault's window also left out of the "unaffected reads"
#: (requests in flight when it began, or answered just after it ended).
EDGE_S = 1.0
CANARY_ACCOUNTS = 4
#: The stated time for HAProxy to take a cut-off instance out of rotation:
#: its /ready fails after the platform's probe timeouts (about 1.5-2 s), then
#: two failed checks 0.5-1 s apart (harness.providers.haproxy); measured
#: 4.2-5.8 s on the containers provider.
TAKEN_OUT_WITHIN_S = 8.0


@dataclass(frozen=True)
class DrillPlan:
    """How the drill runs: the faults, and the load that carries them."""

    faults: tuple[Fault, ...]
    users: int
    spawn_rate: float = 10.0
    quiet_s: float = 5.0  # before and after each fault
    steady_s: float = 20.0  # the steady state measured before the first fault
    step_timeout_s: float = 60.0  # a step not served again by then fails
    writers: int = 0  # users who only write, for the ledger (0: one per 100 users, at least 2)

    def __post_init__(self) -> None:
        if not self.faults:
            raise ConfigurationError("the fault plan is empty")
        if self.users < 1 or self.spawn_rate <= 0:
            raise ConfigurationError("the drill's load needs at least one user and a spawn rate")

    @classmethod
    def for_users(cls, users: int, *, short: bool = False, hold_s: float = 10.0) -> DrillPlan:
        return cls(fault_plan(short=short, hold_s=hold_s), users=users)

    @property
    def writer_users(self) -> int:
        wanted = self.writers or max(2, self.users // 100)
        return min(wanted, max(1, self.users // 2))

    @property
    def ramp_s(self) -> float:
        return math.ceil(self.users / self.spawn_rate) + 5.0

    @property
    def longest_s(self) -> float:
        """An upper bound of the drill's length (the load is stopped when it is done)."""
        per_fault = sum(2 * self.quiet_s + f.hold_s + 2 * self.step_timeout_s for f in self.faults)
        return self.ramp_s + self.steady_s + per_fault + 60.0

    def load_stages(self) -> tuple[tuple[float, int, float], ...]:
        return ((self.longest_s, self.users, self.spawn_rate),)


# --- what happened ----------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # "503" or an exception -> times

    @property
    def availability(self) -> float | None:
        return None if not self.requests else 1 - self.failures / self.requests

    def describe(self) -> str:
        share = self.availability
        text = f"{self.requests:,} requests, {self.failures:,} failed"
        if share is not None:
            text += f" (availability {share:.4%})"
        if self.kinds:
            text += ": " + ", ".join(f"{k} x{n}" for k, n in sorted(self.kinds.items()))
        return text


@dataclass(frozen=True)
class FaultRecord:
    """One fault as the drill thread saw it (epoch times)."""

    fault: Fault
    status: CheckStatus
    reason: str
    injected_at: float | None = None
    ended_at: float | None = None  # the fault undone (for a kill: the kill itself)
    served_again_s: float | None = None  # from ended_at
    in_rotation_s: float | None = None  # from ended_at: every HAProxy server UP
    taken_out_s: float | None = None  # cut off: until HAProxy took it out
    window_end: float | None = None
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultResult:
    """One fault with its window's figures."""

    name: str
    component: str
    kind: str
    expectation: str
    status: CheckStatus
    reason: str
    window: tuple[float, float] | None
    served_again_s: float | None
    in_rotation_s: float | None
    taken_out_s: float | None
    client: Counts
    server: Counts | None  # None: NOT VERIFIABLE (server_note says why)
    server_note: str
    evidence: tuple[str, ...]

    def describe(self) -> str:
        if self.status is CheckStatus.NOT_VERIFIABLE:
            return f"{self.name}: NOT VERIFIABLE ({self.reason})"
        served = "never" if self.served_again_s is None else f"{self.served_again_s:.1f} s"
        rotation = "never" if self.in_rotation_s is None else f"{self.in_rotation_s:.1f} s"
        return (
            f"{self.name}: {self.status.value}; served again after {served}, back in rotation "
            f"after {rotation}; client: {self.client.describe()}"
        )


@dataclass(frozen=True)
class DrillResult:
    status: CheckStatus
    reason: str
    threshold_s: float = 120.0
    faults: tuple[FaultResult, ...] = ()
    ledger: LedgerResult | None = None
    ledger_note: str = ""
    window: tuple[float, float] | None = None
    run: Counts = field(default_factory=Counts)  # every request over the drill
    unaffected_reads: Counts = field(default_factory=Counts)
    steady: Counts = field(default_factory=Counts)  # before the first fault
    users: int = 0
    step_timeout_s: float = 60.0  # a fault never served again counts as this (at least)

    @property
    def recovery_s(self) -> float | None:
        return self.figure("worst_served_again_s")

    @classmethod
    def not_verifiable(cls, reason: str) -> DrillResult:
        return cls(CheckStatus.NOT_VERIFIABLE, reason)

    def figure(self, name: str) -> float | None:
        """A named figure for SLO objectives of ``source: drill``."""
        injected = [f for f in self.faults if f.status is not CheckStatus.NOT_VERIFIABLE]
        if name == "unaffected_read_availability":
            return self.unaffected_reads.availability
        if name == "run_availability":
            return self.run.availability
        if name == "worst_served_again_s":
            if not injected:
                return None
            # a step never served again counts as its whole timeout (at least)
            return max(
                f.served_again_s if f.served_again_s is not None else self.step_timeout_s
                for f in injected
            )
        if name == "lost_writes":
            return None if self.ledger is None else float(self.ledger.lost)
        return None

    def figure_samples(self, name: str) -> int | None:
        if name == "unaffected_read_availability":
            return self.unaffected_reads.requests
        if name == "run_availability":
            return self.run.requests
        if name == "worst_served_again_s":
            return sum(f.status is not CheckStatus.NOT_VERIFIABLE for f in self.faults)
        if name == "lost_writes":
            return None if self.ledger is None else self.ledger.acknowledged
        return None


# --- the drill thread ---------------------------------------------------------------


@dataclass
class _Step:
    """One fault while it runs (monotonic times; ``record`` turns them into epochs)."""

    fault: Fault
    timeout_s: float
    evidence: list[str]
    injected_at: float = field(default_factory=time.time)
    began: float = field(default_factory=time.monotonic)
    ended: float = 0.0  # the fault undone (for a kill: the kill itself)
    served: float | None = None  # from ended
    rotation: float | None = None  # from ended
    taken_out: float | None = None  # from began

    @property
    def deadline(self) -> float:
        return self.began + self.fault.hold_s + self.timeout_s

    def since_began(self) -> float:
        return time.monotonic() - self.began

    def record(self, status: CheckStatus, reason: str) -> FaultRecord:
        now_epoch, now = time.time(), time.monotonic()
        ended_at = now_epoch - (now - (self.ended or now))
        settled = max(x for x in (self.served, self.rotation, 0.0) if x is not None)
        window_end = ended_at + settled if self.served is not None else now_epoch
        return FaultRecord(
            self.fault, status, reason, self.injected_at, ended_at, self.served,
            self.rotation, self.taken_out, window_end, tuple(self.evidence),
        )  # fmt: skip


class _FaultRunner:
    """Breaks one component at a time while the load runs; undoes every fault."""

    def __init__(
        self,
        stack: Stack,
        supervisor: Supervisor,
        plan: DrillPlan,
        canary: Canary,
        progress: Progress,
    ) -> None:
        assert stack.haproxy_stats_url
        self.stack = stack
        self.supervisor = supervisor
        self.plan = plan
        self.canary = canary
        self.stats_url = stack.haproxy_stats_url
        self.say = progress

    def run(self, start_at: float, stop: threading.Event) -> list[FaultRecord]:
        """Wait until ``start_at`` (epoch: the users have ramped up and the steady
        state was measured), then every fault in turn."""
        records: list[FaultRecord] = []
        while time.time() < start_at:
            if stop.is_set():
                return records
            time.sleep(0.2)
        for fault in self.plan.faults:
            if stop.is_set():
                break
            record = self._one(fault)
            records.append(record)
            self.say(f"drill: {fault.name}: {record.status.value}: {record.reason}")
        time.sleep(self.plan.quiet_s)
        return records

    # each fault --------------------------------------------------------------------

    def _one(self, fault: Fault) -> FaultRecord:
        if fault.component not in self.supervisor.components:
            return FaultRecord(
                fault,
                CheckStatus.NOT_VERIFIABLE,
                f"the {self.stack.provider} provider cannot break {fault.component}",
            )
        time.sleep(self.plan.quiet_s)
        self.canary.forget_failures()
        deadline = time.monotonic() + 15.0
        if not (self.canary.signs_in(deadline) and self._reads(deadline)):
            return FaultRecord(
                fault,
                CheckStatus.FAIL,
                f"not healthy before the fault, so it was not injected: {self.canary.failures}",
            )
        self.canary.forget_failures()
        self.say(f"drill: {fault.name} ({fault.expectation})")
        try:
            return self._inject(fault)
        except FaultNotSupported as error:
            return FaultRecord(fault, CheckStatus.NOT_VERIFIABLE, str(error))
        finally:
            self._undo(fault)

    def _inject(self, fault: Fault) -> FaultRecord:
        """Break, hold, undo; then time served again and back in rotation."""
        step = _Step(fault, self.plan.step_timeout_s, [f"HAProxy before: {self._servers()}"])
        breakers = {
            FaultKind.KILL: self._kill,
            FaultKind.FREEZE: self._freeze,
            FaultKind.ISOLATE: self._isolate,
            FaultKind.DELAY: self._delay,
        }
        error = breakers[fault.kind](step)
        if error:
            step.evidence.append(self.supervisor.evidence(fault.component))
            return step.record(CheckStatus.FAIL, error)
        if step.served is None:
            step.served, failures = self.canary.reads_consistently(
                since=step.ended, deadline=step.deadline
            )
            if step.served is not None:
                step.evidence.append(
                    f"served again ({CONSISTENT_READS} reads in a row and a sign-in) after "
                    f"{step.served:.1f} s; {failures} failed canary attempts on the way"
                    + (f": {self.canary.failures}" if failures else "")
                )
        if step.served is None:
            step.evidence.append(f"canary failures: {self.canary.failures}")
            step.evidence.append(self.supervisor.evidence(fault.component))
        last = _wait_for(self.stats_url, lambda: _all_up(self.stats_url), step.deadline)
        step.rotation = time.monotonic() - step.ended if last is None else None
        step.evidence.append(f"HAProxy after: {self._servers()}")
        return step.record(*_judge_step(fault, step, self.plan.step_timeout_s))

    def _kill(self, step: _Step) -> str:
        """``kill -9``. A service instance: the gateway must serve without it; it is
        restarted once HAProxy took it out. Anything else is restarted at once, as
        Docker's restart policy does. Timed from the kill."""
        component = step.fault.component
        step.evidence.append(f"killed pid {self.supervisor.kill(component)}")
        step.ended = step.began
        if not step.fault.is_service_instance:
            error = self._restart(component, step.deadline)
            step.evidence.append(error or f"restarted (ready) after {step.since_began():.1f} s")
            return error
        step.served, _ = self.canary.reads_consistently(since=step.began, deadline=step.deadline)
        step.evidence.append(f"the gateway served without it after {_s(step.served)}")
        server = _server_of(component)
        last = _wait_for(
            self.stats_url, lambda: _server_is(self.stats_url, server, "DOWN"), step.deadline
        )
        step.evidence.append(
            f"HAProxy took it out after {step.since_began():.1f} s"
            if last is None
            else f"HAProxy never took it out ({last})"
        )
        return self._restart(component, step.deadline)

    def _freeze(self, step: _Step) -> str:
        self.supervisor.pause(step.fault.component)
        time.sleep(step.fault.hold_s)
        self.supervisor.resume(step.fault.component)
        step.ended = time.monotonic()
        return ""

    def _isolate(self, step: _Step) -> str:
        """Cut off: HAProxy must take exactly this instance out while it lasts."""
        fault = step.fault
        server = _server_of(fault.component)
        self.supervisor.isolate(fault.component, from_=fault.isolate_from)
        last = _wait_for(
            self.stats_url, lambda: _server_is(self.stats_url, server, "DOWN"), step.deadline
        )
        if last is None:
            step.taken_out = step.since_began()
            step.evidence.append(f"HAProxy took {server} out after {step.taken_out:.1f} s")
        else:
            step.evidence.append(f"HAProxy never took {server} out ({last})")
        others_up = _all_up(self.stats_url, but=server)
        step.evidence.append(f"HAProxy while cut off: {self._servers()}")
        if not others_up:
            step.taken_out = None
            step.evidence.append(f"HAProxy took more than {server} out")
        time.sleep(max(0.0, fault.hold_s - step.since_began()))
        self.supervisor.rejoin(fault.component)
        step.ended = time.monotonic()
        return ""

    def _delay(self, step: _Step) -> str:
        self.supervisor.delay(step.fault.component, ms=step.fault.delay_ms)
        time.sleep(step.fault.hold_s)
        self.supervisor.undelay(step.fault.component)
        step.ended = time.monotonic()
        return ""

    def _reads(self, deadline: float) -> bool:
        seconds, _ = self.canary.reads_consistently(
            since=time.monotonic(), deadline=deadline, sign_in=False
        )
        return seconds is not None

    def _restart(self, component: str, deadline: float) -> str:
        try:
            self.supervisor.restart(component, timeout_s=max(1.0, deadline - time.monotonic()))
        except HarnessError as error:
            return f"the restart of {component} failed: {error}"
        return ""

    def _undo(self, fault: Fault) -> None:
        """Whatever happened in the step, leave every component whole: the
        supervisor knows what it broke and has not undone yet."""
        try:
            left = self.supervisor.faults
            if left:
                for line in self.supervisor.undo_faults():
                    self.say(f"drill: after {fault.name}: undone: {line}")
        except Exception as error:  # reported; the provider's teardown undoes the rest
            self.say(f"drill: could not undo {fault.name}: {error}")

    def _servers(self) -> str:
        return describe_servers(self.stats_url)


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _server_is(stats_url: str, server: str, state: str) -> bool:
    try:
        row = haproxy_servers(stats_url).get(server)
    except NotReadyYet:
        return False
    return (
        row is not None
        and row["status"].split(" ", 1)[0] == state
        and (state != "UP" or row["status"] == "UP")
    )


def _all_up(stats_url: str, *, but: str = "") -> bool:
    """Every server of every backend UP (``but`` that one)."""
    try:
        rows = haproxy_servers(stats_url)
    except NotReadyYet:
        return False
    return bool(rows) and all(row["status"] == "UP" for name, row in rows.items() if name != but)


def _wait_for(stats_url: str, accept: Callable[[], bool], deadline: float) -> str | None:
    """Poll until ``accept()``: ``None``, or at the deadline HAProxy's last view."""
    try:
        wait_until(
            accept, timeout=deadline - time.monotonic(), interval=0.1, what="HAProxy's servers"
        )
        return None
    except WaitTimeout:
        return describe_servers(stats_url)


def _server_of(component: str) -> str:
    return f"{component.rsplit('-', 1)[0]}/{component}"


def _judge_step(fault: Fault, step: _Step, timeout_s: float) -> tuple[CheckStatus, str]:
    served, rotation, taken_out = step.served, step.rotation, step.taken_out
    if served is None:
        return CheckStatus.FAIL, f"not served again within {timeout_s:.0f} s of the fault's end"
    if rotation is None:
        return (
            CheckStatus.FAIL,
            f"served again, but not every server back in rotation in {timeout_s:.0f} s",
        )
    if fault.kind is FaultKind.ISOLATE and taken_out is None:
        return CheckStatus.FAIL, "HAProxy did not take exactly the cut-off instance out"
    if fault.kind is FaultKind.ISOLATE and taken_out is not None and taken_out > TAKEN_OUT_WITHIN_S:
        return CheckStatus.FAIL, (
            f"HAProxy took the cut-off instance out after {taken_out:.1f} s "
            f"(stated: within {TAKEN_OUT_WITHIN_S:g} s)"
        )
    return (
        CheckStatus.PASS,
        f"served again after {served:.1f} s, back in rotation after {rotation:.1f} s",
    )


# --- the figures of each window -----------------------------------------------------------


Bucket = tuple[
    int, str, str, int, int, dict[str, int]
]  # second, method, name, count, failed, kinds


def read_request_counts(directory: Path) -> list[Bucket]:
    """Every load process's per-second request counts (``requests-*.json``)."""
    buckets: list[Bucket] = []
    for path in sorted(directory.glob("requests-*.json")):
        try:
            rows = json.loads(path.read_text())["requests"]
        except (OSError, ValueError, KeyError) as error:
            raise ConfigurationError(f"{path}: unreadable request counts ({error})") from None
        buckets.extend(
            (int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), dict(r[5])) for r in rows
        )
    return buckets


def count(buckets: Iterable[Bucket], keep: Callable[[Bucket], bool] = lambda b: True) -> Counts:
    requests, failures, kinds = 0, 0, Counter()
    for bucket in buckets:
        if keep(bucket):
            requests += bucket[3]
            failures += bucket[4]
            kinds.update(bucket[5])
    return Counts(requests, failures, dict(kinds))


def _is_read(bucket: Bucket) -> bool:
    return bucket[1] == "GET" and bucket[2] not in PROBE_ROUTES


def _within(second: int, start: float, end: float, edge: float = 0.0) -> bool:
    return math.floor(start - edge) <= second <= math.ceil(end + edge)


_USER_ROUTES = 'route!~"/health|/ready|/metrics|/openapi.json|/status"'


def server_counts(reader: PrometheusClient, start: float, end: float) -> tuple[Counts | None, str]:
    """Requests and 5xx the services counted in [start, end], or None and why not."""
    from harness.gate.evidence import target_uptime  # evidence imports this module

    seconds = max(2, math.ceil(end - start))
    try:
        targets = target_uptime(reader, start, end)
        reference = target_uptime(reader, start - seconds, start)
    except PrometheusError as error:
        return None, f"NOT VERIFIABLE: Prometheus could not be read ({error})"
    expected = max((t.scrapes for t in reference), default=0)
    missing = [t.label for t in targets if t.scrapes < expected - 1]
    down = [t.label for t in targets if t.down_in_window]
    if not targets or missing:
        return None, (
            "NOT VERIFIABLE: Prometheus missed scrapes in this window "
            f"({', '.join(missing[:4]) or 'no target'}: fewer than {expected - 1} of "
            f"{expected} expected)"
        )
    counted = f"http_server_request_duration_seconds_count{{{_USER_ROUTES}}}"
    failed = f'http_server_request_duration_seconds_count{{{_USER_ROUTES},status=~"5.."}}'
    try:
        total = reader.instant(f"sum(increase({counted}[{seconds}s]))", end)
        errors = reader.instant(f"sum(increase({failed}[{seconds}s])) or vector(0)", end)
    except PrometheusError as error:
        return None, f"NOT VERIFIABLE: {error}"
    if total is None:
        return None, "NOT VERIFIABLE: no request counted in the window"
    note = (
        f"targets down in the window (their counts are missing): {', '.join(down)}" if down else ""
    )
    return Counts(round(total), round(errors or 0)), note


def analyse(
    records: list[FaultRecord],
    *,
    evidence_dir: Path,
    reader: PrometheusClient | None,
    superuser_dsn: str | None,
    phase: tuple[float, float],
    users: int,
    threshold_s: float = 120.0,
    step_timeout_s: float = 60.0,
) -> DrillResult:
    """Each fault's window figures, the whole drill's availability, and the ledger."""
    buckets = read_request_counts(evidence_dir)
    faults: list[FaultResult] = []
    for record in records:
        window = (
            (record.injected_at, record.window_end or record.injected_at)
            if record.injected_at is not None
            else None
        )
        client, server, note = Counts(), None, "not injected"
        status, reason = record.status, record.reason
        if window is not None:
            client = count(buckets, lambda b, w=window: _within(b[0], *w))
            if reader is not None:
                server, note = server_counts(reader, *window)
            else:
                note = "NOT VERIFIABLE: no Prometheus"
            unclean = {k: n for k, n in client.kinds.items() if k not in CLEAN_FAILURES}
            if record.fault.clean_failures and unclean and status is CheckStatus.PASS:
                status = CheckStatus.FAIL
                reason = (
                    "requests did not fail cleanly (only the platform's 503/429 may): "
                    + ", ".join(f"{k} x{n}" for k, n in sorted(unclean.items()))
                )
            if record.fault.server_side_blind and server is not None:
                note = (
                    "Prometheus was down, yet no scrape is missing from the window: check the drill"
                )
        faults.append(
            FaultResult(
                name=record.fault.name,
                component=record.fault.component,
                kind=record.fault.kind.value,
                expectation=record.fault.expectation,
                status=status,
                reason=reason,
                window=window,
                served_again_s=record.served_again_s,
                in_rotation_s=record.in_rotation_s,
                taken_out_s=record.taken_out_s,
                client=client,
                server=server,
                server_note=note,
                evidence=record.evidence,
            )
        )
    start, end = phase
    first = min((r.injected_at for r in records if r.injected_at is not None), default=end)
    excluded = [
        (r.injected_at, r.window_end or end)
        for r in records
        if r.fault.reads_depend and r.injected_at is not None
    ]
    in_phase = [b for b in buckets if _within(b[0], start, end)]
    unaffected = count(
        in_phase,
        lambda b: _is_read(b) and not any(_within(b[0], s, e, EDGE_S) for s, e in excluded),
    )
    ledger, ledger_note = _ledger(evidence_dir, superuser_dsn)
    result = DrillResult(
        CheckStatus.PASS,
        "",
        threshold_s,
        tuple(faults),
        ledger,
        ledger_note,
        phase,
        run=count(in_phase),
        unaffected_reads=unaffected,
        steady=count(buckets, lambda b: _within(b[0], start, first) and b[0] < first),
        users=users,
        step_timeout_s=step_timeout_s,
    )
    status, reason = _judge(result)
    return DrillResult(**{**result.__dict__, "status": status, "reason": reason})


def _ledger(evidence_dir: Path, superuser_dsn: str | None) -> tuple[LedgerResult | None, str]:
    if superuser_dsn is None:
        return None, "the stack gives no superuser connection: the ledger cannot be checked"
    try:
        writes, files = read_ledger(evidence_dir)
    except ConfigurationError as error:
        return None, str(error)
    if not files:
        return None, f"no ledger was written in {evidence_dir} (did the load run end cleanly?)"
    try:
        return check_ledger(writes, superuser_dsn, files=files), ""
    except Exception as error:  # the database could not be read: no verdict on losses
        return None, f"the ledger could not be checked against the database: {error}"


def _judge(result: DrillResult) -> tuple[CheckStatus, str]:
    failed = [f for f in result.faults if f.status is CheckStatus.FAIL]
    injected = [f for f in result.faults if f.status is not CheckStatus.NOT_VERIFIABLE]
    problems = [f"{f.name}: {f.reason}" for f in failed]
    if result.ledger is not None and result.ledger.lost:
        problems.append(f"{result.ledger.lost} acknowledged writes lost")
    if problems:
        return CheckStatus.FAIL, "; ".join(problems)
    if not injected:
        return CheckStatus.NOT_VERIFIABLE, "no fault could be injected"
    if result.ledger is None:
        return CheckStatus.NOT_VERIFIABLE, f"the ledger of writes: {result.ledger_note}"
    skipped = [f.name for f in result.faults if f.status is CheckStatus.NOT_VERIFIABLE]
    worst = max(injected, key=lambda f: f.served_again_s or 0.0)
    text = (
        f"{len(injected)} faults under {result.users} users, every one served again "
        f"(worst: {worst.name}, {worst.served_again_s:.1f} s); {result.ledger.summary()}"
    )
    if skipped:
        text += f"; not verifiable here: {', '.join(skipped)}"
    return CheckStatus.PASS, text


# --- the whole drill, with its load ------------------------------------------------------


def run_drill_under_load(
    stack: Stack,
    supervisor: Supervisor | None,
    plan: DrillPlan,
    *,
    load: LoadRunConfig,
    reader: PrometheusClient | None,
    progress: Progress,
    threshold_s: float = 120.0,
) -> tuple[DrillResult, ClientFigures | None]:
    """Run ``load`` (its stages replaced by the plan's) and the fault plan during it."""
    if supervisor is None:
        return DrillResult.not_verifiable(
            f"the {stack.provider} provider gives the harness no way to break and restore "
            "components; the drill runs on the local and containers providers"
        ), None
    if not stack.haproxy_url or not stack.haproxy_stats_url:
        return DrillResult.not_verifiable("this stack has no HAProxy (gateway, stats page)"), None
    from dataclasses import replace

    from harness.loadseed import seed_load_accounts
    from harness.tenants import ClientAddresses

    accounts = seed_load_accounts(
        stack.postgres.owner_dsn, accounts=CANARY_ACCOUNTS, users_per_clinic=CANARY_ACCOUNTS
    )
    canary = Canary(stack.haproxy_url, accounts, client_ip=ClientAddresses().next())
    evidence_dir = load.out_dir / "evidence"
    load = replace(
        load,
        stages=plan.load_stages(),
        evidence_dir=evidence_dir,
        writers=plan.writer_users,
        retry_sign_in=True,  # people sign in again while a component is away
        stoppable=True,  # ended when the plan is done
    )
    runner = _FaultRunner(stack, supervisor, plan, canary, progress)
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    started = time.time()

    def carry_the_load() -> None:
        try:
            outcome["client"] = run_load(
                load, progress=progress, timeout_s=plan.longest_s + 300, stop=stop
            )
        except BaseException as error:  # raised again below, with the drill's state
            outcome["error"] = error
        finally:
            stop.set()  # a load that ended early ends the drill too

    # The faults run in this (the main) thread: the components the supervisor
    # restarts are its children, and Linux's parent-death signal follows the
    # thread that started a child: a restart from a short-lived thread would
    # be killed when that thread ends. The load generator is a plain child.
    thread = threading.Thread(target=carry_the_load, name="drill-load", daemon=True)
    progress(
        f"drill: {len(plan.faults)} faults under {plan.users} users (ramp {plan.ramp_s:.0f} s, "
        f"steady {plan.steady_s:.0f} s, quiet {plan.quiet_s:.0f} s around each fault)"
    )
    thread.start()
    try:
        records = runner.run(started + plan.ramp_s + plan.steady_s, stop)
    finally:
        stop.set()
        thread.join()
        canary.close()
    if "error" in outcome:
        raise outcome["error"]
    client: ClientFigures = outcome["client"]
    if len(records) < len(plan.faults):
        progress(f"drill: the load ended after {len(records)} of {len(plan.faults)} faults")
    phase = (started + plan.ramp_s, client.ended_at)
    result = analyse(
        records,
        evidence_dir=evidence_dir,
        reader=reader,
        superuser_dsn=stack.postgres.superuser_dsn or None,
        phase=phase,
        users=plan.users,
        threshold_s=threshold_s,
        step_timeout_s=plan.step_timeout_s,
    )
    return result, client


__all__ = [
    "Counts",
    "DrillPlan",
    "DrillResult",
    "FaultRecord",
    "FaultResult",
    "analyse",
    "read_request_counts",
    "run_drill_under_load",
    "server_counts",
]
