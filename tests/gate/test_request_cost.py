"""``atendeai request-cost``: the processes it counts, and what it measures on a
real local stack."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.cli import main
from harness.gate.requestcost import component_of, cpu_by_group, measure
from harness.providers import StackRequest, open_stack
from harness.stack import Stack

#: Command lines as /proc shows them for the local stack's processes.
STACK_PROCESSES = [
    (["/usr/lib/postgresql/15/bin/postgres", "-D", "/tmp/x/data"], "postgres"),
    (["postgres: atendeai_app atendeai 127.0.0.1(40112) idle"], "postgres"),
    (["redis-server 127.0.0.1:43355"], "redis"),
    (["haproxy", "-f", "/tmp/x/haproxy.cfg"], "haproxy"),
    (["/usr/bin/prometheus", "--config.file=/tmp/x/prometheus.yml"], "prometheus"),
    (["/usr/bin/prometheus-postgres-exporter", "--web.listen-address=:1"], "postgres-exporter"),
    (["/usr/bin/prometheus-redis-exporter", "-web.listen-address", ":2"], "redis-exporter"),
    (["/venv/bin/python", "-m", "system_under_test", "clinics", "--port", "3"], "clinics"),
    (["/venv/bin/python", "-m", "system_under_test", "auth", "--port", "4"], "auth"),
    (["/venv/bin/python", "-m", "pytest", "tests"], None),
    (["sleep", "30"], None),
    ([], None),
]


@pytest.mark.parametrize(("argv", "group"), STACK_PROCESSES)
def test_each_process_of_the_stack_is_counted_in_its_own_group(argv, group):
    # an exporter's name holds "postgres" or "redis": it must not count as the store
    assert component_of(argv) == group


def test_a_service_burning_a_known_cpu_time_is_counted_within_ten_percent():
    """A child of this process titled as a clinics instance burns 1 s of CPU once
    told to; a child running something else burns too and is not counted."""
    burn = (
        "import sys, time\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "end = time.process_time() + 1.0\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    service = subprocess.Popen(
        [sys.executable, "-c", burn, "system_under_test", "clinics"], **pipes
    )
    other = subprocess.Popen([sys.executable, "-c", burn, "something", "else"], **pipes)
    try:
        for process in (service, other):
            assert process.stdout.readline() == "ready\n"
        before = cpu_by_group(os.getpid())
        for process in (service, other):
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in (service, other):
            assert process.stdout.readline() == "done\n"
        after = cpu_by_group(os.getpid())
        burned = after["clinics"] - before.get("clinics", 0.0)
        assert 0.9 <= burned <= 1.1, (before, after)
        assert set(after) - set(before) <= {"clinics"}, after  # the other child: no group
    finally:
        for process in (service, other):
            process.kill()
            process.wait()


def test_live_each_endpoint_s_cost_lands_on_the_parts_it_uses(request: pytest.FixtureRequest):
    """On a local stack of its own (its processes are this process's children, as
    for the command): a cached clinic read costs clinics, HAProxy and Redis and
    (almost) no PostgreSQL; /auth/me costs auth and PostgreSQL, not clinics."""
    if request.config.getoption("--stack") == "external":
        pytest.skip(
            "starts a local stack of its own, to read its processes' CPU (not on --stack=external)"
        )
    # /proc counts in clock ticks (10 ms): 2000 requests make Redis's ~25 us each
    # about five ticks, so a part's share is never rounded to nothing
    with open_stack(StackRequest(provider="local"), progress=lambda line: None) as running:
        costs = measure(running.stack, os.getpid(), requests=2000, concurrency=2, rounds=2)
    costs = {c.path: c for c in costs}
    assert set(costs) == {"/clinics/me", "/auth/me", "/users"}
    for cost in costs.values():
        assert len(cost.rounds) == 2
        assert cost.request_path_us(cost.median_round) > 0
    clinic = costs["/clinics/me"].median_round
    me = costs["/auth/me"].median_round
    users = costs["/users"].median_round
    assert clinic["clinics"] > 5 * clinic.get("auth", 0.0), clinic
    assert clinic.get("haproxy", 0.0) > 0 and clinic.get("redis", 0.0) > 0, clinic
    assert me["auth"] > 5 * me.get("clinics", 0.0), me
    assert users["users"] > 5 * users.get("clinics", 0.0), users
    # a cache hit reads no table: PostgreSQL's share is a fraction of /auth/me's
    assert me["postgres"] > 3 * clinic.get("postgres", 0.0), (clinic, me)


def test_a_pid_with_no_stack_under_it_is_refused_before_any_request():
    sleeping = subprocess.Popen(["sleep", "30"])
    stack = Stack.from_dict(
        {
            "provider": "external",
            "postgres": dict.fromkeys(
                ("superuser_dsn", "owner_dsn", "app_dsn", "host", "database"), "unused"
            )
            | {"port": 1},
            "redis_url": "redis://127.0.0.1:1",
            "services": {},
            "platform_admin": {"email": "a@b.c", "password": "x"},
            "haproxy_url": "http://127.0.0.1:1",
        }
    )
    try:
        with pytest.raises(
            ValueError, match=f"no process of the stack .* under process {sleeping.pid}"
        ):
            measure(stack, sleeping.pid, requests=1, concurrency=1, rounds=1)
    finally:
        sleeping.kill()
        sleeping.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stack-json", "/nonexistent.json"], "give --stack-json and --stack-pid together"),
        (["--stack-pid", "1"], "give --stack-json and --stack-pid together"),
        (["--stack-json", "/x.json", "--stack-pid", "999999999"], "999999999: no such process"),
        (["--stack-json", "/x.json", "--stack-pid", "1"], "1 is not an `atendeai up` process"),
        (["--requests", "0"], "'0': must be more than 0"),
        (["--concurrency", "many"], "'many' is not a whole number"),
    ],
)
def test_bad_flags_are_refused_with_the_reason(argv, message, capsys):
    assert main(["request-cost", *argv]) == 2
    assert message in capsys.readouterr().err
