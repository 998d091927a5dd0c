"""The window Prometheus reads a load over: the load, with a scrape of every target
on each side of it and nothing but the load in between.

Prometheus sees a counter only at its scrapes. Read over exactly the load's
``[start, end]``, a counter's first sample falls up to a scrape interval after
the load's first requests and its last up to one before its last requests:
those went uncounted, and ``increase()`` guessed at them by extrapolation (the
19 sign-ins of a smoke run were counted as 19.6). So the gate

1. before the load, once the stack is quiet (the suites done), waits until
   every target has been scraped past that moment: the window starts then,
   and each counter's newest value at the start holds nothing of the load;
   then it waits until every target has been scraped once more, so that each
   counter also has a sample inside the window before the load's first request;
2. after the load, waits until every target has been scraped past its end;
   the window ends at the first whole second (counted from its start) after that.

In between there is nothing but the load, Prometheus's own scrapes and
HAProxy's health checks. On the stacks the gate starts, Prometheus scrapes
as often as the Docker deployment does (15 s) over that window, and every
second before and after it (``scraping_every``): the suites and the drill
need their data within seconds, while rendering and storing every target's
metrics once a second costs the stack CPU the deployment does not spend
(measured in the README: a fifth of the platform's CPU per request in the
``sla`` run). Over such a window ``rate()`` and
``histogram_quantile`` see every request of the load, and the count of a
window's requests is exact as the counter at the end minus the counter at the
start (``X - X offset $window``, which ``harness.gate.slo`` derives), without
``increase()``'s extrapolation to the window's edges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from harness.exceptions import PrometheusError, WaitTimeout
from harness.processes import wait_until
from harness.progress import Progress
from harness.prometheus_api import PrometheusClient
from harness.providers import Supervisor

#: How long to wait for a scrape of every target, beyond two scrape intervals.
SCRAPE_WAIT_S = 30.0


@dataclass(frozen=True)
class QuietStart:
    """The start of an evidence window, fixed before the load begins."""

    at: float  # every target was scraped between the quiet moment and this time
    timeout_s: float  # how long a wait for the next scrape of every target may take


def scrape_wait_s(reader: PrometheusClient) -> float:
    """How long the next scrape of every target may take: 30 s plus two scrape
    intervals (15 s each in the compose deployment), or 30 s when unknown."""
    try:
        scrape_s, _ = reader.intervals_s()
    except PrometheusError:
        return SCRAPE_WAIT_S
    return SCRAPE_WAIT_S + 2 * scrape_s


def wait_for_last_scrape(reader: PrometheusClient, end: float, *, timeout_s: float = 30) -> bool:
    """Wait until Prometheus has scraped every target past ``end``; False when it
    did not in time. (Every target: each is scraped at an offset of its own, and
    the newest scrape of one says nothing of the auth service's counters.)"""

    def scraped_past_end() -> bool:
        try:
            newest = reader.instant("min(timestamp(up))", time.time())
        except PrometheusError:
            return False
        return newest is not None and newest > end

    try:
        wait_until(scraped_past_end, timeout=timeout_s, interval=0.2, what="the last scrape")
    except WaitTimeout:  # said as a warning: the figures are read anyway
        return False
    return True


def quiet_start(reader: PrometheusClient, *, progress: Progress) -> QuietStart:
    """Fix the evidence window's start, now that nothing but probes and scrapes
    reaches the stack (step 1 of the module's description)."""
    timeout_s = scrape_wait_s(reader)
    quiet_from = time.time()
    progress("waiting for a scrape of every target before the load (the window's start)")
    complete = wait_for_last_scrape(reader, quiet_from, timeout_s=timeout_s)
    start = time.time()
    complete = complete and wait_for_last_scrape(reader, start, timeout_s=timeout_s)
    if not complete:
        progress(
            f"warning: Prometheus did not scrape every target within {timeout_s:.0f} s: "
            "the window's first requests may go uncounted"
        )
    return QuietStart(at=start, timeout_s=timeout_s)


def evidence_window(
    reader: PrometheusClient, start: QuietStart, load_end: float, *, progress: Progress
) -> tuple[float, float]:
    """The evidence window, once every target was scraped past ``load_end`` (step 2):
    a whole number of seconds long, and over by the time this returns."""
    if not wait_for_last_scrape(reader, load_end, timeout_s=start.timeout_s):
        progress(
            f"warning: Prometheus did not scrape every target past the load within "
            f"{start.timeout_s:.0f} s: the window's last requests may go uncounted"
        )
    end = start.at + math.ceil(time.time() - start.at)
    time.sleep(max(0.0, end - time.time()))
    return (start.at, end)


@contextmanager
def scraping_every(
    seconds: float | None,
    supervisor: Supervisor | None,
    reader: PrometheusClient,
    *,
    progress: Progress,
) -> Iterator[tuple[float, float]]:
    """Prometheus scraping every ``seconds`` within the block, and as often as
    before once it ends; yields the (scrape, rule evaluation) intervals it runs
    with inside. Nothing changes without a supervisor (an external stack's
    Prometheus is not ours) or with ``seconds`` None. When the block raises, the
    interval is left as it is: the run is over and its stack about to stop."""
    intervals = reader.intervals_s()
    before = intervals[0]
    if supervisor is None or seconds is None or seconds == before:
        yield intervals
        return
    progress(f"Prometheus: scraping every {seconds:g} s over the load (every {before:g} s before)")
    supervisor.scrape_every(seconds)
    yield (seconds, intervals[1])
    progress(f"Prometheus: scraping every {before:g} s again")
    supervisor.scrape_every(before)


__all__ = [
    "QuietStart",
    "evidence_window",
    "quiet_start",
    "scrape_wait_s",
    "scraping_every",
    "wait_for_last_scrape",
]
