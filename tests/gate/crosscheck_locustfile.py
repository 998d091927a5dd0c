"""The live cross-check test's load (``tests/gate/test_crosscheck_live.py``).

Readers of ``GET /clinics/me`` with a token made beforehand (so no sign-in,
whose bcrypt time would dominate a short run's p95), a short pause between
requests; ``ATENDEAI_CROSSCHECK`` (JSON, written by the test) gives the token,
the user count and how long to hold them. ``harness.gate.loadrun`` passes the
project's options to every locustfile: they are accepted and ignored.
"""

from __future__ import annotations

import json
import os

from locust import FastHttpUser, LoadTestShape, constant, events, task

SETUP = json.loads(os.environ.get("ATENDEAI_CROSSCHECK", "{}"))


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--stack-json", default="")
    parser.add_argument("--load-profile", default="crosscheck")
    parser.add_argument("--load-profile-scale", type=float, default=1.0)
    parser.add_argument("--load-stages", default="")


class Reader(FastHttpUser):
    wait_time = constant(0.05)

    @task
    def read_clinic(self) -> None:
        self.client.get(
            "/clinics/me",
            headers={"Authorization": f"Bearer {SETUP['token']}"},
            name="/clinics/me",
        )


class HoldThenStop(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        users = int(SETUP.get("users", 0))
        if self.get_run_time() < float(SETUP.get("load_s", 0)):
            return users, float(users)
        return None
