"""The AtendeAI verification harness: bring a stack up, check it, report."""

from harness.stack import Credentials, PostgresEndpoints, Stack

__all__ = ["Credentials", "PostgresEndpoints", "Stack"]
