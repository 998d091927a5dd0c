"""The platform's services as child processes, started together and awaited.

Each service is ``python -m system_under_test NAME --port P --host 127.0.0.1``
configured only by its environment. ``running_services`` picks one free port
per service, starts them all at once (so the slowest start sets the pace, not
the sum), waits until each answers ``GET /ready`` with 200, and stops them on
exit. The environment of each service is built by a callback that sees every
service's URL (the health service needs the others'). If a service loses the
race for its port, the whole batch is restarted on new ports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from harness.exceptions import WaitTimeout
from harness.processes import (
    LOOPBACK,
    ManagedProcess,
    free_ports,
    retry_on_bind_failure,
    wait_until,
)

SERVICE_NAMES = ("auth", "users", "clinics", "health")

#: ``env_for(service_name, urls_of_every_service) -> that service's environment``
EnvFactory = Callable[[str, Mapping[str, str]], Mapping[str, str]]


class NotReadyYet(Exception):
    """``GET /ready`` answered, but not 200 (transient while the service warms up)."""


def service_command(name: str, port: int, host: str = LOOPBACK) -> list[str]:
    return [sys.executable, "-m", "system_under_test", name, "--port", str(port), "--host", host]


def service_process(
    name: str, port: int, *, env: Mapping[str, str], log_dir: Path, host: str = LOOPBACK
) -> ManagedProcess:
    """A (not yet started) ``ManagedProcess`` for one service."""
    return ManagedProcess(
        name,
        service_command(name, port, host),
        log_path=Path(log_dir) / f"{name}.log",
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
    timeout_s: float = 30.0,
    host: str = LOOPBACK,
    port_attempts: int = 3,
) -> Iterator[dict[str, ManagedProcess]]:
    """Start ``names`` concurrently; yield ``{name: process}`` once all are ready.

    Each process has ``.port``; its URL is ``http://{host}:{port}``.
    """
    Path(log_dir).mkdir(parents=True, exist_ok=True)

    def start_batch() -> tuple[dict[str, ManagedProcess], ExitStack]:
        ports = free_ports(len(names), host)
        urls = {name: f"http://{host}:{port}" for name, port in zip(names, ports, strict=True)}
        with ExitStack() as batch:
            processes: dict[str, ManagedProcess] = {}
            for name, port in zip(names, ports, strict=True):
                process = service_process(
                    name, port, env=env_for(name, dict(urls)), log_dir=log_dir, host=host
                )
                processes[name] = batch.enter_context(process)
            # On the way out, signal every service first, then wait for each.
            batch.callback(lambda: [p.request_stop() for p in processes.values()])
            deadline = time.monotonic() + timeout_s
            for name, process in processes.items():
                wait_ready(process, urls[name], deadline=deadline)
            return processes, batch.pop_all()

    processes, batch = retry_on_bind_failure(
        start_batch, component="services", attempts=port_attempts
    )
    with batch:
        yield processes


def service_url(process: ManagedProcess, host: str = LOOPBACK) -> str:
    return f"http://{host}:{process.port}"


__all__ = [
    "SERVICE_NAMES",
    "EnvFactory",
    "NotReadyYet",
    "running_services",
    "service_command",
    "service_process",
    "service_url",
    "wait_ready",
]
