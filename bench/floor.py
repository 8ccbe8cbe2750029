"""What each part the architecture requires costs at the least, measured alone on this
machine: the floor under the purchase and webhook figures that no code of ours can go
below without leaving Flask, Celery on Redis, PostgreSQL through psycopg, or the Stripe SDK.

Each part runs ``--count`` times; CPU is read from /proc for this process (the client, in
which the web app runs in-process through Flask's test client), the PostgreSQL and Redis
servers, and a Celery worker (ours, ``--pool threads``) for the message part:

- a request through a bare one-route Flask app, and through ours to a machine-facing
  route that does nothing (our hooks: request id, metrics, CSRF check, headers);
- one webhook through our real view (signed, half of a type with a handler);
- storing one event as the view does (psycopg cursor, autocommit, prepared), a
  ``SELECT 1``, and a one-row transaction (BEGIN, UPDATE, COMMIT);
- Redis ``SET NX EX`` (the drain mark) through redis-py;
- publishing one Celery message (the web's publisher), and a worker taking one
  (``celery.accumulate``, which does nothing), acknowledged after it ran.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    .venv/bin/python bench/floor.py [--count 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import redis
import stripe
from flask import Flask
from harness import (
    REDIS_URL,
    CpuMeter,
    Processes,
    celery_argv,
    celery_client,
    log_folder,
    machine_facts,
    python_env,
    reset_redis,
    scratch_database,
    terminate_on_sigterm,
    wait_worker,
)

from shared import queues
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.payments.fake_stripe import FakeStripe
from shared.services import webhooks
from shared.store.db import make_engine, make_session_factory

SECRET = "whsec_floor_" + secrets.token_hex(6)
TYPES = ("customer.updated", "customer.created")
"""Alternately handled (the drain mark is set) and not (stored `ignored`)."""


def part(name: str, count: int, run: Callable[[int], None], meter: CpuMeter) -> dict[str, float]:
    """Run `run(i)` count times; CPU microseconds per run by process group."""
    before = meter.sample()
    for i in range(count):
        run(i)
    spent = CpuMeter.delta(before, meter.sample())
    figures = {k: 1e6 * v / count for k, v in spent.items() if k != "other" and v > 0}
    figures["all"] = sum(figures.values())
    shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(figures.items(), key=lambda kv: -kv[1]))
    print(f"{name:<52} us CPU per run: {shown}", flush=True)
    return figures


def event(kind: str) -> dict[str, Any]:
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": {"id": f"cus_{secrets.token_hex(7)}", "object": "customer"}},
    }


def signed(kind: str) -> tuple[bytes, str]:
    body = json.dumps(event(kind), indent=2)
    stamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{stamp}.{body}", SECRET)
    return body.encode(), f"t={stamp},v1={signature}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    terminate_on_sigterm()
    count = args.count
    meter = CpuMeter({})
    figures: dict[str, Any] = {"setup": f"{machine_facts()}, {count} runs each"}
    with scratch_database() as url, log_folder(False) as logs, Processes(logs) as processes:
        settings = replace(
            Settings.from_env(
                {
                    "STRIPE_API_KEY": LOCALSTRIPE_KEY,
                    "REDIS_URL": REDIS_URL,
                    "STRIPE_WEBHOOK_SECRET": SECRET,
                }
            ),
            database_url=url,
        )
        engine = make_engine(url)
        from shared.bootstrap import Runtime

        runtime = Runtime(settings, engine, make_session_factory(engine), FakeStripe())
        from web import create_app
        from web.security import csrf

        app = create_app(settings, runtime)

        def nothing() -> dict[str, bool]:
            return {"ok": True}

        # machine-facing like the real webhook route: no CSRF check (that is for pages)
        app.add_url_rule("/webhooks/nothing", "nothing", csrf.exempt(nothing), methods=["POST"])
        ours = app.test_client()
        bare_app = Flask("bare")
        bare_app.add_url_rule(
            "/webhooks/nothing", "nothing", lambda: {"ok": True}, methods=["POST"]
        )
        bare = bare_app.test_client()
        body = json.dumps(event("customer.updated")).encode()

        def post(client: Any) -> Callable[[int], None]:
            return lambda i: client.post("/webhooks/nothing", data=body)

        for warm in (bare, ours):
            for _ in range(200):
                warm.post("/webhooks/nothing", data=body)
        figures["flask bare"] = part("request, bare Flask app", count, post(bare), meter)
        figures["flask ours"] = part(
            "request, our app, a route doing nothing", count, post(ours), meter
        )

        bodies = [signed(TYPES[i % 2]) for i in range(count)]

        def webhook(i: int) -> None:
            raw, header = bodies[i]
            answer = ours.post("/webhooks/stripe", data=raw, headers={"Stripe-Signature": header})
            assert answer.status_code == 200, answer.data

        figures["webhook view"] = part(
            "webhook through our view (stored, answered)", count, webhook, meter
        )

        events = [event(TYPES[i % 2]) for i in range(count)]
        figures["store event"] = part(
            "store one event (psycopg, autocommit, prepared)",
            count,
            lambda i: webhooks.store_event(runtime.uow(), events[i]),
            meter,
        )
        direct = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        direct.execute("CREATE TABLE floor_rows (id int PRIMARY KEY, n bigint)")
        direct.execute("INSERT INTO floor_rows VALUES (1, 0)")
        figures["select 1"] = part(
            "SELECT 1 (psycopg, autocommit)",
            count,
            lambda i: direct.execute("SELECT 1", prepare=True).fetchone(),
            meter,
        )

        def transaction(i: int) -> None:
            with direct.transaction():
                direct.execute("UPDATE floor_rows SET n = n + 1 WHERE id = 1", prepare=True)

        figures["transaction"] = part(
            "one-row transaction (BEGIN, UPDATE, COMMIT)", count, transaction, meter
        )
        direct.close()
        client = redis.Redis.from_url(REDIS_URL)
        figures["redis set nx"] = part(
            "Redis SET NX EX (redis-py)",
            count,
            lambda i: client.set(f"floor:{i % 50}", 1, nx=True, ex=5),
            meter,
        )
        reset_redis(REDIS_URL)

        from web.enqueue import Publisher

        worker = processes.spawn(
            "worker",
            celery_argv(queues.DEFAULT, 16, pool="threads"),
            python_env(
                DATABASE_URL=url,
                REDIS_URL=REDIS_URL,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                STRIPE_API_BASE="http://127.0.0.1:9",
                STRIPE_WEBHOOK_SECRET=SECRET,
            ),
        )
        celery = celery_client(REDIS_URL)
        wait_worker(celery, processes)
        publish = Publisher(celery)
        queue = redis.Redis.from_url(REDIS_URL)
        meter.groups["worker"] = worker.pid
        before = meter.sample()
        for i in range(count):  # the worker takes them as they come, as in production
            publish("celery.accumulate", args=[i], queue=queues.DEFAULT)
        while queue.llen(queues.DEFAULT) or queue.hlen("unacked"):
            time.sleep(0.05)
        spent = CpuMeter.delta(before, meter.sample())
        message = {k: 1e6 * v / count for k, v in spent.items() if k != "other" and v > 0}
        message["all"] = sum(message.values())
        figures["celery message"] = message
        print(
            f"{'one Celery message: publish, take, run, acknowledge':<52} us CPU per run: "
            f"publisher {message.get('client (this script)', 0):.0f}, "
            f"worker {message.get('worker', 0):.0f}, redis {message.get('redis', 0):.0f}",
            flush=True,
        )
        reset_redis(REDIS_URL)
        engine.dispose()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
