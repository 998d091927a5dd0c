"""The pytest plugin: options, the ``stack`` fixture and what tests build on it.

Registered as a ``pytest11`` entry point (pyproject.toml), so any repository
that installs the package gets these fixtures and options; in a checkout
without install, the root ``conftest.py``'s ``pytest_plugins`` loads it.

Options: ``--stack=local|containers|external`` (default ``local``: the stack is
started once per session as child processes; ``containers``: as Docker
containers; ``external``: the running environment of ``--stack-json FILE``,
e.g. written by ``atendeai up --json``).

Fixtures:

- ``running_stack`` (session): the provider's ``RunningStack``.
- ``stack`` (session): the ``Stack``.
- ``supervisor`` (session): what can kill, freeze and restart components
  (skips the test on a provider that has none, e.g. ``external``).
- ``docker_engine`` (session): a Docker client; the test skips when no engine
  answers, except under ``CI=true``, where that is a failure.
- ``superuser_db`` / ``owner_db`` / ``app_db``: psycopg 3 connections as the
  superuser, the owner and the service role; autocommit off (psycopg's
  default): commit yourself; what is left uncommitted is rolled back when the
  connection is closed after the test. ``lock_timeout`` is 30 s, so a lock
  that is never released fails the test instead of hanging the run.
- ``api``: an ``ApiSession`` (``api.client(service, token=..., client_ip=...)``,
  ``api.login(account, client_ip=...)``); its clients are closed after the test.
- ``client_ip``: a client address of the test's own (``X-Forwarded-For``).
- ``tenant_factory(name=None, roles=...)`` and ``tenant``: fresh clinics with one
  user per role (``harness.tenants``).
- ``platform_admin_session`` (session): the platform admin's tokens, signed in
  once per session (``AccountSession``); ``platform_admin_client(service)``: a
  client signed in with them.

Tests that use ``stack`` (directly or through another fixture) get the
``stack`` marker, so ``-m "not stack"`` runs only what needs no stack.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from harness.exceptions import ConfigurationError, DockerUnavailable
from harness.progress import Progress
from harness.providers import PROVIDERS, RunningStack, StackRequest, Supervisor, open_stack
from harness.stack import Stack
from harness.tenants import (
    ROLES,
    AccountSession,
    ApiSession,
    ClientAddresses,
    Tenant,
    create_tenant,
    hash_password,
)

if TYPE_CHECKING:
    import httpx
    import psycopg

FIXTURE_LOCK_TIMEOUT = "30s"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("atendeai", "AtendeAI stack")
    group.addoption(
        "--stack",
        choices=PROVIDERS,
        default="local",
        help="where the stack comes from: local (child processes, default), "
        "containers (Docker containers from the project's images), external (--stack-json)",
    )
    group.addoption(
        "--stack-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="the running stack for --stack=external (from `atendeai up --json FILE`)",
    )
    group.addoption(
        "--keep-stack-dir",
        action="store_true",
        default=False,
        help="keep the local stack's run directory (logs, data) after the session",
    )


STACK_REQUEST = pytest.StashKey[StackRequest]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a Docker engine (skips without one, fails under CI=true)"
    )
    config.addinivalue_line(
        "markers", "deployment: brings compose/docker-compose.yml up for real and verifies it"
    )
    try:
        request = StackRequest(
            provider=config.getoption("--stack"),
            stack_json=config.getoption("--stack-json"),
            keep_dir=config.getoption("--keep-stack-dir"),
        )
    except ConfigurationError as error:
        raise pytest.UsageError(str(error)) from None
    if request.provider == "containers":
        from harness.docker_engine import engine_problem

        problem = engine_problem()
        if problem is not None:
            raise pytest.UsageError(f"--stack=containers: {problem}")
    config.stash[STACK_REQUEST] = request


def pytest_sessionstart(session: pytest.Session) -> None:
    """SIGTERM (a cancelled CI job) stops the run like Ctrl-C: the stack is torn down."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def running_stack(request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    """The stack under test and its supervisor, brought up once per session."""
    stack_request = request.config.stash[STACK_REQUEST]
    with open_stack(stack_request, progress=_progress_writer(request.config)) as running:
        yield running


@pytest.fixture(scope="session")
def stack(running_stack: RunningStack) -> Stack:
    """The stack under test (or the one read from --stack-json)."""
    return running_stack.stack


@pytest.fixture(scope="session")
def supervisor(running_stack: RunningStack) -> Supervisor:
    """What can kill, freeze and restart the stack's components."""
    if running_stack.supervisor is None:
        pytest.skip(
            f"the {running_stack.stack.provider} provider started nothing: "
            "no component can be killed or restarted here"
        )
    return running_stack.supervisor


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client of the Docker engine; a skip without one, a failure under CI=true.

    The suites that use it start containers of their own (the containers
    provider, the compose deployment): against an external stack (staging,
    or the gate's own stack) they are not run.
    """
    import os

    from harness.docker_engine import docker_client

    if request.config.stash[STACK_REQUEST].provider == "external":
        pytest.skip("starts containers of its own: not run against --stack=external")
    try:
        client = docker_client()
    except DockerUnavailable as error:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {error}", pytrace=False)
        pytest.skip(str(error))
    yield client
    client.close()


def _progress_writer(config: pytest.Config) -> Progress:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            return
        if capture is None:
            _write_line(reporter, f"atendeai: {line}")
            return
        with capture.global_and_fixture_disabled():  # live, not in a test's captured output
            _write_line(reporter, f"atendeai: {line}")

    return write


def _write_line(reporter: Any, line: str) -> None:
    """A line of its own, even after a row of progress dots."""
    writer = getattr(reporter, "_tw", None)
    if getattr(writer, "width_of_current_line", 0):
        reporter.write("\n")
    reporter.write_line(line)


def _connect(dsn: str, what: str) -> Iterator[psycopg.Connection[Any]]:
    import psycopg

    if not dsn:
        pytest.skip(f"this stack gives no {what} DSN")
    # A test that leaves a transaction open must not hang a later teardown
    # forever: waiting for a lock longer than this is an error with a message.
    conn = psycopg.connect(dsn, options=f"-c lock_timeout={FIXTURE_LOCK_TIMEOUT}")
    try:
        yield conn
    finally:
        conn.close()  # an open transaction is rolled back, never committed


@pytest.fixture
def superuser_db(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the database: sees every row (RLS does not apply)."""
    yield from _connect(stack.postgres.superuser_dsn, "superuser")


@pytest.fixture
def owner_db(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the owner role (subject to FORCE ROW LEVEL SECURITY)."""
    yield from _connect(stack.postgres.owner_dsn, "owner")


@pytest.fixture
def app_db(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the service role the platform uses (RLS applies)."""
    yield from _connect(stack.postgres.app_dsn, "service role")


@pytest.fixture(scope="session")
def client_addresses() -> ClientAddresses:
    return ClientAddresses()


@pytest.fixture
def client_ip(client_addresses: ClientAddresses) -> str:
    """A client address no other test uses (send it as X-Forwarded-For)."""
    return client_addresses.next()


@pytest.fixture
def api(stack: Stack, client_addresses: ClientAddresses) -> Iterator[ApiSession]:
    session = ApiSession(stack, client_addresses)
    yield session
    session.close()


@pytest.fixture(scope="session")
def tenant_password_hash() -> str:
    """The bcrypt hash (cost 10) of ``harness.tenants.TEST_PASSWORD``, made once."""
    return hash_password()


@pytest.fixture
def tenant_factory(
    stack: Stack, api: ApiSession, tenant_password_hash: str
) -> Callable[..., Tenant]:
    """``tenant_factory(name=None, roles=("admin", "manager", "staff")) -> Tenant``."""

    def make(*, name: str | None = None, roles: tuple[str, ...] = ROLES) -> Tenant:
        return create_tenant(
            stack.postgres.owner_dsn,
            api=api,
            password_hash=tenant_password_hash,
            name=name,
            roles=roles,
        )

    return make


@pytest.fixture
def tenant(tenant_factory: Callable[..., Tenant]) -> Tenant:
    """A fresh clinic with an admin, a manager and a staff user."""
    return tenant_factory()


@pytest.fixture(scope="session")
def platform_admin_session(stack: Stack, client_addresses: ClientAddresses) -> AccountSession:
    """The platform admin's tokens, signed in once for the whole test session.

    Its login budget (a few sign-ins a minute per account) is shared by every
    test: signing in per test would make tests depend on their order.
    """
    return AccountSession(stack, stack.platform_admin, client_ip=client_addresses.next())


@pytest.fixture
def platform_admin_client(
    api: ApiSession, platform_admin_session: AccountSession
) -> Callable[[str], httpx.Client]:
    """``platform_admin_client(service) -> httpx.Client`` signed in as the platform admin."""

    def make(service: str) -> httpx.Client:
        return api.client(
            service,
            client_ip=platform_admin_session.client_ip,
            token=platform_admin_session.access_token(),
        )

    return make
