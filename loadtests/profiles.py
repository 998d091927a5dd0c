"""Load profiles: named lists of stages, turned into a Locust LoadTestShape.

A stage holds ``users`` (reached at ``spawn_rate`` users/s) until ``until_s``
seconds into the run. ``scale`` stretches or shrinks every duration, so the
same profile runs as a quick rehearsal or at full length.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    until_s: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    stages: tuple[Stage, ...]
    # capacity only: step up until the p95 objective breaks
    step_users: int = 0
    step_s: float = 0
    max_users: int = 0
    step_spawn_rate: float = 10.0
    p95_limit_ms: float = 200.0

    @property
    def peak_users(self) -> int:
        if self.step_users:
            return self.max_users
        return max(stage.users for stage in self.stages)

    @property
    def duration_s(self) -> float:
        if self.step_users:
            return self.step_s * (self.max_users // self.step_users)
        return self.stages[-1].until_s

    def scaled(self, scale: float) -> Profile:
        if scale <= 0:
            raise ValueError("scale must be positive")
        stages = tuple(Stage(s.until_s * scale, s.users, s.spawn_rate) for s in self.stages)
        return Profile(
            self.name,
            self.description,
            stages,
            self.step_users,
            self.step_s * scale,
            self.max_users,
            self.step_spawn_rate,
            self.p95_limit_ms,
        )

    def target(self, run_time_s: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``run_time_s``, or None when the run is over."""
        if self.step_users:
            step = int(run_time_s // self.step_s) + 1
            users = step * self.step_users
            return None if users > self.max_users else (users, self.step_spawn_rate)
        for stage in self.stages:
            if run_time_s < stage.until_s:
                return stage.users, stage.spawn_rate
        return None


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "smoke",
            "20 users for 20 s: does everything answer under light load",
            (Stage(20, 20, 10),),
        ),
        Profile(
            "sla",
            "the spec's 1000 concurrent users: ramp at 5/s, hold 3 minutes",
            (Stage(200, 1000, 5), Stage(380, 1000, 5)),
        ),
        Profile(
            "spike",
            "100 users, a jump to 1000 in 10 s held a minute, back to 100",
            (Stage(30, 100, 20), Stage(100, 1000, 100), Stage(130, 100, 100)),
        ),
        Profile(
            "soak",
            "300 users for 30 minutes: leaks, pool exhaustion, slow drift",
            (Stage(1800, 300, 10),),
        ),
        Profile(
            "resilience",
            "1000 users (ramp at 10/s) held while the fault plan breaks one component at a time",
            (Stage(100, 1000, 10), Stage(700, 1000, 10)),
        ),
        Profile(
            "capacity",
            "+500 users (at 10/s) every 90 s up to 6000, until p95 breaks 200 ms",
            (),
            step_users=500,
            step_s=90,
            max_users=6000,
        ),
    )
}
