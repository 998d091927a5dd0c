"""Every error the harness raises on purpose, in one tree.

::

    HarnessError                    anything the harness raises on purpose
    ├── ConfigurationError          bad CLI flags, options or config values
    │   └── SloFileError            an SLO file is unreadable or invalid (one line a mistake)
    ├── WaitTimeout                 wait_until() ran out of time (what, how long, last evidence)
    ├── NotReadyYet                 a probe answered, not yet what it waits for (wait_until retries)
    ├── PrometheusError             a Prometheus query or API call failed (endpoint, query, answer)
    ├── LintError                   the RLS lint could not run (connect, read the catalogs)
    ├── LoginFailed                 a test user could not sign in (status and body of the answer)
    ├── LoadRunError                the load generator failed or overran (command, log tail)
    ├── DockerUnavailable           no Docker engine answers (what was tried, the fix)
    ├── ImageBuildError             an image could not be built (component, build log tail)
    ├── FaultNotSupported           a supervisor cannot inject that fault here (why, where it can)
    └── StackError                  a component of the stack could not be brought up
        ├── ComponentNotInstalled   a binary is missing (names the Debian package to install)
        ├── ComponentStartError     a component started but did not become ready
        │                           (command, ports tried, log tail, a fix hint)
        └── PortInUse               a component lost the free-port-then-bind race
                                    (transient: callers retry on another port)

Every message carries its evidence: a reader of ``str(error)`` alone should
know what failed, where to look and what to try next.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class ConfigurationError(HarnessError):
    """A command-line flag, pytest option or configuration value is invalid."""


class SloFileError(ConfigurationError):
    """The SLO file is unreadable or invalid; ``problems`` has one line per mistake."""

    def __init__(self, path: object, problems: Sequence[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(
            f"{path}: invalid SLO file:\n" + "\n".join(f"  {p}" for p in self.problems)
        )


class NotReadyYet(HarnessError):
    """A readiness probe answered, but not yet what it waits for (transient:
    ``wait_until`` retries it and shows the last one as evidence)."""


class PrometheusError(HarnessError):
    """Prometheus refused a request, answered an error, or a query did not give
    what was expected; the message names the endpoint or query and the answer."""


class LintError(HarnessError):
    """The RLS lint could not run (cannot connect, cannot read the catalogs)."""


class WaitTimeout(HarnessError):
    """A readiness check did not pass before its deadline."""

    def __init__(
        self,
        what: str,
        timeout_s: float,
        *,
        attempts: int,
        last_result: object = None,
        last_error: BaseException | None = None,
    ) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.last_result = last_result
        self.last_error = last_error
        super().__init__(what)

    @property
    def evidence(self) -> str:
        if self.last_error is not None:
            return f"last error: {type(self.last_error).__name__}: {self.last_error}"
        return f"last result: {self.last_result!r}"

    def __str__(self) -> str:
        return (
            f"timed out after {self.timeout_s:.1f} s waiting for {self.what} "
            f"({self.attempts} attempts; {self.evidence})"
        )


class LoginFailed(HarnessError):
    """The harness could not sign a test user in; carries the service's answer."""

    def __init__(self, email: str, url: str, status: int, body: str) -> None:
        self.email = email
        self.url = url
        self.status = status
        self.body = body
        super().__init__(email)

    def __str__(self) -> str:
        return f"login as {self.email} at {self.url} answered {self.status}: {self.body[:500]}"


class StackError(HarnessError):
    """A component of the stack could not be brought up."""


class ComponentNotInstalled(StackError):
    """A binary a component needs is not installed."""

    def __init__(
        self,
        component: str,
        binary: str,
        *,
        package: str,
        searched: Sequence[str] = (),
        detail: str = "",
    ) -> None:
        self.component = component
        self.binary = binary
        self.package = package
        self.searched = tuple(searched)
        self.detail = detail
        super().__init__(component)

    def __str__(self) -> str:
        lines = [f"{self.component}: {self.binary} is not installed"]
        if self.detail:
            lines[0] += f" ({self.detail})"
        if self.searched:
            lines.append(f"  looked in: {', '.join(self.searched)}")
        lines.append(
            "  fix: DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"{self.package}   (or run `make test`, which installs it when root)"
        )
        return "\n".join(lines)


class ComponentStartError(StackError):
    """A component did not become ready; carries the evidence to fix it."""

    def __init__(
        self,
        component: str,
        reason: str,
        *,
        command: Sequence[str] = (),
        ports_tried: Sequence[int] = (),
        log_path: str | None = None,
        log_tail: str = "",
        hint: str = "",
    ) -> None:
        self.component = component
        self.reason = reason
        self.command = tuple(command)
        self.ports_tried = tuple(ports_tried)
        self.log_path = log_path
        self.log_tail = log_tail
        self.hint = hint
        super().__init__(component)

    def __str__(self) -> str:
        lines = [f"{self.component} failed to start: {self.reason}"]
        if self.command:
            lines.append(f"  command: {shlex.join(self.command)}")
        if self.ports_tried:
            lines.append(f"  ports tried: {', '.join(map(str, self.ports_tried))}")
        if self.log_path:
            lines.append(f"  log: {self.log_path}")
        if self.log_tail.strip():
            lines.append("  log tail:")
            lines.extend(f"    | {line}" for line in self.log_tail.rstrip().splitlines())
        else:
            lines.append("  log tail: (empty)")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class PortInUse(StackError):
    """A component could not bind its port: another process took it first."""

    def __init__(self, component: str, port: int, *, log_tail: str = "") -> None:
        self.component = component
        self.port = port
        self.log_tail = log_tail
        super().__init__(component)

    def __str__(self) -> str:
        return f"{self.component}: port {self.port} is already in use"


class LoadRunError(HarnessError):
    """The load generator exited with an error or ran past its time limit."""

    def __init__(self, reason: str, *, command: Sequence[str], log_tail: str = "") -> None:
        self.reason = reason
        self.command = tuple(command)
        self.log_tail = log_tail
        super().__init__(reason)

    def __str__(self) -> str:
        lines = [f"the load run failed: {self.reason}", f"  command: {shlex.join(self.command)}"]
        tail = self.log_tail.rstrip().splitlines() or ["(empty)"]
        lines.append("  log tail:")
        lines.extend(f"    | {line}" for line in tail)
        return "\n".join(lines)


class DockerUnavailable(HarnessError):
    """No Docker engine answers; says what was tried and how to get one."""

    def __init__(self, reason: str, *, hint: str = "") -> None:
        self.reason = reason
        self.hint = hint or (
            "as root, `make test` (scripts/bootstrap.sh) installs docker.io and starts dockerd; "
            "elsewhere start a Docker engine or set DOCKER_HOST"
        )
        super().__init__(reason)

    def __str__(self) -> str:
        return f"no Docker engine: {self.reason}\n  fix: {self.hint}"


class FaultNotSupported(HarnessError):
    """A supervisor cannot inject this fault on this provider or machine.

    Says which fault, on which component, why not (e.g. the kernel's own error
    text), and where it can be done instead.
    """

    def __init__(self, fault: str, component: str, *, reason: str, instead: str = "") -> None:
        self.fault = fault
        self.component = component
        self.reason = reason
        self.instead = instead
        super().__init__(fault)

    def __str__(self) -> str:
        text = f"cannot {self.fault} {self.component}: {self.reason}"
        return f"{text}\n  instead: {self.instead}" if self.instead else text


class ImageBuildError(HarnessError):
    """An image of the stack could not be built; carries the build's last lines."""

    def __init__(self, image: str, reason: str, *, log_tail: str = "", hint: str = "") -> None:
        self.image = image
        self.reason = reason
        self.log_tail = log_tail
        self.hint = hint
        super().__init__(image)

    def __str__(self) -> str:
        lines = [f"image {self.image} could not be built: {self.reason}"]
        if self.log_tail.strip():
            lines.append("  build log tail:")
            lines.extend(f"    | {line}" for line in self.log_tail.rstrip().splitlines())
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


__all__ = [
    "ComponentNotInstalled",
    "ComponentStartError",
    "ConfigurationError",
    "DockerUnavailable",
    "FaultNotSupported",
    "HarnessError",
    "ImageBuildError",
    "LintError",
    "LoadRunError",
    "LoginFailed",
    "NotReadyYet",
    "PortInUse",
    "PrometheusError",
    "SloFileError",
    "StackError",
    "WaitTimeout",
]
