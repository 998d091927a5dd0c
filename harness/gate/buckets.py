"""The histogram bucket a server-side percentile falls in.

``histogram_quantile`` interpolates linearly inside a bucket: a p95 shown as
243 ms only says "between 200 and 250 ms". The reports print the bucket
beside every such figure, and the cross-check uses the bucket's width as the
uncertainty of the server's side. The bounds are read from Prometheus (the
``le`` labels the services publish), not assumed, so a stack with other
buckets is reported truly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from harness.gate.slo import ObjectiveResult
from harness.prometheus_api import PrometheusClient, PrometheusError

Bucket = tuple[float, float]  # (lower, upper] in the objective's unit; upper may be inf

_QUANTILE_OF = re.compile(r"histogram_quantile\s*\(.*?([A-Za-z_:][A-Za-z0-9_:]*)_bucket\b", re.S)


def histogram_of(query: str) -> str | None:
    """The histogram a ``histogram_quantile`` query reads (``X`` of ``X_bucket``)."""
    match = _QUANTILE_OF.search(query)
    return match.group(1) if match else None


def bucket_of(value: float, bounds: Iterable[float]) -> Bucket | None:
    """The bucket ``(lower, upper]`` that holds ``value`` among upper ``bounds``."""
    lower = 0.0
    for upper in sorted(set(bounds)):
        if value <= upper:
            return (lower, upper)
        lower = upper
    return None


def read_bounds(reader: PrometheusClient, histogram: str, at: float) -> tuple[float, ...]:
    """The ``le`` bounds ``histogram`` has in Prometheus at ``at`` (+Inf included)."""
    by_le = reader.by_labels(f"count by (le) ({histogram}_bucket)", at, ("le",))
    return tuple(sorted(float(le) for le in by_le))


def objective_buckets(
    results: Iterable[ObjectiveResult], reader: PrometheusClient, at: float
) -> tuple[dict[str, Bucket], list[str]]:
    """Each percentile objective's bucket (by objective name), and notes on
    what could not be read."""
    buckets: dict[str, Bucket] = {}
    notes: list[str] = []
    bounds: dict[str, tuple[float, ...]] = {}
    for result in results:
        histogram = histogram_of(result.objective.query)
        if histogram is None or result.value is None or math.isnan(result.value):
            continue
        if histogram not in bounds:
            try:
                bounds[histogram] = read_bounds(reader, histogram, at)
            except PrometheusError as error:
                notes.append(f"buckets of {histogram}: {error}")
                bounds[histogram] = ()
        bucket = bucket_of(result.value, bounds[histogram])
        if bucket is not None:
            buckets[result.objective.name] = bucket
    return buckets, notes


def bucket_text(bucket: Bucket, scale: float = 1000.0, unit: str = "ms") -> str:
    """``bucket 200-250 ms`` (or ``above 5000 ms``)."""
    low, high = bucket
    if math.isinf(high):
        return f"bucket above {low * scale:g} {unit}"
    return f"bucket {low * scale:g}-{high * scale:g} {unit}"


__all__ = ["Bucket", "bucket_of", "bucket_text", "histogram_of", "objective_buckets", "read_bounds"]
