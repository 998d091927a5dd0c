"""Registers the harness's pytest plugins: the stack and tenant fixtures, and the
security suites' options (``--deep``) and summary."""

pytest_plugins = ["harness.pytest_plugin", "harness.security.pytest_plugin"]
