"""argparse ``type=`` converters shared by the ``atendeai`` subcommands."""

from __future__ import annotations

import argparse


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def env_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (the value may be empty or hold ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value
