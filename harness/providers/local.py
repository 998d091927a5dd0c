"""The ``local`` provider: the whole stack as child processes, no Docker needed.

``local_stack(config)`` is a context manager that brings up, in order:

1. PostgreSQL 15 (``LocalPostgres``: initdb into the run directory),
2. the cluster roles and the database (``system_under_test.migrate.bootstrap``),
3. the migrations (as the owner role),
4. the platform admin (``system_under_test.seed.seed_platform_admin``),
5. Redis 7 (``LocalRedis``: password, AOF),
6. the JWT key pair (private key for the auth service only),
7. the four services, ``instances_per_service`` (2) processes each, started
   concurrently, each awaited on ``GET /ready``,
8. the PostgreSQL exporter (as the ``atendeai_monitor`` role, a ``pg_monitor``
   member, with the business-count queries) and the Redis exporter,
9. HAProxy in front of the instances (path routing, ``httpchk GET /ready``,
   stats page and Prometheus exporter), awaited until its stats page lists
   every server and none fails its health check,
10. Prometheus scraping every instance, HAProxy, both exporters and itself,
    with the rules of ``compose/prometheus/rules``, awaited until it answers
    ``/-/ready`` (its first scrapes come ~5 s later: see
    ``harness.prometheus_api.wait_for_stack_targets``),

and yields the ``Stack`` describing it. Everything is torn down in reverse
order on exit, and also when a step fails (whatever had started is stopped;
the run directory is then kept, since the error points at the logs in it).
Progress lines (component, address, seconds) go to the ``progress`` callback,
by default to stderr.

``supervised_local_stack(config)`` is the same, but yields a
``LocalStackControl``: the ``Stack`` plus the supervisor's hold on PostgreSQL
and the service instances (``kill``, ``restart``, ``evidence``), for the
recovery drill (``harness.gate.recovery``).
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.exceptions import ComponentStartError, ConfigurationError, HarnessError
from harness.keys import generate_jwt_keys
from harness.processes import ManagedProcess
from harness.providers.exporters import (
    LocalPostgresExporter,
    LocalRedisExporter,
    ensure_monitoring_role,
    monitor_dsn,
)
from harness.providers.haproxy import GATEWAY_ROUTES, Backend, HAProxySettings, LocalHAProxy
from harness.providers.postgres import LocalPostgres
from harness.providers.prometheus import (
    COMPOSE_DIR,
    LocalPrometheus,
    PrometheusSettings,
    ScrapeJob,
)
from harness.providers.redis import LocalRedis
from harness.providers.services import SERVICE_NAMES, RunningService, running_services
from harness.stack import Credentials, PostgresEndpoints, Stack

Progress = Callable[[str], None]

DATABASE = "atendeai"
OWNER_ROLE = "atendeai_owner"
APP_ROLE = "atendeai_app"
JWT_ISSUER = "atendeai-auth"
JWT_AUDIENCE = "atendeai-api"


def print_progress(line: str) -> None:
    """The default ``progress`` callback: one line to stderr, flushed."""
    print(f"atendeai: {line}", file=sys.stderr, flush=True)


def generate_password() -> str:
    """A strong random password (URL-safe, so it needs no quoting in DSNs)."""
    return "At-" + secrets.token_urlsafe(24)


#: The custom queries of the PostgreSQL exporter (business gauges), shared with compose.
DEFAULT_EXPORTER_QUERIES = COMPOSE_DIR / "postgres-exporter" / "queries.yaml"


def default_cache_dir() -> Path:
    """``~/.cache/atendeai``: what is worth keeping between runs (the initdb template)."""
    return Path.home() / ".cache" / "atendeai"


@dataclass(frozen=True)
class LocalStackConfig:
    """Everything ``local_stack`` can be told; resolved once, then frozen.

    - ``base_dir``: where the run directory is made (``None``: the system temp dir).
    - ``startup_timeout_s``: how long each component may take to become ready.
    - ``allowed_origins``: the CORS allow list given to the services.
    - ``platform_admin_email`` / ``platform_admin_password``: the seeded platform
      admin (the password is generated per stack unless given).
    - ``service_env``: extra ``(NAME, value)`` environment for every service,
      applied last (so it overrides the defaults, e.g. rate limits).
    - ``keep_dir``: keep the run directory (logs, data) after teardown.
    - ``login_limit_per_client``: ``ATENDEAI_LOGIN_LIMIT_PER_CLIENT`` for auth.
    - ``postgres_bin_dir``: PostgreSQL 15 binaries (``None``: look them up).
    - ``cache_dir``: where the initdb'd PostgreSQL template is kept between runs
      (``None``: run initdb every time).
    - ``instances_per_service``: processes per service behind HAProxy (the spec's
      shape needs at least two).
    - ``prometheus``: scrape/evaluation intervals and the rules to load
      (``PrometheusSettings``; the live alert test caps every ``for:``).
    - ``haproxy``: health-check timing (``HAProxySettings``).
    - ``exporter_queries``: the PostgreSQL exporter's custom queries file.
    """

    base_dir: Path | None = None
    startup_timeout_s: float = 30.0
    allowed_origins: tuple[str, ...] = ("http://localhost:8080",)
    platform_admin_email: str = "platform-admin@atendeai.test"
    platform_admin_password: str = field(default_factory=generate_password, repr=False)
    service_env: tuple[tuple[str, str], ...] = ()
    keep_dir: bool = False
    login_limit_per_client: str = "20/60"
    postgres_bin_dir: Path | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    instances_per_service: int = 2
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    haproxy: HAProxySettings = field(default_factory=HAProxySettings)
    exporter_queries: Path = DEFAULT_EXPORTER_QUERIES

    def __post_init__(self) -> None:
        if self.instances_per_service < 1:
            raise ConfigurationError(
                f"instances_per_service must be at least 1, not {self.instances_per_service}"
            )
        for name in ("base_dir", "postgres_bin_dir", "cache_dir", "exporter_queries"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.startup_timeout_s <= 0:
            raise ConfigurationError(
                f"startup_timeout_s must be positive, not {self.startup_timeout_s}"
            )
        if "@" not in self.platform_admin_email:
            raise ConfigurationError(
                f"platform_admin_email {self.platform_admin_email!r} is not an email address"
            )
        if len(self.platform_admin_password) < 8:
            raise ConfigurationError("platform_admin_password must have at least 8 characters")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "service_env", tuple(tuple(p) for p in self.service_env))
        for pair in self.service_env:
            if len(pair) != 2 or not pair[0] or "=" in pair[0]:
                raise ConfigurationError(f"service_env entry {pair!r} is not a (NAME, value) pair")


class LocalStackControl:
    """A running local stack and the supervisor's hold on its processes.

    What the recovery drill needs to break a component and bring it back, the
    way Docker's ``restart: unless-stopped`` would. Components are named
    ``postgres`` and ``<service>-<n>`` (``auth-1``, ``auth-2``...). A restart
    keeps the port and the data, so the ``Stack`` stays true; the ``*_pid``
    entries of ``stack.extra`` are those of the first start (``pid()`` is the
    current one).
    """

    def __init__(
        self,
        stack: Stack,
        *,
        postgres: LocalPostgres,
        services: Sequence[RunningService],
        restart_timeout_s: float,
    ) -> None:
        self.stack = stack
        self._postgres = postgres
        self._services = {service.name: service for service in services}
        self.restart_timeout_s = restart_timeout_s

    @property
    def components(self) -> tuple[str, ...]:
        return ("postgres", *self._services)

    def pid(self, component: str) -> int | None:
        """The pid of the component's running process (``None`` when it is down)."""
        process = self._process(component)
        return process.pid if process is not None and process.running else None

    def kill(self, component: str) -> int | None:
        """``kill -9`` the component's whole process group; the pid killed, or ``None``."""
        process = self._process(component)
        return None if process is None else process.kill()

    def restart(self, component: str, *, timeout_s: float | None = None) -> None:
        """Start the component again (same port, same data) and wait until it is ready.

        Raises ``ComponentStartError`` with its log tail when it does not come back.
        """
        timeout = self.restart_timeout_s if timeout_s is None else timeout_s
        if component == "postgres":
            self._postgres.restart(timeout_s=timeout)
        else:
            self._service(component).restart(timeout_s=timeout)

    def evidence(self, component: str, *, lines: int = 15) -> str:
        """Where the component listens, its pid and log, and the log's last lines."""
        if component == "postgres":
            port, log_path = self._postgres.port, self._postgres.log_path
        else:
            service = self._service(component)
            port, log_path = service.port, service.process.log_path
        pid = self.pid(component)
        state = f"pid {pid}" if pid is not None else "not running"
        process = self._process(component)
        tail = (process.log_tail(lines) if process is not None else "") or "(empty)"
        return (
            f"{component} on 127.0.0.1:{port} ({state}), log {log_path}; log tail:\n"
            + "\n".join(f"  | {line}" for line in tail.splitlines())
        )

    def _process(self, component: str) -> ManagedProcess | None:
        if component == "postgres":
            return self._postgres.process
        return self._service(component).process

    def _service(self, component: str) -> RunningService:
        try:
            return self._services[component]
        except KeyError:
            known = ", ".join(self.components)
            raise ConfigurationError(f"no component {component!r} (known: {known})") from None


@contextmanager
def local_stack(
    config: LocalStackConfig | None = None, *, progress: Progress | None = None
) -> Iterator[Stack]:
    """Bring the whole stack up as child processes; yield its ``Stack``; tear it down."""
    with supervised_local_stack(config, progress=progress) as control:
        yield control.stack


@contextmanager
def supervised_local_stack(
    config: LocalStackConfig | None = None, *, progress: Progress | None = None
) -> Iterator[LocalStackControl]:
    """``local_stack``, yielding the ``LocalStackControl`` that can kill and restart parts."""
    config = LocalStackConfig() if config is None else config
    say = print_progress if progress is None else progress
    started = time.monotonic()

    with ExitStack() as resources:
        run_dir = _make_run_dir(config.base_dir)
        # A failed start keeps its logs: the error message points into them.
        outcome = {"started": False}
        resources.callback(
            lambda: _remove_run_dir(
                run_dir, keep=config.keep_dir or not outcome["started"], say=say
            )
        )
        resources.callback(say, "stack stopped")
        say(f"run directory {run_dir}")

        # 1. PostgreSQL
        step = time.monotonic()
        postgres = resources.enter_context(
            LocalPostgres(
                run_dir / "postgres",
                bin_dir=config.postgres_bin_dir,
                startup_timeout_s=config.startup_timeout_s,
                template_cache_dir=config.cache_dir,
            )
        )
        source = "template copy" if postgres.used_template else "initdb"
        say(_line("postgres", f"{postgres.host}:{postgres.port} ({source})", step))

        # 2-4. roles and database, migrations, platform admin
        step = time.monotonic()
        owner_password, app_password = generate_password(), generate_password()
        monitor_password = generate_password()
        owner_dsn = postgres.dsn(DATABASE, user=OWNER_ROLE, password=owner_password)
        app_dsn = postgres.dsn(DATABASE, user=APP_ROLE, password=app_password)
        applied = _prepare_database(
            postgres,
            owner_dsn=owner_dsn,
            owner_password=owner_password,
            app_password=app_password,
            monitor_password=monitor_password,
            config=config,
        )
        say(_line("database", f"{DATABASE}, migrations {','.join(applied) or 'none'}", step))

        # 5. Redis
        step = time.monotonic()
        redis = resources.enter_context(
            LocalRedis(run_dir / "redis", startup_timeout_s=config.startup_timeout_s)
        )
        say(_line("redis", f"{redis.host}:{redis.port}", step))

        # 6. JWT keys
        keys = generate_jwt_keys(run_dir / "keys")

        # 7. services
        step = time.monotonic()
        base_env = _service_base_env(
            app_dsn=app_dsn,
            redis_url=redis.url,
            public_key=keys.public_key_path,
            config=config,
        )

        def env_for(name: str, urls: Mapping[str, str]) -> dict[str, str]:
            env = dict(base_env)
            if name == "auth":
                env["ATENDEAI_JWT_PRIVATE_KEY_FILE"] = str(keys.private_key_path)
            if name == "health":
                env["ATENDEAI_SERVICE_URLS"] = ",".join(
                    f"{other}={url}" for other, url in urls.items() if other != "health"
                )
            env.update(config.service_env)
            return env

        services: list[RunningService] = resources.enter_context(
            running_services(
                SERVICE_NAMES,
                env_for=env_for,
                log_dir=run_dir / "services",
                instances=config.instances_per_service,
                timeout_s=config.startup_timeout_s,
            )
        )
        say(
            _line(
                "services",
                f"{len(services)} instances, ports "
                + " ".join(str(service.port) for service in services),
                step,
            )
        )

        # 8. exporters
        step = time.monotonic()
        postgres_exporter = resources.enter_context(
            LocalPostgresExporter(
                run_dir / "postgres-exporter",
                dsn=monitor_dsn(postgres.host, int(postgres.port or 0), DATABASE, monitor_password),
                queries_file=config.exporter_queries,
                startup_timeout_s=config.startup_timeout_s,
            )
        )
        redis_exporter = resources.enter_context(
            LocalRedisExporter(
                run_dir / "redis-exporter",
                redis_host=redis.host,
                redis_port=int(redis.port or 0),
                password=redis.password,
                startup_timeout_s=config.startup_timeout_s,
            )
        )
        say(
            _line(
                "exporters",
                f"postgres:{postgres_exporter.port} redis:{redis_exporter.port}",
                step,
            )
        )

        # 9. HAProxy
        step = time.monotonic()
        haproxy = resources.enter_context(
            LocalHAProxy(
                run_dir / "haproxy",
                backends=_backends(services),
                settings=config.haproxy,
                startup_timeout_s=config.startup_timeout_s,
            )
        )
        say(_line("haproxy", f"{haproxy.gateway_url} stats {haproxy.stats_url}", step))

        # 10. Prometheus. Not awaited until its targets are up: Prometheus
        # 2.42 hands new targets to its scrapers on a fixed 5 s tick, so the
        # first scrape comes about 5 s after it starts, whatever we do. The
        # stack is usable before that; ``prometheus_api.wait_for_stack_targets`` waits.
        step = time.monotonic()
        prometheus = resources.enter_context(
            LocalPrometheus(
                run_dir / "prometheus",
                jobs=_scrape_jobs(
                    services,
                    haproxy_stats=f"{haproxy.host}:{haproxy.ports[1]}",
                    postgres_exporter=f"{postgres_exporter.host}:{postgres_exporter.port}",
                    redis_exporter=f"{redis_exporter.host}:{redis_exporter.port}",
                ),
                settings=config.prometheus,
                startup_timeout_s=config.startup_timeout_s,
            )
        )
        say(_line("prometheus", f"{prometheus.url()} ({prometheus.target_count} targets)", step))

        cold_start = time.monotonic() - started
        extra = {
            "run_dir": str(run_dir),
            "cold_start_seconds": f"{cold_start:.2f}",
            "migrations": ",".join(applied),
            "jwt_public_key_file": str(keys.public_key_path),
            # For tests that must sign tokens with the real key (bad claims);
            # of the services, only auth is given it.
            "jwt_private_key_file": str(keys.private_key_path),
            "postgres_log": str(postgres.log_path),
            "postgres_socket_dir": str(postgres.socket_dir),
            "postgres_pid": str(postgres.process.pid if postgres.process else ""),
            "redis_log": str(redis.log_path),
            "redis_pid": str(redis.process.pid if redis.process else ""),
            "services_log_dir": str(run_dir / "services"),
            **{f"{service.name}_pid": str(service.process.pid) for service in services},
            **{
                f"{service.instance.service}_pid": str(service.process.pid)
                for service in services
                if service.instance.index == 1
            },
            "haproxy_config": str(haproxy.config_path),
            "haproxy_metrics_url": haproxy.metrics_url,
            "haproxy_pid": str(haproxy.process.pid if haproxy.process else ""),
            "prometheus_config": str(prometheus.config_path),
            "prometheus_rule_files": ",".join(str(path) for path in prometheus.rule_files),
            "prometheus_targets": str(prometheus.target_count),
            "prometheus_log": str(prometheus.log_path),
            "prometheus_pid": str(prometheus.process.pid if prometheus.process else ""),
            "monitor_dsn": monitor_dsn(
                postgres.host, int(postgres.port or 0), DATABASE, monitor_password
            ),
        }
        stack = Stack(
            provider="local",
            postgres=PostgresEndpoints(
                superuser_dsn=postgres.dsn(DATABASE),
                owner_dsn=owner_dsn,
                app_dsn=app_dsn,
                host=postgres.host,
                port=int(postgres.port or 0),
                database=DATABASE,
            ),
            redis_url=redis.url,
            services={s.instance.service: s.url for s in services if s.instance.index == 1},
            platform_admin=Credentials(
                email=config.platform_admin_email, password=config.platform_admin_password
            ),
            jwt_issuer=JWT_ISSUER,
            jwt_audience=JWT_AUDIENCE,
            allowed_origins=config.allowed_origins,
            service_instances={
                name: tuple(s.url for s in services if s.instance.service == name)
                for name in SERVICE_NAMES
            },
            haproxy_url=haproxy.gateway_url,
            haproxy_stats_url=haproxy.stats_url,
            prometheus_url=prometheus.url(),
            exporters={
                "postgres": postgres_exporter.url("/metrics"),
                "redis": redis_exporter.url("/metrics"),
            },
            extra=extra,
        )
        say(f"stack ready in {cold_start:.2f} s")
        resources.callback(say, "stopping the stack")
        outcome["started"] = True
        yield LocalStackControl(
            stack,
            postgres=postgres,
            services=services,
            restart_timeout_s=config.startup_timeout_s,
        )


def _line(component: str, where: str, since: float) -> str:
    return f"{component:<9} {where:<40} {time.monotonic() - since:5.2f} s"


def _backends(services: list[RunningService]) -> list[Backend]:
    """One HAProxy backend per service, over all of its instances."""
    return [
        Backend(
            service=name,
            path_prefixes=GATEWAY_ROUTES[name],
            servers=tuple(
                (s.name, s.url.removeprefix("http://"))
                for s in services
                if s.instance.service == name
            ),
        )
        for name in SERVICE_NAMES
    ]


def _scrape_jobs(
    services: list[RunningService],
    *,
    haproxy_stats: str,
    postgres_exporter: str,
    redis_exporter: str,
) -> list[ScrapeJob]:
    """The same jobs as compose/prometheus/prometheus.yml: one per service, then the rest."""
    jobs = [
        ScrapeJob(
            name,
            tuple(s.url.removeprefix("http://") for s in services if s.instance.service == name),
            labels=(("tier", "service"),),
        )
        for name in SERVICE_NAMES
    ]
    jobs += [
        ScrapeJob("haproxy", (haproxy_stats,), labels=(("tier", "gateway"),)),
        ScrapeJob("postgres", (postgres_exporter,), labels=(("tier", "database"),)),
        ScrapeJob("redis", (redis_exporter,), labels=(("tier", "cache"),)),
    ]
    return jobs


def _make_run_dir(base_dir: Path | None) -> Path:
    if base_dir is not None:
        try:
            base_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"cannot create base directory {base_dir}: {error}") from None
    run_dir = Path(tempfile.mkdtemp(prefix="atendeai-stack-", dir=base_dir))
    # PostgreSQL runs as another OS user when we are root: it must be able to
    # walk into the run directory (the secrets inside are mode 0600/0700).
    run_dir.chmod(0o755)
    return run_dir


def _remove_run_dir(run_dir: Path, *, keep: bool, say: Progress) -> None:
    if keep:
        say(f"kept {run_dir} (logs and data)")
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def _prepare_database(
    postgres: LocalPostgres,
    *,
    owner_dsn: str,
    owner_password: str,
    app_password: str,
    monitor_password: str,
    config: LocalStackConfig,
) -> list[str]:
    """Roles and database, migrations, the monitoring role, platform admin; errors
    carry the server log."""
    step = "bootstrap (roles and database)"
    try:
        migrate: Any = importlib.import_module("system_under_test.migrate")
        migrate.bootstrap(
            postgres.superuser_dsn,
            database=DATABASE,
            owner_password=owner_password,
            app_password=app_password,
        )
        step = "migrations"
        applied: list[str] = list(migrate.apply_migrations(owner_dsn))
        step = "monitoring role (atendeai_monitor)"
        ensure_monitoring_role(postgres.superuser_dsn, monitor_password)
        step = "platform admin seed"
        seed: Any = importlib.import_module("system_under_test.seed")
        seed.seed_platform_admin(
            owner_dsn, config.platform_admin_email, config.platform_admin_password
        )
    except HarnessError:
        raise
    except Exception as error:
        raise ComponentStartError(
            "database",
            f"{step} failed: {type(error).__name__}: {error}",
            log_path=str(postgres.log_path),
            log_tail=postgres.process.log_tail(20) if postgres.process else "",
            hint="see system_under_test/migrate.py, seed.py and the migrations; "
            "the PostgreSQL log tail above shows the server's side",
        ) from error
    return applied


def _service_base_env(
    *, app_dsn: str, redis_url: str, public_key: Path, config: LocalStackConfig
) -> dict[str, str]:
    """The environment every service shares: ours replaces any inherited ATENDEAI_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(
        PYTHONUNBUFFERED="1",
        ATENDEAI_DATABASE_URL=app_dsn,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_PUBLIC_KEY_FILE=str(public_key),
        ATENDEAI_JWT_ISSUER=JWT_ISSUER,
        ATENDEAI_JWT_AUDIENCE=JWT_AUDIENCE,
        ATENDEAI_CORS_ORIGINS=",".join(config.allowed_origins),
        ATENDEAI_LOGIN_LIMIT_PER_CLIENT=config.login_limit_per_client,
    )
    return env


__all__ = [
    "LocalStackConfig",
    "LocalStackControl",
    "Progress",
    "default_cache_dir",
    "generate_password",
    "local_stack",
    "print_progress",
    "supervised_local_stack",
]
