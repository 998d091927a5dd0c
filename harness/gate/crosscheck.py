"""Server-side figures beside the load generator's, with their difference.

The two views measure different things (the server's histogram starts when
the request reaches the service; the client's clock includes HAProxy, the
network stack and the generator's own scheduling on the same 2 cores), so
they agree when within ``TOLERANCE_MS`` or ``TOLERANCE_RATIO``, whichever is
larger. A disagreement beyond that is reported: one of the views is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.loadrun import ClientFigures
from harness.slo import ObjectiveResult

TOLERANCE_MS = 25.0
TOLERANCE_RATIO = 0.5
ERROR_RATIO_TOLERANCE = 0.005

# objective name -> (client endpoint label or "" for aggregated, figure)
CLIENT_COUNTERPARTS: dict[str, tuple[str, str]] = {
    "p95_overall": ("", "p95_ms"),
    "p95_login": ("POST /auth/login", "p95_ms"),
    "error_ratio": ("", "failure_ratio"),
}


@dataclass(frozen=True)
class CrossCheck:
    objective: str
    server: float | None
    client: float | None
    unit: str
    tolerance: str
    agrees: bool | None  # None when either side has no figure

    @property
    def difference(self) -> float | None:
        if self.server is None or self.client is None:
            return None
        return self.client - self.server


def _client_value(client: ClientFigures, label: str, figure: str) -> float | None:
    if not label:
        return client.figure(figure)
    for endpoint in client.endpoints:
        if endpoint.label == label:
            if figure == "p95_ms":
                return endpoint.p95_ms
            if figure == "failure_ratio" and endpoint.requests:
                return endpoint.failures / endpoint.requests
    return None


def cross_check(results: list[ObjectiveResult], client: ClientFigures) -> list[CrossCheck]:
    checks = []
    for result in results:
        counterpart = CLIENT_COUNTERPARTS.get(result.objective.name)
        if counterpart is None:
            continue
        client_value = _client_value(client, *counterpart)
        if result.objective.unit == "seconds":
            server = None if result.value is None else result.value * 1000
            unit = "ms"
            tolerance = f"±max({TOLERANCE_MS:g} ms, {TOLERANCE_RATIO:.0%})"
            limit = (
                None
                if server is None or client_value is None
                else max(TOLERANCE_MS, TOLERANCE_RATIO * max(server, client_value))
            )
        else:
            server = result.value
            unit = result.objective.unit
            tolerance = f"±{ERROR_RATIO_TOLERANCE:g}"
            limit = ERROR_RATIO_TOLERANCE
        agrees = (
            None
            if server is None or client_value is None or limit is None
            else abs(client_value - server) <= limit
        )
        checks.append(
            CrossCheck(result.objective.name, server, client_value, unit, tolerance, agrees)
        )
    return checks
