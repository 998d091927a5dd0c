"""Child processes the harness owns: start, watch, stop, and explain failures.

- ``ManagedProcess``: a context manager around one subprocess whose output goes
  to a log file; ``stop()`` asks politely (SIGTERM, or the signal you name) and
  kills the whole process group after a grace period; ``kill()`` is ``kill -9``
  at once and ``restart()`` starts the same command again (the recovery drill).
- ``wait_until``: poll a check with a deadline; on timeout the error says what
  was awaited and the last evidence seen.
- ``free_port`` / ``retry_on_bind_failure``: pick a free loopback port, and try
  again on another one when a process loses the pick-then-bind race.

Children run in their own session, so a Ctrl-C in the terminal reaches only
the harness, which then stops them in order. On Linux they also get SIGTERM
when the harness dies without cleaning up (``PR_SET_PDEATHSIG``), so a killed
test run leaves no PostgreSQL or Redis behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from harness.exceptions import ComponentStartError, ConfigurationError, PortInUse, WaitTimeout

T = TypeVar("T")

#: Substrings (lower case) that mean "the port was taken", in the logs of
#: PostgreSQL, redis-server and aiohttp/asyncio.
BIND_FAILURE_MARKERS = (
    "address already in use",
    "could not bind",
    "errno 98",
)

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the OS picks it; it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports (all held open while picking, so no repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def retry_on_bind_failure(start: Callable[[], T], *, component: str, attempts: int = 3) -> T:
    """Call ``start`` again while it raises ``PortInUse`` (it should pick new ports).

    Picking a free port and binding it later races with every other process on
    the machine; losing that race is the one failure worth retrying. Any other
    ``ComponentStartError`` propagates at once, with the ports tried so far.
    """
    tried: list[int] = []
    last: PortInUse | None = None
    for _ in range(attempts):
        try:
            return start()
        except PortInUse as error:
            tried.append(error.port)
            last = error
        except ComponentStartError as error:
            error.ports_tried = tuple(tried) + error.ports_tried
            raise
    assert last is not None
    raise ComponentStartError(
        component,
        f"every port tried was already in use ({attempts} attempts)",
        ports_tried=tried,
        log_tail=last.log_tail,
        hint="something on this machine is grabbing loopback ports quickly; retry, "
        "or look for leftover processes with `ss -ltnp`",
    ) from last


# --------------------------------------------------------------------------- waiting


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Exceptions of the types in ``retry_on`` count as "not yet" (the last one is
    kept as evidence); any other exception propagates at once, so a check can
    stop the wait early (e.g. when the process it waits for has died). After
    ``timeout`` seconds raise ``WaitTimeout`` naming ``what`` and the evidence.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last_result: object = None
    last_error: BaseException | None = None
    while True:
        attempts += 1
        try:
            result = check()
        except retry_on as error:
            last_error = error
        else:
            if result:
                return result
            last_result, last_error = result, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(
                what,
                timeout,
                attempts=attempts,
                last_result=last_result,
                last_error=last_error,
            )
        time.sleep(min(interval, remaining))


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class OsUser:
    """An OS account a child process can run as."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> OsUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigurationError(f"there is no OS user {name!r} on this machine") from None
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            home=entry.pw_dir,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
        )

    @classmethod
    def current(cls) -> OsUser:
        return cls.lookup(pwd.getpwuid(os.geteuid()).pw_name)


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the harness dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:  # runs in the forked child: no imports, no locks
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return preexec


#: ``preexec_fn`` of every child the harness starts: it dies with the harness
#: (SIGTERM from Linux when the harness's starting thread ends, even by SIGKILL).
DIE_WITH_PARENT = _parent_death_signal()


class StartedResource:
    """The context-manager half of a local component: ``with X() as x`` runs
    ``x._start()``, stops whatever had started when that fails, times the
    start in ``x.startup_seconds`` and always calls ``x.stop()`` on exit."""

    startup_seconds: float | None = None

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess:
    """One child process with its output in ``log_path``; a context manager.

    ``user``: run as that OS user. As root this drops privileges in the child
    (setgroups/setgid/setuid, as ``runuser`` would, but without an extra
    process in between, so signals reach the program itself). Naming the
    current user is a no-op; any other user needs root.

    ``stop_signal`` is what ``stop()`` sends first (PostgreSQL wants SIGINT
    for a fast shutdown); after ``grace_s`` the whole process group gets
    SIGKILL. Start the process from a long-lived thread: on Linux the child is
    told to exit when the thread that started it ends.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        port: int | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace_s: float = 10.0,
    ) -> None:
        self.name = name
        self.command = tuple(str(part) for part in command)
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.user = user
        self.port = port
        self.stop_signal = stop_signal
        self.grace_s = grace_s
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's output begins (the log may be reused)

    # -- lifecycle

    def start(self) -> Self:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._log_start = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_start = 0
        env = dict(self.env)
        kwargs = self._user_kwargs(env)
        with self.log_path.open("ab") as log:
            try:
                self._popen = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=DIE_WITH_PARENT,
                    **kwargs,
                )
            except OSError as error:
                raise ComponentStartError(
                    self.name,
                    f"could not execute the command ({error})",
                    command=self.command,
                    log_path=str(self.log_path),
                ) from error
        return self

    def _user_kwargs(self, env: dict[str, str]) -> dict[str, object]:
        if self.user is None:
            return {}
        target = OsUser.lookup(self.user)
        if target.uid == os.geteuid():
            return {}
        if os.geteuid() != 0:
            raise ConfigurationError(
                f"{self.name}: cannot run as OS user {self.user!r} without root "
                f"(running as uid {os.geteuid()})"
            )
        env.update(HOME=target.home, USER=target.name, LOGNAME=target.name)
        return {"user": target.uid, "group": target.gid, "extra_groups": list(target.groups)}

    def poll(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def request_stop(self) -> None:
        """Send ``stop_signal`` without waiting (``stop()`` waits); for stopping many at once."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(self.stop_signal)

    def stop(self, grace_s: float | None = None) -> int | None:
        """Send ``stop_signal``, wait ``grace_s``, then SIGKILL the process group."""
        popen = self._popen
        if popen is None:
            return None
        grace = self.grace_s if grace_s is None else grace_s
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(self.stop_signal)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        # Leftover children of a program that exited (e.g. PostgreSQL backends
        # after a crash) share its process group: make sure none survive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        return popen.returncode

    def kill(self) -> int | None:
        """``kill -9`` the process and every descendant at once, as ``docker kill``
        does to a container: no polite signal first. Waits for the process; returns
        the pid that was killed (``None`` when it was not running).

        Descendants are found through ``/proc``, not the process group: PostgreSQL's
        backends each call ``setsid()``, and orphans would keep its shared memory.
        The process is stopped (SIGSTOP) first, so it forks nothing while we look.
        """
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(popen.pid, signal.SIGSTOP)
        for pid in descendants(popen.pid):  # first, so none outlives it and reacts
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        return popen.pid

    def restart(self) -> Self:
        """Start the same command again (same port, environment and log file) once
        the process has exited or been killed; a supervisor's restart."""
        if self.running:
            raise RuntimeError(f"{self.name} is still running (pid {self.pid}): stop it first")
        if self._popen is not None:
            self.stop()  # reap it and any leftover children of its group
        self._popen = None
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- evidence

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines this run wrote to the log ("" when none yet)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(self._log_start, size - 64 * 1024))
                data = log.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def bind_failed(self) -> bool:
        """Whether the process has exited and its log says the port was taken."""
        if self.poll() is None:
            return False
        tail = self.log_tail(80).lower()
        return any(marker in tail for marker in BIND_FAILURE_MARKERS)

    def start_error(self, reason: str, *, hint: str = "") -> ComponentStartError:
        """A ``ComponentStartError`` for this process, with its command and log tail."""
        return ComponentStartError(
            self.name,
            reason,
            command=self.command,
            ports_tried=() if self.port is None else (self.port,),
            log_path=str(self.log_path),
            log_tail=self.log_tail(),
            hint=hint,
        )

    def raise_if_exited(self, *, hint: str = "") -> None:
        """Inside a readiness check: fail fast when the process has already died.

        Raises ``PortInUse`` when its log says the port was taken (the caller
        retries on another port), otherwise ``ComponentStartError``.
        """
        code = self.poll()
        if code is None:
            return
        if self.port is not None and self.bind_failed():
            raise PortInUse(self.name, self.port, log_tail=self.log_tail())
        raise self.start_error(f"exited with code {code} before it was ready", hint=hint)

    def __repr__(self) -> str:
        state = "not started" if self._popen is None else f"pid={self.pid} rc={self.poll()}"
        return f"<ManagedProcess {self.name} {state}>"


def children_by_parent() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every live process, read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: parse after the last ')'
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children...), from ``/proc``."""
    children = children_by_parent()
    found: list[int] = []
    pending = list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, ()))
    return found


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (``T``: stopped, ``Z``: a zombie),
    ``None`` when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def run_checked(
    name: str,
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = 60.0,
    hint: str = "",
) -> None:
    """Run a short-lived command to completion (output to ``log_path``); raise on failure."""
    process = ManagedProcess(name, command, log_path=log_path, env=env, user=user)
    process.start()
    assert process._popen is not None
    try:
        code = process._popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.stop(grace_s=1.0)
        raise process.start_error(f"did not finish within {timeout:.0f} s", hint=hint) from None
    if code != 0:
        raise process.start_error(f"exited with code {code}", hint=hint)


__all__ = [
    "BIND_FAILURE_MARKERS",
    "LOOPBACK",
    "ManagedProcess",
    "OsUser",
    "children_by_parent",
    "descendants",
    "free_port",
    "free_ports",
    "retry_on_bind_failure",
    "run_checked",
    "wait_until",
]
