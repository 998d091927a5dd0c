"""Providers: the ways to get a running stack; each yields the same ``Stack``.

- ``local``: every component as a child process on free loopback ports
  (PostgreSQL, Redis, two instances of each service, HAProxy, the PostgreSQL
  and Redis exporters, Prometheus); no Docker needed.
- ``external``: an environment that is already running, described by a JSON
  file (``Stack.write_json``, e.g. from ``atendeai up --json FILE``).
- ``containers``: the same stack through testcontainers; needs a Docker
  engine and is not available in this version.

``get_provider(name)`` returns a function that makes a context manager::

    with get_provider("local")(LocalStackConfig()) as stack: ...
    with get_provider("external")(Path("stack.json")) as stack: ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from harness.exceptions import ConfigurationError
from harness.stack import Stack

PROVIDERS = ("local", "external", "containers")

#: ``provider(options...) -> context manager yielding a Stack``
Provider = Callable[..., AbstractContextManager[Stack]]


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


def get_provider(name: str) -> Provider:
    """The provider called ``name``; ``ConfigurationError`` for unknown or unavailable ones."""
    if name == "local":
        from harness.providers.local import local_stack

        return local_stack
    if name == "external":
        return external_stack
    if name == "containers":
        raise ConfigurationError(
            "the containers provider needs a Docker engine; it is not available in this "
            "version (use --stack=local, or --stack=external with a JSON file)"
        )
    raise ConfigurationError(
        f"unknown stack provider {name!r} (choose one of: {', '.join(PROVIDERS)})"
    )


__all__ = ["PROVIDERS", "Provider", "external_stack", "get_provider"]
