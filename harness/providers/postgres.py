"""A throwaway PostgreSQL 15 cluster: initdb into a directory, run, tear down.

``LocalPostgres`` is a context manager. On enter it runs ``initdb`` (as the
``postgres`` OS user when the harness runs as root: PostgreSQL refuses root),
starts ``postgres`` on a free loopback port with its unix socket in the same
directory, waits until it answers a query, and sets a fresh superuser
password. On exit it asks for a fast shutdown (SIGINT) and removes the
directory if it made it. ``restart()`` starts the server again on the same data
directory and port after it died (crash recovery replays the WAL), as a
supervisor would.

It is a test database: fsync and full-page writes are off and
``shared_buffers`` is modest, so it survives a crash of its processes (the
drill's ``kill -9``: the WAL a commit wrote is in the kernel's page cache), not
a crash of the machine. Synchronous commit stays on: with it off, a commit is
acknowledged before its WAL is written, and the drill's ledger measured what
that costs (one acknowledged write lost to a ``kill -9`` of PostgreSQL).
``initdb`` runs once per machine and PostgreSQL version: its result is kept as
a template (by default under ``~/.cache/atendeai/``) and copied for each
cluster, which is two to four times faster than running initdb again (measured
here: 0.3-0.8 s against 0.9-1.4 s). Local (unix socket) connections are
trusted; TCP connections need a password (scram-sha-256), as in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from harness.childenv import child_environment
from harness.exceptions import ComponentNotInstalled, ConfigurationError, WaitTimeout
from harness.processes import (
    LOOPBACK,
    ManagedProcess,
    OsUser,
    StartedResource,
    free_port,
    retry_on_bind_failure,
    run_checked,
    wait_until,
)

PG_MAJOR = 15
DEFAULT_BIN_DIR = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PACKAGE = f"postgresql-{PG_MAJOR}"
SUPERUSER = "postgres"
TEMPLATE_PREFIX = f"postgres{PG_MAJOR}-template-"
INITDB_OPTIONS = (
    "--username",
    SUPERUSER,
    "--encoding",
    "UTF8",
    "--locale",
    "C.UTF-8",
    "--auth-local",
    "trust",
    "--auth-host",
    "scram-sha-256",
    "--no-sync",
    "--no-instructions",
)


def find_bin_dir(explicit: Path | None = None) -> Path:
    """The directory holding PostgreSQL 15's ``initdb`` and ``postgres``.

    Tries ``explicit``, then ``/usr/lib/postgresql/15/bin``, then
    ``pg_config --bindir``; raises ``ComponentNotInstalled`` naming the package.
    """
    candidates: list[Path] = [explicit] if explicit is not None else [DEFAULT_BIN_DIR]
    if explicit is None and (pg_config := shutil.which("pg_config")):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and Path(out) not in candidates:
            candidates.append(Path(out))
    wrong_versions: list[str] = []
    for candidate in candidates:
        if not ((candidate / "initdb").is_file() and (candidate / "postgres").is_file()):
            continue
        version = server_version(candidate)
        if version.startswith(f"{PG_MAJOR}."):
            return candidate
        wrong_versions.append(f"{candidate} has PostgreSQL {version}")
    raise ComponentNotInstalled(
        "postgres",
        f"PostgreSQL {PG_MAJOR} (initdb, postgres)",
        package=PACKAGE,
        searched=[str(c) for c in candidates],
        detail="; ".join(wrong_versions),
    )


def server_version(bin_dir: Path) -> str:
    """``"15.14"`` from ``postgres --version`` (``""`` when it cannot be read)."""
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"(\d+(?:\.\d+)+)", out)
    return match.group(1) if match else ""


def _traversable_by(path: Path, user: OsUser) -> Path | None:
    """The first ancestor of ``path`` that ``user`` cannot enter, or None."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in user.groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


class LocalPostgres(StartedResource):
    """A PostgreSQL 15 cluster of its own, on a free port; a context manager.

    ``directory``: where the cluster lives (``data/``, the unix socket and the
    log); ``None`` makes a temporary one that is removed on exit.
    ``template_cache_dir``: where initdb'd templates are kept and copied from
    (``None``: run initdb every time).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        bin_dir: Path | None = None,
        startup_timeout_s: float = 30.0,
        shared_buffers: str = "32MB",
        max_connections: int = 200,
        port_attempts: int = 3,
        template_cache_dir: Path | None = None,
    ) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else None
        self._bin_dir_arg = bin_dir
        self.startup_timeout_s = startup_timeout_s
        self.shared_buffers = shared_buffers
        self.max_connections = max_connections
        self.port_attempts = port_attempts
        self.template_cache_dir = template_cache_dir
        self.used_template = False
        self.host = LOOPBACK
        self.port: int | None = None
        self.superuser = SUPERUSER
        self.password = secrets.token_urlsafe(24)
        self.bin_dir: Path | None = None
        self.process: ManagedProcess | None = None
        self._run_as: OsUser | None = None
        self.startup_seconds: float | None = None

    # -- paths and addresses

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("LocalPostgres has not been started")
        return self.directory

    def dsn(
        self, database: str = "postgres", *, user: str | None = None, password: str | None = None
    ) -> str:
        """A TCP connection URL; defaults to the superuser and its password."""
        if self.port is None:
            raise RuntimeError("LocalPostgres has not been started")
        user = self.superuser if user is None else user
        password = self.password if password is None and user == self.superuser else password
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(database, safe='')}"

    @property
    def superuser_dsn(self) -> str:
        """The superuser on the maintenance database ``postgres``."""
        return self.dsn()

    # -- lifecycle (``with`` comes from StartedResource)

    def _start(self) -> None:
        self.bin_dir = find_bin_dir(self._bin_dir_arg)
        run_as = self._run_as = self._os_user()
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="atendeai-postgres-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prepare_directory(run_as)
        self._create_data_dir(run_as)
        retry_on_bind_failure(
            lambda: self._launch(run_as), component="postgres", attempts=self.port_attempts
        )
        self._set_superuser_password()

    def _os_user(self) -> OsUser:
        if os.geteuid() != 0:
            return OsUser.current()
        try:
            return OsUser.lookup(SUPERUSER)
        except ConfigurationError:
            raise ComponentNotInstalled(
                "postgres",
                "the 'postgres' OS user (PostgreSQL refuses to run as root)",
                package=PACKAGE,
            ) from None

    def _prepare_directory(self, run_as: OsUser) -> None:
        directory = self._dir
        if os.geteuid() == 0:
            os.chown(directory, run_as.uid, run_as.gid)
            directory.chmod(0o755)
            blocked = _traversable_by(directory, run_as)
            if blocked is not None:
                raise ConfigurationError(
                    f"postgres: the {run_as.name!r} OS user cannot enter {blocked} "
                    f"(mode {stat.filemode(blocked.stat().st_mode)}), so it cannot use "
                    f"{directory}; choose a base directory under /tmp, or make the "
                    "parents traversable (chmod o+x)"
                )

    def _create_data_dir(self, run_as: OsUser) -> None:
        """Copy the cached template, or run initdb (and cache the result)."""
        template = self._template_path(run_as)
        if template is not None and (template / "PG_VERSION").is_file():
            try:
                _copy_tree(template, self.data_dir)
            except (OSError, subprocess.SubprocessError):
                shutil.rmtree(self.data_dir, ignore_errors=True)
            else:
                self.used_template = True
                return
        self._initdb(run_as)
        if template is not None:
            _save_template(self.data_dir, template)

    def _template_path(self, run_as: OsUser) -> Path | None:
        if self.template_cache_dir is None:
            return None
        assert self.bin_dir is not None
        key = hashlib.sha256(
            "\0".join(
                [str(self.bin_dir), server_version(self.bin_dir), str(run_as.uid), *INITDB_OPTIONS]
            ).encode()
        ).hexdigest()[:16]
        return Path(self.template_cache_dir) / f"{TEMPLATE_PREFIX}{key}"

    def _initdb(self, run_as: OsUser) -> None:
        assert self.bin_dir is not None
        run_checked(
            "postgres initdb",
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                *INITDB_OPTIONS,
            ],
            log_path=self._dir / "initdb.log",
            env=_clean_env(),
            user=run_as.name,
            timeout=self.startup_timeout_s,
            hint=f"initdb comes from the {PACKAGE} package; the data directory must be "
            f"writable by the {run_as.name!r} OS user",
        )

    def _launch(
        self, run_as: OsUser, *, port: int | None = None, timeout_s: float | None = None
    ) -> None:
        """Start the server on ``port`` (a free one when ``None``) and wait until it answers."""
        assert self.bin_dir is not None
        port = free_port(self.host) if port is None else port
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        process = ManagedProcess(
            "postgres",
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
                "-k",
                str(self.socket_dir),
                "-F",
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"shared_buffers={self.shared_buffers}",
                "-c",
                f"max_connections={self.max_connections}",
                "-c",
                "full_page_writes=off",
                "-c",
                "timezone=UTC",
            ],
            log_path=self.log_path,
            env=_clean_env(),
            user=run_as.name,
            port=port,
            stop_signal=signal.SIGINT,
            grace_s=10.0,
        )
        process.start()
        self.process, self.port = process, port
        try:
            wait_until(
                self._ready_check(process),
                timeout=timeout_s,
                interval=0.05,
                what=f"postgres to accept connections on {self.host}:{port}",
                retry_on=(_operational_error(),),
            )
        except WaitTimeout as error:
            process.stop(grace_s=5.0)
            self.process = None
            raise process.start_error(
                str(error), hint="read the log tail; is the machine out of shared memory?"
            ) from error
        except BaseException:
            process.stop(grace_s=5.0)
            self.process = None
            raise

    def _ready_check(self, process: ManagedProcess) -> Callable[[], bool]:
        import psycopg

        def ready() -> bool:
            process.raise_if_exited()
            with psycopg.connect(
                host=str(self.socket_dir),
                port=self.port,
                user=SUPERUSER,
                dbname="postgres",
                connect_timeout=2,
            ) as conn:
                conn.execute("select 1")
            return True

        return ready

    def _set_superuser_password(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres"
        ) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(self.password)
                )
            )

    def restart(self, *, timeout_s: float | None = None) -> None:
        """Start the server again on the same data directory and port, and wait until
        it answers a query; kills it first (``kill -9``) if it is still running.

        Raises ``ComponentStartError`` (command, port, log tail) when it does not
        come back within ``timeout_s`` (default: the startup timeout).
        """
        if self._run_as is None or self.port is None:
            raise RuntimeError("LocalPostgres has not been started")
        if self.process is not None:
            self.process.kill()
            self.process.stop()  # reap it; backends left in its group are killed too
        self._launch(self._run_as, port=self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        """Fast shutdown; then remove the directory if this object made it."""
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _copy_tree(source: Path, target: Path) -> None:
    """``cp -a``: keeps owners and modes (the data dir must stay 0700, owned by postgres)."""
    subprocess.run(
        ["cp", "-a", str(source), str(target)], check=True, capture_output=True, timeout=60
    )


def _save_template(data_dir: Path, template: Path) -> None:
    """Keep a pristine copy of a fresh data dir; best effort, safe against races."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        template.parent.chmod(0o700)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=template.parent))
        _copy_tree(data_dir, staging / "data")
        with contextlib.suppress(OSError):  # another run saved it first
            (staging / "data").rename(template)
        shutil.rmtree(staging, ignore_errors=True)
        for old in template.parent.glob(f"{TEMPLATE_PREFIX}*"):
            if old != template:  # templates of other versions or options
                shutil.rmtree(old, ignore_errors=True)
    except (OSError, subprocess.SubprocessError):
        return


def _operational_error() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


def _clean_env() -> dict[str, str]:
    """The environment for PostgreSQL binaries, without the caller's PG* settings."""
    env = child_environment(drop_prefixes=("PG",))
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


__all__ = ["DEFAULT_BIN_DIR", "LocalPostgres", "find_bin_dir", "server_version"]
