"""The harness's own pure logic, checked without a stack (real short-lived processes only)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from harness import cli, private_files
from harness.childenv import child_environment
from harness.exceptions import (
    ComponentNotInstalled,
    ComponentStartError,
    ConfigurationError,
    HarnessError,
    LoginFailed,
    PortInUse,
    StackError,
    WaitTimeout,
)
from harness.keys import generate_jwt_keys
from harness.private_files import write_private
from harness.processes import (
    ManagedProcess,
    free_port,
    free_ports,
    retry_on_bind_failure,
    wait_until,
)
from harness.providers import StackRequest, external_stack, open_stack
from harness.providers.local import LocalStackConfig
from harness.providers.postgres import find_bin_dir
from harness.providers.prometheus import PrometheusSettings
from harness.providers.redis import find_redis_server
from harness.providers.rundir import print_progress
from harness.stack import Credentials, PostgresEndpoints, Stack
from harness.tenants import CLIENT_NETWORK, ClientAddresses


def make_stack() -> Stack:
    return Stack(
        provider="local",
        postgres=PostgresEndpoints(
            superuser_dsn="postgresql://postgres:pw@127.0.0.1:5555/atendeai",
            owner_dsn="postgresql://atendeai_owner:pw@127.0.0.1:5555/atendeai",
            app_dsn="postgresql://atendeai_app:pw@127.0.0.1:5555/atendeai",
            host="127.0.0.1",
            port=5555,
            database="atendeai",
        ),
        redis_url="redis://:secret@127.0.0.1:6666/0",
        services={"auth": "http://127.0.0.1:7001", "users": "http://127.0.0.1:7002"},
        platform_admin=Credentials("admin@atendeai.test", "s3cret-password"),
        allowed_origins=("http://localhost:8080",),
        extra={"run_dir": "/tmp/x"},
    )


# --------------------------------------------------------------------------- toolkit


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_creates_the_file_0600_from_the_first_byte(
    tmp_path: Path, umask, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[int] = []

    class WatchedOs:  # ``os`` as private_files sees it, noting each created file's mode
        def __getattr__(self, name: str):
            return getattr(os, name)

        def open(self, path, flags, mode=0o777):
            fd = os.open(path, flags, mode)
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return fd

    monkeypatch.setattr(private_files, "os", WatchedOs())
    umask(0)  # a umask that narrows nothing: the 0600 is the writer's own
    path = write_private(tmp_path / "secret.env", "PASSWORD=x\n")
    assert created == [0o600]  # as created, before a single byte was written
    assert _mode(path) == 0o600
    assert path.read_text() == "PASSWORD=x\n"


def test_write_private_keeps_the_mode_asked_for_whatever_the_umask(tmp_path: Path, umask) -> None:
    umask(0)
    assert _mode(write_private(tmp_path / "a", b"x")) == 0o600
    assert _mode(write_private(tmp_path / "b", b"x", mode=0o644)) == 0o644
    umask(0o077)  # a container user must still read a 0644 file
    assert _mode(write_private(tmp_path / "c", b"x", mode=0o644)) == 0o644


def test_write_private_replaces_a_world_readable_file_atomically(tmp_path: Path, umask) -> None:
    umask(0)
    path = tmp_path / "stack.json"
    path.write_text("old")
    path.chmod(0o644)
    before = path.stat().st_ino
    with path.open() as reader:  # opened before: still sees the whole old file
        write_private(path, "new")
        assert reader.read() == "old"
    assert path.stat().st_ino != before  # a new file renamed over it, not rewritten in place
    assert _mode(path) == 0o600
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temp file left


def test_write_private_leaves_no_temp_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "keep.txt"
    path.write_text("untouched")
    with pytest.raises(TypeError):
        write_private(path, 12345)  # type: ignore[arg-type]  # fails inside the write
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert path.read_text() == "untouched"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(OSError):
        write_private(directory, "x")  # fails at the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory", "keep.txt"]
    assert list(directory.iterdir()) == []


def test_child_environment_drops_prefixed_variables_and_adds_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "elsewhere")
    monkeypatch.setenv("ATENDEAI_LEFTOVER", "1")
    monkeypatch.setenv("KEEP_ME", "kept")
    monkeypatch.setenv("OVERRIDE_ME", "inherited")
    env = child_environment(
        drop_prefixes=("PG", "ATENDEAI_"),
        extra={"ATENDEAI_DATABASE_URL": "postgresql://x", "OVERRIDE_ME": "given"},
    )
    assert "PGHOST" not in env and "ATENDEAI_LEFTOVER" not in env
    assert not [
        name
        for name in env
        if name.startswith(("PG", "ATENDEAI_")) and name != "ATENDEAI_DATABASE_URL"
    ]
    assert env["KEEP_ME"] == "kept"
    assert env["ATENDEAI_DATABASE_URL"] == "postgresql://x"  # extra is added after the filter
    assert env["OVERRIDE_ME"] == "given"
    assert child_environment() == dict(os.environ)  # no prefixes: everything inherited
    assert os.environ["PGHOST"] == "elsewhere"  # our own environment is not touched


def test_the_default_progress_printer_writes_prefixed_lines_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_progress("postgres ready")
    assert capsys.readouterr() == ("", "atendeai: postgres ready\n")


def test_jwt_keys_modes(tmp_path: Path, umask) -> None:
    umask(0)
    private = generate_jwt_keys(tmp_path / "private")
    assert (_mode(private.private_key_path), _mode(private.public_key_path)) == (0o600, 0o644)
    umask(0o077)
    shared = generate_jwt_keys(tmp_path / "shared", private_key_mode=0o644)  # compose's
    assert (_mode(shared.private_key_path), _mode(shared.public_key_path)) == (0o644, 0o644)


# --------------------------------------------------------------------------- Stack


def test_stack_json_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    stack = make_stack()
    path = tmp_path / "stack.json"
    stack.write_json(path)
    assert Stack.read_json(path) == stack
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds passwords
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temp file left


def test_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: auth, users"):
        make_stack().service_url("billing")


def test_external_provider_reads_the_json_and_says_external(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    make_stack().write_json(path)
    with open_stack(StackRequest(provider="external", stack_json=path)) as running:
        stack = running.stack
        assert running.supervisor is None
        assert stack.provider == "external"
        assert stack.extra["source_provider"] == "local"
        assert stack.services == make_stack().services


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("{not json", "not valid JSON"), ('{"provider": "x"}', "missing")],
)
def test_external_provider_explains_a_bad_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "stack.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=message), external_stack(path):
        pass


def test_stack_requests_are_checked_where_they_enter(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="local, external, containers"):
        StackRequest(provider="kubernetes")
    with pytest.raises(ConfigurationError, match="needs a stack JSON file"):
        StackRequest(provider="external")
    with pytest.raises(ConfigurationError, match="only applies to the external provider"):
        StackRequest(provider="containers", stack_json=tmp_path / "stack.json")
    with pytest.raises(ConfigurationError, match="starts no Prometheus"):
        StackRequest(
            provider="external", stack_json=tmp_path / "stack.json", prometheus=PrometheusSettings()
        )


# --------------------------------------------------------------------------- exceptions


def test_exception_tree() -> None:
    for error in (ComponentStartError, ComponentNotInstalled, PortInUse):
        assert issubclass(error, StackError)
    for error in (StackError, ConfigurationError, WaitTimeout, LoginFailed):
        assert issubclass(error, HarnessError)
    assert issubclass(HarnessError, Exception)


def test_component_start_error_carries_all_its_evidence() -> None:
    error = ComponentStartError(
        "redis",
        "exited with code 1 before it was ready",
        command=["redis-server", "/tmp/x/redis.conf"],
        ports_tried=[41000, 41001],
        log_path="/tmp/x/redis.log",
        log_tail="line one\nFATAL: bad config",
        hint="check the config file",
    )
    text = str(error)
    for evidence in (
        "redis failed to start: exited with code 1",
        "command: redis-server /tmp/x/redis.conf",
        "ports tried: 41000, 41001",
        "log: /tmp/x/redis.log",
        "| FATAL: bad config",
        "hint: check the config file",
    ):
        assert evidence in text


def test_component_not_installed_names_the_package() -> None:
    text = str(ComponentNotInstalled("redis", "redis-server", package="redis-server"))
    assert "redis-server is not installed" in text
    assert "apt-get install -y redis-server" in text


def test_missing_binaries_point_at_their_debian_packages(tmp_path: Path) -> None:
    with pytest.raises(ComponentNotInstalled, match="apt-get install -y postgresql-15"):
        find_bin_dir(tmp_path)
    with pytest.raises(ComponentNotInstalled, match="apt-get install -y redis-server"):
        find_redis_server(tmp_path / "redis-server")


# --------------------------------------------------------------------------- waiting


def test_wait_until_returns_the_first_truthy_result() -> None:
    calls = iter([None, 0, "ready"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.001, what="x") == "ready"


def test_wait_until_times_out_naming_what_and_the_last_error() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("connection refused")

    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        wait_until(
            check, timeout=0.2, interval=0.02, what="the widget", retry_on=(ConnectionError,)
        )
    assert 0.2 <= time.monotonic() - started < 2
    text = str(caught.value)
    assert "waiting for the widget" in text
    assert "ConnectionRefusedError: connection refused" in text
    assert caught.value.attempts > 1


def test_wait_until_does_not_swallow_other_errors() -> None:
    def check() -> bool:
        raise ValueError("a bug, not a transient failure")

    with pytest.raises(ValueError, match="a bug"):
        wait_until(check, timeout=5, what="x", retry_on=(ConnectionError,))


# --------------------------------------------------------------------------- processes


def test_managed_process_failure_carries_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "boom.log"
    with ManagedProcess("boomer", ["sh", "-c", "echo boom; exit 3"], log_path=log) as process:
        wait_until(lambda: process.poll() is not None, timeout=5, what="exit")
        with pytest.raises(ComponentStartError) as caught:
            process.raise_if_exited(hint="read the log")
    text = str(caught.value)
    assert "boomer failed to start: exited with code 3" in text
    assert "| boom" in text
    assert "command: sh -c 'echo boom; exit 3'" in text
    assert process.returncode == 3


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    script = "for i in $(seq 1 100); do echo line $i; done"
    with ManagedProcess("counter", ["sh", "-c", script], log_path=tmp_path / "c.log") as process:
        wait_until(lambda: process.poll() is not None, timeout=5, what="exit")
    assert process.log_tail(3).splitlines() == ["line 98", "line 99", "line 100"]


def test_stop_terminates_then_kills_after_the_grace_period(tmp_path: Path) -> None:
    polite = ManagedProcess("sleeper", ["sleep", "30"], log_path=tmp_path / "s.log").start()
    assert polite.running
    assert polite.stop() == -signal.SIGTERM

    stubborn = ManagedProcess(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
        log_path=tmp_path / "t.log",
        grace_s=0.3,
    ).start()
    wait_until(lambda: "ready" in stubborn.log_tail(), timeout=5, what="the trap")
    started = time.monotonic()
    assert stubborn.stop() == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_a_missing_program_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(ComponentStartError, match="could not execute"):
        ManagedProcess("ghost", ["/nonexistent/binary"], log_path=tmp_path / "g.log").start()


def test_an_unknown_os_user_is_a_configuration_error(tmp_path: Path) -> None:
    process = ManagedProcess(
        "x", ["true"], log_path=tmp_path / "x.log", user="no-such-user-atendeai"
    )
    with pytest.raises(ConfigurationError, match="no OS user"):
        process.start()


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


BIND_SCRIPT = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("listening", flush=True)
time.sleep(30)
"""


def test_losing_the_port_race_is_retried_on_another_port(tmp_path: Path) -> None:
    """A real process that finds its port taken raises PortInUse; the helper retries."""
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        port = next(ports)
        process = ManagedProcess(
            "binder",
            [sys.executable, "-c", BIND_SCRIPT, str(port)],
            log_path=tmp_path / "binder.log",  # shared by both attempts, as in the providers
            port=port,
            grace_s=2,
        ).start()
        started.append(process)

        def ready() -> bool:
            process.raise_if_exited()
            return "listening" in process.log_tail()

        wait_until(ready, timeout=10, what="the binder to listen")
        return process

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port()])
        winner = retry_on_bind_failure(start, component="binder", attempts=3)
    try:
        assert winner.port != taken and winner.running
        assert len(started) == 2
        assert "Address already in use" in started[0].log_tail()
        assert "Address already in use" not in winner.log_tail()  # only its own output
    finally:
        winner.stop()


def test_a_port_race_lost_every_time_names_the_ports() -> None:
    def start() -> None:
        raise PortInUse("binder", 4242, log_tail="bind: Address already in use")

    with pytest.raises(ComponentStartError) as caught:
        retry_on_bind_failure(start, component="binder", attempts=2)
    assert caught.value.ports_tried == (4242, 4242)
    assert "Address already in use" in str(caught.value)


# --------------------------------------------------------------------------- config, keys, tenants


def test_local_config_validates_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError, match="startup_timeout_s"):
        LocalStackConfig(startup_timeout_s=0)
    with pytest.raises(ConfigurationError, match="not an email"):
        LocalStackConfig(platform_admin_email="nobody")
    one, two = LocalStackConfig(), LocalStackConfig()
    assert one.platform_admin_password != two.platform_admin_password
    assert one.platform_admin_password not in repr(one)
    assert LocalStackConfig(base_dir="/tmp").base_dir == Path("/tmp")  # type: ignore[arg-type]


def test_jwt_keys_sign_and_verify_and_the_private_one_is_private(tmp_path: Path) -> None:
    import jwt

    keys = generate_jwt_keys(tmp_path)
    assert stat.S_IMODE(keys.private_key_path.stat().st_mode) == 0o600
    token = jwt.encode({"sub": "x"}, keys.private_key_path.read_text(), algorithm="RS256")
    claims = jwt.decode(token, keys.public_key_path.read_text(), algorithms=["RS256"])
    assert claims == {"sub": "x"}


def test_client_addresses_are_unique_and_in_the_benchmark_range() -> None:
    addresses = ClientAddresses(seed=7)
    issued = [addresses.next() for _ in range(1000)]
    assert len(set(issued)) == 1000
    for address in issued:
        ip = ipaddress.ip_address(address)
        assert ip in CLIENT_NETWORK
        assert ip not in (CLIENT_NETWORK.network_address, CLIENT_NETWORK.broadcast_address)


def test_login_failed_shows_the_answer() -> None:
    text = str(LoginFailed("a@b.test", "http://x/auth/login", 429, '{"error": "slow down"}'))
    assert "429" in text and "slow down" in text and "a@b.test" in text


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--no-such-flag"],
        ["frobnicate"],
        [],
        ["up", "--startup-timeout", "-1"],
        ["up", "--startup-timeout", "soon"],
        ["up", "--service-env", "NO_EQUALS_SIGN"],
    ],
)
def test_cli_bad_usage_exits_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_cli_json_into_a_missing_directory_fails_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert cli.main(["up", "--json", str(tmp_path / "nope" / "stack.json")]) == 2
    assert time.monotonic() - started < 2  # nothing was started
    assert "does not exist" in capsys.readouterr().err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--help"]) == 0
    assert "--json" in capsys.readouterr().out


# --- the platform's verified-token cache (system_under_test.tokens.VerifiedTokens) ----------


def _signer():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from system_under_test.tokens import TokenSigner

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return TokenSigner("atendeai", "atendeai-api", public, private)


def _token(signer, ttl: int) -> str:
    import uuid

    token, _ = signer.issue_access_token(
        user_id=uuid.uuid4(), clinic_id=uuid.uuid4(), role="staff", family=uuid.uuid4(), ttl=ttl
    )
    return token


def test_a_verified_token_is_served_from_memory_only_while_it_is_valid() -> None:
    import time

    from system_under_test.tokens import InvalidToken, VerifiedTokens

    signer = _signer()
    verified = VerifiedTokens(signer)
    token = _token(signer, ttl=2)
    first = verified.principal(token)
    assert verified.principal(token) is first  # the second use is not verified again
    # a changed token is another key: verified afresh, and refused
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidToken):
        verified.principal(tampered)
    time.sleep(max(0.0, first.expires_at - time.time()) + 0.05)
    with pytest.raises(InvalidToken, match="expired"):
        verified.principal(token)  # past exp: dropped and refused as verify_access_token does


def test_the_verified_token_cache_is_bounded_and_keeps_nothing_without_an_expiry() -> None:
    import dataclasses

    from system_under_test.tokens import VerifiedTokens

    signer = _signer()
    verified = VerifiedTokens(signer, max_entries=3)
    tokens = [_token(signer, ttl=60) for _ in range(5)]
    for token in tokens:
        verified.principal(token)
    assert list(verified._entries) == tokens[2:]  # the oldest dropped first

    class Lax:  # a verifier that reports no expiry (as the security suite's defects)
        def verify_access_token(self, token):
            return dataclasses.replace(signer.verify_access_token(token), expires_at=0.0)

    lax = VerifiedTokens(Lax())  # type: ignore[arg-type]
    lax.principal(tokens[0])
    assert not lax._entries


def test_the_revoked_families_copy_drops_expired_entries_as_it_grows() -> None:
    """The per-process copy of signed-out families stays bounded: an entry
    past the access-token TTL is dropped when the next one is noted."""
    import time
    import uuid

    from system_under_test.revocations import RevocationWatch

    watch = RevocationWatch("redis://127.0.0.1:1", timeout_s=0.1, ttl_s=0.05)  # never connects
    watch.live = True
    first, second = uuid.uuid4(), uuid.uuid4()
    watch._note(first)
    assert watch.revoked(first) is True
    time.sleep(0.1)
    watch._note(second)
    assert list(watch._revoked) == [second]
    assert watch.revoked(first) is False and watch.revoked(second) is True
    watch.live = False
    assert watch.revoked(second) is None  # not live: the caller asks Redis


def test_another_repository_gets_the_fixtures_and_options_from_the_entry_point(tmp_path):
    """Installed, the package registers its pytest plugins (pytest11): a
    repository of its own, with no conftest.py, sees the options and fixtures."""
    import subprocess

    (tmp_path / "test_uses_the_plugin.py").write_text(
        "def test_options(request):\n"
        "    assert request.config.getoption('--stack') == 'local'\n"
        "    assert request.config.getoption('--deep') is False\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--fixtures",
         "test_uses_the_plugin.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    listed = {line.split(" ")[0] for line in run.stdout.splitlines() if " -- " in line}
    assert {"stack", "tenant_factory", "tenant"} <= listed, run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_uses_the_plugin.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
