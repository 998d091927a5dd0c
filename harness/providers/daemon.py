"""The shape every HTTP-serving helper of the local stack shares.

HAProxy, Prometheus and the two exporters are Debian-packaged binaries that
listen on a port of their own and answer a readiness URL. ``HttpDaemon`` is
the context manager around one of them: find the binary (or name the Debian
package that brings it), write its configuration into its directory, start
it on free loopback ports (again on new ports when it loses the race for
them), poll its readiness check with a deadline, and stop it on exit. A
failure carries the command, the ports tried and the log tail.

Subclasses say what differs: ``component``, ``binary_name``, ``package``,
``ports_needed``, and the methods ``_configure`` (write the config for the
chosen ports), ``_command``, ``_env`` and ``_ready`` (one readiness probe:
return true, or raise ``NotReadyYet`` with what was seen), and ``_alive``
when being back after ``restart()`` means less than a first start's readiness.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from harness.exceptions import ComponentNotInstalled, NotReadyYet, WaitTimeout
from harness.processes import (
    LOOPBACK,
    ManagedProcess,
    StartedResource,
    free_ports,
    retry_on_bind_failure,
    wait_until,
)

SYSTEM_BIN_DIRS = "/usr/sbin:/sbin"


def find_binary(component: str, name: str, *, package: str, explicit: Path | None = None) -> Path:
    """The binary ``name`` (on ``$PATH`` or ``explicit``); ``ComponentNotInstalled`` otherwise."""
    if explicit is not None:
        found: str | None = str(explicit)
    else:  # Debian puts haproxy in /usr/sbin, which is not on a normal user's PATH
        found = shutil.which(name) or shutil.which(name, path=SYSTEM_BIN_DIRS)
    if not found or not Path(found).is_file():
        searched = [str(explicit)] if explicit is not None else ["$PATH", SYSTEM_BIN_DIRS]
        raise ComponentNotInstalled(component, name, package=package, searched=searched)
    return Path(found)


class HttpDaemon(StartedResource):
    """One HTTP-serving child process on free loopback ports; a context manager."""

    component: ClassVar[str]
    binary_name: ClassVar[str]
    package: ClassVar[str]
    ports_needed: ClassVar[int] = 1
    hint: ClassVar[str] = ""

    def __init__(
        self,
        directory: Path,
        *,
        binary: Path | None = None,
        startup_timeout_s: float = 30.0,
        port_attempts: int = 3,
    ) -> None:
        self.directory = Path(directory)
        self._binary_arg = binary
        self.startup_timeout_s = startup_timeout_s
        self.port_attempts = port_attempts
        self.host = LOOPBACK
        self.ports: tuple[int, ...] = ()
        self.process: ManagedProcess | None = None
        self._binary: Path = Path()

    # -- what subclasses provide

    def _configure(self, ports: Sequence[int]) -> None:
        """Write the configuration for ``ports`` into ``self.directory``."""

    def _command(self, binary: Path, ports: Sequence[int]) -> list[str]:
        raise NotImplementedError

    def _env(self) -> Mapping[str, str] | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- shared

    @property
    def port(self) -> int:
        if not self.ports:
            raise RuntimeError(f"{self.component} has not been started")
        return self.ports[0]

    def url(self, path: str = "", *, port_index: int = 0) -> str:
        if not self.ports:
            raise RuntimeError(f"{self.component} has not been started")
        return f"http://{self.host}:{self.ports[port_index]}{path}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.component}.log"

    def _start(self) -> None:
        binary = find_binary(
            self.component, self.binary_name, package=self.package, explicit=self._binary_arg
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        retry_on_bind_failure(
            lambda: self._launch(binary), component=self.component, attempts=self.port_attempts
        )

    def _launch(self, binary: Path) -> None:
        ports = tuple(free_ports(self.ports_needed, self.host))
        self.ports = ports
        self._binary = binary
        self._configure(ports)
        self._spawn(self._ready, timeout_s=self.startup_timeout_s)

    def _spawn(self, check: Callable[[], bool], *, timeout_s: float) -> None:
        """Start the command on ``self.ports`` and poll ``check`` until it passes."""
        import httpx

        ports = self.ports
        process = ManagedProcess(
            self.component,
            self._command(self._binary, ports),
            log_path=self.log_path,
            env=self._env(),
            port=ports[0],
            grace_s=10.0,
        )
        process.start()
        self.process = process

        def ready() -> bool:
            process.raise_if_exited(hint=self.hint)
            return check()

        try:
            wait_until(
                ready,
                timeout=timeout_s,
                interval=0.05,
                what=f"{self.component} to be ready on {self.host}:{ports[0]}",
                retry_on=(httpx.TransportError, NotReadyYet),
            )
        except WaitTimeout as error:
            process.stop(grace_s=5.0)
            self.process = None
            raise process.start_error(str(error), hint=self.hint) from error
        except BaseException:
            process.stop(grace_s=5.0)
            self.process = None
            raise

    def restart(self, *, timeout_s: float | None = None) -> None:
        """Start it again on the same ports with the same configuration and data (a
        supervisor's restart after a crash; ``kill -9`` first if it still runs), and
        wait until ``_alive`` passes. ``ComponentStartError`` (log tail) otherwise;
        a port taken meanwhile is an error too: the ``Stack`` names these ports."""
        if not self.ports:
            raise RuntimeError(f"{self.component} has not been started")
        if self.process is not None:
            self.process.kill()
            self.process.stop()  # reap it and anything left in its group
            self.process = None
        timeout = self.startup_timeout_s if timeout_s is None else timeout_s
        self._spawn(self._alive, timeout_s=timeout)

    def _alive(self) -> bool:
        """Readiness after a restart (default: the same as at the start)."""
        return self._ready()

    def _get(self, path: str, *, port_index: int = 0) -> str:
        """``GET`` one of our URLs; the body, or ``NotReadyYet`` naming the status."""
        import httpx

        response = httpx.get(self.url(path, port_index=port_index), timeout=2.0)
        if response.status_code != 200:
            raise NotReadyYet(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return response.text

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


__all__ = ["HttpDaemon", "find_binary"]
