"""The server/client cross-check, live: a delay the services' clocks cannot see is flagged.

Two short loads of the same readers (``crosscheck_locustfile.py``: a token
made beforehand, no sign-ins) go through HAProxy: one straight, one
through a TCP proxy in front of it that holds every answer for
``DELAY_S`` (a slow gateway or network: outside the services' own timing).
The services' p95 is the same both times; the client's is not. The gate's
cross-check (``harness.gate.crosscheck``), with its tolerance made of the
server's bucket, the client's rounding and the gateway's hop, must agree on
the first load and flag the second (issue 13, section 4).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.gate.buckets import objective_buckets
from harness.gate.crosscheck import cross_check
from harness.gate.evidence import objective_value
from harness.gate.loadrun import ClientFigures, LoadRunConfig, run_load
from harness.gate.slo import DEFAULT_SLO_FILE, evaluate_objective, load_slo_file
from harness.prometheus_api import PrometheusClient
from harness.stack import Stack
from harness.tenants import ApiSession, ClientAddresses, create_tenant, hash_password

DELAY_S = 0.15
USERS = 20
LOAD_S = 12.0


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` and holds every
    chunk of the answer ``delay_s`` before passing it on (real sockets)."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delaying-proxy", daemon=True)

    def __enter__(self) -> DelayingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delaying proxy did not start within 10 s")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()
        # connections still piped when the proxy stops: end them inside the
        # loop, so none is torn down later by the garbage collector
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, server_w, 0.0),
            self._pipe(server_r, client_w, self.delay_s),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader, writer, delay_s: float) -> None:
        try:
            while chunk := await reader.read(65536):
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


LOCUSTFILE = Path(__file__).with_name("crosscheck_locustfile.py")


def _load(stack_json: Path, host: str, out: Path) -> ClientFigures:
    return run_load(
        LoadRunConfig(
            profile="crosscheck",
            host=host,
            stack_json=stack_json,
            out_dir=out,
            locustfile=LOCUSTFILE,
        ),
        progress=lambda line: None,
        timeout_s=180,
    )


@pytest.fixture(scope="module")
def loads(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    out = tmp_path_factory.mktemp("crosscheck")
    stack_json = out / "stack.json"
    stack.write_json(stack_json)
    gateway = urlsplit(stack.haproxy_url or "")
    assert gateway.hostname and gateway.port, stack.haproxy_url
    api = ApiSession(stack, ClientAddresses())
    try:
        clinic = create_tenant(
            stack.postgres.owner_dsn, api=api, password_hash=hash_password(), roles=("staff",)
        )
        token = clinic.access_token("staff")
    finally:
        api.close()
    setup = {"token": token, "users": USERS, "load_s": LOAD_S}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATENDEAI_CROSSCHECK", json.dumps(setup))
        direct = _load(stack_json, stack.haproxy_url or "", out / "direct")
        with DelayingProxy((gateway.hostname, gateway.port), DELAY_S) as proxy:
            delayed = _load(stack_json, proxy.url, out / "delayed")
    yield {"direct": direct, "delayed": delayed}


def _check(stack: Stack, client: ClientFigures):
    reader = PrometheusClient(stack.prometheus_url or "")
    slo = load_slo_file(DEFAULT_SLO_FILE)
    objective = next(o for o in slo.objectives if o.name == "p95_overall")
    deadline = time.monotonic() + 30  # until every target was scraped past the window
    while (reader.instant("min(timestamp(up))", time.time()) or 0) < client.ended_at:
        assert time.monotonic() < deadline, "Prometheus did not scrape past the window"
        time.sleep(0.5)
    result = evaluate_objective(
        objective, objective_value(reader, objective, client.started_at, client.ended_at)
    )
    buckets, _ = objective_buckets([result], reader, client.ended_at)
    return cross_check([result], client, buckets)[0]


def test_the_views_agree_when_nothing_stands_between_them(stack: Stack, loads: dict):
    check = _check(stack, loads["direct"])
    assert check.agrees is True, check


def test_a_delay_in_front_of_the_services_is_flagged(stack: Stack, loads: dict):
    check = _check(stack, loads["delayed"])
    assert check.client is not None and check.client >= DELAY_S * 1000, check
    assert check.server is not None and check.server < DELAY_S * 1000, check
    assert check.agrees is False, check
