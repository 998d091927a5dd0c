"""``atendeai benchmark``: the performance targets, measured (not a timed test).

Runs two gates back to back on this machine, with the load generator beside
the stack, and prints the figures the README records:

- ``sla``: 1000 concurrent users, 1-3 s think time; p95 server and client
  side, overall and per endpoint, error ratio, throughput, stack RSS;
- ``capacity``: +500 users every step until p95 breaks 200 ms; the last
  step that held.

Each run writes its full report under ``reports/<run-id>/``; the suites and
the recovery drill are left out (the gate runs them; here they would only
add minutes). The figures come from each run's ``GateResult``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.argtypes import positive_number

if TYPE_CHECKING:
    from harness.gate.result import GateResult

PROFILES = ("sla", "capacity")


def add_parser(commands) -> None:
    bench = commands.add_parser(
        "benchmark",
        help="run the sla and capacity profiles and print the performance figures",
        description="Run `atendeai gate` with the sla and then the capacity profile (no "
        "suites, no recovery drill) and print p95 (server and client), error ratio, "
        "throughput, memory and the capacity reached. Takes about 12 minutes on a 2-core "
        "machine (capacity stops at its first step that breaks).",
    )
    bench.add_argument(
        "--profile",
        action="append",
        choices=PROFILES,
        help="run only this profile (repeatable; default: both)",
    )
    bench.add_argument("--reports-dir", type=Path, default=Path("reports"), metavar="DIR")
    bench.add_argument(
        "--profile-scale",
        type=positive_number,
        default=1.0,
        metavar="X",
        help="multiply every duration of the profiles (a rehearsal: 0.25)",
    )
    bench.set_defaults(handler=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from harness.exceptions import HarnessError
    from harness.gate.runner import EXIT_BROKEN, EXIT_INTERRUPTED, GateConfig, GateRun

    print(f"benchmark on {machine_line()}", flush=True)
    summaries: list[str] = []
    for profile in args.profile or PROFILES:
        run = GateRun(
            GateConfig(
                profile=profile,
                reports_dir=args.reports_dir,
                profile_scale=args.profile_scale,
                run_suites=False,
                recovery_drill=False,
                baseline="none",
            )
        )
        started = time.monotonic()
        try:
            result = run.execute()
        except HarnessError as error:
            print(f"benchmark: the {profile} run broke: {error}", file=sys.stderr)
            return EXIT_BROKEN
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (harness.cli)
            print(
                f"benchmark: interrupted during the {profile} run: everything it started "
                "was stopped; no report",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        summaries.append(summarise(result, time.monotonic() - started))
    print("\n" + "\n\n".join(summaries), flush=True)
    return 0


def machine_line() -> str:
    import os

    import psutil

    memory_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {memory_gib:.0f} GiB, "
        f"{platform.platform(terse=True)}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def summarise(result: GateResult, wall_s: float) -> str:
    """The figures of one gate run, as the lines the README records."""
    objectives = {r.objective.name: r for r in result.objectives}
    client = result.client
    total = client.aggregated if client is not None else None
    memory = result.memory_mb

    def objective(name: str) -> str:
        item = objectives.get(name)
        if item is None or item.value is None:
            return "n/a"
        value, unit = item.value, item.objective.unit
        shown = {"seconds": f"{value * 1000:.1f} ms", "ratio": f"{value * 100:.3f} %"}.get(
            unit, f"{value:g}"
        )
        status = item.status.value.replace("_", " ")
        samples = item.samples
        return f"{shown} ({status}" + ("" if samples is None else f", {samples:,.0f} samples") + ")"

    lines = [
        f"## {result.profile}: {result.verdict.value.upper()}  (run {result.run_id}, "
        f"wall {wall_s / 60:.1f} min, {result.load_mode})",
        f"- server p95 overall {objective('p95_overall')}; reads {objective('p95_reads')}; "
        f"writes {objective('p95_writes')}; login {objective('p95_login')}",
    ]
    if client is not None and total is not None:
        lines.append(
            f"- client p95 overall {total.p95_ms} ms over {total.requests} requests, "
            f"{total.failures} failed; {total.requests_per_second:.0f} req/s; "
            f"peak users {client.users_peak}"
        )
    lines += [
        f"- server error ratio {objective('error_ratio')}; availability "
        f"{objective('availability')}",
        f"- stack RSS idle {memory.get('idle')} MB, peak {memory.get('peak')} MB",
        *cpu_lines(result),
    ]
    if client is not None and client.capacity is not None:
        lines.append(f"- {client.capacity.line}")
    server = result.endpoint_p95_ms
    lines.append("- p95 per endpoint, client / server (ms):")
    endpoints = client.endpoints if client is not None else ()
    lines += [
        f"  - {e.label}: {_ms(e.p95_ms)} / {_ms(server.get(e.label))}"
        f" ({e.requests:,} requests, {e.failures:,} failed)"
        for e in sorted(endpoints, key=lambda e: -e.requests)
    ]
    return "\n".join(lines)


def cpu_lines(result: GateResult) -> list[str]:
    """CPU per request of the platform (per component, and without password
    hashing) and of the load generator."""
    lines = []
    if (cpu := result.cpu) is not None:
        per = cpu.ms_per_request
        parts = ", ".join(f"{g} {_ms2(per.get(g))}" for g in cpu.seconds)
        lines.append(
            f"- platform CPU per request {_ms2(per.get('platform'))} ms, without password "
            f"hashing {_ms2(cpu.platform_ms_without_hashing)} ms ({parts}); "
            f"{cpu.cores_busy} cores busy" + _intervals(result.prometheus_intervals_s)
        )
        if each := cpu.hashing_ms_each:
            lines.append(
                "- password hashing CPU: "
                + ", ".join(
                    f"{op} {_ms2(ms)} ms x {cpu.hashing[op][1]:,}" for op, ms in each.items()
                )
            )
    if phases := result.hashing_p95_ms:
        lines.append(
            "- password hashing p95, queued / running (ms): "
            + ", ".join(
                f"{op} {_ms(p.get('queued'))} / {_ms(p.get('running'))}" for op, p in phases.items()
            )
        )
    generator = result.client.generator if result.client is not None else None
    if generator is not None:
        share, demand = generator.busiest_core_share, generator.demand_share
        lines.append(
            f"- load generator CPU per request {_ms2(generator.ms_per_request)} ms, "
            f"busiest core {'n/a' if share is None else f'{share:.0%}'}, running or "
            f"waiting for a core {'n/a' if demand is None else f'{demand:.0%}'}"
            + "".join(f"; UNRELIABLE: {why}" for why in generator.unreliable_because)
        )
    return lines


def _ms2(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _intervals(intervals: tuple[float, float] | None) -> str:
    """How often Prometheus scraped and evaluated (part of what the CPU paid for)."""
    if intervals is None:
        return ""
    return f"; Prometheus scraping every {intervals[0]:g} s, rules every {intervals[1]:g} s"
