"""The platform's services as child processes, started together and awaited.

Each instance is ``python -m system_under_test NAME --port P --host 127.0.0.1``
configured only by its environment. ``running_services`` picks one free port
per instance (``instances`` of each service, named ``auth-1``, ``auth-2``...),
starts them all at once (so the slowest start sets the pace, not the sum),
waits until each answers ``GET /ready`` with 200, and stops them on exit. The
environment of each instance is built by a callback that sees the URLs of
the instances with the same number (the health service's instance N watches
instance N of the others). If an instance loses the race for its port, the
whole batch is restarted on new ports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.exceptions import NotReadyYet, WaitTimeout
from harness.processes import (
    LOOPBACK,
    ManagedProcess,
    free_ports,
    retry_on_bind_failure,
    wait_until,
)

SERVICE_NAMES = ("auth", "users", "clinics", "health")

#: ``env_for(service_name, urls_of_every_service) -> that service's environment``
#: (the URLs are those of the instances with the same number as the one started)
EnvFactory = Callable[[str, Mapping[str, str]], Mapping[str, str]]


@dataclass(frozen=True)
class ServiceInstance:
    """One process of a service: ``auth-1``, ``auth-2``..."""

    service: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"


@dataclass(frozen=True)
class RunningService:
    """A started, ready instance and its process."""

    instance: ServiceInstance
    process: ManagedProcess
    url: str

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def port(self) -> int:
        assert self.process.port is not None
        return self.process.port

    def restart(self, *, timeout_s: float = 30.0) -> None:
        """Start this instance again on the same port (killing it first if it still
        runs) and wait until it answers ``GET /ready``; a supervisor's restart."""
        self.process.kill()
        self.process.restart()
        wait_ready(self.process, self.url, deadline=time.monotonic() + timeout_s)


def service_command(name: str, port: int, host: str = LOOPBACK) -> list[str]:
    return [sys.executable, "-m", "system_under_test", name, "--port", str(port), "--host", host]


def service_process(
    name: str,
    port: int,
    *,
    env: Mapping[str, str],
    log_dir: Path,
    host: str = LOOPBACK,
    instance_name: str | None = None,
) -> ManagedProcess:
    """A (not yet started) ``ManagedProcess`` for one instance of service ``name``."""
    label = instance_name or name
    return ManagedProcess(
        label,
        service_command(name, port, host),
        log_path=Path(log_dir) / f"{label}.log",
        env=env,
        port=port,
        grace_s=10.0,
    )


def wait_ready(process: ManagedProcess, url: str, *, deadline: float) -> None:
    """Poll ``GET {url}/ready`` until 200; raise with the service's log tail."""
    import httpx

    with httpx.Client(timeout=2.0) as client:

        def ready() -> bool:
            process.raise_if_exited(hint=_HINT)
            response = client.get(f"{url}/ready")
            if response.status_code != 200:
                body = response.text[:300]
                raise NotReadyYet(f"GET /ready answered {response.status_code}: {body}")
            return True

        try:
            wait_until(
                ready,
                timeout=max(0.0, deadline - time.monotonic()),
                interval=0.05,
                what=f"{process.name} to answer GET {url}/ready with 200",
                retry_on=(httpx.TransportError, NotReadyYet),
            )
        except WaitTimeout as error:
            raise process.start_error(str(error), hint=_HINT) from error


_HINT = (
    "read the service's log tail above; run it by hand with "
    "`python -m system_under_test NAME --port P` and the same ATENDEAI_* environment"
)


@contextmanager
def running_services(
    names: Sequence[str] = SERVICE_NAMES,
    *,
    env_for: EnvFactory,
    log_dir: Path,
    instances: int = 1,
    timeout_s: float = 30.0,
    host: str = LOOPBACK,
    port_attempts: int = 3,
) -> Iterator[list[RunningService]]:
    """Start ``instances`` of each of ``names`` concurrently; yield them once all are ready.

    The list is ordered by instance number, then by ``names``: the first
    ``len(names)`` entries are the instances numbered 1.
    """
    if instances < 1:
        raise ValueError(f"instances must be at least 1, not {instances}")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    wanted = [ServiceInstance(name, index) for index in range(1, instances + 1) for name in names]

    def start_batch() -> tuple[list[RunningService], ExitStack]:
        ports = dict(zip(wanted, free_ports(len(wanted), host), strict=True))
        urls = {instance: f"http://{host}:{port}" for instance, port in ports.items()}
        with ExitStack() as batch:
            running: list[RunningService] = []
            for instance in wanted:
                peers = {i.service: url for i, url in urls.items() if i.index == instance.index}
                process = service_process(
                    instance.service,
                    ports[instance],
                    env=env_for(instance.service, peers),
                    log_dir=log_dir,
                    host=host,
                    instance_name=instance.name,
                )
                batch.enter_context(process)
                running.append(RunningService(instance, process, urls[instance]))
            # On the way out, signal every instance first, then wait for each.
            batch.callback(lambda: [r.process.request_stop() for r in running])
            deadline = time.monotonic() + timeout_s
            for service in running:
                wait_ready(service.process, service.url, deadline=deadline)
            return running, batch.pop_all()

    running, batch = retry_on_bind_failure(
        start_batch, component="services", attempts=port_attempts
    )
    with batch:
        yield running


def service_url(process: ManagedProcess, host: str = LOOPBACK) -> str:
    return f"http://{host}:{process.port}"


__all__ = [
    "SERVICE_NAMES",
    "EnvFactory",
    "RunningService",
    "ServiceInstance",
    "running_services",
    "service_command",
    "service_process",
    "service_url",
    "wait_ready",
]
