"""The Docker engine that the containers provider, the image builder and the
deployment suite talk to (through the ``docker`` SDK that testcontainers uses).

``docker_client()`` returns a client whose engine answered a ping, or raises
``DockerUnavailable`` saying where it looked and how to get an engine.
``engine_problem()`` is the same question as a reason string (``None``: an
engine answers), for skip and failure messages.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from harness.exceptions import DockerUnavailable

if TYPE_CHECKING:
    import docker

#: testcontainers' reaper ("Ryuk") is pulled from a registry, which these
#: machines do not reach: the harness removes what it started itself.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def docker_client() -> docker.DockerClient:
    """A client for the engine at ``DOCKER_HOST`` (default: /var/run/docker.sock)."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as error:
        raise DockerUnavailable(f"{where} does not answer ({error})") from None
    return client


def engine_problem() -> str | None:
    """Why no engine can be used here, or ``None`` when one answers."""
    try:
        docker_client().close()
    except DockerUnavailable as error:
        return str(error)
    return None


__all__ = ["docker_client", "engine_problem"]
