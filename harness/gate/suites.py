"""Run the pytest suites against a running stack and read the JUnit XML back."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness.exceptions import HarnessError
from harness.progress import Progress, silent

REPO_ROOT = Path(__file__).resolve().parents[2]
#: How often a long suite run says how far it is.
PROGRESS_EVERY_S = 60.0
#: pytest -q's progress lines: one character per test, then ``[ 42%]``.
#: (The line being written has no percentage yet.)
_PROGRESS_LINE = re.compile(r"^([.FEsxX]+)(?:\s*\[\s*(\d+)%\])?\s*$", re.MULTILINE)


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


def suite_progress(log_text: str) -> str:
    """How far a ``pytest -q`` run is, from its log, e.g.
    ``288 tests run, 1 failed or errors, 43 % of the suites``."""
    lines = _PROGRESS_LINE.findall(log_text)
    if not lines:
        return "starting"
    marks = "".join(chars for chars, _ in lines)
    failed = sum(marks.count(c) for c in "FE")
    percents = [percent for _, percent in lines if percent]
    done = f", {percents[-1]} % of the suites" if percents else ""
    return f"{len(marks)} tests run, {failed} failed or errors{done}"


def run_suites(
    stack_json: Path,
    junit_path: Path,
    *,
    extra_args: tuple[str, ...] = (),
    timeout_s: float,
    progress: Progress = silent,
) -> SuiteResults:
    """``pytest --stack=external`` against the running stack; results from its JUnit XML.
    Says how far it is every ``PROGRESS_EVERY_S``."""
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        # the contract suites, not the harness's own tests (tests/), unless
        # extra_args name paths of their own
        "-o", "testpaths=contract_tests",
        "--stack=external", f"--stack-json={stack_json}", f"--junitxml={junit_path}",
        *extra_args,
    ]  # fmt: skip
    log_path = junit_path.with_suffix(".log")
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                left = timeout_s - (time.monotonic() - started)
                try:
                    process.wait(timeout=max(0.0, min(PROGRESS_EVERY_S, left)))
                    break
                except subprocess.TimeoutExpired:
                    if left <= PROGRESS_EVERY_S:
                        raise HarnessError(
                            f"the suites did not finish within {timeout_s:.0f} s (log: {log_path})"
                        ) from None
                    done = suite_progress(log_path.read_text(errors="replace"))
                    took = time.monotonic() - started
                    progress(f"suites: after {took / 60:.0f} min, {done} (log: {log_path})")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if not junit_path.exists():
        raise HarnessError(
            f"pytest exited with {process.returncode} and wrote no JUnit XML (log: {log_path})"
        )
    return read_junit(junit_path, process.returncode)
