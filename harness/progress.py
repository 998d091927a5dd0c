"""Progress lines of long-running steps: one type, one default printer.

Every step that takes more than a moment (a stack coming up, an image build, a
load run, the gate) takes a ``progress`` callback and calls it with one line at
a time; the CLI passes a printer, tests pass ``lines.append`` or ``silent``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[str], None]


def printer(prefix: str) -> Progress:
    """A ``Progress`` that writes ``<prefix>: <line>`` to stderr, flushed."""

    def emit(line: str) -> None:
        print(f"{prefix}: {line}", file=sys.stderr, flush=True)

    return emit


def silent(line: str) -> None:
    """A ``Progress`` that drops every line."""


__all__ = ["Progress", "printer", "silent"]
