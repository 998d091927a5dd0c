"""Server-side figures beside the load generator's, with their difference.

The two views measure different things: the server's histogram starts when
the request reaches the service; the client's clock adds the gateway's hop,
the network stack and the generator's own scheduling. They must agree within
what may truly differ, each part stated in the tolerance:

- the server's bucket: ``histogram_quantile`` interpolates inside a bucket,
  so the true percentile is anywhere in it (its width);
- the client's rounding: Locust keeps response times exact below 100 ms, to
  10 ms below 1 s, and to 100 ms above;
- the gateway's hop, which the services' clocks do not see: at most
  ``GATEWAY_HOP_MS`` (the spec's "Gateway < 20 ms"), or the gateway's own
  measured overhead when the run has one.

The generator's own overhead is not allowed for: when the generator could
not keep up (``GeneratorUse``), the client figures are marked unreliable and
every check says why. A delay in front of the services that their clocks do
not see (a slow gateway, a slow network) is a disagreement: reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from harness.gate.buckets import Bucket, bucket_text
from harness.gate.loadrun import ClientFigures
from harness.gate.slo import ObjectiveResult

GATEWAY_HOP_MS = 20.0
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
    tolerance: str  # how far apart the views may be, and why
    agrees: bool | None  # None when either side has no figure, or it cannot be judged
    note: str = ""  # e.g. why the client side is unreliable

    @property
    def difference(self) -> float | None:
        if self.server is None or self.client is None:
            return None
        return self.client - self.server


def locust_rounding_ms(value_ms: float) -> float:
    """How coarsely Locust stores a response time of ``value_ms``."""
    if value_ms < 100:
        return 1.0
    if value_ms < 1000:
        return 10.0
    return 100.0


def latency_tolerance(
    client_ms: float, bucket: Bucket | None, gateway_ms: float | None = None
) -> tuple[float | None, str]:
    """The largest difference the two views of a percentile may truly have
    (None: it cannot be judged), and how it is made up."""
    if bucket is None:
        return None, "the server's bucket is unknown: not judged"
    width_ms = (bucket[1] - bucket[0]) * 1000
    if math.isinf(width_ms):
        return None, f"the server's figure is in its last {bucket_text(bucket)}: not judged"
    hop = GATEWAY_HOP_MS if gateway_ms is None else gateway_ms
    hop_text = (
        f"gateway hop <= {hop:g} ms (the spec's bound)"
        if gateway_ms is None
        else f"gateway hop {hop:.1f} ms (measured)"
    )
    rounding = locust_rounding_ms(client_ms)
    limit = round(width_ms + rounding + hop, 1)
    return limit, (
        f"±{limit:g} ms = {bucket_text(bucket)} ({width_ms:g}) + client rounding "
        f"({rounding:g}) + {hop_text}"
    )


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


def cross_check(
    results: list[ObjectiveResult],
    client: ClientFigures,
    buckets: Mapping[str, Bucket] | None = None,
    *,
    gateway_ms: float | None = None,
) -> list[CrossCheck]:
    """Each objective with a client counterpart, judged within its tolerance.

    ``buckets``: the server's bucket per objective (``harness.gate.buckets``);
    ``gateway_ms``: the gateway's measured overhead, when the run has one."""
    buckets = buckets or {}
    unreliable = client.unreliable_because
    note = f"client side unreliable: {'; '.join(unreliable)}" if unreliable else ""
    checks = []
    for result in results:
        counterpart = CLIENT_COUNTERPARTS.get(result.objective.name)
        if counterpart is None:
            continue
        client_value = _client_value(client, *counterpart)
        if result.objective.unit == "seconds":
            server = None if result.value is None else result.value * 1000
            unit = "ms"
            limit, tolerance = (
                latency_tolerance(client_value, buckets.get(result.objective.name), gateway_ms)
                if client_value is not None
                else (None, "no client figure")
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
            CrossCheck(result.objective.name, server, client_value, unit, tolerance, agrees, note)
        )
    return checks
