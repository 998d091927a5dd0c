"""The release gate end to end: a real stack, a real (short) load, SLOs read
back from Prometheus, the four reports and the exit codes; and proof that it
says no on exactly the objectives that broke, and warns without failing.

Each run starts its own local stack (not the session's), so these tests need
no ``stack`` fixture; they cost about half a minute each.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from harness.gate.runner import EXIT_BROKEN, EXIT_GO, EXIT_NO_GO, GateConfig, GateRun

REPO = Path(__file__).resolve().parents[2]

# Route-level objectives whose outcome the tests can force with fault injection.
SLOW_FAILING_CLINIC_ME = "GET /clinics/me delay=400ms; GET /clinics/me error=500"


def _buckets(route: str) -> str:
    metric = "http_server_request_duration_seconds_bucket"
    return f'sum by (le) (rate({metric}{{route="{route}"}}[$window]))'


# A one-minute smoke run of a few users makes only 20-70 requests per route: the
# percentile objectives ask for 5 samples (the default for a p95 is 20), since
# these tests prove the gate's go and no-go paths, not the evidence rules
# (test_slo_units and test_gate_units do, against a real Prometheus).
SLO_TEMPLATE = """\
version: 1
objectives:
  - name: p95_clinic_me
    query: >-
      histogram_quantile(0.95,
      BUCKETS_CLINIC)
    comparator: "<"
    threshold: {clinic_threshold}
    min_samples: 5
  - name: p95_auth_me
    query: >-
      histogram_quantile(0.95,
      BUCKETS_AUTH)
    comparator: "<"
    threshold: 0.25
    min_samples: 5
  - name: error_ratio
    query: >-
      (sum(increase(http_server_request_duration_seconds_count{{status=~"5.."}}[$window]))
      or vector(0))
      / sum(increase(http_server_request_duration_seconds_count[$window]))
    unit: ratio
    comparator: "<"
    threshold: 0.05
  - name: profile_users_reached
    source: locust
    query: users_target_ratio
    unit: ratio
    comparator: ">="
    threshold: 1.0
    warning: {users_warning}
"""


def _slo(tmp_path: Path, *, clinic_threshold: float = 0.25, users_warning: float = 1.0) -> Path:
    path = tmp_path / "slo.yaml"
    text = SLO_TEMPLATE.format(clinic_threshold=clinic_threshold, users_warning=users_warning)
    text = text.replace("BUCKETS_CLINIC", _buckets("/clinics/me"))
    path.write_text(text.replace("BUCKETS_AUTH", _buckets("/auth/me")))
    return path


def _gate(tmp_path: Path, slo: Path, **config) -> tuple[int, dict, Path]:
    """A smoke gate; Prometheus scrapes every second throughout unless ``config``
    says otherwise (the deployment's 15 s over the load costs half a minute more)."""
    reports = tmp_path / "reports"
    config = {"load_scrape_interval_s": 1.0, **config}
    run = GateRun(
        GateConfig(
            profile="smoke",
            profile_scale=0.75,
            slo_file=slo,
            reports_dir=reports,
            baseline="none",
            **config,
        ),
        progress=lambda line: print(f"gate: {line}", file=sys.stderr),
    )
    code = run.run()
    report = json.loads((run.out_dir / "report.json").read_text())
    return code, report, run.out_dir


def _statuses(report: dict) -> dict[str, str]:
    return {item["objective"]["name"]: item["status"] for item in report["objectives"]}


def test_smoke_gate_says_go_writes_every_report_and_warns_without_failing(tmp_path):
    # users_target_ratio is 1.0 at best: a warning band starting at 1.0 is always breached
    code, report, out = _gate(
        tmp_path,
        _slo(tmp_path, users_warning=1.0),
        suite_args=("contract_tests/test_health_and_metrics.py",),
        drill_plan="short",
        drill_hold_s=3.0,
        load_scrape_interval_s=None,  # as the gate runs: the deployment's over the load
    )
    statuses = _statuses(report)
    assert statuses == {
        "p95_clinic_me": "pass",
        "p95_auth_me": "pass",
        "error_ratio": "pass",
        "profile_users_reached": "warn",
    }, report["notes"]
    assert code == EXIT_GO and report["verdict"] == "go"
    assert {p.name for p in out.iterdir()} >= {
        "report.html", "report.json", "junit.xml", "summary.md", "suites-junit.xml", "load",
    }  # fmt: skip
    html = (out / "report.html").read_text()
    assert "GO (1 warning)" in html and "<svg" in html and "/clinics/me" in html
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.find("testsuite[@name='slo']").get("failures") == "0"
    assert report["suites"]["outcomes"] and all(
        o["status"] == "passed" for o in report["suites"]["outcomes"]
    )
    assert report["client"]["aggregated"]["requests"] > 50
    assert (
        report["memory_mb"]["idle"] and report["memory_mb"]["peak"] >= report["memory_mb"]["idle"]
    )
    assert report["targets"][0] == report["targets"][1] > 0  # every Prometheus target up
    # over the load, scraped and the rules evaluated as often as the deployment does
    # (the suites before and the drill after it, scraped every second, passed)
    assert report["prometheus_intervals_s"] == [15.0, 15.0]
    # the resilience drill ran under its own load, after the SLO window, and is reported
    drill = report["recovery"]
    assert drill["status"] == "PASS", drill["reason"]
    assert drill["faults"][0]["name"] == "kill -9 users-1"
    assert all(f["client"]["requests"] > 0 for f in drill["faults"])
    assert drill["ledger"]["acknowledged"] > 0 and drill["ledger"]["lost"] == 0
    assert junit.find("testsuite[@name='resilience']").get("failures") == "0"
    assert "Resilience drill: faults under load" in html
    assert any(p.name.startswith("ledger-") for p in (out / "drill" / "evidence").iterdir())


def test_open_arrival_mode_holds_its_rate_and_the_report_says_which_mode_ran(tmp_path):
    rate = 40.0
    code, report, _out = _gate(
        tmp_path, _slo(tmp_path), run_suites=False, recovery_drill=False, arrival_rate=rate
    )
    assert report["load_mode"] == "open arrival model at 40 requests/s"
    client = report["client"]
    started = sum(e["requests"] for e in client["endpoints"] if e["name"] != "/auth/login")
    # the schedule, not the answers, sets the pace: within 25 % of rate x time
    # (less the first seconds, while the users spawn and sign in)
    expected = rate * (client["duration_s"] - 3)
    assert 0.75 * expected <= started <= 1.25 * rate * client["duration_s"], (started, expected)
    assert client["aggregated"]["failures"] == 0
    assert code == EXIT_GO, report["notes"]
    # the stack's CPU over the load window, per service and for the whole
    cpu = report["cpu"]
    assert cpu["requests"] == client["aggregated"]["requests"]
    assert {"auth", "users", "clinics", "health", "postgres", "haproxy"} <= set(cpu["seconds"])
    assert cpu["seconds"]["auth"] > 0 and cpu["ms_per_request"]["platform"] > 0
    # bcrypt apart: every sign-in is one verify
    signed_in = next(e["requests"] for e in client["endpoints"] if e["name"] == "/auth/login")
    assert cpu["hashing"]["verify"][1] == pytest.approx(signed_in, abs=1)
    assert cpu["hashing"]["verify"][0] > 0 and cpu["platform_ms_without_hashing"] > 0
    # the generator's own cost, and its schedule (every request started is counted)
    generator = client["generator"]
    assert generator["cpu_s"] > 0 and generator["busiest_core_share"] is not None
    assert generator["demand_share"] >= generator["busiest_core_share"]  # running + waiting
    assert generator["late_starts"]["scheduled"] >= started


def test_gate_says_no_on_exactly_the_objectives_that_broke(tmp_path):
    code, report, out = _gate(
        tmp_path,
        _slo(tmp_path),
        run_suites=False,
        recovery_drill=False,  # the drill has tests of its own (it ran the full plan: 5 minutes)
        # every /clinics/me waits 400 ms, then answers 500 (the gate's load signs in)
        service_env=(("ATENDEAI_FAULTS", SLOW_FAILING_CLINIC_ME),),
    )
    statuses = _statuses(report)
    assert statuses["p95_clinic_me"] == "fail"  # slowed down on purpose
    assert statuses["error_ratio"] == "fail"  # every /clinics/me answers 500: far above 5 % overall
    assert statuses["p95_auth_me"] == "pass"  # untouched route still holds
    assert code == EXIT_NO_GO and report["verdict"] == "no-go"
    assert "NO-GO: p95_clinic_me, error_ratio broke" in (out / "summary.md").read_text()


def test_a_bad_slo_file_is_a_broken_run_with_the_line_named(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text("version: 1\nobjectives:\n  - name: p95\n    query: up\n    comparator: '=<'\n")
    run = GateRun(GateConfig(profile="smoke", slo_file=slo, reports_dir=tmp_path / "reports"))
    assert run.run() == EXIT_BROKEN
    err = capsys.readouterr().err
    assert "line 5: objectives[0] (p95).comparator" in err
    assert not (tmp_path / "reports").exists(), "a broken run must not leave a report behind"


def test_a_bad_baseline_file_is_a_broken_run_before_anything_starts(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "report.json"
    run = GateRun(
        GateConfig(profile="smoke", baseline=str(missing), reports_dir=tmp_path / "reports")
    )
    started = time.monotonic()
    assert run.run() == EXIT_BROKEN
    assert time.monotonic() - started < 5, "the stack must not have been started"
    err = capsys.readouterr().err
    assert f"--baseline {missing}: cannot read it" in err
    assert not (tmp_path / "reports").exists(), "a broken run must not leave a report behind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "invalid choice: 'nope'"),
        (["--provider", "external"], "--provider external needs --stack-json FILE"),
        (["--profile-scale", "0"], "must be more than 0"),
        (["--load-scrape-interval", "-1"], "must be more than 0"),
        (
            ["--provider", "external", "--stack-json", "s.json", "--load-scrape-interval", "5"],
            "--load-scrape-interval does not apply to --provider external",
        ),
    ],
)
def test_cli_refuses_bad_flags_with_exit_2(args, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "gate", "--reports-dir", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert not any(tmp_path.iterdir())


def test_sigterm_during_the_load_stops_everything_and_leaves_no_report(tmp_path):
    """``atendeai gate`` stopped by SIGTERM (a CI timeout, ``timeout``, ``kill``)
    while Locust runs: exit 130, every process it started (the stack's and the
    load generator's, each in a session of its own) gone, no half-written report.
    Before the fix SIGTERM killed the gate at once and Locust ran on."""
    reports = tmp_path / "reports"
    gate = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "gate", "--profile", "smoke", "--no-suites",
         "--no-drill", "--baseline", "none", "--load-scrape-interval", "1",
         "--reports-dir", str(reports)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output: list[str] = []
    started: list[psutil.Process] = []
    try:
        assert gate.stdout is not None
        for line in gate.stdout:
            output.append(line)
            if "load smoke" in line and "users    20" in line:  # Locust is running
                started = psutil.Process(gate.pid).children(recursive=True)
                break
        assert any("locust" in " ".join(p.cmdline()) for p in started), "".join(output)
        gate.terminate()
        rest, _ = gate.communicate(timeout=90)
    finally:
        if gate.poll() is None:
            gate.kill()
    said = "".join(output) + rest
    assert gate.returncode == 130, said
    assert "interrupted: everything the run started was stopped; no report" in said
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert not reports.exists() or not any(reports.iterdir()), list(reports.iterdir())
    run_dir = re.search(r"run directory (\S+)", said)
    assert run_dir is not None and not Path(run_dir.group(1)).exists(), said
