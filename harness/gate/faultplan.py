"""The fault plan: which components the resilience drill breaks, how, and what it expects.

One fault at a time, in this order (the full plan):

- ``kill -9`` of the first instance of each service (``auth-1``, ``users-1``,
  ``clinics-1``, ``health-1``): the peer carries the load; the instance is
  restarted once HAProxy has taken it out of rotation;
- ``kill -9`` of PostgreSQL, restarted at once on the same data (what
  Docker's restart policy does), and PostgreSQL frozen (SIGSTOP / ``docker
  pause``) for ``hold_s``: requests must fail cleanly, as the platform's JSON
  503, never hang until the gateway gives up;
- Redis killed and restarted, and Redis frozen;
- HAProxy killed and restarted (the single entry point: its downtime counts);
- Prometheus killed and restarted: traffic is unaffected, and the server-side
  figures of that window are NOT VERIFIABLE;
- one service instance cut off from PostgreSQL and Redis while its peer keeps
  them (containers only): HAProxy must take exactly that instance out;
- 200 ms of latency on PostgreSQL's network (containers, where netem exists).

A fault the provider cannot inject is reported NOT VERIFIABLE with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from harness.providers.services import SERVICE_NAMES


class FaultKind(StrEnum):
    KILL = "kill -9"
    FREEZE = "freeze"
    ISOLATE = "cut off"
    DELAY = "latency"


@dataclass(frozen=True)
class Fault:
    """One fault of the plan.

    - ``hold_s``: how long a freeze, cut-off or latency lasts before it is undone;
    - ``reads_depend``: reads through the gateway cannot be served while this
      component is away (PostgreSQL, HAProxy): they are left out of the
      "reads that do not depend on the failed component" availability for the
      fault's window;
    - ``clean_failures``: requests failing in the window must be the platform's
      own JSON answers (503, 429), never a gateway timeout or a dropped connection;
    - ``server_side_blind``: the fault takes the server-side evidence away
      (Prometheus): the window's server-side figures are NOT VERIFIABLE.
    """

    kind: FaultKind
    component: str
    hold_s: float = 0.0
    reads_depend: bool = False
    clean_failures: bool = False
    server_side_blind: bool = False
    isolate_from: tuple[str, ...] = ()
    delay_ms: int = 0

    @property
    def name(self) -> str:
        if self.kind is FaultKind.KILL:
            return f"kill -9 {self.component}"
        if self.kind is FaultKind.FREEZE:
            return f"{self.component} frozen {self.hold_s:g} s"
        if self.kind is FaultKind.ISOLATE:
            return (
                f"{self.component} cut off from {' and '.join(self.isolate_from)} "
                f"for {self.hold_s:g} s"
            )
        return f"{self.delay_ms} ms latency on {self.component} for {self.hold_s:g} s"

    @property
    def is_service_instance(self) -> bool:
        return self.component.rsplit("-", 1)[0] in SERVICE_NAMES

    @property
    def expectation(self) -> str:
        if self.kind is FaultKind.KILL and self.is_service_instance:
            return "its peer carries the load; HAProxy takes it out, then back after the restart"
        if self.component == "prometheus":
            return "traffic unaffected; the window's server-side figures are not verifiable"
        if self.kind is FaultKind.ISOLATE:
            return "its /ready turns 503 and HAProxy takes exactly it out; users see no failure"
        if self.kind is FaultKind.DELAY:
            return "slower, but served"
        if self.clean_failures:
            return "clean 503s (JSON) while it is away, never a hang; serves again on its own"
        return "serves again on its own after the restart"


def fault_plan(*, short: bool = False, hold_s: float = 10.0) -> tuple[Fault, ...]:
    """The full plan, or the short one ``make test`` runs (four faults)."""
    if short:
        return (
            Fault(FaultKind.KILL, "users-1"),
            Fault(
                FaultKind.FREEZE, "postgres", hold_s=hold_s, reads_depend=True, clean_failures=True
            ),
            Fault(FaultKind.KILL, "redis"),
            Fault(FaultKind.KILL, "postgres", reads_depend=True),
        )
    return (
        *(Fault(FaultKind.KILL, f"{service}-1") for service in SERVICE_NAMES),
        Fault(FaultKind.KILL, "postgres", reads_depend=True),
        Fault(FaultKind.FREEZE, "postgres", hold_s=hold_s, reads_depend=True, clean_failures=True),
        Fault(FaultKind.KILL, "redis"),
        Fault(FaultKind.FREEZE, "redis", hold_s=hold_s),
        Fault(FaultKind.KILL, "haproxy", reads_depend=True),
        Fault(FaultKind.KILL, "prometheus", server_side_blind=True),
        Fault(FaultKind.ISOLATE, "auth-1", hold_s=hold_s, isolate_from=("postgres", "redis")),
        Fault(FaultKind.DELAY, "postgres", hold_s=hold_s, delay_ms=200),
    )


__all__ = ["Fault", "FaultKind", "fault_plan"]
