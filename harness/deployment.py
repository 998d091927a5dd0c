"""The compose deployment (``compose/docker-compose.yml``), started for real.

``compose_deployment(settings)`` writes what a user would put in
``compose/.env`` and ``compose/secrets/`` (random passwords, a JWT key pair,
free 127.0.0.1 ports) into a temporary directory, runs ``docker compose up
--wait`` through testcontainers' ``DockerCompose`` (every service healthy by
its own health check), and yields a ``ComposeDeployment``: the compose
handle, how long ``up --wait`` took, and ``stack()``, the ``Stack`` written
from compose's published ports, so the contract suites can run against the
deployment as an external stack. On exit (also on a failed start)
``docker compose down --volumes`` removes containers, network and volumes.

The compose file names its project (``atendeai``) and its network
(``atendeai-network``, 172.20.0.0/16), so one deployment runs at a time on a
machine; a second start is refused with the reason.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.docker_engine import docker_client
from harness.exceptions import ComponentStartError, ConfigurationError
from harness.images import ImageConfig, ensure_images
from harness.keys import generate_jwt_keys
from harness.private_files import write_private
from harness.processes import LOOPBACK, free_ports
from harness.progress import Progress
from harness.providers.database import APP_ROLE, DATABASE, OWNER_ROLE, postgres_dsn
from harness.providers.exporters import monitor_dsn
from harness.providers.prometheus import COMPOSE_DIR
from harness.stack import Credentials, PostgresEndpoints, Stack
from system_under_test import DEFAULT_PORTS as SERVICE_PORTS

PROJECT = "atendeai"
NETWORK = "atendeai-network"
#: ``.env`` variables that hold a host port, and the container port behind each.
HOST_PORTS = {
    "HAPROXY_HOST_PORT": 80,
    "HAPROXY_STATS_HOST_PORT": 8404,
    "PROMETHEUS_HOST_PORT": 9090,
    "POSTGRES_HOST_PORT": 5432,
    "REDIS_HOST_PORT": 6379,
}
PASSWORDS = (
    "POSTGRES_PASSWORD",
    "ATENDEAI_OWNER_PASSWORD",
    "ATENDEAI_APP_PASSWORD",
    "ATENDEAI_MONITOR_PASSWORD",
    "REDIS_PASSWORD",
    "PLATFORM_ADMIN_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


@dataclass(frozen=True)
class ComposeSettings:
    """How the deployment is started.

    - ``compose_dir``: where ``docker-compose.yml`` is.
    - ``images``: the images it runs (built first when missing, ``build_images``).
    - ``profiles``: compose profiles to enable (``gateway``, ``dashboards``:
      Kong and Grafana, pulled from a registry; none here).
    - ``allowed_origins``: ``ATENDEAI_CORS_ORIGINS``.
    """

    compose_dir: Path = COMPOSE_DIR
    images: ImageConfig = field(default_factory=ImageConfig.from_env)
    build_images: bool = True
    profiles: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ("http://localhost:8080",)
    platform_admin_email: str = "platform-admin@atendeai.test"

    def __post_init__(self) -> None:
        if not (Path(self.compose_dir) / "docker-compose.yml").is_file():
            raise ConfigurationError(f"no docker-compose.yml in {self.compose_dir}")


class ComposeDeployment:
    """A running compose deployment: its ``DockerCompose`` handle and what was written."""

    def __init__(self, compose: Any, env: dict[str, str], work_dir: Path) -> None:
        self.compose = compose
        self.env = env
        self.work_dir = work_dir
        self.up_seconds: float = 0.0

    def up(self) -> float:
        """``docker compose up --wait``; the seconds it took (every service healthy)."""
        started = time.monotonic()
        try:
            self.compose.start()
        except subprocess.CalledProcessError as error:
            raise ComponentStartError(
                "compose",
                f"`docker compose up --wait` exited {error.returncode}",
                command=[str(part) for part in error.cmd],
                log_tail=(error.stderr or b"").decode(errors="replace")[-3000:]
                + "\n"
                + self.logs_tail(),
                hint="the log tail of every service is above; `docker compose ps -a` shows "
                "which service is unhealthy",
            ) from None
        self.up_seconds = time.monotonic() - started
        return self.up_seconds

    def down(self, *, volumes: bool) -> None:
        """``docker compose down`` (``--volumes`` too when asked)."""
        command = [*self.compose.compose_command_property, "down"]
        if volumes:
            command.append("--volumes")
        self.compose._run_command(cmd=command)

    def logs_tail(self, lines: int = 15) -> str:
        try:
            result = self.compose._run_command(
                cmd=[*self.compose.compose_command_property, "logs", "--tail", str(lines)]
            )
        except subprocess.CalledProcessError:
            return "(no logs)"
        return result.stdout.decode(errors="replace")

    def containers(self, service: str) -> list[Any]:
        """The running containers of ``service``, by name (``atendeai-auth-1``...)."""
        found = [c for c in self.compose.get_containers() if c.Service == service]
        return sorted(found, key=lambda c: c.Name or "")

    def published_url(self, container: Any, port: int, path: str = "") -> str:
        publisher = container.get_publisher(by_port=port, prefer_ip_version="IPv4")
        return f"http://{LOOPBACK}:{publisher.PublishedPort}{path}"

    def stack(self) -> Stack:
        """The ``Stack`` of this deployment, from compose's published ports."""
        env = self.env
        pg_port = int(env["POSTGRES_HOST_PORT"])

        def dsn(user: str, password: str) -> str:
            return postgres_dsn(user, password, LOOPBACK, pg_port)

        instances = {
            name: tuple(self.published_url(c, port) for c in self.containers(name))
            for name, port in SERVICE_PORTS.items()
        }
        missing = [name for name, urls in instances.items() if not urls]
        if missing:
            raise ComponentStartError("compose", f"no running containers of {missing}")
        stats = f"http://{LOOPBACK}:{env['HAPROXY_STATS_HOST_PORT']}"
        (pg_exporter,) = self.containers("postgres-exporter")
        (redis_exporter,) = self.containers("redis-exporter")
        return Stack(
            provider="compose",
            postgres=PostgresEndpoints(
                superuser_dsn=dsn("postgres", env["POSTGRES_PASSWORD"]),
                owner_dsn=dsn(OWNER_ROLE, env["ATENDEAI_OWNER_PASSWORD"]),
                app_dsn=dsn(APP_ROLE, env["ATENDEAI_APP_PASSWORD"]),
                host=LOOPBACK,
                port=pg_port,
                database=DATABASE,
            ),
            redis_url=f"redis://:{env['REDIS_PASSWORD']}@{LOOPBACK}:{env['REDIS_HOST_PORT']}/0",
            services={name: urls[0] for name, urls in instances.items()},
            platform_admin=Credentials(env["PLATFORM_ADMIN_EMAIL"], env["PLATFORM_ADMIN_PASSWORD"]),
            allowed_origins=tuple(env["ATENDEAI_CORS_ORIGINS"].split(",")),
            service_instances=instances,
            haproxy_url=f"http://{LOOPBACK}:{env['HAPROXY_HOST_PORT']}",
            haproxy_stats_url=f"{stats}/stats",
            prometheus_url=f"http://{LOOPBACK}:{env['PROMETHEUS_HOST_PORT']}",
            exporters={
                "postgres": self.published_url(pg_exporter, 9187, "/metrics"),
                "redis": self.published_url(redis_exporter, 9121, "/metrics"),
            },
            extra={
                "jwt_public_key_file": str(self.work_dir / "secrets" / "jwt-public.pem"),
                "jwt_private_key_file": str(self.work_dir / "secrets" / "jwt-private.pem"),
                "haproxy_metrics_url": f"{stats}/metrics",
                "monitor_dsn": monitor_dsn(
                    LOOPBACK, pg_port, DATABASE, env["ATENDEAI_MONITOR_PASSWORD"]
                ),
                # 8 service replicas, HAProxy, both exporters, Prometheus (Kong: no profile)
                "prometheus_targets": str(sum(len(u) for u in instances.values()) + 4),
                "compose_file": str(Path(self.compose.context) / "docker-compose.yml"),
            },
        )


def redis_key_survives_a_crash(
    store: Any, crash: Callable[[], None], *, timeout_s: float = 60.0
) -> bool:
    """Write a key, ``crash()`` the Redis server (and let it come back), say whether
    the key is still there. The persistence check of the deployment suite; with
    AOF off the same procedure answers False (the proof in contract_tests)."""
    from harness.processes import wait_until

    key = f"atendeai-persistence-{time.time_ns()}"
    store.set(key, "written before the crash")
    crash()
    wait_until(
        store.ping, timeout=timeout_s, what="Redis answering after the crash", retry_on=(Exception,)
    )
    return store.get(key) == b"written before the crash"


def deployment_env(settings: ComposeSettings, secrets_dir: Path) -> dict[str, str]:
    """What a user's ``compose/.env`` would hold: fresh passwords, free loopback ports."""
    env = {name: secrets.token_urlsafe(18) for name in PASSWORDS}
    env.update(zip(HOST_PORTS, map(str, free_ports(len(HOST_PORTS))), strict=True))
    env.update(
        PLATFORM_ADMIN_EMAIL=settings.platform_admin_email,
        GRAFANA_ADMIN_USER="admin",
        ATENDEAI_CORS_ORIGINS=",".join(settings.allowed_origins),
        ATENDEAI_IMAGE_PREFIX=settings.images.prefix,
        ATENDEAI_IMAGE_TAG=settings.images.tag,
        ATENDEAI_SECRETS_DIR=str(secrets_dir),
    )
    return env


@contextmanager
def compose_deployment(
    settings: ComposeSettings | None = None, *, progress: Progress | None = None
) -> Iterator[ComposeDeployment]:
    """Bring ``docker-compose.yml`` up (``up --wait``), yield it, remove everything."""
    from testcontainers.compose import DockerCompose

    settings = ComposeSettings() if settings is None else settings
    say = progress or (lambda line: None)
    if settings.build_images:
        ensure_images(settings.images, progress=say)
    _refuse_a_second_deployment()
    work_dir = Path(tempfile.mkdtemp(prefix="atendeai-compose-"))
    try:
        secrets_dir = work_dir / "secrets"
        # compose mounts the files as they are: the services' user (uid 10001) reads them
        generate_jwt_keys(secrets_dir, private_key_mode=0o644)  # jwt-private.pem, jwt-public.pem
        secrets_dir.chmod(0o755)
        env = deployment_env(settings, secrets_dir)
        env_file = work_dir / ".env"
        write_private(env_file, "".join(f"{name}={value}\n" for name, value in env.items()))
        compose = DockerCompose(
            context=str(settings.compose_dir),
            compose_file_name="docker-compose.yml",
            env_file=str(env_file),
            profiles=list(settings.profiles) or None,
            wait=True,
        )
        deployment = ComposeDeployment(compose, env, work_dir)
        try:
            say(f"compose: up --wait ({settings.compose_dir / 'docker-compose.yml'})")
            seconds = deployment.up()
            say(f"compose: every service healthy after {seconds:.1f} s")
            yield deployment
        finally:
            say("compose: down --volumes")
            try:
                deployment.down(volumes=True)
            except subprocess.CalledProcessError as error:
                say(f"compose: down failed: {(error.stderr or b'').decode(errors='replace')}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _refuse_a_second_deployment() -> None:
    client = docker_client()
    try:
        running = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}
        )
        names = sorted(container.name for container in running)
        networks = [n.name for n in client.networks.list(names=[NETWORK]) if n.name == NETWORK]
    finally:
        client.close()
    if names or networks:
        raise ConfigurationError(
            f"a compose deployment named {PROJECT!r} is already here "
            f"(containers: {', '.join(names) or 'none'}; "
            f"network: {', '.join(networks) or 'none'}); "
            f"bring it down first: docker compose -p {PROJECT} down"
        )


__all__ = [
    "NETWORK",
    "PROJECT",
    "ComposeDeployment",
    "ComposeSettings",
    "compose_deployment",
    "deployment_env",
    "redis_key_survives_a_crash",
]
