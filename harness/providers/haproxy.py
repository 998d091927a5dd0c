"""HAProxy in front of the services: the local stack's gateway (Debian's haproxy).

``LocalHAProxy`` renders a configuration (``render_haproxy_config``) with one
frontend that routes by path prefix (``GATEWAY_ROUTES``) to one backend per
service, each balancing over every instance of that service and checking
them with ``option httpchk GET /ready``; unknown paths get a 404 in the
platform's error shape. A second frontend serves the live stats page
(``/stats``) and HAProxy's built-in Prometheus exporter (``/metrics``).
When an instance dies, HAProxy replays a request on the other instance when
the connection failed (any method: nothing was sent) or when the instance
closed it without answering (GET/HEAD/OPTIONS only: a POST, PATCH, PUT or
DELETE that may have been written is never replayed; the client gets 502),
and takes the instance out of rotation within ``HAProxySettings``' stated
worst case (``worst_case_down_s``).
``compose/haproxy/haproxy.cfg`` is the Docker twin (DNS-discovered replicas);
``contract_tests/observability`` checks both with ``haproxy -c`` and checks
that every route here is one the services' OpenAPI documents serve.
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.exceptions import ConfigurationError, NotReadyYet
from harness.providers.daemon import HttpDaemon, find_binary

PACKAGE = "haproxy"

#: Which path prefixes the gateway sends to which service. A prefix matches
#: itself and everything below it (``/auth`` and ``/auth/...``).
GATEWAY_ROUTES: Mapping[str, tuple[str, ...]] = {
    "auth": ("/auth",),
    "users": ("/users",),
    "clinics": ("/clinics",),
    "health": ("/status",),
}
HEALTH_CHECK_PATH = "/ready"
#: HAProxy's ``check_status`` of a server that passed (L7OK) or was not checked yet.
PASSED_OR_PENDING = frozenset({"L7OK", "", "INI"})
STATS_PATH = "/stats"
METRICS_PATH = "/metrics"


class ServerCheckFailed(NotReadyYet):
    """HAProxy's health check of a server failed (transient while it starts)."""


@dataclass(frozen=True)
class Backend:
    """One service behind the gateway: its path prefixes and its instances."""

    service: str
    path_prefixes: tuple[str, ...]
    servers: tuple[tuple[str, str], ...]  # (name, "host:port")

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigurationError(f"backend {self.service}: no servers")
        for prefix in self.path_prefixes:
            if not prefix.startswith("/") or prefix.endswith("/") or " " in prefix:
                raise ConfigurationError(
                    f"backend {self.service}: path prefix {prefix!r} must start with / "
                    "and not end with one"
                )


@dataclass(frozen=True)
class HAProxySettings:
    """The timing of health checks: an instance is out within seconds.

    Every ``check_interval`` HAProxy sends ``GET /ready`` to each instance;
    after a failed check it checks again every ``fast_interval`` until
    ``fall`` checks in a row failed (DOWN) or one passed; a DOWN instance is
    checked every ``down_interval`` and is back after ``rise`` passes. A check
    fails when the connection is refused, when ``/ready`` answers anything but
    200, or when the answer takes longer than ``check_timeout``. Worst cases
    (``worst_case_down_s``): a killed instance (refused at once) is DOWN
    within ``check_interval + (fall - 1) * fast_interval`` (1.5 s by default);
    one whose ``/ready`` takes up to ``check_timeout`` to say 503 (its probes of
    PostgreSQL and Redis give up after 1.5-2 s) within that plus
    ``fall * check_timeout`` (5.5 s). A check starts ``check_interval`` (or
    ``fast_interval``) after the previous one ended. Measured on 2 busy cores:
    killed 1.5 s; frozen 5.3 s; cut off from PostgreSQL and Redis 4.2-4.7 s
    (its /ready said 503 in 1.5 s), 5.8 s while requests kept it busy.

    ``server_maxconn`` (None: no limit, the default) caps the requests HAProxy
    has in flight to each instance; the rest wait in HAProxy's queue (its
    ``queue_time``). Only a test sets it: a gateway that makes requests queue,
    which the ``gateway_overhead`` objective must see.
    """

    check_interval: str = "1s"
    fast_interval: str = "500ms"
    down_interval: str = "1s"
    fall: int = 2
    rise: int = 1
    # a busy instance's /ready may take over a second; only a silent one is out
    check_timeout: str = "2s"
    stats_refresh: str = "5s"
    server_maxconn: int | None = None

    def __post_init__(self) -> None:
        for name in ("check_interval", "fast_interval", "down_interval", "check_timeout"):
            _seconds(getattr(self, name), name)
        if self.fall < 1 or self.rise < 1:
            raise ConfigurationError(f"fall and rise must be >= 1, not {self.fall}/{self.rise}")
        if self.server_maxconn is not None and self.server_maxconn < 1:
            raise ConfigurationError(f"server_maxconn must be >= 1, not {self.server_maxconn}")

    def worst_case_down_s(self, *, check_takes_s: float = 0.0) -> float:
        """The longest an instance that stopped passing stays in rotation, when each
        failing check takes ``check_takes_s`` (0: refused at once; at most
        ``check_timeout``)."""
        takes = min(check_takes_s, _seconds(self.check_timeout, "check_timeout"))
        first = _seconds(self.check_interval, "check_interval") + takes
        return first + (self.fall - 1) * (_seconds(self.fast_interval, "fast_interval") + takes)


def _seconds(text: str, name: str) -> float:
    """An HAProxy duration (``500ms``, ``1s``, ``2m``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    number = text.rstrip("usmh")
    unit = text[len(number) :] or "ms"  # HAProxy's default unit
    if not number.isdigit() or unit not in units:
        raise ConfigurationError(f"HAProxy {name}: {text!r} is not a duration (e.g. 500ms, 2s)")
    return int(number) * units[unit]


#: HAProxy's answer when no instance of a backend is in rotation.
NO_SERVER_503 = (
    "http-error status 503 content-type application/json hdr Retry-After 2 "
    'string \'{"error":{"code":"no_server_available","message":"no instance of this '
    'service is in rotation; try again shortly","request_id":""}}\''
)


def render_haproxy_config(
    backends: Sequence[Backend],
    *,
    bind: str,
    stats_bind: str,
    settings: HAProxySettings | None = None,
    resolver: str | None = None,
) -> str:
    """The text of ``haproxy.cfg`` for these backends (validated by ``haproxy -c``).

    ``resolver`` (``host:port`` of a DNS server, e.g. Docker's ``127.0.0.11:53``)
    makes HAProxy resolve server names at run time, so a container that comes
    back with a new address is found again; without it names resolve once.
    """
    settings = settings or HAProxySettings()
    maxconn = "" if settings.server_maxconn is None else f" maxconn {settings.server_maxconn}"
    resolvers: list[str] = []
    dns_options = ""
    if resolver is not None:
        resolvers = [
            "resolvers dns",
            f"    nameserver dns1 {resolver}",
            "    resolve_retries 3",
            "    timeout resolve 1s",
            "    timeout retry 1s",
            "    hold valid 1s",
            "    hold obsolete 5s",
            "",
        ]
        dns_options = " resolvers dns init-addr last,libc,none"
    acls: list[str] = []
    uses: list[str] = []
    for backend in backends:
        acl = f"is_{backend.service}"
        for prefix in backend.path_prefixes:
            acls.append(f"    acl {acl} path {prefix}")
            acls.append(f"    acl {acl} path_beg {prefix}/")
        uses.append(f"    use_backend {backend.service} if {acl}")
    known = " || ".join(f"is_{b.service}" for b in backends)
    not_found = (
        "    http-request return status 404 content-type application/json "
        'string \'{"error":{"code":"not_found","message":"no such route"}}\' '
        f"unless {known}"
    )
    lines = [
        "# Rendered by harness/providers/haproxy.py for one stack; removed with it.",
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 4096",
        # One thread: the stack shares its few cores with the services and the
        # load generator; a second HAProxy thread only adds hand-offs between
        # them (measured: 77 -> 70 us of HAProxy CPU per request).
        "    nbthread 1",
        "",
        *resolvers,
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",
        # Each retry goes to another instance than the one that failed.
        "    option redispatch 1",
        "    retries 2",
        # conn-failure: the request never left HAProxy (safe for every method);
        # empty-response: the instance closed without answering (killed while
        # serving it): retried for GET/HEAD/OPTIONS only (disable-l7-retry below).
        "    retry-on conn-failure empty-response",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        # No instance in rotation: the request reached no service, so it is a
        # clean failure, in the platform's JSON error shape (502/504 keep
        # HAProxy's own page: those requests may have reached a service).
        f"    {NO_SERVER_503}",
        f"    timeout check {settings.check_timeout}",
        f"    default-server check inter {settings.check_interval} "
        f"fastinter {settings.fast_interval} downinter {settings.down_interval} "
        f"fall {settings.fall} rise {settings.rise}{maxconn}{dns_options}",
        "",
        "frontend gateway",
        f"    bind {bind}",
        "    option forwardfor",
        # The whole request (body included) before a server is chosen: a slow
        # client holds no service connection, and a request is replayable.
        "    option http-buffer-request",
        # A request that may have reached a service is replayed only when safe
        # to: never a POST, PATCH, PUT or DELETE (it may have been written).
        "    http-request disable-l7-retry unless METH_GET || METH_OPTIONS",
        *acls,
        not_found,
        *uses,
        "",
    ]
    for backend in backends:
        lines += [
            f"backend {backend.service}",
            "    balance roundrobin",
            f"    option httpchk GET {HEALTH_CHECK_PATH}",
            "    http-check expect status 200",
            *(f"    server {name} {address}" for name, address in backend.servers),
            "",
        ]
    lines += [
        "frontend stats",
        f"    bind {stats_bind}",
        f"    http-request use-service prometheus-exporter if {{ path {METRICS_PATH} }}",
        "    stats enable",
        f"    stats uri {STATS_PATH}",
        f"    stats refresh {settings.stats_refresh}",
        "    stats show-legends",
        "",
    ]
    return "\n".join(lines)


def check_config(path: Path, *, binary: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``haproxy -c -f path``: the real parser's verdict (returncode and output)."""
    haproxy = find_binary("haproxy", "haproxy", package=PACKAGE, explicit=binary)
    return subprocess.run(
        [str(haproxy), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )


class LocalHAProxy(HttpDaemon):
    """HAProxy on two free loopback ports: the gateway and the stats/metrics page."""

    component = "haproxy"
    binary_name = "haproxy"
    package = PACKAGE
    ports_needed = 2
    hint = "read the log tail; `haproxy -c -f haproxy.cfg` in the run directory explains it"

    def __init__(
        self,
        directory: Path,
        *,
        backends: Sequence[Backend],
        settings: HAProxySettings | None = None,
        **options,
    ) -> None:
        super().__init__(directory, **options)
        self.backends = tuple(backends)
        self.settings = settings or HAProxySettings()

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def gateway_url(self) -> str:
        return self.url()

    @property
    def stats_url(self) -> str:
        return self.url(STATS_PATH, port_index=1)

    @property
    def metrics_url(self) -> str:
        return self.url(METRICS_PATH, port_index=1)

    def _configure(self, ports: Sequence[int]) -> None:
        self.config_path.write_text(
            render_haproxy_config(
                self.backends,
                bind=f"{self.host}:{ports[0]}",
                stats_bind=f"{self.host}:{ports[1]}",
                settings=self.settings,
            )
        )

    def _command(self, binary: Path, ports: Sequence[int]) -> list[str]:
        return [str(binary), "-db", "-f", str(self.config_path)]

    def _ready(self) -> bool:
        """The stats page answers and lists every server, none of them failing its check.

        A server not checked yet counts as ready (HAProxy starts each first
        check at a random moment within the check interval, and the services
        were awaited on ``GET /ready`` already); a failed check does not.
        """
        return every_server_listed_and_passing(
            self._get(f"{STATS_PATH};csv", port_index=1), self.backends
        )

    def _alive(self) -> bool:
        """After a restart: the stats page answers and lists every server. Their
        checks are not awaited: a server starts UP (HAProxy assumes so until its
        checks fail), and an instance that is down meanwhile is HAProxy's to find."""
        rows = server_rows(self._get(f"{STATS_PATH};csv", port_index=1))
        expected = {f"{b.service}/{name}" for b in self.backends for name, _ in b.servers}
        if missing := expected - set(rows):
            raise NotReadyYet(f"servers missing from the stats page: {sorted(missing)}")
        return True


def every_server_listed_and_passing(stats_csv: str, backends: Sequence[Backend]) -> bool:
    """True when the stats page lists every server of ``backends`` and none fails its
    check; otherwise ``NotReadyYet`` (missing) or ``ServerCheckFailed`` (failing)."""
    checks = server_checks(stats_csv)
    expected = {f"{b.service}/{name}" for b in backends for name, _ in b.servers}
    missing = expected - set(checks)
    failing = {name: check for name, check in checks.items() if check not in PASSED_OR_PENDING}
    if missing:
        raise NotReadyYet(f"servers missing from the stats page: {sorted(missing)}")
    if failing:
        raise ServerCheckFailed(f"health checks failing: {failing}")
    return True


def server_rows(stats_csv: str) -> dict[str, dict[str, str]]:
    """``{"backend/server": row}`` from HAProxy's stats page in CSV form (``status``,
    ``check_status``, ``check_desc``...); frontends, backends and short rows left out."""
    lines = stats_csv.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise NotReadyYet(f"the stats page is not CSV: {stats_csv[:200]!r}")
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    return {
        f"{row['pxname']}/{row['svname']}": row
        for row in rows
        if None not in row.values() and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def server_checks(stats_csv: str) -> dict[str, str]:
    """``{"backend/server": check_status}`` from HAProxy's stats page in CSV form."""
    return {server: row["check_status"] for server, row in server_rows(stats_csv).items()}


__all__ = [
    "GATEWAY_ROUTES",
    "HEALTH_CHECK_PATH",
    "Backend",
    "HAProxySettings",
    "LocalHAProxy",
    "check_config",
    "every_server_listed_and_passing",
    "render_haproxy_config",
    "server_checks",
    "server_rows",
]
