"""AtendeAI platform foundation: a small but real reference implementation.

Four aiohttp services (auth, users, clinics, health) on PostgreSQL 15 with
row level security and Redis 7. Run one with ``python -m system_under_test
<service> --port N``; configuration comes from the environment (see
``config.py``).
"""

SERVICES = ("auth", "users", "clinics", "health")
DEFAULT_PORTS = {"auth": 3001, "users": 3002, "clinics": 3003, "health": 3004}
