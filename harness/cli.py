"""``atendeai``: the harness on the command line.

Subcommands:

- ``atendeai up [--provider local|containers] [--json FILE] [--keep-dir]``: bring
  the stack up, print every endpoint, keep it running until Ctrl-C or SIGTERM,
  then tear it down.
- ``atendeai images build [--force] [--base-image IMAGE]``: build the
  containers' images that are missing or stale (``harness.images``).

- ``atendeai gate [--profile P] [--provider local|containers|external] ...``:
  the release gate (``harness.gate.command``); exit 0 go, 1 no-go, 2 broken.
- ``atendeai lint-rls --dsn DSN [--schema S] [--app-role R] [--tenant-column C] [--json]``:
  the RLS lint (``harness.security.rls_lint``) against any database, this platform's or
  another schema (its options: ``atendeai lint-rls --help``); exit 0 clean,
  1 findings, 2 could not run or a bad option.

Exit codes of ``up``: 0 success; 2 bad usage or a stack that failed to start
(the error's evidence is printed); 130 interrupted while starting.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from harness.argtypes import env_pair, positive_number
from harness.exceptions import ConfigurationError, HarnessError
from harness.stack import Stack

PROG = "atendeai"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Verify the AtendeAI platform foundation: bring up, check, report."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="bring the stack up and keep it running until Ctrl-C",
        description="Bring the stack up (PostgreSQL, Redis, two instances of each "
        "of the four services behind HAProxy, the PostgreSQL and Redis exporters, "
        "Prometheus), print its endpoints and keep it running until Ctrl-C or SIGTERM.",
    )
    up.add_argument(
        "--provider",
        choices=("local", "containers"),
        default="local",
        help="child processes (local, default) or Docker containers from the project's "
        "images (containers; builds missing images first)",
    )
    up.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the endpoints to FILE (atomically; removed on teardown); "
        "use it with `pytest --stack=external --stack-json FILE`",
    )
    up.add_argument(
        "--keep-dir",
        action="store_true",
        help="keep the run directory (logs, data) after teardown",
    )
    up.add_argument(
        "--base-dir",
        type=Path,
        metavar="DIR",
        help="make the run directory inside DIR (default: the system temp dir)",
    )
    up.add_argument(
        "--startup-timeout",
        type=positive_number,
        default=None,
        metavar="SECONDS",
        help="how long each component may take to become ready (default: 30 local, 90 containers)",
    )
    up.add_argument(
        "--service-env",
        type=env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every service, e.g. "
        "ATENDEAI_LOGIN_LIMIT_PER_CLIENT=1000/60 (repeatable)",
    )
    up.set_defaults(handler=cmd_up)

    images = commands.add_parser(
        "images",
        help="build the containers' images (no registry needed)",
        description="Build the images of the containers provider and of the compose "
        "deployment from compose/images/ (missing or stale ones only, unless --force).",
    )
    images.set_defaults(handler=lambda _: _usage(images, "choose an action (build)"))
    images_commands = images.add_subparsers(dest="images_command", metavar="ACTION")
    build = images_commands.add_parser("build", help="build what is missing or stale")
    build.add_argument("--force", action="store_true", help="rebuild every image")
    build.add_argument(
        "--base-image",
        metavar="IMAGE",
        help="the FROM of every image (default: debian:bookworm-slim when present or "
        "pullable, else a base made here with debootstrap)",
    )
    build.set_defaults(handler=cmd_images_build)

    from harness.gate import benchmark, requestcost
    from harness.gate import command as gate_command
    from harness.security import rls_lint

    gate_command.add_parser(commands)
    benchmark.add_parser(commands)
    requestcost.add_parser(commands)
    rls_lint.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print(
            f"{PROG}: error: choose a command "
            "(up, images, gate, benchmark, request-cost, lint-rls)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # SIGTERM (a CI timeout, `timeout`, `kill`) unwinds like Ctrl-C: every command
    # stops what it started on the way out, instead of dying with it running
    with _sigterm_as_interrupt():
        return handler(args)


# --------------------------------------------------------------------------- up


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_images_build(args: argparse.Namespace) -> int:
    from harness.images import ImageConfig, ensure_images

    try:
        config = ImageConfig.from_env(base_image=args.base_image or "")
        ensure_images(config, force=args.force, progress=lambda line: print(line, flush=True))
    except HarnessError as error:
        print(f"{PROG} images build: error: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from harness.providers import StackRequest, open_stack

    json_path: Path | None = args.json
    try:
        if json_path is not None and not json_path.parent.is_dir():
            raise ConfigurationError(
                f"--json {json_path}: directory {json_path.parent} does not exist"
            )
        request = StackRequest(
            provider=args.provider,
            service_env=tuple(args.service_env),
            keep_dir=args.keep_dir,
            base_dir=args.base_dir,
            startup_timeout_s=args.startup_timeout,
        )
    except ConfigurationError as error:
        print(f"{PROG} up: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    started = time.monotonic()
    with _sigterm_as_interrupt():
        try:
            with open_stack(request) as running:
                stack = running.stack
                cold_start = time.monotonic() - started
                if json_path is not None:
                    stack.write_json(json_path)
                print_endpoints(stack, cold_start_s=cold_start, json_path=json_path)
                try:
                    report_prometheus_targets(stack, started=started)
                    _wait_for_interrupt()
                except KeyboardInterrupt:
                    _ignore_interrupts()  # the stack's own progress lines say the rest
                finally:
                    if json_path is not None:
                        json_path.unlink(missing_ok=True)
        except KeyboardInterrupt:
            print(f"{PROG} up: interrupted while starting; stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        except HarnessError as error:
            print(f"{PROG} up: error: the stack did not start\n{error}", file=sys.stderr)
            return EXIT_START_FAILED
        except Exception:
            traceback.print_exc()
            print(
                f"{PROG} up: error: the stack did not start (unexpected error above)",
                file=sys.stderr,
            )
            return EXIT_START_FAILED
    return EXIT_OK


def print_endpoints(
    stack: Stack,
    *,
    cold_start_s: float,
    json_path: Path | None = None,
    out: TextIO | None = None,
) -> None:
    """Everything needed to use the stack by hand, on stdout."""
    out = sys.stdout if out is None else out
    pg = stack.postgres
    lines = [
        f"AtendeAI stack is up ({stack.provider}; cold start {cold_start_s:.2f} s)",
        "",
        "services (first instance; every instance below):",
        *(f"  {name:<9} {url}" for name, url in stack.services.items()),
    ]
    if stack.service_instances:
        lines += [
            "",
            "instances:",
            *(f"  {name:<9} {'  '.join(urls)}" for name, urls in stack.service_instances.items()),
        ]
    if stack.haproxy_url:
        lines += [
            "",
            f"haproxy:    {stack.haproxy_url}  (/auth /users /clinics /status -> the instances)",
            f"  stats     {stack.haproxy_stats_url}",
            f"  metrics   {stack.extra.get('haproxy_metrics_url', '?')}",
        ]
    if stack.prometheus_url:
        lines += [
            "",
            f"prometheus: {stack.prometheus_url}  "
            f"({stack.extra.get('prometheus_targets', '?')} targets; "
            "rules from compose/prometheus/rules)",
            *(f"  {name:<9} {url}" for name, url in stack.exporters.items()),
        ]
    lines += [
        "",
        f"postgres:   {pg.host}:{pg.port}  database {pg.database}",
        f"  superuser {pg.superuser_dsn}",
        f"  owner     {pg.owner_dsn}",
        f"  app       {pg.app_dsn}",
        "",
        f"redis:      {stack.redis_url}",
        "",
        "platform admin:",
        f"  clinic    {stack.platform_admin.clinic_slug}",
        f"  email     {stack.platform_admin.email}",
        f"  password  {stack.platform_admin.password}",
        "",
        f"jwt:        issuer {stack.jwt_issuer}, audience {stack.jwt_audience}, "
        f"public key {stack.extra.get('jwt_public_key_file', '?')}",
        f"cors:       {', '.join(stack.allowed_origins) or '(none)'}",
        f"run dir:    {stack.extra.get('run_dir', '?')}  (logs of every component)",
    ]
    if json_path is not None:
        lines.append(f"json:       {json_path}  (pytest --stack=external --stack-json {json_path})")
    lines += ["", "Press Ctrl-C to stop."]
    print("\n".join(lines), file=out, flush=True)


def report_prometheus_targets(
    stack: Stack, *, started: float, out: TextIO | None = None, timeout_s: float = 30.0
) -> bool:
    """Wait for Prometheus's first scrape of every target and say how it went."""
    from harness.prometheus_api import PrometheusError, wait_for_stack_targets

    out = sys.stdout if out is None else out
    if not stack.prometheus_url:
        return True
    try:
        targets = wait_for_stack_targets(stack, timeout_s=timeout_s)
    except (PrometheusError, HarnessError) as error:
        print(f"prometheus: not every target is up: {error}", file=out, flush=True)
        return False
    print(
        f"prometheus: all {len(targets)} targets up "
        f"({time.monotonic() - started:.1f} s after the start)",
        file=out,
        flush=True,
    )
    return True


def _wait_for_interrupt() -> None:
    while True:
        time.sleep(3600)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt: both stop the stack the same way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # Also when started in the background by a shell, which ignores SIGINT.
    previous_int = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _ignore_interrupts() -> None:
    """During teardown, a second Ctrl-C must not leave half the stack running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
