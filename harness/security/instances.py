"""Extra service processes with the stack's configuration.

``extra_service(stack, "auth")`` starts one more instance of a service next to
the stack's: the same database (as the service role), the same Redis, the
same JWT keys, issuer, audience and CORS allow list, as ``harness.providers.local``
gives its own services; ``env`` overrides or adds ``ATENDEAI_*`` settings (a
tighter rate limit, say). With ``script`` it runs another entry point instead of
``python -m system_under_test``: the security suites start deliberately broken
variants that way, to prove a check turns red when its defect is present.

Only a stack whose keys are files on this machine (the local provider) can
lend its configuration; anything else raises ``ConfigurationError``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.childenv import child_environment
from harness.exceptions import ConfigurationError, PortInUse
from harness.processes import LOOPBACK, ManagedProcess, free_port, retry_on_bind_failure
from harness.providers.services import wait_ready
from harness.stack import Stack


@dataclass(frozen=True)
class ServiceInstance:
    name: str
    url: str
    process: ManagedProcess

    @property
    def log_path(self) -> Path:
        return self.process.log_path


def service_env(stack: Stack, service: str, overrides: Mapping[str, str] = ()) -> dict[str, str]:
    """The environment the local provider gives ``service``, plus ``overrides``."""
    public_key = stack.extra.get("jwt_public_key_file", "")
    private_key = stack.extra.get("jwt_private_key_file", "")
    if not public_key or not Path(public_key).is_file():
        raise ConfigurationError(
            f"the {stack.provider} stack names no readable JWT public key file "
            "(stack.extra['jwt_public_key_file']); extra service instances need the local stack"
        )
    env = child_environment(
        drop_prefixes=("ATENDEAI_",),
        extra={
            "PYTHONUNBUFFERED": "1",
            "ATENDEAI_DATABASE_URL": stack.postgres.app_dsn,
            "ATENDEAI_REDIS_URL": stack.redis_url,
            "ATENDEAI_JWT_PUBLIC_KEY_FILE": public_key,
            "ATENDEAI_JWT_ISSUER": stack.jwt_issuer,
            "ATENDEAI_JWT_AUDIENCE": stack.jwt_audience,
            "ATENDEAI_CORS_ORIGINS": ",".join(stack.allowed_origins),
        },
    )
    if service == "auth":
        if not private_key or not Path(private_key).is_file():
            raise ConfigurationError(
                "an extra auth instance needs the stack's private JWT key "
                "(stack.extra['jwt_private_key_file'])"
            )
        env["ATENDEAI_JWT_PRIVATE_KEY_FILE"] = private_key
    if service == "health":
        env["ATENDEAI_SERVICE_URLS"] = ",".join(
            f"{name}={url}" for name, url in stack.services.items() if name != "health"
        )
    env.update(dict(overrides))
    return env


@contextmanager
def extra_service(
    stack: Stack,
    service: str,
    *,
    log_dir: Path,
    env: Mapping[str, str] = (),
    script: Path | None = None,
    script_args: Sequence[str] = (),
    label: str | None = None,
    timeout_s: float = 30.0,
) -> Iterator[ServiceInstance]:
    """Start one more instance of ``service``; yield it once ``/ready`` answers 200."""
    environment = service_env(stack, service, env)
    name = label or (f"{service}-{script.stem}" if script else f"{service}-extra")

    def start() -> tuple[ManagedProcess, str]:
        port = free_port()
        if script is None:
            command = [sys.executable, "-m", "system_under_test", service]
        else:
            command = [sys.executable, str(script), *script_args, service]
        command += ["--port", str(port), "--host", LOOPBACK]
        process = ManagedProcess(
            name,
            command,
            log_path=Path(log_dir) / f"{name}-{port}.log",
            env=environment,
            port=port,
            grace_s=5.0,
        )
        process.start()
        url = f"http://{LOOPBACK}:{port}"
        try:
            wait_ready(process, url, deadline=time.monotonic() + timeout_s)
        except BaseException as error:
            process.stop(grace_s=2.0)
            if process.bind_failed():
                raise PortInUse(name, port, log_tail=process.log_tail()) from error
            raise
        return process, url

    process, url = retry_on_bind_failure(start, component=name)
    try:
        yield ServiceInstance(name=name, url=url, process=process)
    finally:
        process.stop()


__all__ = ["ServiceInstance", "extra_service", "service_env"]
