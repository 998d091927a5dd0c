"""The environment a child process inherits: ours, minus what would steer it wrong.

A child started by the harness (a service, PostgreSQL's tools, an exporter, the
load generator) must not pick up a variable meant for another program, such as
a developer's ``PGHOST`` or an ``ATENDEAI_*`` left over in the shell. Every
child environment is made here, so the rule is written once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping


def child_environment(
    *, drop_prefixes: Iterable[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``os.environ`` without the variables whose name starts with one of
    ``drop_prefixes``, then ``extra`` on top."""
    prefixes = tuple(drop_prefixes)
    env = {k: v for k, v in os.environ.items() if not (prefixes and k.startswith(prefixes))}
    env.update(extra or {})
    return env


__all__ = ["child_environment"]
