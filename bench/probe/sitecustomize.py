"""Counts what a benchmark's web and worker processes do, without changing what they do.

Python imports `sitecustomize` at start-up from the first folder on its path that has
one; the benchmarks put this folder first in the PYTHONPATH of the processes they
start when they want the counts (`SEATS_PROBE_DIR` names where to write them). Each
process keeps in memory:

- ``statements``: SQL statements sent to PostgreSQL (each one a round trip), and
  ``transactions``: transactions begun (each adds a BEGIN and a COMMIT or ROLLBACK
  round trip, as psycopg sends them on their own); ``rolled back``: those ended by a
  ROLLBACK, at which psycopg forgets every statement the connection had prepared;
- ``published <task>``: Celery messages sent, by task name;
- ``ran <task> -> <result>``: tasks run, by what they returned;

and writes them as JSON to ``$SEATS_PROBE_DIR/<pid>.json`` four times a second and at
exit, so a process that ends keeps its counts. The benchmark sums the files before and
after a phase. Nothing here touches the network or the database.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import threading
import time
from typing import Any

FOLDER = os.environ.get("SEATS_PROBE_DIR")
counts: collections.Counter[str] = collections.Counter()
guard = threading.Lock()


def bump(key: str) -> None:
    with guard:
        counts[key] += 1


def write() -> None:
    if FOLDER is None:
        return
    with guard:
        body = json.dumps(counts)
    target = os.path.join(FOLDER, f"{os.getpid()}.json")
    with contextlib.suppress(OSError):
        with open(target + ".tmp", "w") as out:
            out.write(body)
        os.replace(target + ".tmp", target)


def keep_writing() -> None:
    pid = os.getpid()
    while True:
        time.sleep(0.25)
        if os.getpid() != pid:  # forked: the child started its own writer
            return
        write()


def start() -> None:
    """Counts restart from nothing in a forked child (gunicorn's, prefork's)."""
    counts.clear()
    threading.Thread(target=keep_writing, daemon=True, name="seats-probe").start()


def begun(connection: Any) -> None:
    """A transaction in autocommit sends no BEGIN or COMMIT: not counted."""
    if not connection.connection.dbapi_connection.autocommit:
        bump("transactions")


def counting_rollbacks() -> None:
    import psycopg
    from psycopg.pq import TransactionStatus

    rollback = psycopg.Connection.rollback

    def counted(connection: psycopg.Connection[Any]) -> None:
        if connection.info.transaction_status != TransactionStatus.IDLE:
            bump("rolled back")  # (an idle connection's rollback sends nothing)
        rollback(connection)

    psycopg.Connection.rollback = counted  # type: ignore[method-assign]


def install() -> None:
    from celery import signals
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", lambda *_: bump("statements"))
    event.listen(Engine, "begin", begun)
    counting_rollbacks()

    def published(sender: Any = None, **_: Any) -> None:
        bump(f"published {sender}")

    def ran(sender: Any = None, retval: Any = None, **_: Any) -> None:
        bump(f"ran {getattr(sender, 'name', sender)} -> {retval}")

    signals.before_task_publish.connect(published, weak=False)
    signals.task_postrun.connect(ran, weak=False)
    os.register_at_fork(after_in_child=start)
    atexit.register(write)
    start()


if FOLDER:
    install()
