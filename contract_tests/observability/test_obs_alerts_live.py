"""The alert rules fire for real: a stack of its own, broken on purpose.

The module starts a second local stack whose Prometheus loads the rules of
compose/prometheus/rules rendered with every ``for:`` capped at 3 s (same
expressions; scrape and evaluation every second), and whose services run
with ``ATENDEAI_FAULTS`` making every ``GET /clinics/me`` take 600 ms and then
answer 500 (the rules apply to requests that reach the handler, so that
traffic signs in as a clinic's staff user). Then it stops users-2 and both
health instances, sends traffic through HAProxy (the failing endpoint, and
healthy requests to auth and users) and asserts through the Prometheus API
that exactly the matching alerts go pending and then firing, and that every
other alert stays quiet.

Proven live here: ServiceDown, BackendDown, HighErrorRate, HighLatencyP95,
LatencySLOBudgetBurnFast, LatencySLOBudgetBurnSlow. Only shown quiet here
(their firing is proven by the promtool unit tests): ServiceHighCpu,
ServiceHighMemory (no practical way to load a service to 80 % of a core or
of 512 MiB on a 2-core test machine), PostgresDown and RedisDown (stopping
a database takes every service's /ready down with it).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.processes import wait_until
from harness.prometheus_api import PrometheusClient, PrometheusError, wait_for_stack_targets
from harness.providers.local import LocalStackConfig, LocalStackControl, supervised_local_stack
from harness.providers.prometheus import PrometheusSettings
from harness.stack import Stack
from harness.tenants import ApiSession, ClientAddresses, create_tenant, hash_password

pytestmark = pytest.mark.stack

FAULTS = "GET /clinics/me delay=600ms; GET /clinics/me error=500"  # every request
FOR_CAP_S = 3.0
ALERT_TIMEOUT_S = 60.0
STOPPED = ("users-2", "health-1", "health-2")
#: The labels that tell one alert of a kind from another (the rest is context).
IDENTITY = {"ServiceDown": ("job", "instance"), "BackendDown": ("proxy",)}


@pytest.fixture(scope="module")
def faulty_control(request: pytest.FixtureRequest) -> Iterator[LocalStackControl]:
    if request.config.getoption("--stack") == "external":
        pytest.skip("the live alert test starts a local stack of its own (not on --stack=external)")
    config = LocalStackConfig(
        service_env=(("ATENDEAI_FAULTS", FAULTS),),
        prometheus=PrometheusSettings(
            scrape_interval_s=1.0, evaluation_interval_s=1.0, rule_for_cap_s=FOR_CAP_S
        ),
        keep_dir=request.config.getoption("--keep-stack-dir"),
    )
    with supervised_local_stack(config, progress=lambda line: None) as control:
        wait_for_stack_targets(control.stack, timeout_s=30)
        yield control


@pytest.fixture(scope="module")
def faulty_stack(faulty_control: LocalStackControl) -> Stack:
    return faulty_control.stack


@pytest.fixture(scope="module")
def staff_token(faulty_stack: Stack) -> Iterator[str]:
    """A clinic staff user's access token on the faulty stack (valid 15 min, signed in once)."""
    api = ApiSession(faulty_stack, ClientAddresses())
    try:
        clinic = create_tenant(
            faulty_stack.postgres.owner_dsn, api=api, password_hash=hash_password()
        )
        yield clinic.access_token("staff")
    finally:
        api.close()


class AlertWatch:
    """Reads Prometheus's alerts every 0.2 s in a thread of its own, from before
    anything is broken until the module ends, and keeps every state change:
    a "pending" that lasts 3 s cannot slip between two tests."""

    def __init__(self, prometheus_url: str) -> None:
        self._client = PrometheusClient(prometheus_url)
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alerts = self._client.alerts()
            except PrometheusError as error:
                self.errors.append(str(error))
            else:
                with self._lock:
                    for alert in alerts:
                        states = self._seen.setdefault(_key(alert.name, alert.labels), [])
                        if not states or states[-1] != alert.state:
                            states.append(alert.state)
            self._stop.wait(0.2)

    @property
    def seen(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[str]]:
        with self._lock:
            return {key: list(states) for key, states in self._seen.items()}

    def states(self, name: str, **labels: str) -> list[str]:
        for (seen_name, seen_labels), states in self.seen.items():
            if seen_name == name and _has_labels(dict(seen_labels), labels):
                return states
        return []

    def until_firing(self, name: str, **labels: str) -> list[str]:
        """Wait until alert ``name`` with ``labels`` is firing; its states so far."""

        def firing() -> list[str] | None:
            states = self.states(name, **labels)
            return states if states and states[-1] == "firing" else None

        return wait_until(
            firing,
            timeout=ALERT_TIMEOUT_S,
            interval=0.2,
            what=f"alert {name} {labels} to fire (seen so far: {self.seen}; "
            f"errors: {self.errors[-3:]})",
        )


def _key(name: str, labels: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted((k, v) for k, v in labels.items() if k != "alertname"))


def _has_labels(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _address(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def watch(faulty_stack: Stack) -> Iterator[AlertWatch]:
    watch = AlertWatch(faulty_stack.prometheus_url or "")
    watch.start()
    try:
        yield watch
    finally:
        watch.close()


@pytest.fixture(scope="module")
def broken(
    faulty_stack: Stack, faulty_control: LocalStackControl, watch: AlertWatch, staff_token: str
) -> Iterator[dict[str, str]]:
    """Stop three instances, then keep traffic flowing until the module ends.

    Yields ``{instance name: address}`` of the stopped instances.
    """
    instances = {
        f"{name}-{index}": url
        for name, urls in faulty_stack.service_instances.items()
        for index, url in enumerate(urls, start=1)
    }
    stopped = {name: _address(instances[name]) for name in STOPPED}
    for name, address in stopped.items():
        faulty_control.kill(name)
        host, port = address.split(":")
        wait_until(
            lambda h=host, p=int(port): not _accepts(h, p),
            timeout=15,
            what=f"{name} to stop listening on {address}",
        )
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="traffic")
    for worker in range(8):
        pool.submit(_traffic, faulty_stack.haproxy_url or "", staff_token, stop, worker)
    try:
        yield stopped
    finally:
        stop.set()
        pool.shutdown(wait=True)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _traffic(base_url: str, token: str, stop: threading.Event, worker: int) -> None:
    """One worker: the failing endpoint, then a healthy request to auth and users."""
    deadline = time.monotonic() + 300  # bounded, whatever happens to the test
    headers = {"X-Forwarded-For": f"198.19.250.{worker + 1}"}
    signed_in = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, timeout=10, headers=headers) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.get("/clinics/me", headers=signed_in)  # 600 ms, then 500 (injected)
                client.get("/auth/me")  # 401, fast: a healthy answer
                client.get("/users")  # 401, fast
            except httpx.HTTPError:
                time.sleep(0.1)


def test_only_the_faulty_route_is_marked_faulty(faulty_stack):
    # Every instance that ``broken`` leaves running (whatever order the tests run
    # in): both clinics instances, and at least one of each other service but health.
    marked = re.compile(r'^fault_injection_enabled\{method="(\w+)",route="([^"]+)"\} 1\.0$', re.M)
    for service, urls in faulty_stack.service_instances.items():
        for index, url in enumerate(urls, start=1):
            if f"{service}-{index}" in STOPPED:
                continue
            text = httpx.get(f"{url}/metrics", timeout=10).text
            want = [("GET", "/clinics/me")] if service == "clinics" else []
            assert marked.findall(text) == want, (service, url)
            assert text.count("fault_injection_enabled{") == len(want), (service, url)


def test_the_faulty_endpoint_fails_slowly_and_the_gateway_routes_around_the_stopped(
    faulty_stack, staff_token, broken
):
    with httpx.Client(base_url=faulty_stack.haproxy_url or "", timeout=10) as gateway:
        started = time.monotonic()
        failing = gateway.get("/clinics/me", headers={"Authorization": f"Bearer {staff_token}"})
        assert failing.status_code == 500
        assert failing.json()["error"]["code"] == "fault_injected"
        assert time.monotonic() - started >= 0.6
        # users-2 is gone: HAProxy's health checks took it out, users-1 answers.
        for _ in range(6):
            assert gateway.get("/users").status_code == 401
        # Both health instances are gone: nothing can answer /status.
        assert gateway.get("/status").status_code == 503


def test_service_down_fires_for_each_stopped_instance(watch, broken):
    for name, address in broken.items():
        watch.until_firing("ServiceDown", job=name.split("-")[0], instance=address)
    # Its `for:` is 0: it goes straight to firing, never pending.
    assert watch.states("ServiceDown", job="users", instance=broken["users-2"]) == ["firing"]


def test_backend_down_fires_when_no_instance_is_left(watch, broken):
    watch.until_firing("BackendDown", proxy="health", severity="critical")


def test_error_rate_alert_goes_pending_then_fires_for_the_failing_service(watch, broken):
    states = watch.until_firing("HighErrorRate", job="clinics", severity="critical")
    assert states == ["pending", "firing"]


def test_latency_alert_goes_pending_then_fires_for_the_slow_service(watch, broken):
    states = watch.until_firing("HighLatencyP95", job="clinics", severity="warning")
    assert states == ["pending", "firing"]


def test_latency_slo_burn_rate_alerts_fire(watch, broken):
    watch.until_firing("LatencySLOBudgetBurnFast", job="clinics", slo="latency-200ms")
    watch.until_firing("LatencySLOBudgetBurnSlow", job="clinics", slo="latency-200ms")


def test_every_other_alert_stays_quiet(faulty_stack, watch, broken):
    # Runs last: by now every expected alert has fired (the tests above).
    expected = {
        _key("ServiceDown", {"job": n.split("-")[0], "instance": a}) for n, a in broken.items()
    }
    expected |= {
        _key("BackendDown", {"proxy": "health"}),
        _key("HighErrorRate", {"job": "clinics"}),
        _key("HighLatencyP95", {"job": "clinics"}),
        _key("LatencySLOBudgetBurnFast", {"job": "clinics", "slo": "latency-200ms"}),
        _key("LatencySLOBudgetBurnSlow", {"job": "clinics", "slo": "latency-200ms"}),
    }
    time.sleep(2 * FOR_CAP_S)  # time for a wrong alert to get past its (capped) `for:`
    active = {
        _key(name, {k: v for k, v in labels if k in IDENTITY.get(name, ("job", "slo"))})
        for name, labels in watch.seen
    }
    assert active - expected == set(), f"alerts that should have stayed quiet: {active - expected}"
    assert expected - active == set()
    # The requests to auth and users were answered, fast and without errors:
    # their SLIs exist and are healthy, so their quiet is not for lack of data.
    with PrometheusClient(faulty_stack.prometheus_url or "") as client:
        for job in ("auth", "users"):
            assert client.value(f'job:http_server_errors:ratio_rate1m{{job="{job}"}}') == 0
            p95 = client.value(f'job:http_server_request_duration_seconds:p95_5m{{job="{job}"}}')
            assert p95 is not None and p95 < 0.2, (job, p95)
        # The resource alerts' expressions select real series and stay below threshold.
        cpu = client.query('rate(process_cpu_seconds_total{tier="service"}[2m])')
        memory = client.query('process_resident_memory_bytes{tier="service"}')
        # (rate() over 2 m may still see a stopped instance's last samples.)
        assert len(memory) == 8 - len(broken) <= len(cpu)
        assert all(float(s["value"][1]) < 0.8 for s in cpu)
        assert all(float(s["value"][1]) < 0.8 * 512 * 1024 * 1024 for s in memory)
