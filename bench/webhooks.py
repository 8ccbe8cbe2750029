"""Signed Stripe events per second at the webhook endpoint, beside a bare one-route Flask
app on the same server settings and client, and what the worker then processes per second.

Starts the web (gunicorn with ``web/gunicorn_conf.py``: gthread, keep-alive) and, on
another port with the same settings, ``bench/bare_app.py`` (one route that answers and
does nothing), against a throw-away PostgreSQL database and Redis db 13. Each round
pre-builds 4,000 unique events in Stripe's shape plus 1,000 re-sends of earlier ones
with the exact same body, shuffled so that a re-send comes after its original; every
body is signed with ``stripe.WebhookSignature.generate_signature_header``. Half are
types with a handler that needs no Stripe call here (``payment_intent.succeeded`` and
``customer.updated`` for objects that are not ours: queued, read, then ``ignored``),
half types with none (stored ``ignored`` at once, never queued).

32 concurrent keep-alive clients (asyncio + aiohttp, one process: on 2 cores it takes
less CPU from the server than 32 threads would) post them. Each round has three phases:

1. ``bare``: the same bodies to the bare app;
2. ``paused``: to the web with the Celery worker stopped (ingest only; the handled
   events wait in the queue);
3. the worker (``--pool threads``) starts and drains that backlog: events processed
   per second, from the first to the last ``processed_at``;
4. ``running``: the next round's bodies with the worker running, as in production.

Reported: accepted events/s and p50/p99 per phase, the ratio to ``bare`` (target
>= 0.6, p99 < 50 ms), the worker's rate (target >= 500/s), then: stored rows == unique
ids sent, every row has an outcome, every ``attempts`` <= 1 (processed once).

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    .venv/bin/python bench/webhooks.py [--web-processes 2] [--web-threads 4]
        [--worker-threads 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import stripe
from harness import (
    REDIS_URL,
    ROOT,
    CpuMeter,
    Processes,
    celery_argv,
    celery_client,
    gunicorn_argv,
    log_folder,
    machine_facts,
    percentile,
    python_env,
    reset_redis,
    scratch_database,
    summary,
    terminate_on_sigterm,
    wait_http,
    wait_worker,
)
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from shared.cli.embedded import free_port
from shared.config import LOCALSTRIPE_KEY
from shared.store.models import WebhookEvent

SECRET = "whsec_bench_" + secrets.token_hex(8)
TYPES = ("payment_intent.succeeded", "customer.created", "customer.updated", "invoice.created")
"""Alternately handled (queued) and not (stored `ignored` at once)."""


@dataclass
class Phase:
    kind: str
    number: int
    sent: int
    accepted: int
    non_2xx: int
    rate: float
    p50_ms: float
    p99_ms: float
    wall: float
    cpu: dict[str, float]
    notes: list[str] = field(default_factory=list)


def event(kind: str, created: int) -> dict[str, Any]:
    """An event as Stripe sends it (the fields we rely on plus the usual envelope)."""
    short = kind.split(".")[0]
    prefix = {"customer": "cus", "invoice": "in", "product": "prod", "payment_intent": "pi"}
    obj: dict[str, Any] = {
        "id": f"{prefix[short]}_{secrets.token_hex(7)}",
        "object": short,
        "created": created,
        "livemode": False,
        "metadata": {},
    }
    if short == "customer":
        obj.update(email=None, name="Bench Org", invoice_settings={"default_payment_method": None})
    elif short == "invoice":
        obj.update(
            customer=f"cus_{secrets.token_hex(7)}",
            amount_due=36301,
            currency="cad",
            status="draft",
            lines={"object": "list", "data": [], "has_more": False},
        )
    elif short == "payment_intent":
        obj.update(
            amount=36301,
            currency="cad",
            status="succeeded",
            customer=f"cus_{secrets.token_hex(7)}",
            latest_charge=f"ch_{secrets.token_hex(7)}",
        )
    else:
        obj.update(name="XLGL", active=True)
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_{secrets.token_hex(7)}", "idempotency_key": None},
        "type": kind,
    }


def build_events(unique: int, duplicates: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Bodies in sending order (each re-send after its original) and the unique ids."""
    now = int(time.time())
    events = [event(TYPES[i % len(TYPES)], now - rng.randint(0, 60)) for i in range(unique)]
    rng.shuffle(events)
    bodies = [json.dumps(e, indent=2) for e in events]
    keyed = [(float(i), body) for i, body in enumerate(bodies)]
    for original in rng.sample(range(unique), duplicates):
        keyed.append((rng.uniform(original + 0.5, unique), bodies[original]))
    keyed.sort(key=lambda pair: pair[0])
    return [body for _, body in keyed], [e["id"] for e in events]


Request = tuple[str, str | None, dict[str, str]]


async def _blast(url: str, requests: list[Request], clients: int) -> tuple[list[Any], float]:
    results: list[Any] = [None] * len(requests)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        position = iter(range(len(requests)))

        async def client() -> None:
            for i in position:
                method, body, headers = requests[i]
                started = time.perf_counter()
                try:
                    async with session.request(method, url, data=body, headers=headers) as answer:
                        payload = await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError) as error:
                    payload, status = repr(error).encode(), 0
                results[i] = (status, time.perf_counter() - started, payload)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - began
    return results, wall


def blast(url: str, requests: list[Request], clients: int) -> tuple[list[Any], float]:
    return asyncio.run(_blast(url, requests, clients))


def run_phase(
    kind: str,
    number: int,
    url: str,
    requests: list[Request],
    clients: int,
    meter: CpuMeter,
    processes: Processes,
) -> tuple[Phase, list[Any]]:
    processes.check_alive()
    before = meter.sample()
    results, wall = blast(url, requests, clients)
    cpu = meter.delta(before, meter.sample())
    ok = [r for r in results if 200 <= r[0] < 300]
    latencies = [r[1] * 1000 for r in results]
    phase = Phase(
        kind,
        number,
        len(results),
        len(ok),
        len(results) - len(ok),
        len(ok) / wall,
        percentile(latencies, 50),
        percentile(latencies, 99),
        wall,
        cpu,
    )
    statuses = collections.Counter(r[0] for r in results if not 200 <= r[0] < 300)
    if statuses:
        first = next(r for r in results if not 200 <= r[0] < 300)
        phase.notes.append(f"non-2xx by status: {dict(statuses)}; first body: {first[2][:200]!r}")
    return phase, results


def drain(database_url: str, since: datetime, timeout: float) -> tuple[float, int, int]:
    """Wait (bounded) until every stored event has an outcome. Returns the worker's rate
    over the events it handled after `since` (first to last ``processed_at``), how many
    it handled, and how many are still without an outcome."""
    engine = create_engine(database_url, poolclass=NullPool)
    deadline = time.monotonic() + timeout
    pending = -1
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                pending = int(
                    connection.scalar(select(func.count()).where(WebhookEvent.outcome.is_(None)))
                    or 0
                )
            if pending == 0:
                break
            time.sleep(0.25)
        with engine.connect() as connection:
            first, last, handled = connection.execute(
                select(
                    func.min(WebhookEvent.processed_at),
                    func.max(WebhookEvent.processed_at),
                    func.count(),
                ).where(WebhookEvent.attempts > 0, WebhookEvent.processed_at > since)
            ).one()
    finally:
        engine.dispose()
    span = (last - first).total_seconds() if handled > 1 else 0.0
    return (handled / span if span else float("nan")), int(handled), pending


def check_database(database_url: str, expected: set[str]) -> list[str]:
    """Every unique event stored once, with an outcome, handled at most once."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(WebhookEvent.id, WebhookEvent.outcome, WebhookEvent.attempts)
            ).all()
    finally:
        engine.dispose()
    ids = [r.id for r in rows]
    outcomes = collections.Counter(r.outcome for r in rows)
    attempts = collections.Counter(r.attempts for r in rows)
    missing = expected - set(ids)
    unexpected = set(ids) - expected
    once = (
        len(ids) == len(set(ids)) == len(expected)
        and not missing
        and not unexpected
        and set(outcomes) <= {"processed", "ignored"}
        and set(attempts) <= {0, 1}
    )
    return [
        f"stored rows {len(ids)} (unique ids sent {len(expected)}), missing {len(missing)}, "
        f"unexpected {len(unexpected)}",
        f"outcomes {dict(outcomes)}; attempts {dict(sorted(attempts.items()))} "
        "(0: no handler, stored done)",
        "stored once and handled at most once: "
        + ("YES" if once else "NO  <-- every event must be stored once"),
    ]


def print_phase(phase: Phase) -> None:
    unit = "events" if phase.kind != "bare" else "requests"
    print(
        f"{phase.kind} #{phase.number}: {phase.accepted}/{phase.sent} 2xx, "
        f"{phase.rate:.0f} {unit}/s, p50 {phase.p50_ms:.1f} ms, p99 {phase.p99_ms:.1f} ms, "
        f"wall {phase.wall:.2f} s",
        flush=True,
    )
    spent = ", ".join(f"{k} {v:.1f}" for k, v in sorted(phase.cpu.items(), key=lambda kv: -kv[1]))
    busy = sum(phase.cpu.values())
    cores = phase.wall * (os.cpu_count() or 1)
    print(f"  CPU seconds: {spent}; machine busy {busy:.1f} of {cores:.1f}", flush=True)
    for note in phase.notes:
        print(f"  {note}", flush=True)


def signed(bodies: list[str]) -> list[Request]:
    return [
        (
            "POST",
            body,
            {
                "Content-Type": "application/json",
                "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body, SECRET),
            },
        )
        for body in bodies
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument("--worker-threads", type=int, default=32)
    parser.add_argument("--unique", type=int, default=4000)
    parser.add_argument("--duplicates", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    terminate_on_sigterm()
    started = time.monotonic()
    rng = random.Random(args.seed)
    phases: list[Phase] = []
    worker_rates: list[float] = []
    checks: list[str] = []
    reset_redis(REDIS_URL)
    try:
        with (
            log_folder(args.keep_logs) as logs,
            scratch_database() as database_url,
            Processes(logs) as processes,
        ):
            env = python_env(
                DATABASE_URL=database_url,
                REDIS_URL=REDIS_URL,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                # nothing here calls Stripe; a closed loopback port makes sure of it
                STRIPE_API_BASE="http://127.0.0.1:9",
                STRIPE_WEBHOOK_SECRET=SECRET,
                SEATS_SWEEP_INTERVAL="5",
                SEATS_STUCK_AFTER="30",
                SEATS_WORKER_CONCURRENCY=str(args.worker_threads),
            )
            port, bare_port = free_port(), free_port()
            web = processes.spawn(
                "web",
                gunicorn_argv(port, args.web_processes, "gthread", args.web_threads),
                env,
            )
            bare = processes.spawn(
                "bare",
                gunicorn_argv(
                    bare_port, args.web_processes, "gthread", args.web_threads, "bare_app:app"
                ),
                {**env, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{ROOT}"},
            )
            meter = CpuMeter({"web (gunicorn)": web.pid, "bare app (gunicorn)": bare.pid})
            base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
            wait_http(f"{base}/healthz", processes)
            blast(f"{base}/healthz", [("GET", None, {})] * 200, args.clients)  # warm the pools
            blast(f"{bare_base}/webhooks/stripe", [("POST", "{}", {})] * 200, args.clients)
            worker: Any = None

            def start_worker() -> None:
                nonlocal worker
                worker = processes.spawn(
                    "worker", celery_argv("webhooks", args.worker_threads, pool="threads"), env
                )
                wait_worker(celery_client(REDIS_URL), processes)
                meter.groups["worker (celery)"] = worker.pid

            expected: set[str] = set()

            def round_of(kind: str, number: int) -> None:
                bodies, ids = build_events(args.unique, args.duplicates, rng)
                expected.update(ids)
                requests = signed(bodies)
                if kind == "paused":
                    phase, _ = run_phase(
                        "bare",
                        number,
                        f"{bare_base}/webhooks/stripe",
                        requests,
                        args.clients,
                        meter,
                        processes,
                    )
                    phases.append(phase)
                    print_phase(phase)
                phase, results = run_phase(
                    kind,
                    number,
                    f"{base}/webhooks/stripe",
                    requests,
                    args.clients,
                    meter,
                    processes,
                )
                flagged = collections.Counter(
                    json.loads(r[2]).get("duplicate") for r in results if r[0] == 200
                )
                phase.notes.append(
                    f"answered duplicate=true {flagged[True]} (re-sends sent {args.duplicates}),"
                    f" duplicate=false {flagged[False]} (unique sent {args.unique})"
                )
                phases.append(phase)
                print_phase(phase)

            for number in range(1, args.rounds + 1):
                if worker is not None:
                    processes.stop(worker)
                    processes.children = [c for c in processes.children if c[1] is not worker]
                    meter.groups.pop("worker (celery)", None)
                round_of("paused", number)
                since = datetime.now(UTC)
                start_worker()
                rate, handled, left = drain(database_url, since, args.drain_timeout)
                worker_rates.append(rate)
                print(
                    f"worker #{number}: drained {handled} queued events at {rate:.0f}/s"
                    + (f" ({left} STILL PENDING)" if left else ""),
                    flush=True,
                )
                round_of("running", number)
                drain(database_url, since, args.drain_timeout)
            checks = check_database(database_url, expected)
    finally:
        reset_redis(REDIS_URL)
    report = summarize(args, phases, worker_rates, checks)
    print(f"run took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


def summarize(
    args: argparse.Namespace, phases: list[Phase], worker_rates: list[float], checks: list[str]
) -> dict[str, Any]:
    print("\n=== summary ===")
    setup = (
        f"{machine_facts()} gunicorn {args.web_processes} x gthread {args.web_threads} "
        f"(both apps); celery -Q webhooks --pool threads {args.worker_threads}; "
        f"{args.clients} aiohttp clients; {args.unique}+{args.duplicates} events per phase"
    )
    print(setup)
    print(f"{'phase':<13}{'2xx/sent':>12}{'rate/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for p in phases:
        print(
            f"{p.kind + ' #' + str(p.number):<13}{f'{p.accepted}/{p.sent}':>12}{p.rate:>9.0f}"
            f"{p.p50_ms:>9.1f}{p.p99_ms:>9.1f}{p.non_2xx:>9}"
        )
    figures: dict[str, Any] = {"setup": setup}
    for kind in ("bare", "paused", "running"):
        values = [p.rate for p in phases if p.kind == kind]
        if values:
            worst = max(p.p99_ms for p in phases if p.kind == kind)
            cpu = [
                1000 * sum(v for k, v in p.cpu.items() if k != "other") / p.sent
                for p in phases
                if p.kind == kind
            ]
            figures[kind] = {
                "rate": summary(values)[0],
                "p99_ms": worst,
                # every process of ours, the servers and the client, per request sent
                "cpu_ms_per_request": summary(cpu)[0],
            }
            print(f"{kind:<9} rate median {summary(values)[0]:.0f}/s, worst p99 {worst:.1f} ms")
    if "bare" in figures:
        for kind in ("paused", "running"):
            ratio = figures[kind]["rate"] / figures["bare"]["rate"]
            figures[kind]["ratio"] = ratio
            print(f"ratio webhooks ({kind} worker) / bare app: {ratio:.2f}")
    if worker_rates:
        figures["worker_rate"] = summary(worker_rates)[0]
        print(f"worker: {figures['worker_rate']:.0f} events processed/s (median of rounds)")
    for line in checks:
        print(line)
    figures["checks"] = checks
    figures["phases"] = [asdict(p) for p in phases]
    return figures


if __name__ == "__main__":
    main()
