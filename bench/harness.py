"""What both benchmarks share: a throw-away database, child processes and CPU accounting.

Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL
of the whole group) when the `Processes` context ends, also on an error or Ctrl-C.
Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
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


def gunicorn_argv(port: int, workers: int, worker_class: str, threads: int) -> list[str]:
    argv = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if worker_class != "sync":
        argv += ["--worker-class", worker_class, "--threads", str(threads)]
    return [*argv, "--no-control-socket", "web:create_app()"]


def celery_argv(queues: str, concurrency: int, loglevel: str = "WARNING") -> list[str]:
    return [
        str(BIN / "celery"),
        "-A",
        "worker.app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


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
                totals[label] = totals.get(label, 0.0) + cpu
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        totals["_machine"] = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        return totals

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        machine = spent.pop("_machine")
        spent["other"] = max(0.0, machine - sum(spent.values()))
        return spent


def machine_facts() -> str:
    return f"nproc={os.cpu_count()} python={sys.version.split()[0]}"
