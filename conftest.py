"""Registers the harness's pytest plugin (options, the stack and tenant fixtures)."""

pytest_plugins = ["harness.pytest_plugin"]
