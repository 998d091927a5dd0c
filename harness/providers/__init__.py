"""Providers: the ways to get a running stack, behind one typed contract.

- ``local``: every component as a child process on free loopback ports
  (PostgreSQL, Redis, two instances of each service, HAProxy, the PostgreSQL
  and Redis exporters, Prometheus); no Docker needed.
- ``containers``: the same stack as containers (testcontainers), from images
  the project builds itself (``harness.images``), ports published on 127.0.0.1.
- ``external``: an environment that is already running, described by a JSON
  file (``Stack.write_json``, e.g. from ``atendeai up --json FILE``).

The contract: a caller says what it wants in a ``StackRequest`` (resolved
once, frozen); ``open_stack(request)`` is a context manager yielding a
``RunningStack``: the ``Stack`` (where everything listens) and, for the
providers that started it, a ``Supervisor`` that can kill, freeze, resume and
restart components, cut one off from others or slow its network (where the
provider can: ``FaultNotSupported`` otherwise), undo every fault it caused,
and name every process it started. Nothing above this
module branches on provider names::

    with open_stack(StackRequest(provider="containers")) as running:
        running.stack.haproxy_url
        running.supervisor.kill("auth-1")
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.exceptions import ConfigurationError
from harness.progress import Progress
from harness.providers.prometheus import PrometheusSettings
from harness.stack import Stack

PROVIDERS = ("local", "external", "containers")


class Supervisor(Protocol):
    """The hold a provider keeps on the components it started.

    Components are named ``postgres``, ``redis``, ``haproxy``, ``prometheus``
    and ``<service>-<n>`` (``auth-1``...); ``components`` lists those this
    supervisor can break and bring back.
    """

    @property
    def components(self) -> tuple[str, ...]: ...

    def kill(self, component: str) -> int | None:
        """``kill -9`` the component's main process; the pid killed (``None``: not running)."""
        ...

    def pause(self, component: str) -> None:
        """Freeze the component (SIGSTOP, ``docker pause``)."""
        ...

    def resume(self, component: str) -> None:
        """Thaw a frozen component."""
        ...

    def restart(self, component: str, *, timeout_s: float | None = None) -> None:
        """Bring a killed component back (same ports, same data) and wait until it is ready."""
        ...

    def evidence(self, component: str, *, lines: int = 15) -> str:
        """Where the component is, whether it runs, and its log's last lines."""
        ...

    def pids(self) -> list[int]:
        """Host pids of every process the provider started (for the memory figures)."""
        ...

    def pid(self, component: str) -> int | None:
        """Host pid of the component's main process (``None`` when it is down)."""
        ...

    def isolate(self, component: str, *, from_: Sequence[str]) -> None:
        """Cut the component off from the components ``from_`` (``isolate("auth-1",
        from_=("postgres", "redis"))``) while everything else still reaches it and
        it reaches everything else; ``FaultNotSupported`` where the provider cannot
        (the local provider: one network namespace for every process)."""
        ...

    def rejoin(self, component: str) -> None:
        """Undo ``isolate``."""
        ...

    def delay(self, component: str, *, ms: int) -> None:
        """Add ``ms`` of latency to what the component sends (netem);
        ``FaultNotSupported`` where it cannot be done, with the reason."""
        ...

    def undelay(self, component: str) -> None:
        """Undo ``delay``."""
        ...

    def scrape_every(self, seconds: float) -> None:
        """Make the stack's Prometheus scrape every target every ``seconds`` from
        now on (its configuration rewritten, so a restart keeps it, and reloaded);
        return once it runs so."""
        ...

    @property
    def faults(self) -> dict[str, str]:
        """What this supervisor broke and has not undone: ``{component: what}``."""
        ...

    def undo_faults(self, *, restart_killed: bool = True) -> list[str]:
        """Thaw, reconnect, undelay and (``restart_killed``) restart everything this
        supervisor broke; one line per thing undone. The provider calls it (without
        restarts) before it stops the stack, so an interrupted drill leaves nothing
        frozen or cut off."""
        ...


@dataclass(frozen=True)
class RunningStack:
    """A stack that is up, and the supervisor of what the provider started (or ``None``)."""

    stack: Stack
    supervisor: Supervisor | None = None


@dataclass(frozen=True)
class StackRequest:
    """What a caller asks of a provider.

    - ``provider``: ``local``, ``containers`` or ``external``.
    - ``stack_json``: the running environment, for ``external`` only.
    - ``service_env``: extra environment for every service; the external provider
      starts nothing, so it has none to give (say so with ``()``).
    - ``keep_dir``: keep the run directory (logs, configs) after teardown.
    - ``base_dir``: where the run directory is made (``None``: the system temp dir).
    - ``startup_timeout_s``: how long each component may take to become ready
      (``None``: the provider's default, 30 s local, 90 s containers).
    - ``prometheus``: Prometheus's intervals and rules (``None``: the provider's
      default, everything every second so tests see data fast).
    """

    provider: str = "local"
    stack_json: Path | None = None
    service_env: tuple[tuple[str, str], ...] = ()
    keep_dir: bool = False
    base_dir: Path | None = None
    startup_timeout_s: float | None = None
    prometheus: PrometheusSettings | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigurationError(
                f"unknown stack provider {self.provider!r} (choose one of: {', '.join(PROVIDERS)})"
            )
        if self.provider == "external" and self.stack_json is None:
            raise ConfigurationError(
                "the external provider needs a stack JSON file (--stack-json FILE)"
            )
        if self.provider != "external" and self.stack_json is not None:
            raise ConfigurationError(
                f"a stack JSON file only applies to the external provider (not {self.provider})"
            )
        if self.provider == "external" and self.service_env:
            raise ConfigurationError("the external provider starts no service: no service_env")
        if self.provider == "external" and self.prometheus is not None:
            raise ConfigurationError(
                "the external provider starts no Prometheus: no Prometheus settings"
            )
        if self.startup_timeout_s is not None and self.startup_timeout_s <= 0:
            raise ConfigurationError(
                f"startup_timeout_s must be positive, not {self.startup_timeout_s}"
            )
        for name in ("stack_json", "base_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "service_env", tuple(tuple(p) for p in self.service_env))


@contextmanager
def open_stack(
    request: StackRequest, *, progress: Progress | None = None
) -> Iterator[RunningStack]:
    """Bring up (or read) the stack ``request`` names; tear down what was started on exit."""
    if request.provider == "external":
        assert request.stack_json is not None
        with external_stack(request.stack_json) as stack:
            yield RunningStack(stack)
        return
    options: dict[str, Any] = {
        "service_env": request.service_env,
        "keep_dir": request.keep_dir,
        "base_dir": request.base_dir,
    }
    if request.startup_timeout_s is not None:
        options["startup_timeout_s"] = request.startup_timeout_s
    if request.prometheus is not None:
        options["prometheus"] = request.prometheus
    if request.provider == "local":
        from harness.providers.local import LocalStackConfig, supervised_local_stack

        with supervised_local_stack(LocalStackConfig(**options), progress=progress) as control:
            yield RunningStack(control.stack, control)
        return
    from harness.providers.containers import ContainersStackConfig, containers_stack

    with containers_stack(ContainersStackConfig(**options), progress=progress) as running:
        yield running


@contextmanager
def external_stack(stack_json: Path | str, **_: Any) -> Iterator[Stack]:
    """An already running environment, read from the JSON file ``stack_json``.

    Nothing is started or stopped. The ``Stack`` says ``provider="external"``
    (what wrote the file is kept in ``extra["source_provider"]``), so suites
    know they must not kill or restart its components.
    """
    path = Path(stack_json)
    try:
        stack = Stack.read_json(path)
    except FileNotFoundError:
        raise ConfigurationError(
            f"external stack: {path} does not exist (write one with `atendeai up --json {path}`)"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"external stack: {path} is not valid JSON ({error})") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise ConfigurationError(
            f"external stack: {path} does not describe a stack (missing or bad field: {error})"
        ) from None
    extra = {**stack.extra, "source_provider": stack.provider, "stack_json": str(path)}
    yield dataclasses.replace(stack, provider="external", extra=extra)


__all__ = [
    "PROVIDERS",
    "Progress",
    "RunningStack",
    "StackRequest",
    "Supervisor",
    "external_stack",
    "open_stack",
]
