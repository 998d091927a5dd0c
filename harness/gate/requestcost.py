"""``atendeai request-cost``: the CPU one request costs the platform, per endpoint,
measured at a fixed load so that a code change shows through the host's noise.

The ``sla`` run's CPU per request (``harness.gate.cpu``) is the release figure,
but it moves by 10 % and more between two runs on a shared VM: the load
generator, the sign-ins and the writes share the two cores with the stack.
Here one endpoint at a time is asked ``--requests`` times through HAProxy by
``--concurrency`` clients in this process (aiohttp, one event loop), and the
CPU (user + system, from /proc) of every process of the stack is read before
and after each round. Rounds of the same endpoint agree within a few per cent,
so two commits measured one after the other can be compared.

The processes are the descendants of one process, grouped by what they run
(``component_of``): this command's own local stack, or, with ``--stack-json``
and ``--stack-pid``, a stack another ``atendeai up`` started (another checkout,
for a baseline). The request path is the services, PostgreSQL, Redis and
HAProxy; Prometheus and the exporters are shown apart (their cost follows the
scrape interval, not the requests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.argtypes import positive_int
from harness.gate.cpu import PROC, own_cpu_seconds
from harness.processes import children_by_parent
from harness.stack import Stack

#: What each endpoint is asked as: (path, role of the caller).
ENDPOINTS = (("/clinics/me", "staff"), ("/auth/me", "staff"), ("/users", "manager"))
SERVICES = ("auth", "users", "clinics", "health")
#: Groups on the path of a request; the rest is monitoring.
REQUEST_PATH = (*SERVICES, "postgres", "redis", "haproxy")
MONITORING = ("prometheus", "postgres-exporter", "redis-exporter")
WARM_UP_REQUESTS = 300


def add_parser(commands) -> None:
    cost = commands.add_parser(
        "request-cost",
        help="CPU per request of each endpoint at a fixed load (to compare two commits)",
        description="Start the local stack (or use --stack-json and --stack-pid), ask each "
        "endpoint --requests times through HAProxy with --concurrency clients, and print "
        "the CPU every process of the stack spent per request, round by round. About a "
        "minute with the defaults.",
    )
    cost.add_argument("--requests", type=positive_int, default=6000, metavar="N")
    cost.add_argument("--concurrency", type=positive_int, default=4, metavar="C")
    cost.add_argument("--rounds", type=positive_int, default=3, metavar="R")
    cost.add_argument(
        "--stack-json", type=Path, metavar="FILE", help="a local stack `atendeai up` started"
    )
    cost.add_argument(
        "--stack-pid",
        type=positive_int,
        metavar="PID",
        help="with --stack-json: the `atendeai up` process whose descendants are that stack",
    )
    cost.set_defaults(handler=cmd_request_cost)


@dataclass(frozen=True)
class EndpointCost:
    """CPU microseconds per request of one endpoint, one mapping per round
    (group -> microseconds per request)."""

    path: str
    rounds: tuple[Mapping[str, float], ...]

    def request_path_us(self, round_: Mapping[str, float]) -> float:
        return sum(round_.get(group, 0.0) for group in REQUEST_PATH)

    @property
    def median_round(self) -> Mapping[str, float]:
        ordered = sorted(self.rounds, key=self.request_path_us)
        return ordered[len(ordered) // 2]

    @property
    def line(self) -> str:
        each = " ".join(f"{self.request_path_us(r):.0f}" for r in self.rounds)
        median = self.median_round
        parts = ", ".join(f"{g} {median.get(g, 0.0):.0f}" for g in REQUEST_PATH + MONITORING)
        return f"{self.path}: request path {each} us/request (median round: {parts})"


#: A stack process's program (the first word of its command line, as PostgreSQL's
#: backends retitle themselves "postgres: user db ...") -> its group.
PROGRAMS = {
    "postgres": "postgres",
    "redis-server": "redis",
    "haproxy": "haproxy",
    "prometheus": "prometheus",
    "prometheus-postgres-exporter": "postgres-exporter",
    "prometheus-redis-exporter": "redis-exporter",
}


def component_of(argv: list[str]) -> str | None:
    """The group a process of the stack belongs to, from its command line
    (``/proc/<pid>/cmdline`` split at its NULs); None: not part of the stack."""
    if not argv:
        return None
    if "system_under_test" in argv[1:-1]:  # python -m system_under_test <service> ...
        service = argv[argv.index("system_under_test") + 1]
        return service if service in SERVICES else None
    program = Path(argv[0].split(":")[0].split(" ")[0]).name
    return PROGRAMS.get(program)


def cpu_by_group(root: int) -> dict[str, float]:
    """CPU seconds so far (user + system, with what reaped children left) of every
    descendant of ``root``, summed by ``component_of``; unknown processes left out."""
    children = children_by_parent()
    totals: dict[str, float] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        group = component_of(argv.rstrip("\0").split("\0"))
        if group is not None:
            totals[group] = totals.get(group, 0.0) + own_cpu_seconds(pid)
    return totals


async def ask(url: str, headers: Mapping[str, str], requests: int, concurrency: int) -> None:
    """``requests`` GETs of ``url`` by ``concurrency`` clients; any answer but 200 is an error."""
    import aiohttp

    left = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"GET {url} answered {response.status}, not 200")

        await asyncio.gather(*(client() for _ in range(concurrency)))


def measure(
    stack: Stack, root: int, *, requests: int, concurrency: int, rounds: int
) -> list[EndpointCost]:
    """Each endpoint of ``ENDPOINTS``, ``rounds`` times, as a fresh test clinic's users."""
    from harness.tenants import ApiSession, ClientAddresses, create_tenant, hash_password

    if stack.haproxy_url is None:
        raise ValueError("this stack has no HAProxy to send the requests through")
    if not set(cpu_by_group(root)) & set(REQUEST_PATH):
        raise ValueError(
            f"no process of the stack (services, PostgreSQL, Redis, HAProxy) runs under "
            f"process {root}: give --stack-pid the pid of the `atendeai up` that started it "
            "(a local stack; containers are not its descendants)"
        )
    api = ApiSession(stack, ClientAddresses())
    try:
        tenant = create_tenant(stack.postgres.owner_dsn, api=api, password_hash=hash_password())
        costs = []
        for path, role in ENDPOINTS:
            headers = {
                "Authorization": f"Bearer {tenant.access_token(role)}",
                "X-Forwarded-For": tenant.client_ip,
            }
            url = stack.haproxy_url + path
            asyncio.run(ask(url, headers, WARM_UP_REQUESTS, concurrency))
            measured = []
            for _ in range(rounds):
                before = cpu_by_group(root)
                asyncio.run(ask(url, headers, requests, concurrency))
                after = cpu_by_group(root)
                measured.append(
                    {g: 1e6 * (after[g] - before.get(g, 0.0)) / requests for g in after}
                )
            cost = EndpointCost(path, tuple(measured))
            print(f"request-cost: {cost.line}", flush=True)
            costs.append(cost)
        return costs
    finally:
        api.close()


@contextmanager
def _stack(args: argparse.Namespace) -> Iterator[tuple[Stack, int]]:
    """The stack to measure and the process whose descendants it is."""
    if args.stack_json is not None:
        yield Stack.read_json(args.stack_json), args.stack_pid
        return
    from harness.providers import StackRequest, open_stack

    with open_stack(StackRequest(provider="local")) as running:
        yield running.stack, os.getpid()


def _not_an_up_process(pid: int) -> str | None:
    """Why ``pid`` cannot stand for a stack (None: it is an ``atendeai up``)."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"{pid}: no such process"
    if not any(Path(a).name == "atendeai" for a in argv) or "up" not in argv:
        return f"{pid} is not an `atendeai up` process ({' '.join(argv).strip()[:80]})"
    return None


def cmd_request_cost(args: argparse.Namespace) -> int:
    from harness.exceptions import HarnessError

    if (args.stack_json is None) != (args.stack_pid is None):
        print(
            "atendeai request-cost: error: give --stack-json and --stack-pid together",
            file=sys.stderr,
        )
        return 2
    if args.stack_pid is not None and (problem := _not_an_up_process(args.stack_pid)):
        print(f"atendeai request-cost: error: --stack-pid {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with _stack(args) as (stack, root):
            costs = measure(
                stack,
                root,
                requests=args.requests,
                concurrency=args.concurrency,
                rounds=args.rounds,
            )
    except (HarnessError, OSError, RuntimeError, ValueError) as error:
        print(f"atendeai request-cost: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "atendeai request-cost: interrupted; everything it started was stopped", file=sys.stderr
        )
        return 130
    medians = ", ".join(
        f"{c.path} {statistics.median(c.request_path_us(r) for r in c.rounds):.0f}" for c in costs
    )
    print(
        f"request-cost: median request path CPU (us/request): {medians}; "
        f"{args.requests} requests x {args.rounds} rounds at concurrency {args.concurrency}, "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )
    return 0
