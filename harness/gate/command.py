"""``atendeai gate``: the release gate on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.argtypes import env_pair, positive_number
from harness.exceptions import ConfigurationError
from harness.gate.slo import DEFAULT_SLO_FILE
from loadtests.profiles import PROFILES

PROVIDERS = ("local", "containers", "external")


def add_parser(commands) -> None:
    gate = commands.add_parser(
        "gate",
        help="the release gate: suites, a load profile, SLOs from Prometheus, a go/no-go report",
        description="Bring the stack up, run the pytest suites, run a Locust load profile "
        "through HAProxy, read every SLO back from Prometheus over exactly the load window, "
        "run the resilience drill (the fault plan under the same users: kill -9, freeze and "
        "cut off each component one at a time, time the way back, check the ledger of "
        "acknowledged writes against the database), and write "
        "reports/<run-id>/ (report.html, report.json, junit.xml, summary.md). "
        "Exit 0 go, 1 no-go, 2 a broken run.",
    )
    gate.add_argument("--profile", choices=sorted(PROFILES), default="sla")
    gate.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="local",
        help="local (child processes, default), containers (Docker, the project's images), "
        "external (--stack-json)",
    )
    gate.add_argument(
        "--stack-json", type=Path, metavar="FILE", help="the running stack (--provider external)"
    )
    gate.add_argument("--slo", type=Path, default=DEFAULT_SLO_FILE, metavar="FILE")
    gate.add_argument("--reports-dir", type=Path, default=Path("reports"), metavar="DIR")
    gate.add_argument(
        "--profile-scale",
        type=positive_number,
        default=1.0,
        metavar="X",
        help="multiply every duration of the profile (0.25 = a quarter-length rehearsal)",
    )
    gate.add_argument(
        "--processes", type=int, default=1, help="Locust processes (one per core at most)"
    )
    gate.add_argument(
        "--arrival-rate",
        type=positive_number,
        default=None,
        metavar="RPS",
        help="open model: start RPS requests per second whatever the answers' speed",
    )
    gate.add_argument("--no-suites", action="store_true", help="skip the pytest suites")
    gate.add_argument(
        "--no-drill",
        "--no-recovery-drill",
        dest="no_drill",
        action="store_true",
        help="skip the resilience drill (its objectives are then NOT VERIFIABLE: no-go)",
    )
    gate.add_argument(
        "--drill-plan",
        choices=("full", "short"),
        default="full",
        help="the fault plan: full (every component, default) or short (four faults)",
    )
    gate.add_argument(
        "--drill-hold",
        type=positive_number,
        default=10.0,
        metavar="SECONDS",
        help="how long a freeze or a cut-off lasts (default 10)",
    )
    gate.add_argument(
        "--load-scrape-interval",
        type=positive_number,
        default=None,
        metavar="SECONDS",
        help="how often Prometheus scrapes over the load window (default: as the Docker "
        "deployment, 15 s, from compose/prometheus/prometheus.yml; every second for the "
        "suites and the drill); not with --provider external",
    )
    gate.add_argument(
        "--suite-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument passed to pytest (repeatable), e.g. --suite-arg=-x",
    )
    gate.add_argument(
        "--baseline",
        default="auto",
        metavar="auto|none|FILE",
        help="compare with the last passing run of this profile (auto), nothing, or a report.json",
    )
    gate.add_argument(
        "--service-env",
        type=env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every service of a local stack (repeatable)",
    )
    gate.set_defaults(handler=cmd_gate)


def cmd_gate(args: argparse.Namespace) -> int:
    from harness.gate.runner import EXIT_BROKEN, GateConfig, GateRun

    try:
        config = GateConfig(
            profile=args.profile,
            provider=args.provider,
            stack_json=args.stack_json,
            slo_file=args.slo,
            reports_dir=args.reports_dir,
            profile_scale=args.profile_scale,
            processes=args.processes,
            arrival_rate=args.arrival_rate or 0.0,
            run_suites=not args.no_suites,
            recovery_drill=not args.no_drill,
            drill_plan=args.drill_plan,
            drill_hold_s=args.drill_hold,
            suite_args=tuple(args.suite_arg),
            baseline=args.baseline,
            service_env=tuple(args.service_env),
            load_scrape_interval_s=args.load_scrape_interval,
        )
    except ConfigurationError as error:
        print(f"atendeai gate: error: {error}", file=sys.stderr)
        return EXIT_BROKEN
    return GateRun(config).run()
