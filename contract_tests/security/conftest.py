"""Fixtures of the security suites (the ``--deep`` option and the example budget
come from ``harness.security.pytest_plugin``).

- ``scratch_cluster`` (session): a PostgreSQL cluster of its own with the
  platform's roles and schema, for defects that must not touch the shared
  stack (``harness.security.scratch``).
- ``scratch_db``: a fresh migrated database in it, one per test.
- ``broken_service``: start a deliberately broken variant of a service
  (``sec_broken_platform.py``) with the stack's configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness.exceptions import ConfigurationError
from harness.security.instances import ServiceInstance, extra_service
from harness.security.scratch import ScratchCluster, ScratchDatabase
from harness.stack import Stack

BROKEN_PLATFORM = Path(__file__).with_name("sec_broken_platform.py")


@pytest.fixture(scope="session")
def scratch_cluster() -> Iterator[ScratchCluster]:
    from harness.providers.local import default_cache_dir

    # A temporary directory of its own (LocalPostgres hands it to the postgres
    # OS user when we are root; pytest's tmp_path is not traversable by it).
    with ScratchCluster(template_cache_dir=default_cache_dir()) as cluster:
        yield cluster


@pytest.fixture
def scratch_db(scratch_cluster: ScratchCluster) -> ScratchDatabase:
    return scratch_cluster.database()


@pytest.fixture
def broken_service(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., ServiceInstance]]:
    """``broken_service(service, defect, **env) -> ServiceInstance`` (stopped after the test)."""
    with ExitStack() as running:

        def start(service: str, defect: str, **env: str) -> ServiceInstance:
            try:
                return running.enter_context(
                    extra_service(
                        stack,
                        service,
                        log_dir=tmp_path,
                        env=env,
                        script=BROKEN_PLATFORM,
                        script_args=("--defect", defect),
                    )
                )
            except ConfigurationError as error:
                pytest.skip(f"cannot start a broken {service} instance here: {error}")

        yield start
