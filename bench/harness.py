"""What the benchmarks share: a throw-away database, child processes, CPU accounting,
the Stripe stand-in and the Redis database they use.

Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL
of the whole group) when the `Processes` context ends, also on an error or Ctrl-C.
Only loopback addresses are used.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that every `finally` runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def scratch_database(server_url: str = SERVER_URL) -> Iterator[str]:
    """A fresh database with the schema at head, dropped at the end."""
    from shared.store.db import upgrade

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"seats_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def log_folder(keep: bool) -> Iterator[Path]:
    """Children's logs go to a temporary folder: removed after a clean run unless kept."""
    folder = Path(tempfile.mkdtemp(prefix="seats-bench-"))
    clean = False
    try:
        yield folder
        clean = True
    finally:
        if clean and not keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs kept in {folder}", flush=True)


class Processes:
    """Children in their own process groups, stopped in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.children.append((name, process))
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.children.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self, process: subprocess.Popen[bytes], grace: float = 15) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for _, process in reversed(self.children):
            self.stop(process)
        self.children.clear()


def python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEATS_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def gunicorn_argv(
    port: int, workers: int, worker_class: str, threads: int, app: str = "web:create_app()"
) -> list[str]:
    """The web as deployed (`web/gunicorn_conf.py`: keep-alive, metrics folder), with the
    worker class and threads given here."""
    argv = [str(BIN / "gunicorn"), "-c", "python:web.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    argv += ["--worker-class", worker_class, "--threads", str(threads)]
    return [*argv, "--no-control-socket", app]


def celery_argv(
    queues: str, concurrency: int, loglevel: str = "WARNING", pool: str = "prefork"
) -> list[str]:
    return [
        str(BIN / "celery"),
        "-A",
        "worker.app",
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


PROBE = Path(__file__).resolve().parent / "probe"


def probe_env(folder: Path) -> dict[str, str]:
    """What a child needs to count its statements, transactions and messages
    (`bench/probe/sitecustomize.py`) into `folder`."""
    return {"PYTHONPATH": f"{PROBE}{os.pathsep}{ROOT}", "SEATS_PROBE_DIR": str(folder)}


def probe_counts(folder: Path) -> collections.Counter[str]:
    """The sum of every probed process's counts so far."""
    total: collections.Counter[str] = collections.Counter()
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            total.update(json.loads(path.read_text()))
    return total


@contextlib.contextmanager
def pgbouncer(processes: Processes, server_url: str) -> Iterator[str]:
    """Debian's PgBouncer on a free loopback port in front of `server_url`'s server, in
    session mode (the charge's advisory lock is a session lock: transaction pooling would
    hand its connection to someone else between transactions). Yields the URL to use."""
    from shared.cli.embedded import free_port, wait_for_port

    url = make_url(server_url)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="seats-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{url.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={url.host} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = session\nmax_client_conn = 1000\ndefault_pool_size = 200\n"
        "unix_socket_dir =\n"
    )
    processes.spawn(
        "pgbouncer", ["/usr/sbin/pgbouncer", "-u", "postgres", str(folder / "pgbouncer.ini")], {}
    )
    wait_for_port(port)
    try:
        yield url.set(port=port).render_as_string(hide_password=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def wait_http(url: str, processes: Processes, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def celery_client(redis_url: str) -> Any:
    from celery import Celery

    from shared import queues

    app = Celery("seats-bench")
    app.conf.update(queues.celery_settings(redis_url))
    return app


def wait_worker(app: Any, processes: Processes, expected: int = 1, timeout: float = 60) -> None:
    """Ask the worker over the broker until it answers (its log is at WARNING)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        if len(app.control.ping(timeout=0.5) or []) >= expected:
            return
    raise TimeoutError(f"no Celery worker answered within {timeout}s")


def reset_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def redis_neighbours(url: str) -> list[str]:
    """Other connections using this Redis database (a test run's worker, another benchmark):
    their workers would take our tasks, and `reset_redis` would empty their queues."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        me = client.client_id()
        db = client.connection_pool.connection_kwargs.get("db", 0)
        return [
            f"{c.get('addr')} {c.get('name') or ''} cmd={c.get('cmd')}".replace("  ", " ")
            for c in client.client_list()
            if int(c.get("db", -1)) == db and int(c.get("id", -1)) != me
        ]
    finally:
        client.close()


def stripe_client(base: str) -> Any:
    """Stripe for the direct calls, configured exactly as the app's gateway: each thread
    its own `stripe.StripeClient` on its own kept-alive connection, no SDK retries."""
    from shared.config import LOCALSTRIPE_KEY
    from shared.payments.stripe_adapter import StripeGateway

    class PerThread:
        def __init__(self, gateway: StripeGateway) -> None:
            self.gateway = gateway

        @property
        def v1(self) -> Any:
            return self.gateway.client.v1

    return PerThread(StripeGateway(LOCALSTRIPE_KEY, base))


def index_localstripe(resources: Any) -> None:
    """Give localstripe's store an index by object type, so that listing one type reads
    only that type: same objects, same order, same answers.

    localstripe (1.15) lists by walking its whole store, and it lists on every export of
    a charge (`Charge.refunds`, `amount_refunded`): about a dozen walks per PaymentIntent
    created and confirmed, so each renewal costs time in proportion to everything made
    before it (about 25 ms at 1,000 customers, over 300 ms at 10,000, on the 2-core
    machine). Resetting between phases does not help within a phase of 10,000.
    """
    store = resources.store
    kind = type(store)
    by_type: dict[str, dict[str, Any]] = {}
    set_item, del_item, clear = kind.__setitem__, kind.__delitem__, kind.clear

    def indexed_set(self: Any, key: str, value: Any) -> None:
        set_item(self, key, value)
        by_type.setdefault(key.split(":", 1)[0], {})[key] = value

    def indexed_del(self: Any, key: str) -> None:
        del_item(self, key)
        by_type.get(key.split(":", 1)[0], {}).pop(key, None)

    def indexed_clear(self: Any) -> None:
        clear(self)
        by_type.clear()

    kind.__setitem__ = indexed_set
    kind.__delitem__ = indexed_del
    kind.clear = indexed_clear
    for key, value in list(store.items()):
        by_type.setdefault(key.split(":", 1)[0], {})[key] = value

    def list_all(
        cls: Any, url: str, limit: Any = None, starting_after: Any = None, **kwargs: Any
    ) -> Any:
        if kwargs:
            raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        listed = resources.List(url, limit=limit, starting_after=starting_after)
        listed._list = list(by_type.get(cls.object, {}).values())
        return listed

    resources.StripeObject._api_list_all = classmethod(list_all)


def run_indexed_localstripe(port: int) -> None:
    """The stand-in as `seats up` runs it (`shared.cli.embedded`), with the index above."""
    from localstripe import resources

    from shared.cli.embedded import run_localstripe

    index_localstripe(resources)
    run_localstripe("127.0.0.1", port)


def start_stand_in(port: int, log: Path, indexed: bool) -> subprocess.Popen[bytes]:
    """localstripe on loopback in a process group of its own: plain (as `seats up` starts
    it) or with `index_localstripe`."""
    from shared.cli.embedded import start_localstripe, wait_for_port

    if not indexed:
        return start_localstripe(port, log)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "localstripe", "--port", str(port)],
            env=python_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(port)
    return process


def reset_localstripe(base: str) -> None:
    """Empty the stand-in's store: it answers more slowly as the store grows."""
    import requests

    requests.delete(f"{base}/_config/data", timeout=30).raise_for_status()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.fmean(values)


def _ticks() -> dict[int, tuple[int, str, float]]:
    """pid -> (process group, command name, CPU seconds) for every process we can read."""
    hz = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry)] = (int(fields[2]), name, (int(fields[11]) + int(fields[12])) / hz)
    return found


class CpuMeter:
    """CPU seconds spent by each part of the stack between two samples.

    Groups: our children by process group, PostgreSQL and Redis server processes
    by name, and this process (the client). A process that exits in between
    loses its share, so pools and workers should live through the phase.
    "other" is the rest of the machine's busy time (from /proc/stat), so that
    anything else running at the same time shows up.
    """

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups

    def sample(self) -> dict[str, float]:
        """CPU seconds per process so far, keyed "label|pid", and the machine's busy time."""
        totals: dict[str, float] = {}
        me = os.getpid()
        for pid, (pgid, name, cpu) in _ticks().items():
            label = next((k for k, v in self.groups.items() if v == pgid), None)
            if pid == me:
                label = "client (this script)"
            elif label is None and name.startswith("postgres"):
                label = "postgresql"
            elif label is None and name.startswith("redis-server"):
                label = "redis"
            if label:
                totals[f"{label}|{pid}"] = cpu
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        totals["_machine"] = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        return totals

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Per label: what each process spent in between (one that started meanwhile, all
        of its time; one that ended meanwhile is lost, as PostgreSQL backends that close)."""
        spent: dict[str, float] = {}
        for key, cpu in after.items():
            if key == "_machine":
                continue
            label = key.rsplit("|", 1)[0]
            spent[label] = spent.get(label, 0.0) + max(0.0, cpu - before.get(key, 0.0))
        machine = after["_machine"] - before["_machine"]
        spent["other"] = max(0.0, machine - sum(spent.values()))
        return spent


def machine_facts() -> str:
    return f"nproc={os.cpu_count()} python={sys.version.split()[0]}"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="bench/harness.py")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("localstripe", help="the stand-in with an index by type")
    serve.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    run_indexed_localstripe(arguments.port)
