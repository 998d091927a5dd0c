"""The ``containers`` provider: the local provider's stack, as Docker containers.

``containers_stack(config)`` is a context manager that makes, for one run:

1. a network of its own (every container of the run on it, by name);
2. PostgreSQL 15 (awaited on its health check), then, from the host through
   its published port, the roles, the migrations, the monitoring role and the
   platform admin (``harness.providers.database``, as the local provider does);
3. Redis 7 (``compose/redis/redis.conf``: AOF; a password);
4. two instances of each service from the platform image (``auth-1``,
   ``auth-2``... and the service's name as a shared alias, as compose does),
   each awaited on ``GET /ready``;
5. the PostgreSQL and Redis exporters;
6. HAProxy (the local provider's rendered config, with Docker's DNS as
   resolver, so a restarted container is found at its new address);
7. Prometheus scraping every instance, HAProxy, both exporters and itself with
   the rules of ``compose/prometheus/rules``;

and yields a ``RunningStack``: the ``Stack`` and the ``ContainersSupervisor``.
Images come from ``harness.images`` (built first when missing or stale).
Every port is published on 127.0.0.1 only, on a port picked here, so a
restarted container keeps it, and the harness reaches containers only
through those ports. Containers run with Docker's restart policy
``unless-stopped``, as in compose: a process that dies on its own is started
again by the engine. Containers, the network and anonymous volumes carry the
label ``org.atendeai.run=<run id>``; exit, Ctrl-C or a failed start removes
all of them (testcontainers' reaper is not used: no registry to pull it from).
A failed start raises ``ComponentStartError`` with the container's log tail.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from testcontainers.core.container import DockerContainer

from harness.docker_engine import docker_client
from harness.exceptions import ComponentStartError, ConfigurationError, WaitTimeout
from harness.images import ImageConfig, ensure_images
from harness.keys import generate_jwt_keys
from harness.processes import LOOPBACK, free_ports, wait_until
from harness.progress import Progress
from harness.providers import RunningStack, netfaults
from harness.providers.database import (
    APP_ROLE,
    DATABASE,
    JWT_AUDIENCE,
    JWT_ISSUER,
    OWNER_ROLE,
    postgres_dsn,
    prepare_database,
)
from harness.providers.exporters import monitor_dsn
from harness.providers.haproxy import (
    GATEWAY_ROUTES,
    METRICS_PATH,
    STATS_PATH,
    Backend,
    every_server_listed_and_passing,
    render_haproxy_config,
)
from harness.providers.options import StackOptions, generate_password
from harness.providers.prometheus import (
    COMPOSE_DIR,
    ScrapeJob,
    await_scrape_interval,
    render_prometheus_config,
    render_rules,
    rewrite_scrape_interval,
    rule_files_in,
)
from harness.providers.rundir import make_run_dir, print_progress, remove_run_dir
from harness.providers.services import SERVICE_NAMES
from harness.stack import Credentials, PostgresEndpoints, Stack
from system_under_test import DEFAULT_PORTS as SERVICE_PORTS

RUN_LABEL = "org.atendeai.run"
COMPONENT_LABEL = "org.atendeai.component"
#: The pid of the process that started the run: a run whose owner is gone
#: (killed with SIGKILL, which nothing can catch) is removed by the next one.
OWNER_LABEL = "org.atendeai.owner-pid"
#: UID of the platform image's user: it must be able to read the mounted keys.
PLATFORM_UID = 10001
DOCKER_DNS = "127.0.0.11:53"
HAPROXY_PORT, HAPROXY_STATS_PORT = 8080, 8404
PROMETHEUS_PORT = 9090
POSTGRES_EXPORTER_PORT, REDIS_EXPORTER_PORT = 9187, 9121


@dataclass(frozen=True)
class ContainersStackConfig(StackOptions):
    """``StackOptions`` and what only the containers provider needs; frozen.

    - ``images``: which images to run (``harness.images.ImageConfig``).
    - ``build_images``: build missing or stale images first (otherwise they must exist).
    - ``base_dir``: where the run directory (configs, keys, logs) is made.
    - ``exporter_queries`` / ``redis_conf``: files mounted into the exporter and Redis.
    - ``restart_policy``: Docker's restart policy for every container (what
      brings a crashed component back, as compose's ``unless-stopped`` does).
    """

    startup_timeout_s: float = 90.0
    images: ImageConfig = field(default_factory=ImageConfig.from_env)
    build_images: bool = True
    base_dir: Path | None = None
    exporter_queries: Path = COMPOSE_DIR / "postgres-exporter" / "queries.yaml"
    redis_conf: Path = COMPOSE_DIR / "redis" / "redis.conf"
    restart_policy: str = "unless-stopped"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("base_dir", "exporter_queries", "redis_conf"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for path in (self.exporter_queries, self.redis_conf):
            if not path.is_file():
                raise ConfigurationError(f"containers provider: {path} does not exist")
        if self.restart_policy not in ("no", "always", "unless-stopped", "on-failure"):
            raise ConfigurationError(f"unknown Docker restart policy {self.restart_policy!r}")


class LoopbackContainer(DockerContainer):
    """testcontainers' container, published on 127.0.0.1 only and reached there
    (never through a bridge address), at host ports chosen by the caller."""

    def __init__(self, image: str, *, published: Mapping[int, int]) -> None:
        super().__init__(image)
        self.publish(published)

    def publish(self, published: Mapping[int, int]) -> None:
        self._published = dict(published)
        self.ports = {
            f"{port}/tcp": (LOOPBACK, host_port)  # type: ignore[misc]
            for port, host_port in published.items()
        }

    def get_container_host_ip(self) -> str:
        return LOOPBACK

    def get_exposed_port(self, port: int) -> int:
        return self._published[int(port)]


class StackContainer:
    """One container of the run: its testcontainers container, its published
    ports (kept across restarts) and the wait strategy that says it is ready."""

    def __init__(
        self,
        component: str,
        image: str,
        *,
        run_id: str,
        network: Any,
        aliases: Sequence[str] = (),
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        ports: Mapping[int, int] | None = None,
        volumes: Sequence[tuple[Path, str]] = (),
        restart_policy: str = "unless-stopped",
        wait: Any = None,
    ) -> None:
        self.component = component
        self.published = dict(ports or {})
        self.name = f"atendeai-{run_id}-{component}"
        container = LoopbackContainer(image, published=self.published)
        container.with_name(self.name)
        container.with_network(network)
        container.with_network_aliases(component, *aliases)
        if command is not None:
            container.with_command(list(command))
        for key, value in (env or {}).items():
            container.with_env(key, value)
        for host_path, target in volumes:
            container.with_volume_mapping(str(host_path), target, mode="ro")
        container.with_kwargs(
            labels={RUN_LABEL: run_id, COMPONENT_LABEL: component, OWNER_LABEL: str(os.getpid())},
            restart_policy={"Name": restart_policy},
            hostname=component,
        )
        self.container = container
        self.wait = wait

    def start(self, *, wait: bool = True, attempts: int = 3) -> None:
        """Start it (on new host ports when one was taken meanwhile); then, with
        ``wait``, wait until it is ready."""
        from docker.errors import APIError

        for attempt in range(attempts):
            try:
                self.container.start()
                break
            except APIError as error:
                taken = "already allocated" in str(error) or "address already in use" in str(error)
                if not taken or attempt == attempts - 1:
                    raise
                self.remove()
                self.published = dict(
                    zip(self.published, free_ports(len(self.published)), strict=True)
                )
                self.container.publish(self.published)
                self.container._container = None
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        if self.wait is None:
            return
        if timeout_s is not None:
            self.wait.with_startup_timeout(max(1.0, timeout_s))
        self.wait.wait_until_ready(self.container)

    def remove(self) -> None:
        with suppress(Exception):  # already gone: nothing left to remove
            self.container.stop(force=True, delete_volume=True)

    @property
    def is_service(self) -> bool:
        return self.component.rsplit("-", 1)[0] in SERVICE_NAMES

    @property
    def docker(self) -> Any:
        return self.container.get_wrapped_container()

    def state(self) -> dict[str, Any]:
        wrapped = self.docker
        wrapped.reload()
        return dict(wrapped.attrs.get("State", {}))

    def host_url(self, port: int, path: str = "") -> str:
        return f"http://{LOOPBACK}:{self.published[port]}{path}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return self.docker.logs(tail=lines).decode(errors="replace")
        except Exception as error:
            return f"(no logs: {error})"


class LogFollower(threading.Thread):
    """Copies a container's output into a file on the host as it comes, across restarts."""

    def __init__(self, container: StackContainer, path: Path) -> None:
        super().__init__(name=f"logs-{container.component}", daemon=True)
        self.container = container
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        since: float | None = None
        with self.path.open("ab") as out:
            while not self.stopped.is_set():
                try:
                    for chunk in self.container.docker.logs(stream=True, follow=True, since=since):
                        out.write(chunk)
                        out.flush()
                except Exception:  # removed: the run is over
                    return
                since = time.time()
                self.stopped.wait(0.5)

    def stop(self) -> None:
        self.stopped.set()


@dataclass(frozen=True)
class _Isolation:
    """Routes added in one container's network namespace (that of ``pid``)."""

    pid: int
    peers: tuple[tuple[str, str], ...]  # (component, address)


@dataclass(frozen=True)
class _Delay:
    """A netem qdisc on one container's interface (in the namespace of ``pid``)."""

    pid: int
    device: str
    ms: int


class ContainersSupervisor:
    """The containers provider's ``Supervisor``.

    ``kill`` is ``docker kill --signal KILL`` (every process of the container
    dies at once, and Docker's restart policy stands aside, as for any kill
    the engine was asked for); ``restart`` then does what the policy would:
    ``docker start`` on the same container (same ports, same anonymous
    volume, so the same data) and waits for the component's readiness.
    ``pause``/``resume`` are ``docker pause``/``unpause`` (SIGSTOP for the
    whole container).

    Network faults act inside one container's network namespace, from the host
    (``harness.providers.netfaults``): ``isolate(c, from_=...)`` adds a
    ``prohibit`` route to each named peer's address on the run's network, so
    ``c`` cannot reach them while everything else (HAProxy's checks of ``c``,
    ``c``'s own peers) is untouched; ``rejoin`` deletes those routes.
    ``delay`` adds netem latency to ``c``'s egress (``FaultNotSupported`` with
    ``tc``'s words on a kernel without netem). The routes live in the
    container's namespace: a restart of ``c`` (new namespace) ends its
    isolation, and a peer restarted at a new address is no longer cut off.

    The supervisor remembers what it broke (paused, killed and not restarted,
    isolated, delayed); ``undo_faults()`` undoes all of it, and the provider
    calls it (without restarting what was killed) before removing the run,
    also after Ctrl-C.
    """

    def __init__(
        self,
        containers: Sequence[StackContainer],
        *,
        log_dir: Path,
        restart_timeout_s: float,
        network: str = "",
        prometheus_config: Path | None = None,
    ) -> None:
        self._containers = {c.component: c for c in containers}
        self.prometheus_config = prometheus_config  # on this host: scrape_every rewrites it
        self.log_dir = log_dir
        self.restart_timeout_s = restart_timeout_s
        self.network = network
        self._paused: set[str] = set()
        self._killed: set[str] = set()
        self._isolated: dict[str, _Isolation] = {}
        self._delayed: dict[str, _Delay] = {}

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self._containers)

    @property
    def faults(self) -> dict[str, str]:
        """What the supervisor broke and has not undone: ``{component: what}``
        (``killed``, ``paused``, ``isolated from postgres, redis``, ``delayed 200 ms``)."""
        found: dict[str, list[str]] = {}
        for name in self._killed:
            found.setdefault(name, []).append("killed")
        for name in self._paused:
            found.setdefault(name, []).append("paused")
        for name, isolation in self._isolated.items():
            peers = ", ".join(peer for peer, _ in isolation.peers)
            found.setdefault(name, []).append(f"isolated from {peers}")
        for name, delay in self._delayed.items():
            found.setdefault(name, []).append(f"delayed {delay.ms} ms")
        return {name: "; ".join(what) for name, what in sorted(found.items())}

    def container(self, component: str) -> StackContainer:
        try:
            return self._containers[component]
        except KeyError:
            known = ", ".join(self._containers)
            raise ConfigurationError(f"no component {component!r} (known: {known})") from None

    def pid(self, component: str) -> int | None:
        state = self.container(component).state()
        return int(state["Pid"]) if state.get("Running") and state.get("Pid") else None

    def pids(self) -> list[int]:
        return [pid for name in self._containers if (pid := self.pid(name)) is not None]

    def address(self, component: str) -> str:
        """The component's IP address on the run's network (it may change on a restart)."""
        docker = self.container(component).docker
        docker.reload()
        networks = docker.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress")
        if not address:
            raise ConfigurationError(
                f"{component} has no address on network {self.network!r} "
                f"(its networks: {sorted(networks)}; is it running?)"
            )
        return str(address)

    def kill(self, component: str) -> int | None:
        pid = self.pid(component)
        if pid is None:
            return None
        self.container(component).docker.kill(signal="SIGKILL")
        self._killed.add(component)
        self._forget_network_faults(component)  # its namespace died with it
        self._paused.discard(component)
        return pid

    def pause(self, component: str) -> None:
        self.container(component).docker.pause()
        self._paused.add(component)

    def resume(self, component: str) -> None:
        self.container(component).docker.unpause()
        self._paused.discard(component)

    def restart(self, component: str, *, timeout_s: float | None = None) -> None:
        timeout = self.restart_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        target = self.container(component)
        state = target.state()
        if state.get("Paused"):
            target.docker.unpause()
        elif not state.get("Running") and not state.get("Restarting"):
            target.docker.start()
        self._paused.discard(component)

        def running() -> bool:
            now = target.state()
            return bool(now.get("Running")) and not now.get("Restarting")

        try:
            wait_until(running, timeout=timeout, what=f"{component} running again", interval=0.1)
            target.wait_ready(deadline - time.monotonic())
        except (WaitTimeout, TimeoutError, RuntimeError) as error:
            raise ComponentStartError(
                component, f"not back after a restart: {error}", log_tail=target.log_tail()
            ) from None
        self._killed.discard(component)

    def isolate(self, component: str, *, from_: Sequence[str]) -> None:
        """Cut ``component`` off from the components ``from_`` (a ``prohibit`` route to
        each one's address, in ``component``'s network namespace); the rest of its
        traffic, and everyone's traffic to it, flows as before. Adds to an earlier
        isolation of the same component."""
        peers = tuple(dict.fromkeys(from_))
        if not peers:
            raise ConfigurationError(f"isolate {component}: name the components to cut it from")
        for peer in (component, *peers):
            self.container(peer)
        if component in peers:
            raise ConfigurationError(f"isolate {component}: not from itself")
        pid = self._running_pid(component, "isolate")
        addresses = tuple((peer, self.address(peer)) for peer in peers)
        netfaults.cut_off(pid, [address for _, address in addresses], component=component)
        earlier = self._isolated.get(component)
        kept = earlier.peers if earlier is not None and earlier.pid == pid else ()
        merged = dict(kept) | dict(addresses)
        self._isolated[component] = _Isolation(pid, tuple(merged.items()))

    def rejoin(self, component: str) -> None:
        """Delete the routes ``isolate`` added (nothing to do when its namespace is
        gone: a restarted container starts with a fresh one)."""
        isolation = self._isolated.pop(component, None)
        self.container(component)
        if isolation is None or self.pid(component) != isolation.pid:
            return
        netfaults.reconnect(
            isolation.pid, [address for _, address in isolation.peers], component=component
        )

    def delay(self, component: str, *, ms: int) -> None:
        """Add ``ms`` of latency to everything ``component`` sends on the run's network
        (netem); ``FaultNotSupported`` with ``tc``'s words where netem is missing."""
        if not isinstance(ms, int) or not 1 <= ms <= 60_000:
            raise ConfigurationError(f"delay {component}: ms must be 1..60000, not {ms!r}")
        pid = self._running_pid(component, f"delay ({ms} ms)")
        device = netfaults.add_delay(pid, self.address(component), ms, component=component)
        self._delayed[component] = _Delay(pid, device, ms)

    def undelay(self, component: str) -> None:
        """Remove the latency ``delay`` added (nothing to do after a restart)."""
        delay = self._delayed.pop(component, None)
        self.container(component)
        if delay is None or self.pid(component) != delay.pid:
            return
        netfaults.remove_delay(delay.pid, delay.device, component=component)

    def scrape_every(self, seconds: float) -> None:
        """Prometheus scraping every ``seconds``: its ``prometheus.yml`` (in the run
        directory, mounted into the container) rewritten, then ``docker kill
        --signal HUP``, which makes Prometheus reload it."""
        if self.prometheus_config is None:
            raise ConfigurationError("this stack has no Prometheus to reconfigure")
        prometheus = self.container("prometheus")
        rewrite_scrape_interval(self.prometheus_config, seconds)
        prometheus.docker.kill(signal="SIGHUP")
        await_scrape_interval(prometheus.host_url(PROMETHEUS_PORT), seconds)

    def undo_faults(self, *, restart_killed: bool = True) -> list[str]:
        """Thaw, rejoin and undelay everything this supervisor broke and (with
        ``restart_killed``) restart what it killed; what was undone, as lines.

        Tries them all; the first failure is raised at the end, with the others
        as notes. Thawing comes first: a frozen container cannot be stopped
        gracefully, and ``nsenter`` into a frozen namespace still works.
        """
        done: list[str] = []
        errors: list[BaseException] = []

        def attempt(line: str, action: Any, *args: Any) -> None:
            try:
                action(*args)
                done.append(line)
            except Exception as error:
                errors.append(error)

        for component in sorted(self._paused):
            attempt(f"{component} resumed", self.resume, component)
        for component in sorted(self._isolated):
            attempt(f"{component} rejoined", self.rejoin, component)
        for component in sorted(self._delayed):
            attempt(f"{component} undelayed", self.undelay, component)
        for component in sorted(self._killed) if restart_killed else ():
            attempt(f"{component} restarted", self.restart, component)
        if errors:
            for other in errors[1:]:
                errors[0].add_note(f"also: {other}")
            raise errors[0]
        return done

    def _running_pid(self, component: str, fault: str) -> int:
        pid = self.pid(component)
        if pid is None:
            raise ConfigurationError(f"cannot {fault} {component}: it is not running")
        return pid

    def _forget_network_faults(self, component: str) -> None:
        self._isolated.pop(component, None)
        self._delayed.pop(component, None)

    def evidence(self, component: str, *, lines: int = 15) -> str:
        target = self.container(component)
        state = target.state()
        status = state.get("Status", "?")
        if state.get("Running"):
            status += f", pid {state.get('Pid')}"
        if fault := self.faults.get(component):
            status += f"; {fault} by the supervisor"
        ports = ", ".join(f"127.0.0.1:{h}->{c}" for c, h in target.published.items()) or "none"
        tail = target.log_tail(lines).rstrip() or "(empty)"
        return (
            f"{component}: container {target.name} ({status}), published {ports}; "
            "log tail:\n" + "\n".join(f"  | {line}" for line in tail.splitlines())
        )


class _Run:
    """One run's shared state while it starts: what to clean up, the network,
    the ports still free, the containers started so far (in order)."""

    def __init__(
        self,
        config: ContainersStackConfig,
        resources: ExitStack,
        *,
        run_id: str,
        run_dir: Path,
        say: Progress,
    ) -> None:
        self.config = config
        self.resources = resources
        self.run_id = run_id
        self.run_dir = run_dir
        self.say = say
        self.network = _network(run_id)
        resources.callback(self.network.remove)
        self.subnet = _subnet(self.network)
        self.log_dir = run_dir / "logs"
        (self.log_dir / "services").mkdir(parents=True)
        self.ports = iter(free_ports(32))
        self.started: list[StackContainer] = []

    def container(self, component: str, image_of: str, **options: Any) -> StackContainer:
        """A (not yet started) container of this run, from the image of ``image_of``."""
        return StackContainer(
            component,
            self.config.images.name(image_of),
            run_id=self.run_id,
            network=self.network,
            restart_policy=self.config.restart_policy,
            **options,
        )

    def start(self, container: StackContainer, *, wait: bool = True) -> StackContainer:
        """Start it (removed with the run), copy its log to the run directory, and
        with ``wait`` wait until it is ready."""
        step = time.monotonic()
        self.resources.callback(container.remove)
        try:
            container.start(wait=wait)
        except Exception as error:
            raise _start_error(container, error, self.config.startup_timeout_s) from None
        self.started.append(container)
        folder = self.log_dir / "services" if container.is_service else self.log_dir
        follower = LogFollower(container, folder / f"{container.component}.log")
        follower.start()
        self.resources.callback(follower.stop)
        if wait:
            self.say(_line(container.component, container, step))
        return container


@dataclass(frozen=True)
class _Database:
    container: StackContainer
    superuser_password: str
    owner_dsn: str
    app_dsn: str
    app_password: str
    monitor_password: str
    migrations: tuple[str, ...]

    @property
    def port(self) -> int:
        return self.container.published[5432]


@contextmanager
def containers_stack(
    config: ContainersStackConfig | None = None, *, progress: Progress | None = None
) -> Iterator[RunningStack]:
    """Bring the whole stack up as containers; yield it with its supervisor; remove it."""
    config = ContainersStackConfig() if config is None else config
    say = progress or print_progress
    started = time.monotonic()
    if config.build_images:
        ensure_images(config.images, progress=say)
    run_id = uuid.uuid4().hex[:8]
    for orphan in remove_orphaned_runs():
        say(f"removed the containers of run {orphan}, whose owner process is gone")

    with ExitStack() as resources:
        run_dir = make_run_dir(config.base_dir, prefix="atendeai-containers-")
        outcome = {"started": False}
        resources.callback(
            lambda: remove_run_dir(run_dir, keep=config.keep_dir or not outcome["started"], say=say)
        )
        resources.callback(lambda: say(f"containers of run {run_id} removed"))
        resources.callback(_remove_leftovers, run_id)
        say(f"run {run_id}: directory {run_dir}")
        run = _Run(config, resources, run_id=run_id, run_dir=run_dir, say=say)

        database = _start_database(run)
        redis_password = secrets.token_urlsafe(24)
        redis = _start_redis(run, redis_password)
        keys = generate_jwt_keys(run_dir / "keys")
        for key in (keys.public_key_path, keys.private_key_path):
            _readable_by_platform(key)
        services = _start_services(run, database, redis_password, keys)
        exporters = _start_exporters(run, database, redis_password)
        haproxy = _start_haproxy(run, services)
        prometheus, jobs = _start_prometheus(run, services)

        cold_start = time.monotonic() - started
        stack = _stack_record(
            run,
            database=database,
            redis=redis,
            redis_password=redis_password,
            services=services,
            exporters=exporters,
            haproxy=haproxy,
            prometheus=prometheus,
            extra={
                "cold_start_seconds": f"{cold_start:.2f}",
                "jwt_public_key_file": str(keys.public_key_path),
                "jwt_private_key_file": str(keys.private_key_path),
                "prometheus_targets": str(sum(len(job.targets) for job in jobs)),
            },
        )
        supervisor = ContainersSupervisor(
            run.started,
            log_dir=run.log_dir,
            restart_timeout_s=config.startup_timeout_s,
            network=run.network.name,
            prometheus_config=run.run_dir / "prometheus" / "prometheus.yml",
        )
        say(f"stack ready in {cold_start:.2f} s ({len(run.started)} containers)")
        resources.callback(say, "removing the containers")
        # First thing on exit (Ctrl-C included): thaw and reconnect what a drill broke.
        resources.callback(_undo_before_removing, supervisor, say)
        outcome["started"] = True
        yield RunningStack(stack, supervisor)


def _undo_before_removing(supervisor: ContainersSupervisor, say: Progress) -> None:
    for line in supervisor.undo_faults(restart_killed=False):
        say(f"before removing: {line}")


def _start_database(run: _Run) -> _Database:
    """PostgreSQL (awaited on its health check), then, from the host through its
    published port, roles, migrations, the monitoring role and the platform admin."""
    superuser_password = generate_password()
    postgres = run.start(
        run.container(
            "postgres",
            "postgres",
            env={"POSTGRES_PASSWORD": superuser_password},
            command=["-c", "fsync=off", "-c", "max_connections=200"],
            ports={5432: next(run.ports)},
            wait=_healthcheck(run.config),
        )
    )
    port = postgres.published[5432]
    step = time.monotonic()
    owner_password, app_password = generate_password(), generate_password()
    monitor_password = generate_password()
    owner_dsn = postgres_dsn(OWNER_ROLE, owner_password, LOOPBACK, port)
    applied = prepare_database(
        superuser_dsn=postgres_dsn("postgres", superuser_password, LOOPBACK, port, "postgres"),
        owner_dsn=owner_dsn,
        owner_password=owner_password,
        app_password=app_password,
        monitor_password=monitor_password,
        platform_admin=_admin(run.config),
        log_path=f"docker logs {postgres.name}",
        log_tail=lambda: postgres.log_tail(20),
    )
    run.say(_timed("database", f"{DATABASE}, migrations {','.join(applied) or 'none'}", step))
    return _Database(
        container=postgres,
        superuser_password=superuser_password,
        owner_dsn=owner_dsn,
        app_dsn=postgres_dsn(APP_ROLE, app_password, LOOPBACK, port),
        app_password=app_password,
        monitor_password=monitor_password,
        migrations=tuple(applied),
    )


def _start_redis(run: _Run, password: str) -> StackContainer:
    """Redis with the deployment's redis.conf (AOF) and a password."""
    return run.start(
        run.container(
            "redis",
            "redis",
            command=["/etc/atendeai/redis.conf", "--requirepass", password],
            env={"REDISCLI_AUTH": password},
            ports={6379: next(run.ports)},
            volumes=[(run.config.redis_conf, "/etc/atendeai/redis.conf")],
            wait=_healthcheck(run.config),
        )
    )


def _start_services(
    run: _Run, database: _Database, redis_password: str, keys: Any
) -> list[StackContainer]:
    """Every instance of every service, all started, then each awaited on ``/ready``."""
    config = run.config
    base_env = {
        "PYTHONUNBUFFERED": "1",
        "ATENDEAI_DATABASE_URL": postgres_dsn(APP_ROLE, database.app_password, "postgres", 5432),
        "ATENDEAI_REDIS_URL": f"redis://:{redis_password}@redis:6379/0",
        "ATENDEAI_JWT_PUBLIC_KEY_FILE": "/run/atendeai/jwt-public.pem",
        "ATENDEAI_JWT_ISSUER": JWT_ISSUER,
        "ATENDEAI_JWT_AUDIENCE": JWT_AUDIENCE,
        "ATENDEAI_CORS_ORIGINS": ",".join(config.allowed_origins),
        "ATENDEAI_LOGIN_LIMIT_PER_CLIENT": config.login_limit_per_client,
        # HAProxy and the host's published ports reach the services from this network
        "ATENDEAI_TRUSTED_PROXIES": run.subnet,
    }
    step = time.monotonic()
    services: list[StackContainer] = []
    for name in SERVICE_NAMES:
        port = SERVICE_PORTS[name]
        env = dict(base_env)
        volumes = [(keys.public_key_path, "/run/atendeai/jwt-public.pem")]
        if name == "auth":
            env["ATENDEAI_JWT_PRIVATE_KEY_FILE"] = "/run/atendeai/jwt-private.pem"
            volumes.append((keys.private_key_path, "/run/atendeai/jwt-private.pem"))
        if name == "health":
            env["ATENDEAI_SERVICE_URLS"] = ",".join(
                f"{other}=http://{other}:{SERVICE_PORTS[other]}"
                for other in SERVICE_NAMES
                if other != "health"
            )
        env.update(config.service_env)
        for index in range(1, config.instances_per_service + 1):
            container = run.container(
                f"{name}-{index}",
                "platform",
                aliases=(name,),
                command=[name, "--host", "0.0.0.0", "--port", str(port)],
                env=env,
                ports={port: next(run.ports)},
                volumes=volumes,
                wait=_http(config, port, "/ready"),
            )
            services.append(run.start(container, wait=False))
    for service in services:
        try:
            service.wait_ready()
        except (TimeoutError, RuntimeError) as error:
            raise _start_error(service, error, config.startup_timeout_s) from None
    ports = " ".join(str(next(iter(s.published.values()))) for s in services)
    run.say(_timed("services", f"{len(services)} containers, ports {ports}", step))
    return services


def _start_exporters(
    run: _Run, database: _Database, redis_password: str
) -> dict[str, StackContainer]:
    """The PostgreSQL exporter (as ``atendeai_monitor``) and the Redis exporter."""
    monitor = monitor_dsn("postgres", 5432, DATABASE, database.monitor_password)
    postgres_exporter = run.start(
        run.container(
            "postgres-exporter",
            "postgres-exporter",
            command=[
                f"--web.listen-address=:{POSTGRES_EXPORTER_PORT}",
                "--extend.query-path=/etc/atendeai/queries.yaml",
                "--log.level=warn",
            ],
            env={"DATA_SOURCE_NAME": monitor + "?sslmode=disable"},
            ports={POSTGRES_EXPORTER_PORT: next(run.ports)},
            volumes=[(run.config.exporter_queries, "/etc/atendeai/queries.yaml")],
            wait=_http(run.config, POSTGRES_EXPORTER_PORT, "/metrics", contains="\npg_up 1"),
        )
    )
    redis_exporter = run.start(
        run.container(
            "redis-exporter",
            "redis-exporter",
            command=[
                "-redis.addr",
                "redis://redis:6379",
                "-web.listen-address",
                f":{REDIS_EXPORTER_PORT}",
            ],
            env={"REDIS_PASSWORD": redis_password},
            ports={REDIS_EXPORTER_PORT: next(run.ports)},
            wait=_http(run.config, REDIS_EXPORTER_PORT, "/metrics", contains="\nredis_up 1"),
        )
    )
    return {"postgres": postgres_exporter, "redis": redis_exporter}


def _instances(services: Sequence[StackContainer], name: str) -> list[StackContainer]:
    return [s for s in services if s.component.rsplit("-", 1)[0] == name]


def _start_haproxy(run: _Run, services: Sequence[StackContainer]) -> StackContainer:
    """HAProxy with the local provider's rendered config, resolving through Docker's
    DNS; awaited until every instance is listed with a passing check."""
    backends = [
        Backend(
            service=name,
            path_prefixes=GATEWAY_ROUTES[name],
            servers=tuple(
                (s.component, f"{s.component}:{SERVICE_PORTS[name]}")
                for s in _instances(services, name)
            ),
        )
        for name in SERVICE_NAMES
    ]
    config_path = run.run_dir / "haproxy" / "haproxy.cfg"
    config_path.parent.mkdir()
    config_path.write_text(
        render_haproxy_config(
            backends,
            bind=f":{HAPROXY_PORT}",
            stats_bind=f":{HAPROXY_STATS_PORT}",
            settings=run.config.haproxy,
            resolver=DOCKER_DNS,
        )
    )
    haproxy = run.start(
        run.container(
            "haproxy",
            "haproxy",
            ports={HAPROXY_PORT: next(run.ports), HAPROXY_STATS_PORT: next(run.ports)},
            volumes=[(config_path, "/usr/local/etc/haproxy/haproxy.cfg")],
            wait=_http(run.config, HAPROXY_STATS_PORT, STATS_PATH),
        )
    )
    _wait_for_servers(haproxy, backends, run.config.startup_timeout_s)
    return haproxy


def _start_prometheus(
    run: _Run, services: Sequence[StackContainer]
) -> tuple[StackContainer, list[ScrapeJob]]:
    """Prometheus scraping every instance, HAProxy, both exporters and itself, with
    the compose rules (``for:`` capped when the settings say so)."""
    settings = run.config.prometheus
    directory = run.run_dir / "prometheus"
    (directory / "rules").mkdir(parents=True)
    rule_files: list[Path] = []
    if settings.rules_dir is not None:
        for source in rule_files_in(settings.rules_dir):
            render_rules(
                source, directory / "rules" / source.name, for_cap_s=settings.rule_for_cap_s
            )
            rule_files.append(Path("/etc/prometheus/rules") / source.name)
    jobs = [
        ScrapeJob(
            name,
            tuple(f"{s.component}:{SERVICE_PORTS[name]}" for s in _instances(services, name)),
            labels=(("tier", "service"),),
        )
        for name in SERVICE_NAMES
    ]
    jobs += [
        ScrapeJob("haproxy", (f"haproxy:{HAPROXY_STATS_PORT}",), labels=(("tier", "gateway"),)),
        ScrapeJob(
            "postgres",
            (f"postgres-exporter:{POSTGRES_EXPORTER_PORT}",),
            labels=(("tier", "database"),),
        ),
        ScrapeJob("redis", (f"redis-exporter:{REDIS_EXPORTER_PORT}",), labels=(("tier", "cache"),)),
        ScrapeJob("prometheus", (f"localhost:{PROMETHEUS_PORT}",)),
    ]
    config = render_prometheus_config(
        jobs,
        rule_files=rule_files,
        scrape_interval_s=settings.scrape_interval_s,
        evaluation_interval_s=settings.evaluation_interval_s,
    )
    config["global"]["external_labels"] = {"stack": "containers"}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for path in directory.rglob("*"):  # the image runs Prometheus as its own user
        path.chmod(0o755 if path.is_dir() else 0o644)
    prometheus = run.start(
        run.container(
            "prometheus",
            "prometheus",
            command=[
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--storage.tsdb.retention.time={settings.retention}",
                f"--web.listen-address=:{PROMETHEUS_PORT}",
                "--log.level=warn",
            ],
            ports={PROMETHEUS_PORT: next(run.ports)},
            volumes=[(directory, "/etc/prometheus")],
            wait=_http(run.config, PROMETHEUS_PORT, "/-/ready"),
        )
    )
    return prometheus, jobs


def _stack_record(
    run: _Run,
    *,
    database: _Database,
    redis: StackContainer,
    redis_password: str,
    services: Sequence[StackContainer],
    exporters: Mapping[str, StackContainer],
    haproxy: StackContainer,
    prometheus: StackContainer,
    extra: Mapping[str, str],
) -> Stack:
    """The ``Stack``: every endpoint through its 127.0.0.1 port."""
    instances = {
        name: tuple(s.host_url(SERVICE_PORTS[name]) for s in _instances(services, name))
        for name in SERVICE_NAMES
    }
    return Stack(
        provider="containers",
        postgres=PostgresEndpoints(
            superuser_dsn=postgres_dsn(
                "postgres", database.superuser_password, LOOPBACK, database.port
            ),
            owner_dsn=database.owner_dsn,
            app_dsn=database.app_dsn,
            host=LOOPBACK,
            port=database.port,
            database=DATABASE,
        ),
        redis_url=f"redis://:{redis_password}@{LOOPBACK}:{redis.published[6379]}/0",
        services={name: urls[0] for name, urls in instances.items()},
        platform_admin=_admin(run.config),
        jwt_issuer=JWT_ISSUER,
        jwt_audience=JWT_AUDIENCE,
        allowed_origins=run.config.allowed_origins,
        service_instances=instances,
        haproxy_url=haproxy.host_url(HAPROXY_PORT),
        haproxy_stats_url=haproxy.host_url(HAPROXY_STATS_PORT, STATS_PATH),
        prometheus_url=prometheus.host_url(PROMETHEUS_PORT),
        exporters={
            "postgres": exporters["postgres"].host_url(POSTGRES_EXPORTER_PORT, "/metrics"),
            "redis": exporters["redis"].host_url(REDIS_EXPORTER_PORT, "/metrics"),
        },
        extra={
            "run_id": run.run_id,
            "run_dir": str(run.run_dir),
            "migrations": ",".join(database.migrations),
            "services_log_dir": str(run.log_dir / "services"),
            "logs_dir": str(run.log_dir),
            "haproxy_config": str(run.run_dir / "haproxy" / "haproxy.cfg"),
            "haproxy_metrics_url": haproxy.host_url(HAPROXY_STATS_PORT, METRICS_PATH),
            "prometheus_config": str(run.run_dir / "prometheus" / "prometheus.yml"),
            "monitor_dsn": monitor_dsn(
                LOOPBACK, database.port, DATABASE, database.monitor_password
            ),
            "network": run.network.name,
            "network_subnet": run.subnet,
            **extra,
        },
    )


def _admin(config: ContainersStackConfig) -> Credentials:
    return Credentials(config.platform_admin_email, config.platform_admin_password)


def _line(component: str, container: StackContainer, since: float) -> str:
    where = " ".join(f"127.0.0.1:{h}" for h in container.published.values()) or "-"
    return _timed(component, where, since)


def _timed(component: str, where: str, since: float) -> str:
    return f"{component:<17} {where:<40} {time.monotonic() - since:5.2f} s"


def _healthcheck(config: ContainersStackConfig) -> Any:
    from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

    return (
        HealthcheckWaitStrategy()
        .with_startup_timeout(config.startup_timeout_s)
        .with_poll_interval(0.2)
    )


def _http(
    config: ContainersStackConfig, port: int, path: str, *, contains: str | None = None
) -> Any:
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    strategy = HttpWaitStrategy(port, path).for_status_code(200)
    if contains is not None:
        strategy = strategy.for_response_predicate(lambda body: contains in body)
    return strategy.with_startup_timeout(config.startup_timeout_s).with_poll_interval(0.2)


def _network(run_id: str) -> Any:
    from testcontainers.core.network import Network

    network = Network(docker_network_kw={"labels": {RUN_LABEL: run_id}, "driver": "bridge"})
    network.name = f"atendeai-run-{run_id}"
    return network.create()


def _subnet(network: Any) -> str:
    docker_network = network._network
    docker_network.reload()
    configs = docker_network.attrs.get("IPAM", {}).get("Config") or []
    if not configs or not configs[0].get("Subnet"):
        raise ComponentStartError("network", f"network {network.name} has no subnet")
    return str(configs[0]["Subnet"])


def _readable_by_platform(path: Path) -> None:
    """The services run as uid 10001 in their image: the mounted key must be theirs."""
    try:
        os.chown(path, PLATFORM_UID, -1)
    except PermissionError:
        path.chmod(0o644)


def _wait_for_servers(haproxy: StackContainer, backends: Sequence[Backend], timeout: float) -> None:
    import httpx

    def every_server_passes() -> bool:
        stats = haproxy.host_url(HAPROXY_STATS_PORT, f"{STATS_PATH};csv")
        return every_server_listed_and_passing(httpx.get(stats, timeout=2).text, backends)

    try:
        wait_until(
            every_server_passes,
            timeout=timeout,
            what="HAProxy to list every service container with a passing check",
            interval=0.2,
            retry_on=(Exception,),
        )
    except Exception as error:
        raise ComponentStartError(
            "haproxy", str(error), log_tail=haproxy.log_tail(), hint="read the stats page"
        ) from None


def _start_error(
    container: StackContainer, error: BaseException, timeout: float
) -> ComponentStartError:
    state: dict[str, Any] = {}
    with suppress(Exception):
        state = container.state()
    status = state.get("Status", "not created")
    if state.get("ExitCode"):
        status += f", exit code {state['ExitCode']}"
    return ComponentStartError(
        container.component,
        f"{type(error).__name__}: {error} (container {status})",
        ports_tried=tuple(container.published.values()),
        log_path=f"docker logs {container.name}",
        log_tail=container.log_tail(25) if state else "",
        hint=f"image {container.container.image}; waited up to {timeout:.0f} s; "
        "`atendeai images build` rebuilds the images",
    )


def _remove_leftovers(run_id: str) -> None:
    """Whatever of this run is still there (a container started while failing)."""
    try:
        client = docker_client()
    except Exception:
        return
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{RUN_LABEL}={run_id}"}
        ):
            container.remove(force=True, v=True)
    finally:
        client.close()


def remove_orphaned_runs() -> list[str]:
    """Remove the containers and networks of runs whose owner process has died."""
    client = docker_client()
    removed: set[str] = set()
    try:
        for container in client.containers.list(all=True, filters={"label": RUN_LABEL}):
            if _owner_alive(container.labels):
                continue
            removed.add(container.labels.get(RUN_LABEL, "?"))
            container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": RUN_LABEL}):
            if not _owner_alive(network.attrs.get("Labels") or {}):
                removed.add((network.attrs.get("Labels") or {}).get(RUN_LABEL, "?"))
                with suppress(Exception):
                    network.remove()
    finally:
        client.close()
    return sorted(removed)


def _owner_alive(labels: Mapping[str, str]) -> bool:
    owner = labels.get(OWNER_LABEL, "")
    return not owner.isdigit() or Path(f"/proc/{owner}").exists()


__all__ = [
    "COMPONENT_LABEL",
    "RUN_LABEL",
    "ContainersStackConfig",
    "ContainersSupervisor",
    "containers_stack",
    "remove_orphaned_runs",
]
