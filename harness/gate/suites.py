"""Run the pytest suites against a running stack and read the JUnit XML back."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness.exceptions import HarnessError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SuiteOutcome:
    file: str  # e.g. contract_tests/test_auth_flow.py
    name: str
    status: str  # passed | failed | error | skipped
    message: str = ""


@dataclass(frozen=True)
class SuiteResults:
    junit_path: Path
    outcomes: tuple[SuiteOutcome, ...]
    exit_code: int

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("error") == 0 and bool(self.outcomes)


def _test_file(classname: str) -> str:
    """``contract_tests.test_a.TestX`` -> ``contract_tests/test_a.py``."""
    parts = classname.split(".")
    for n in range(len(parts), 0, -1):
        candidate = "/".join(parts[:n]) + ".py"
        if (REPO_ROOT / candidate).exists():
            return candidate
    return "/".join(parts) + ".py" if classname else ""


def read_junit(path: Path, exit_code: int = 0) -> SuiteResults:
    root = ET.parse(path).getroot()
    outcomes = []
    for case in root.iter("testcase"):
        file = _test_file(case.get("classname", ""))
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                status = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or "")[:500]
                break
        outcomes.append(SuiteOutcome(file, case.get("name", ""), status, message))
    return SuiteResults(Path(path), tuple(outcomes), exit_code)


def run_suites(
    stack_json: Path, junit_path: Path, *, extra_args: tuple[str, ...] = (), timeout_s: float
) -> SuiteResults:
    """``pytest --stack=external`` against the running stack; results from its JUnit XML."""
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--stack=external", f"--stack-json={stack_json}", f"--junitxml={junit_path}",
        *extra_args,
    ]  # fmt: skip
    log_path = junit_path.with_suffix(".log")
    with log_path.open("w") as log:
        try:
            completed = subprocess.run(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"the suites did not finish within {timeout_s:.0f} s (log: {log_path})"
            ) from None
    if not junit_path.exists():
        raise HarnessError(
            f"pytest exited with {completed.returncode} and wrote no JUnit XML (log: {log_path})"
        )
    return read_junit(junit_path, completed.returncode)
