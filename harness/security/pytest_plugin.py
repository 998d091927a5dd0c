"""pytest plugin of the security suites: the ``--deep`` option, example budgets
and a summary of how many examples and cases ran.

Registered by the root ``conftest.py``. ``make test`` runs the fast default;
``pytest --deep`` (or ``ATENDEAI_SECURITY_DEEP=1``) runs every property and
the fuzzer with ten times as many examples (selects the same tests; only the
budgets change).

Fixtures:

- ``security_budget``: a ``Budget``; ``budget.examples(default, deep)``.
- ``security_tally``: ``tally.add(name, count, detail="")`` records what ran;
  the lines are printed at the end of the session under "security: ...".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

DEEP_ENV = "ATENDEAI_SECURITY_DEEP"
_TALLY_KEY = pytest.StashKey["Tally"]()


@dataclass(frozen=True)
class Budget:
    """How hard the property tests and the fuzzer try."""

    deep: bool = False

    def examples(self, default: int, deep: int) -> int:
        return deep if self.deep else default

    @classmethod
    def resolve(cls, option: bool, env: Mapping[str, str] | None = None) -> Budget:
        env = os.environ if env is None else env
        from_env = env.get(DEEP_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        return cls(deep=bool(option) or from_env)


@dataclass
class Tally:
    lines: dict[str, tuple[int, str]] = field(default_factory=dict)

    def add(self, name: str, count: int, detail: str = "") -> None:
        previous, details = self.lines.get(name, (0, ""))
        joined = "; ".join(d for d in (details, detail) if d)
        self.lines[name] = (previous + count, joined)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("atendeai-security", "AtendeAI security suites")
    group.addoption(
        "--deep",
        action="store_true",
        default=False,
        help="run the isolation properties and the fuzzer with many more examples "
        f"(also: {DEEP_ENV}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "security: the security suites (contract_tests/security; DESIGN 7 and 8)"
    )
    config.stash[_TALLY_KEY] = Tally()


@pytest.fixture(scope="session")
def security_budget(pytestconfig: pytest.Config) -> Budget:
    return Budget.resolve(pytestconfig.getoption("--deep"))


@pytest.fixture(scope="session")
def security_tally(pytestconfig: pytest.Config) -> Tally:
    return pytestconfig.stash[_TALLY_KEY]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    tally = config.stash.get(_TALLY_KEY, None)
    if not tally or not tally.lines:
        return
    budget = Budget.resolve(config.getoption("--deep"))
    terminalreporter.section(f"security ({'deep' if budget.deep else 'default'} budget)")
    for name, (count, detail) in tally.lines.items():
        terminalreporter.write_line(f"security: {name}: {count}{' ' + detail if detail else ''}")


__all__ = ["DEEP_ENV", "Budget", "Tally"]
