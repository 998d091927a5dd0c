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

and yields the ``Stack`` describing it (``describe_stack``, from the started
``LocalStackParts``; each step above is one ``_start_*`` function that enters
what it starts on the caller's ``ExitStack``). Everything is torn down in reverse
order on exit, and also when a step fails (whatever had started is stopped;
the run directory is then kept, since the error points at the logs in it).
Progress lines (component, address, seconds) go to the ``progress`` callback,
by default to stderr.

``supervised_local_stack(config)`` is the same, but yields a
``LocalStackControl``: the ``Stack`` plus the supervisor's hold on every
component (``kill``, ``pause``, ``resume``, ``restart``, ``evidence``,
``undo_faults``), for the recovery and resilience drills
(``harness.gate.recovery``). On exit it first thaws whatever it left frozen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from harness.childenv import child_environment
from harness.exceptions import ConfigurationError, FaultNotSupported, WaitTimeout
from harness.keys import JwtKeyFiles, generate_jwt_keys
from harness.processes import ManagedProcess, descendants, process_state, wait_until
from harness.progress import Progress
from harness.providers.daemon import HttpDaemon
from harness.providers.database import (
    APP_ROLE,
    DATABASE,
    JWT_AUDIENCE,
    JWT_ISSUER,
    OWNER_ROLE,
    prepare_database,
)
from harness.providers.exporters import (
    LocalPostgresExporter,
    LocalRedisExporter,
    monitor_dsn,
)
from harness.providers.haproxy import GATEWAY_ROUTES, Backend, LocalHAProxy
from harness.providers.options import StackOptions, generate_password
from harness.providers.postgres import LocalPostgres
from harness.providers.prometheus import (
    COMPOSE_DIR,
    LocalPrometheus,
    ScrapeJob,
)
from harness.providers.redis import LocalRedis
from harness.providers.rundir import make_run_dir, print_progress, remove_run_dir
from harness.providers.services import SERVICE_NAMES, RunningService, running_services
from harness.stack import Credentials, PostgresEndpoints, Stack

T = TypeVar("T")

#: The custom queries of the PostgreSQL exporter (business gauges), shared with compose.
DEFAULT_EXPORTER_QUERIES = COMPOSE_DIR / "postgres-exporter" / "queries.yaml"


def default_cache_dir() -> Path:
    """``~/.cache/atendeai``: what is worth keeping between runs (the initdb template)."""
    return Path.home() / ".cache" / "atendeai"


@dataclass(frozen=True)
class LocalStackConfig(StackOptions):
    """``StackOptions`` and what only the local provider needs; resolved once, frozen.

    - ``base_dir``: where the run directory is made (``None``: the system temp dir).
    - ``postgres_bin_dir``: PostgreSQL 15 binaries (``None``: look them up).
    - ``cache_dir``: where the initdb'd PostgreSQL template is kept between runs
      (``None``: run initdb every time).
    - ``exporter_queries``: the PostgreSQL exporter's custom queries file.
    """

    base_dir: Path | None = None
    postgres_bin_dir: Path | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    exporter_queries: Path = DEFAULT_EXPORTER_QUERIES

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("base_dir", "postgres_bin_dir", "cache_dir", "exporter_queries"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


#: Why the local provider cannot cut or slow one component's network.
_SHARED_NETNS = (
    "the local provider runs every component as a process of this host, all in its one "
    "network namespace on 127.0.0.1: a route or a qdisc there would cut or slow every "
    "component alike, not this one alone"
)
_USE_CONTAINERS = (
    "use the containers provider (--stack=containers, or StackRequest(provider='containers')): "
    "each container has a network namespace of its own"
)


class LocalStackControl:
    """A running local stack and the supervisor's hold on its processes.

    The local provider's ``Supervisor`` (``harness.providers.Supervisor``):
    what the recovery drill and the tests need to break a component and
    bring it back, the way Docker's ``restart: unless-stopped`` would.
    Every component (``postgres``, ``redis``, the service instances
    ``auth-1``..., the two exporters, ``haproxy``, ``prometheus``) can be
    killed (``kill -9`` of it and every descendant), frozen (SIGSTOP to it and
    every descendant: PostgreSQL's backends are session leaders of their own,
    out of its process group) and restarted on the same port and data (Redis
    replays its AOF, Prometheus its TSDB's WAL, PostgreSQL its WAL), awaited
    until ready. A restart keeps the ports, so the ``Stack`` stays true.

    The supervisor remembers what it broke (frozen, killed and not restarted);
    ``undo_faults()`` thaws and restarts all of it, and the provider thaws
    every frozen process before it stops the stack, also after Ctrl-C.
    Network faults (``isolate``, ``delay``) raise ``FaultNotSupported`` here:
    every process shares the host's network namespace.
    """

    def __init__(
        self,
        stack: Stack,
        *,
        postgres: LocalPostgres,
        services: Sequence[RunningService],
        redis: LocalRedis | None = None,
        daemons: Mapping[str, HttpDaemon] = {},
        restart_timeout_s: float,
    ) -> None:
        self.stack = stack
        self._postgres = postgres
        self._redis = redis
        self._services = {service.name: service for service in services}
        self._daemons = dict(daemons)
        self.restart_timeout_s = restart_timeout_s
        self._paused: set[str] = set()
        self._killed: set[str] = set()

    @property
    def components(self) -> tuple[str, ...]:
        first = ("postgres", "redis") if self._redis is not None else ("postgres",)
        return (*first, *self._services, *self._daemons)

    @property
    def faults(self) -> dict[str, str]:
        """What the supervisor broke and has not undone: ``{component: "paused" | "killed"}``."""
        return {
            **{name: "killed" for name in sorted(self._killed)},
            **{name: "paused" for name in sorted(self._paused)},
        }

    def pids(self) -> list[int]:
        """The pid of every running process the provider started (descendants not included)."""
        return [pid for name in self.components if (pid := self.pid(name)) is not None]

    def pid(self, component: str) -> int | None:
        """The pid of the component's running process (``None`` when it is down)."""
        process = self._process(component)
        return process.pid if process is not None and process.running else None

    def kill(self, component: str) -> int | None:
        """``kill -9`` the component and every descendant; the pid killed, or ``None``."""
        process = self._process(component)
        pid = None if process is None else process.kill()
        if pid is not None:
            self._killed.add(component)
        self._paused.discard(component)  # SIGKILL ends a stopped process too
        return pid

    def pause(self, component: str) -> None:
        """Freeze the component (SIGSTOP to it and its descendants), as ``docker pause`` does."""
        self._signal_all(component, signal.SIGSTOP)
        self._paused.add(component)

    def resume(self, component: str) -> None:
        """Thaw a frozen component (SIGCONT to it and its descendants)."""
        self._signal_all(component, signal.SIGCONT)
        self._paused.discard(component)

    def _signal_all(self, component: str, signum: int) -> None:
        pid = self.pid(component)
        if pid is None:
            raise ConfigurationError(f"{component} is not running: nothing to signal")
        # The main process first, and its children listed only once it has
        # stopped: it forks nothing after that, so no child started in between
        # is missed. A stop is delivered asynchronously; like ``docker pause``,
        # return once it took (CI once saw a PostgreSQL backend still running).
        _send(pid, signum)
        stopping = signum == signal.SIGSTOP
        if stopping:
            _wait_stopped([pid])
        children = descendants(pid)
        for target in children:
            _send(target, signum)
        if stopping:
            _wait_stopped(children)

    def restart(self, component: str, *, timeout_s: float | None = None) -> None:
        """Start the component again (same port, same data) and wait until it is ready:
        PostgreSQL answers a query, Redis an authenticated PING, a service ``/ready``,
        HAProxy its stats page, Prometheus ``/-/ready``, an exporter its ``/metrics``.

        Kills it first when it still runs (frozen or not). Raises
        ``ComponentStartError`` with its log tail when it does not come back.
        """
        timeout = self.restart_timeout_s if timeout_s is None else timeout_s
        part = self._part(component)
        self._paused.discard(component)  # the restart kills whatever is left
        part.restart(timeout_s=timeout)
        self._killed.discard(component)

    def isolate(self, component: str, *, from_: Sequence[str]) -> None:
        """Not here: ``FaultNotSupported`` (one shared network namespace)."""
        self._part(component)
        raise FaultNotSupported(
            f"isolate (from {', '.join(from_)})",
            component,
            reason=_SHARED_NETNS,
            instead=_USE_CONTAINERS,
        )

    def rejoin(self, component: str) -> None:
        """Not here: ``FaultNotSupported`` (nothing can have been isolated)."""
        self._part(component)
        raise FaultNotSupported("rejoin", component, reason=_SHARED_NETNS, instead=_USE_CONTAINERS)

    def delay(self, component: str, *, ms: int) -> None:
        """Not here: ``FaultNotSupported`` (one shared network namespace)."""
        self._part(component)
        raise FaultNotSupported(
            f"delay ({ms} ms)", component, reason=_SHARED_NETNS, instead=_USE_CONTAINERS
        )

    def undelay(self, component: str) -> None:
        """Not here: ``FaultNotSupported`` (nothing can have been delayed)."""
        self._part(component)
        raise FaultNotSupported("undelay", component, reason=_SHARED_NETNS, instead=_USE_CONTAINERS)

    def scrape_every(self, seconds: float) -> None:
        """Prometheus scraping every ``seconds`` (``LocalPrometheus.scrape_every``)."""
        prometheus = self._daemons.get("prometheus")
        if not isinstance(prometheus, LocalPrometheus):
            raise ConfigurationError("this stack has no Prometheus to reconfigure")
        prometheus.scrape_every(seconds)

    def undo_faults(self, *, restart_killed: bool = True) -> list[str]:
        """Thaw every component this supervisor froze and (``restart_killed``) restart
        every one it killed; what was undone, as lines (``"redis resumed"``).

        Tries them all; the first failure is raised at the end, with the others
        as notes. The provider calls it with ``restart_killed=False`` before it
        stops the stack (a frozen process ignores SIGTERM until thawed).
        """
        done: list[str] = []
        errors: list[BaseException] = []
        for component in sorted(self._paused):
            try:
                if self.pid(component) is not None:
                    self.resume(component)
                    done.append(f"{component} resumed")
                self._paused.discard(component)
            except Exception as error:
                errors.append(error)
        for component in sorted(self._killed) if restart_killed else ():
            try:
                self.restart(component)
                done.append(f"{component} restarted")
            except Exception as error:
                errors.append(error)
        if errors:
            for other in errors[1:]:
                errors[0].add_note(f"also: {other}")
            raise errors[0]
        return done

    def evidence(self, component: str, *, lines: int = 15) -> str:
        """Where the component listens, its pid and log, and the log's last lines."""
        port, log_path = self._where(component)
        pid = self.pid(component)
        state = f"(pid {pid})" if pid is not None else "(not running)"
        if component in self._paused:
            state += " (frozen (SIGSTOP) by the supervisor)"
        if component in self._killed:
            state += " (killed by the supervisor)"
        process = self._process(component)
        tail = (process.log_tail(lines) if process is not None else "") or "(empty)"
        return f"{component} on 127.0.0.1:{port} {state}, log {log_path}; log tail:\n" + "\n".join(
            f"  | {line}" for line in tail.splitlines()
        )

    def _where(self, component: str) -> tuple[int | None, Path]:
        if component in self._services:
            service = self._services[component]
            return service.port, service.process.log_path
        part = self._part(component)
        assert not isinstance(part, RunningService)
        return part.port, part.log_path

    def _process(self, component: str) -> ManagedProcess | None:
        return self._part(component).process

    def _part(self, component: str) -> LocalPostgres | LocalRedis | RunningService | HttpDaemon:
        if component == "postgres":
            return self._postgres
        if component == "redis" and self._redis is not None:
            return self._redis
        found = self._services.get(component) or self._daemons.get(component)
        if found is None:
            known = ", ".join(self.components)
            raise ConfigurationError(f"no component {component!r} (known: {known})")
        return found


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
        run_dir = make_run_dir(config.base_dir, prefix="atendeai-stack-")
        # A failed start keeps its logs: the error message points into them.
        outcome = {"started": False}
        resources.callback(
            lambda: remove_run_dir(run_dir, keep=config.keep_dir or not outcome["started"], say=say)
        )
        resources.callback(say, "stack stopped")
        say(f"run directory {run_dir}")

        parts = _start_parts(_Starting(resources, run_dir, config, say))
        cold_start = time.monotonic() - started
        stack = describe_stack(parts, config, cold_start_s=cold_start)
        say(f"stack ready in {cold_start:.2f} s")
        resources.callback(say, "stopping the stack")
        outcome["started"] = True
        control = LocalStackControl(
            stack,
            postgres=parts.postgres,
            services=parts.services,
            redis=parts.redis,
            daemons=parts.daemons(),
            restart_timeout_s=config.startup_timeout_s,
        )
        # First thing on exit (Ctrl-C included): a frozen process ignores SIGTERM.
        resources.callback(_thaw_before_stopping, control, say)
        yield control


@dataclass(frozen=True)
class DatabaseAccess:
    """What preparing the database made: the roles' DSNs and the migrations applied."""

    owner_dsn: str
    app_dsn: str
    monitor_dsn: str
    migrations: tuple[str, ...]


@dataclass(frozen=True)
class LocalStackParts:
    """Every started part of a local stack: what ``describe_stack`` describes."""

    run_dir: Path
    postgres: LocalPostgres
    database: DatabaseAccess
    redis: LocalRedis
    keys: JwtKeyFiles
    services: tuple[RunningService, ...]
    postgres_exporter: LocalPostgresExporter
    redis_exporter: LocalRedisExporter
    haproxy: LocalHAProxy
    prometheus: LocalPrometheus

    def daemons(self) -> dict[str, HttpDaemon]:
        """The HTTP daemons by component name, as the supervisor knows them."""
        return {
            "postgres-exporter": self.postgres_exporter,
            "redis-exporter": self.redis_exporter,
            "haproxy": self.haproxy,
            "prometheus": self.prometheus,
        }


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


#: How long ``pause`` waits for SIGSTOP to take (a process in an uninterruptible
#: wait stops only when it returns from it).
STOP_TAKES_S = 2.0


def _wait_stopped(pids: Sequence[int]) -> None:
    """Until each of ``pids`` is stopped or gone, for at most ``STOP_TAKES_S``."""
    with contextlib.suppress(WaitTimeout):
        wait_until(
            lambda: all(process_state(pid) in (None, "T", "t", "Z") for pid in pids),
            timeout=STOP_TAKES_S,
            what="SIGSTOP to take",
            interval=0.005,
        )


@dataclass(frozen=True)
class _Starting:
    """What every start step shares: the ``ExitStack`` that stops what it
    started (a later failure tears the earlier parts down), the run
    directory, the configuration and the progress callback."""

    resources: ExitStack
    run_dir: Path
    config: LocalStackConfig
    say: Progress

    def enter(
        self, component: str, part: AbstractContextManager[T], where: Callable[[T], str]
    ) -> T:
        """Start ``part`` (entered on the stack) and say where it runs and how long it took."""
        step = time.monotonic()
        started = self.resources.enter_context(part)
        self.say(_line(component, where(started), step))
        return started


def _start_parts(start: _Starting) -> LocalStackParts:
    """Steps 1-10 in order, each started part entered on ``start.resources``."""
    postgres = _start_postgres(start)
    database = _prepare_database(postgres, start.config, start.say)
    redis = _start_redis(start)
    keys = generate_jwt_keys(start.run_dir / "keys")
    services = _start_services(start, database, redis, keys)
    postgres_exporter, redis_exporter = _start_exporters(start, postgres, redis, database)
    haproxy = _start_haproxy(start, services)
    prometheus = _start_prometheus(start, services, haproxy, postgres_exporter, redis_exporter)
    return LocalStackParts(
        run_dir=start.run_dir,
        postgres=postgres,
        database=database,
        redis=redis,
        keys=keys,
        services=services,
        postgres_exporter=postgres_exporter,
        redis_exporter=redis_exporter,
        haproxy=haproxy,
        prometheus=prometheus,
    )


def _start_postgres(start: _Starting) -> LocalPostgres:
    """1. PostgreSQL, from the cached initdb template when there is one."""
    config = start.config
    return start.enter(
        "postgres",
        LocalPostgres(
            start.run_dir / "postgres",
            bin_dir=config.postgres_bin_dir,
            startup_timeout_s=config.startup_timeout_s,
            template_cache_dir=config.cache_dir,
        ),
        lambda pg: f"{pg.host}:{pg.port} ({'template copy' if pg.used_template else 'initdb'})",
    )


def _prepare_database(
    postgres: LocalPostgres, config: LocalStackConfig, say: Progress
) -> DatabaseAccess:
    """2-4. Roles and database, migrations, platform admin, with fresh passwords."""
    step = time.monotonic()
    owner_password, app_password = generate_password(), generate_password()
    monitor_password = generate_password()
    owner_dsn = postgres.dsn(DATABASE, user=OWNER_ROLE, password=owner_password)
    app_dsn = postgres.dsn(DATABASE, user=APP_ROLE, password=app_password)
    applied = prepare_database(
        superuser_dsn=postgres.superuser_dsn,
        owner_dsn=owner_dsn,
        owner_password=owner_password,
        app_password=app_password,
        monitor_password=monitor_password,
        platform_admin=Credentials(config.platform_admin_email, config.platform_admin_password),
        log_path=str(postgres.log_path),
        log_tail=lambda: postgres.process.log_tail(20) if postgres.process else "",
    )
    say(_line("database", f"{DATABASE}, migrations {','.join(applied) or 'none'}", step))
    return DatabaseAccess(
        owner_dsn=owner_dsn,
        app_dsn=app_dsn,
        monitor_dsn=monitor_dsn(postgres.host, int(postgres.port or 0), DATABASE, monitor_password),
        migrations=tuple(applied),
    )


def _start_redis(start: _Starting) -> LocalRedis:
    """5. Redis."""
    return start.enter(
        "redis",
        LocalRedis(start.run_dir / "redis", startup_timeout_s=start.config.startup_timeout_s),
        lambda redis: f"{redis.host}:{redis.port}",
    )


def _start_services(
    start: _Starting, database: DatabaseAccess, redis: LocalRedis, keys: JwtKeyFiles
) -> tuple[RunningService, ...]:
    """7. Every instance of the four services, started concurrently, awaited on ``/ready``."""
    config = start.config
    base_env = _service_base_env(
        app_dsn=database.app_dsn,
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

    services: list[RunningService] = start.enter(
        "services",
        running_services(
            SERVICE_NAMES,
            env_for=env_for,
            log_dir=start.run_dir / "services",
            instances=config.instances_per_service,
            timeout_s=config.startup_timeout_s,
        ),
        lambda started: (
            f"{len(started)} instances, ports " + " ".join(str(service.port) for service in started)
        ),
    )
    return tuple(services)


def _start_exporters(
    start: _Starting, postgres: LocalPostgres, redis: LocalRedis, database: DatabaseAccess
) -> tuple[LocalPostgresExporter, LocalRedisExporter]:
    """8. The PostgreSQL exporter (as the monitoring role) and the Redis exporter."""
    config, resources = start.config, start.resources
    step = time.monotonic()
    postgres_exporter = resources.enter_context(
        LocalPostgresExporter(
            start.run_dir / "postgres-exporter",
            dsn=database.monitor_dsn,
            queries_file=config.exporter_queries,
            startup_timeout_s=config.startup_timeout_s,
        )
    )
    redis_exporter = resources.enter_context(
        LocalRedisExporter(
            start.run_dir / "redis-exporter",
            redis_host=redis.host,
            redis_port=int(redis.port or 0),
            password=redis.password,
            startup_timeout_s=config.startup_timeout_s,
        )
    )
    where = f"postgres:{postgres_exporter.port} redis:{redis_exporter.port}"
    start.say(_line("exporters", where, step))
    return postgres_exporter, redis_exporter


def _start_haproxy(start: _Starting, services: Sequence[RunningService]) -> LocalHAProxy:
    """9. HAProxy in front of every instance, awaited until all its servers are up."""
    return start.enter(
        "haproxy",
        LocalHAProxy(
            start.run_dir / "haproxy",
            backends=_backends(services),
            settings=start.config.haproxy,
            startup_timeout_s=start.config.startup_timeout_s,
        ),
        lambda haproxy: f"{haproxy.gateway_url} stats {haproxy.stats_url}",
    )


def _start_prometheus(
    start: _Starting,
    services: Sequence[RunningService],
    haproxy: LocalHAProxy,
    postgres_exporter: LocalPostgresExporter,
    redis_exporter: LocalRedisExporter,
) -> LocalPrometheus:
    """10. Prometheus, awaited on ``/-/ready`` only.

    Not awaited until its targets are up: Prometheus 2.42 hands new targets to
    its scrapers on a fixed 5 s tick, so the first scrape comes about 5 s after
    it starts, whatever we do. The stack is usable before that;
    ``prometheus_api.wait_for_stack_targets`` waits.
    """
    return start.enter(
        "prometheus",
        LocalPrometheus(
            start.run_dir / "prometheus",
            jobs=_scrape_jobs(
                services,
                haproxy_stats=f"{haproxy.host}:{haproxy.ports[1]}",
                postgres_exporter=f"{postgres_exporter.host}:{postgres_exporter.port}",
                redis_exporter=f"{redis_exporter.host}:{redis_exporter.port}",
            ),
            settings=start.config.prometheus,
            startup_timeout_s=start.config.startup_timeout_s,
        ),
        lambda prometheus: f"{prometheus.url()} ({prometheus.target_count} targets)",
    )


def describe_stack(
    parts: LocalStackParts, config: LocalStackConfig, *, cold_start_s: float
) -> Stack:
    """The ``Stack`` record of a started local stack (reads the parts, starts nothing)."""
    postgres, redis, services = parts.postgres, parts.redis, parts.services
    haproxy, prometheus = parts.haproxy, parts.prometheus
    extra = {
        "run_dir": str(parts.run_dir),
        "cold_start_seconds": f"{cold_start_s:.2f}",
        "migrations": ",".join(parts.database.migrations),
        "jwt_public_key_file": str(parts.keys.public_key_path),
        # For tests that must sign tokens with the real key (bad claims);
        # of the services, only auth is given it.
        "jwt_private_key_file": str(parts.keys.private_key_path),
        "postgres_log": str(postgres.log_path),
        "postgres_socket_dir": str(postgres.socket_dir),
        "redis_log": str(redis.log_path),
        "services_log_dir": str(parts.run_dir / "services"),
        "haproxy_config": str(haproxy.config_path),
        "haproxy_metrics_url": haproxy.metrics_url,
        "prometheus_config": str(prometheus.config_path),
        "prometheus_rule_files": ",".join(str(path) for path in prometheus.rule_files),
        "prometheus_targets": str(prometheus.target_count),
        "prometheus_log": str(prometheus.log_path),
        "monitor_dsn": parts.database.monitor_dsn,
    }
    return Stack(
        provider="local",
        postgres=PostgresEndpoints(
            superuser_dsn=postgres.dsn(DATABASE),
            owner_dsn=parts.database.owner_dsn,
            app_dsn=parts.database.app_dsn,
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
            "postgres": parts.postgres_exporter.url("/metrics"),
            "redis": parts.redis_exporter.url("/metrics"),
        },
        extra=extra,
    )


def _thaw_before_stopping(control: LocalStackControl, say: Progress) -> None:
    for line in control.undo_faults(restart_killed=False):
        say(f"before stopping: {line}")


def _line(component: str, where: str, since: float) -> str:
    return f"{component:<9} {where:<40} {time.monotonic() - since:5.2f} s"


def _backends(services: Sequence[RunningService]) -> list[Backend]:
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
    services: Sequence[RunningService],
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


def _service_base_env(
    *, app_dsn: str, redis_url: str, public_key: Path, config: LocalStackConfig
) -> dict[str, str]:
    """The environment every service shares: ours replaces any inherited ATENDEAI_*."""
    return child_environment(
        drop_prefixes=("ATENDEAI_",),
        extra={
            "PYTHONUNBUFFERED": "1",
            "ATENDEAI_DATABASE_URL": app_dsn,
            "ATENDEAI_REDIS_URL": redis_url,
            "ATENDEAI_JWT_PUBLIC_KEY_FILE": str(public_key),
            "ATENDEAI_JWT_ISSUER": JWT_ISSUER,
            "ATENDEAI_JWT_AUDIENCE": JWT_AUDIENCE,
            "ATENDEAI_CORS_ORIGINS": ",".join(config.allowed_origins),
            "ATENDEAI_LOGIN_LIMIT_PER_CLIENT": config.login_limit_per_client,
        },
    )


__all__ = [
    "DatabaseAccess",
    "LocalStackConfig",
    "LocalStackControl",
    "LocalStackParts",
    "Progress",
    "default_cache_dir",
    "describe_stack",
    "generate_password",
    "local_stack",
    "print_progress",
    "supervised_local_stack",
]
