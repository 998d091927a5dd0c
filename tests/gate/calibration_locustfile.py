"""The calibration test's load (``tests/gate/test_calibration.py``).

Run by the gate's own runner (``harness.gate.loadrun.run_load``), which passes
``--stack-json``, ``--load-profile`` and ``--load-profile-scale``; this file
accepts them and takes what it needs from ``ATENDEAI_CALIBRATION`` (JSON,
written by the test): the tokens, the login body and the user counts.

Three kinds of users, a fixed number of each, none waiting between requests:
readers (``GET /clinics/me``), writers (``PATCH /clinics/me``) and signers
(``POST /auth/login``). The shape holds them for ``load_s`` seconds, stops
them (each finishes its request: run with ``LOCUST_STOP_TIMEOUT``), then idles
``idle_tail_s`` seconds, so every request lies inside the load window with a
Prometheus scrape after it.
"""

from __future__ import annotations

import json
import os

from locust import FastHttpUser, LoadTestShape, constant, events, task

SETUP = json.loads(os.environ.get("ATENDEAI_CALIBRATION", "{}"))


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    # harness.gate.loadrun passes these to every locustfile; the calibration needs none.
    parser.add_argument("--stack-json", default="")
    parser.add_argument("--load-profile", default="calibration", choices=["calibration"])
    parser.add_argument("--load-profile-scale", type=float, default=1.0)


class Reader(FastHttpUser):
    fixed_count = int(SETUP.get("readers", 0))
    wait_time = constant(0)

    @task
    def read_clinic(self) -> None:
        self.client.get(
            "/clinics/me",
            headers={"Authorization": f"Bearer {SETUP['staff_token']}"},
            name="/clinics/me",
        )


class Writer(FastHttpUser):
    fixed_count = int(SETUP.get("writers", 0))
    wait_time = constant(0)

    @task
    def rename_clinic(self) -> None:
        self.client.patch(
            "/clinics/me",
            json={"name": "Clínica Calibrada"},
            headers={"Authorization": f"Bearer {SETUP['admin_token']}"},
            name="/clinics/me",
        )


class Signer(FastHttpUser):
    fixed_count = int(SETUP.get("signers", 0))
    wait_time = constant(0)

    @task
    def sign_in(self) -> None:
        self.client.post("/auth/login", json=SETUP["login_body"], name="/auth/login")


class CalibrationShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        users = Reader.fixed_count + Writer.fixed_count + Signer.fixed_count
        run_time = self.get_run_time()
        if run_time < SETUP["load_s"]:
            return users, float(users)  # everyone at once
        if run_time < SETUP["load_s"] + SETUP["idle_tail_s"]:
            return 0, float(users)
        return None
