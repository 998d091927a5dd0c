"""The recovery drill: break the running stack on purpose and time its way back.

The spec's "Recovery time < 2 minutos" is decided by measurement. A canary
signs in through HAProxy (``POST /auth/login``, with accounts of its own) and
reads (``GET /auth/me``, which always queries PostgreSQL, and
``GET /clinics/me``), while the drill, acting as the supervisor (what Docker's
``restart: unless-stopped`` does), breaks one part at a time:

1. ``kill -9`` one instance of a service (``auth-1``), then
   - *gateway serves without it*: seconds from the kill until the canary
     reads ``CONSISTENT_READS`` times in a row through HAProxy and signs in;
   - *back in rotation*: once HAProxy has marked it DOWN, the supervisor
     restarts it (same port); seconds from the kill until HAProxy's stats
     page says UP again;
2. ``kill -9`` PostgreSQL (the postmaster and every backend, as ``docker kill`` does),
   restarted at once on the same data directory and port (crash recovery
   replays the WAL): seconds from the kill until the canary reads
   consistently and signs in again (the services' pools reconnect and
   HAProxy puts the instances back).

Every step is timed with ``time.monotonic()``. The recovery time is the worst
step; the drill passes when every step recovered in under ``threshold_s``
(``RECOVERY_THRESHOLD_S``, the spec's two minutes). A step that has not
recovered when ``timeout_s`` runs out fails with its evidence: the canary's
last answer, HAProxy's view of the servers, and the component's port, pid
and log tail. Without a supervisor (``--provider external``) nothing can be
restarted, and the drill says NOT VERIFIABLE HERE with the reason.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from harness.stack import Stack
from harness.tenants import login_body

if TYPE_CHECKING:
    import httpx

    from harness.loadseed import LoadAccount
    from harness.providers import Supervisor

#: The spec: "Recovery time < 2 minutos".
RECOVERY_THRESHOLD_S = 120.0
#: Reads in a row, through the gateway, that count as "serving again".
CONSISTENT_READS = 5
READ_INTERVAL_S = 0.2
REQUEST_TIMEOUT_S = 5.0
#: How long the canary may take to read consistently before any fault.
BASELINE_TIMEOUT_S = 15.0
CANARY_ACCOUNTS = 4

Progress = Callable[[str], None]


class DrillStatus(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    NOT_VERIFIABLE = "NOT VERIFIABLE HERE"


@dataclass(frozen=True)
class DrillStep:
    """One measured recovery: what was broken and how long until it was whole again."""

    name: str
    fault: str
    recovered: bool
    seconds: float | None  # from the fault to recovery; None when it never recovered
    evidence: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.seconds is None:
            return f"{self.name}: NOT recovered"
        return f"{self.name}: {self.seconds:.1f} s"


@dataclass(frozen=True)
class RecoveryResult:
    status: DrillStatus
    reason: str
    threshold_s: float = RECOVERY_THRESHOLD_S
    steps: tuple[DrillStep, ...] = ()

    @property
    def recovery_s(self) -> float | None:
        """The worst step's seconds (``None`` when a step never recovered or none ran)."""
        if not self.steps or not all(step.recovered for step in self.steps):
            return None
        return max(step.seconds for step in self.steps if step.seconds is not None)

    @classmethod
    def not_verifiable(cls, reason: str) -> RecoveryResult:
        return cls(DrillStatus.NOT_VERIFIABLE, reason)


# --- the canary ------------------------------------------------------------------


class Canary:
    """A user who signs in and reads through the gateway; counts what went wrong.

    Every call takes the ``deadline`` (``time.monotonic()``) of the step it
    serves: no request outlives it.
    """

    def __init__(self, gateway: str, accounts: Sequence[LoadAccount], *, client_ip: str) -> None:
        import httpx

        self._accounts = itertools.cycle(accounts)  # one per sign-in: no account limit
        self._client = httpx.Client(
            base_url=gateway, headers={"X-Forwarded-For": client_ip}, timeout=REQUEST_TIMEOUT_S
        )
        self._token = ""
        self._failures: Counter[str] = Counter()  # "GET /auth/me answered 503" -> times
        self._examples: dict[str, str] = {}  # the last answer's body, per kind of failure

    def forget_failures(self) -> None:
        self._failures.clear()
        self._examples.clear()

    @property
    def failures(self) -> str:
        """What went wrong since ``forget_failures()``, most frequent first, with an example."""
        if not self._failures:
            return "none"
        return "; ".join(
            f"{kind} x{times}" + (f" ({self._examples[kind]})" if self._examples[kind] else "")
            for kind, times in self._failures.most_common()
        )

    def sign_in(self, deadline: float) -> bool:
        """``POST /auth/login`` once, with the next account; keeps the access token."""
        account = next(self._accounts)
        response = self._request("POST", "/auth/login", deadline, json=login_body(account))
        if response is None:
            return False
        self._token = response.json()["access_token"]
        return True

    def signs_in(self, deadline: float) -> bool:
        """Sign in, trying again until ``deadline`` (a stack just restarted warms up)."""
        while not self.sign_in(deadline):
            if time.monotonic() >= deadline:
                return False
            time.sleep(READ_INTERVAL_S)
        return True

    def read(self, deadline: float) -> bool:
        """``GET /auth/me`` (always queries PostgreSQL) and ``GET /clinics/me``, both 200."""
        headers = {"Authorization": f"Bearer {self._token}"}
        return all(
            self._request("GET", path, deadline, headers=headers) is not None
            for path in ("/auth/me", "/clinics/me")
        )

    def reads_consistently(
        self, *, since: float, deadline: float, sign_in: bool = True
    ) -> tuple[float | None, int]:
        """Seconds from ``since`` until ``CONSISTENT_READS`` reads in a row succeed (and
        then a sign-in, when asked), and how many attempts failed on the way;
        ``None`` seconds when ``deadline`` comes first."""
        streak, streak_began, failures = 0, 0.0, 0
        while time.monotonic() < deadline:
            if self.read(deadline):
                streak += 1
                streak_began = time.monotonic() if streak == 1 else streak_began
                if streak >= CONSISTENT_READS:
                    if not sign_in or self.sign_in(deadline):
                        return streak_began - since, failures
                    streak = 0
                    failures += 1
            else:
                streak = 0
                failures += 1
            time.sleep(READ_INTERVAL_S)
        return None, failures

    def _request(self, method: str, path: str, deadline: float, **options) -> httpx.Response | None:
        import httpx

        timeout = min(REQUEST_TIMEOUT_S, max(0.2, deadline - time.monotonic()))
        try:
            response = self._client.request(method, path, timeout=timeout, **options)
        except httpx.HTTPError as error:
            self._failed(f"{method} {path}: {type(error).__name__}", str(error))
            return None
        if response.status_code != 200:
            self._failed(f"{method} {path} answered {response.status_code}", response.text)
            return None
        return response

    def _failed(self, kind: str, example: str) -> None:
        self._failures[kind] += 1
        self._examples[kind] = " ".join(example.split())[:160]

    def close(self) -> None:
        self._client.close()


# --- HAProxy's view ----------------------------------------------------------------


def haproxy_servers(stats_url: str) -> dict[str, dict[str, str]]:
    """``{"backend/server": row}`` from HAProxy's stats page at ``stats_url`` (``status``,
    ``check_status``, ``last_chk``...)."""
    import httpx

    from harness.providers.daemon import NotReadyYet
    from harness.providers.haproxy import server_rows

    text = httpx.get(f"{stats_url};csv", timeout=REQUEST_TIMEOUT_S).text
    try:
        return server_rows(text)
    except NotReadyYet as error:
        raise ValueError(f"HAProxy's stats page at {stats_url}: {error}") from None


def _server_state(stats_url: str, server: str) -> tuple[str, str]:
    """HAProxy's status of ``server`` (``UP``, ``DOWN``, ``UP 1/2`` while going down...)
    and a description with its last check, for evidence."""
    try:
        row = haproxy_servers(stats_url).get(server)
    except Exception as error:  # evidence, not a crash: the stats page is what we watch
        return "", f"stats page unreadable ({type(error).__name__}: {error})"
    if row is None:
        return "", f"{server} missing from the stats page"
    check = f"{row.get('check_status', '?')} {row.get('check_desc', '')}".strip()
    return row["status"], f"{row['status']} (last check: {check})"


def _is_down(status: str) -> bool:
    return status.split(" ", 1)[0] == "DOWN"  # "DOWN 1/2" is on its way up, still out


def _is_up(status: str) -> bool:
    return status == "UP"  # "UP 1/2" is on its way down


def _wait_for(
    stats_url: str, server: str, accept: Callable[[str], bool], deadline: float
) -> str | None:
    """Poll HAProxy until ``accept(status)``: ``None``, or at the deadline the last
    state seen (evidence)."""
    seen = "never read"
    while time.monotonic() < deadline:
        status, seen = _server_state(stats_url, server)
        if accept(status):
            return None
        time.sleep(0.1)
    return seen


# --- the drill ------------------------------------------------------------------------


@dataclass
class _Drill:
    stack: Stack
    supervisor: Supervisor
    canary: Canary
    stats_url: str
    timeout_s: float
    progress: Progress

    def kill_instance(self, instance: str) -> list[DrillStep]:
        """Step 1: ``kill -9`` one service instance; the gateway, then the restart."""
        backend = instance.rsplit("-", 1)[0]
        server = f"{backend}/{instance}"
        steps = []
        self.canary.forget_failures()
        pid = self.supervisor.kill(instance)
        began = time.monotonic()
        deadline = began + self.timeout_s
        fault = f"kill -9 {instance} (pid {pid})"
        self.progress(f"recovery drill: {fault}")
        seconds, failures = self.canary.reads_consistently(since=began, deadline=deadline)
        name = f"{instance} killed: the gateway serves without it"
        if seconds is None:
            steps.append(self._failed(name, fault, instance, failures))
        else:
            self.progress(
                f"recovery drill: the gateway served without {instance} in {seconds:.1f} s"
            )
            steps.append(DrillStep(name, fault, True, seconds, (self._on_the_way(failures),)))

        name = f"{instance} restarted: back in rotation"
        last = _wait_for(self.stats_url, server, _is_down, deadline)
        if last is not None:
            why = f"HAProxy never took {server} out of rotation (last state: {last})"
            return [*steps, DrillStep(name, fault, False, None, (why,))]
        marked_down = time.monotonic() - began
        self.progress(f"recovery drill: HAProxy marked {server} DOWN after {marked_down:.1f} s")
        restart_error = self._restart(instance, deadline)
        if restart_error:
            return [*steps, DrillStep(name, fault, False, None, (restart_error,))]
        restarted = time.monotonic() - began
        last = _wait_for(self.stats_url, server, _is_up, deadline)
        if last is not None:
            evidence = (
                f"the supervisor's restart returned after {restarted:.1f} s, but HAProxy did "
                f"not report {server} UP within {self.timeout_s:.0f} s of the kill "
                f"(last state: {last})",
                self.supervisor.evidence(instance),
            )
            return [*steps, DrillStep(name, fault, False, None, evidence)]
        seconds = time.monotonic() - began
        self.progress(f"recovery drill: {server} UP again {seconds:.1f} s after the kill")
        evidence = (
            f"HAProxy marked it DOWN after {marked_down:.1f} s",
            f"the supervisor restarted it (answering GET /ready) after {restarted:.1f} s",
            f"HAProxy reported it UP after {seconds:.1f} s",
        )
        return [*steps, DrillStep(name, fault, True, seconds, evidence)]

    def kill_postgres(self) -> DrillStep:
        """Step 2: ``kill -9`` PostgreSQL, restart it at once, wait for the canary."""
        name = "PostgreSQL killed and restarted: the platform serves again"
        self.canary.forget_failures()
        pid = self.supervisor.kill("postgres")
        began = time.monotonic()
        deadline = began + self.timeout_s
        fault = f"kill -9 postgres (pid {pid} and every backend, as docker kill does)"
        self.progress(f"recovery drill: {fault}; restarting it on the same data and port")
        restart_error = self._restart("postgres", deadline)
        if restart_error:
            return DrillStep(name, fault, False, None, (restart_error,))
        restarted = time.monotonic() - began
        said = f"the supervisor's restart of postgres returned after {restarted:.1f} s"
        self.progress(f"recovery drill: {said}")
        seconds, failures = self.canary.reads_consistently(since=began, deadline=deadline)
        if seconds is None:
            return self._failed(name, fault, "postgres", failures, said)
        self.progress(f"recovery drill: the canary read and signed in after {seconds:.1f} s")
        evidence = (
            f"the supervisor restarted PostgreSQL (accepting connections, after crash "
            f"recovery) in {restarted:.1f} s",
            self._on_the_way(failures),
        )
        return DrillStep(name, fault, True, seconds, evidence)

    def _on_the_way(self, failures: int) -> str:
        seen = f": {self.canary.failures}" if failures else ""
        return f"{failures} failed canary attempts on the way{seen}"

    def _restart(self, component: str, deadline: float) -> str:
        """Restart through the supervisor; "" or why it failed (the error carries the log)."""
        from harness.exceptions import HarnessError

        try:
            self.supervisor.restart(component, timeout_s=max(1.0, deadline - time.monotonic()))
        except HarnessError as error:
            return f"the restart of {component} failed: {error}"
        return ""

    def _failed(
        self, name: str, fault: str, component: str, failures: int, *context: str
    ) -> DrillStep:
        evidence = (
            f"the canary did not read {CONSISTENT_READS} times in a row and sign in through "
            f"{self.stack.haproxy_url} within {self.timeout_s:.0f} s of the fault "
            f"({failures} failed attempts); failures seen: {self.canary.failures}",
            *context,
            f"HAProxy: {self._servers()}",
            self.supervisor.evidence(component),
        )
        self.progress(f"recovery drill: {name}: NOT recovered within {self.timeout_s:.0f} s")
        return DrillStep(name, fault, False, None, evidence)

    def _servers(self) -> str:
        try:
            rows = haproxy_servers(self.stats_url)
        except Exception as error:
            return f"stats page unreadable ({type(error).__name__}: {error})"
        return ", ".join(f"{name} {row['status']}" for name, row in sorted(rows.items()))


def run_recovery_drill(
    stack: Stack,
    supervisor: Supervisor | None,
    *,
    instance: str = "auth-1",
    timeout_s: float = RECOVERY_THRESHOLD_S,
    threshold_s: float = RECOVERY_THRESHOLD_S,
    progress: Progress | None = None,
) -> RecoveryResult:
    """Kill ``instance`` and then PostgreSQL, restart them, and time the way back.

    ``timeout_s`` bounds each step (a step not recovered by then fails);
    ``threshold_s`` is what the worst step must stay under.
    """
    say = progress or (lambda line: None)
    if supervisor is None:
        result = RecoveryResult.not_verifiable(
            f"the {stack.provider} provider gives the harness no way to kill and restart "
            "components; the drill runs on the local and containers providers"
        )
    elif not stack.haproxy_url or not stack.haproxy_stats_url:
        result = RecoveryResult.not_verifiable("this stack has no HAProxy (gateway, stats page)")
    else:
        result = _drill(stack, supervisor, instance, timeout_s, threshold_s, say)
    say(f"recovery drill: {result.status.value}: {result.reason}")
    return result


def _drill(
    stack: Stack,
    supervisor: Supervisor,
    instance: str,
    timeout_s: float,
    threshold_s: float,
    say: Progress,
) -> RecoveryResult:
    assert stack.haproxy_url and stack.haproxy_stats_url
    try:
        accounts = _canary_accounts(stack)
    except Exception as error:  # the database is not healthy before any fault
        return _unhealthy(threshold_s, f"could not create the canary's accounts: {error}")
    from harness.tenants import ClientAddresses

    canary = Canary(stack.haproxy_url, accounts, client_ip=ClientAddresses().next())
    try:
        deadline = time.monotonic() + BASELINE_TIMEOUT_S
        healthy = canary.signs_in(deadline)
        if healthy:
            seconds, _ = canary.reads_consistently(
                since=time.monotonic(), deadline=deadline, sign_in=False
            )
            healthy = seconds is not None
        if not healthy:
            return _unhealthy(threshold_s, f"the canary's failures: {canary.failures}")
        drill = _Drill(stack, supervisor, canary, stack.haproxy_stats_url, timeout_s, say)
        steps = drill.kill_instance(instance)
        # a fresh token for the next step (short access-token TTLs)
        canary.forget_failures()
        if canary.signs_in(time.monotonic() + BASELINE_TIMEOUT_S):
            steps.append(drill.kill_postgres())
        else:
            steps.append(
                DrillStep(
                    "PostgreSQL killed and restarted: the platform serves again",
                    "not injected",
                    False,
                    None,
                    (f"the canary could not sign in before the fault: {canary.failures}",),
                )
            )
    finally:
        canary.close()
    return _judge(tuple(steps), threshold_s)


def _judge(steps: tuple[DrillStep, ...], threshold_s: float) -> RecoveryResult:
    not_recovered = [step.name for step in steps if not step.recovered]
    if not_recovered:
        reason = f"not recovered within the drill's timeout: {'; '.join(not_recovered)}"
        return RecoveryResult(DrillStatus.FAIL, reason, threshold_s, steps)
    worst = max(steps, key=lambda step: step.seconds or 0.0)
    assert worst.seconds is not None
    comparison = "<" if worst.seconds < threshold_s else ">="
    reason = (
        f"recovery time {worst.seconds:.1f} s {comparison} {threshold_s:.0f} s "
        f"(worst step: {worst.name})"
    )
    status = DrillStatus.PASS if worst.seconds < threshold_s else DrillStatus.FAIL
    return RecoveryResult(status, reason, threshold_s, steps)


def _unhealthy(threshold_s: float, why: str) -> RecoveryResult:
    return RecoveryResult(
        DrillStatus.FAIL,
        f"the stack was not healthy before the drill, so no fault was injected: {why}",
        threshold_s,
    )


def _canary_accounts(stack: Stack) -> list[LoadAccount]:
    from harness.loadseed import seed_load_accounts

    return seed_load_accounts(
        stack.postgres.owner_dsn, accounts=CANARY_ACCOUNTS, users_per_clinic=CANARY_ACCOUNTS
    )


__all__ = [
    "RECOVERY_THRESHOLD_S",
    "Canary",
    "DrillStatus",
    "DrillStep",
    "RecoveryResult",
    "haproxy_servers",
    "run_recovery_drill",
]
