"""A throwaway Redis 7 server with a password and AOF persistence.

``LocalRedis`` writes a config file into its directory (the password lives
there, never on the command line where ``ps`` would show it), starts
``redis-server`` on a free loopback port, and waits for an authenticated
``PING``. On exit it sends SIGTERM (Redis flushes the AOF and exits) and
removes the directory if it made it. ``restart()`` brings it back after a
crash on the same port and data (the AOF is replayed).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from harness.exceptions import ComponentNotInstalled, WaitTimeout
from harness.private_files import write_private
from harness.processes import (
    LOOPBACK,
    ManagedProcess,
    StartedResource,
    free_port,
    retry_on_bind_failure,
    wait_until,
)

PACKAGE = "redis-server"
MIN_MAJOR = 7


def find_redis_server(explicit: Path | None = None) -> Path:
    """``redis-server`` (version 7 or later); ``ComponentNotInstalled`` otherwise."""
    found = str(explicit) if explicit is not None else shutil.which("redis-server")
    searched = [str(explicit)] if explicit is not None else ["$PATH"]
    if not found or not Path(found).is_file():
        raise ComponentNotInstalled("redis", "redis-server", package=PACKAGE, searched=searched)
    version = redis_version(Path(found))
    major = int(version.split(".")[0]) if version else 0
    if major < MIN_MAJOR:
        raise ComponentNotInstalled(
            "redis",
            f"redis-server {MIN_MAJOR} or later",
            package=PACKAGE,
            searched=[found],
            detail=f"found version {version or 'unknown'}",
        )
    return Path(found)


def redis_version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    return match.group(1) if match else ""


class LocalRedis(StartedResource):
    """A password-protected redis-server on a free loopback port; a context manager."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        binary: Path | None = None,
        startup_timeout_s: float = 30.0,
        port_attempts: int = 3,
    ) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else None
        self._binary_arg = binary
        self.startup_timeout_s = startup_timeout_s
        self.port_attempts = port_attempts
        self.host = LOOPBACK
        self.port: int | None = None
        self.password = secrets.token_urlsafe(24)
        self.process: ManagedProcess | None = None
        self._binary: Path | None = None
        self.startup_seconds: float | None = None

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("LocalRedis has not been started")
        return self.directory

    @property
    def config_path(self) -> Path:
        return self._dir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("LocalRedis has not been started")
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    def _start(self) -> None:
        binary = find_redis_server(self._binary_arg)
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="atendeai-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        (self._dir / "data").mkdir(exist_ok=True)
        retry_on_bind_failure(
            lambda: self._launch(binary), component="redis", attempts=self.port_attempts
        )

    def _write_config(self, port: int) -> None:
        text = "\n".join(
            [
                "# written by the AtendeAI harness; removed with the stack",
                f"bind {self.host}",
                f"port {port}",
                "protected-mode yes",
                f"requirepass {self.password}",
                "daemonize no",
                'logfile ""',
                "loglevel notice",
                f"dir {self._dir / 'data'}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "",
            ]
        )
        write_private(self.config_path, text)  # it holds the password

    def _launch(self, binary: Path) -> None:
        port = free_port(self.host)
        self._write_config(port)
        self._spawn(binary, port, timeout_s=self.startup_timeout_s)

    def _spawn(self, binary: Path, port: int, *, timeout_s: float) -> None:
        process = ManagedProcess(
            "redis",
            [str(binary), str(self.config_path)],
            log_path=self.log_path,
            port=port,
            grace_s=10.0,
        )
        process.start()
        self.process, self.port, self._binary = process, port, binary
        try:
            wait_until(
                self._ready_check(process),
                timeout=timeout_s,
                interval=0.02,
                what=f"redis to answer an authenticated PING on {self.host}:{port}",
                retry_on=_redis_transient_errors(),
            )
        except WaitTimeout as error:
            process.stop(grace_s=5.0)
            self.process = None
            raise process.start_error(str(error)) from error
        except BaseException:
            process.stop(grace_s=5.0)
            self.process = None
            raise

    def restart(self, *, timeout_s: float | None = None) -> None:
        """Start redis-server again with the same config (port, password, data
        directory: it replays the AOF) after a crash, ``kill -9`` first if it still
        runs, and wait for an authenticated PING; ``ComponentStartError`` otherwise."""
        if self.port is None or self._binary is None:
            raise RuntimeError("LocalRedis has not been started")
        if self.process is not None:
            self.process.kill()
            self.process.stop()  # reap it
            self.process = None
        timeout = self.startup_timeout_s if timeout_s is None else timeout_s
        self._spawn(self._binary, self.port, timeout_s=timeout)

    def _ready_check(self, process: ManagedProcess) -> Callable[[], bool]:
        import redis

        def ready() -> bool:
            process.raise_if_exited()
            client = redis.Redis(
                host=self.host,
                port=self.port,
                password=self.password,
                socket_connect_timeout=1,
                socket_timeout=1,
            )
            try:
                return bool(client.ping())
            finally:
                client.close()

        return ready

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _redis_transient_errors() -> tuple[type[Exception], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


__all__ = ["LocalRedis", "find_redis_server", "redis_version"]
