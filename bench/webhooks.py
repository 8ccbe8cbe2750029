"""Signed Stripe events per second at the webhook endpoint, beside /healthz on the same server.

Starts gunicorn (``web:create_app()``) and one Celery worker on the ``webhooks``
queue against a throw-away PostgreSQL database and Redis db 13. Each round
pre-builds 4,000 unique events (Stripe's shape; types such as
``customer.created`` / ``invoice.created`` that are stored and then ``ignored``
without calling Stripe) plus 1,000 re-sends of earlier ones with the exact same
body, shuffled so that a re-send comes after its original; every body is signed
with ``stripe.WebhookSignature.generate_signature_header`` just before the phase.

32 concurrent clients with keep-alive post them; the same client code sends as
many ``GET /healthz`` in a phase of its own. Phases alternate: healthz,
webhooks, healthz, webhooks. The client is asyncio + aiohttp (one process, one
thread, a connector limited to 32 connections): on a 2-core box it costs less
CPU than 32 threads with requests and so takes less from the server it measures.

Reported: accepted events/s and p50/p99 latency, /healthz requests/s and
p50/p99, their ratio (target >= 0.5, p99 < 50 ms), non-2xx counts; then, after
waiting (bounded) for the worker: stored rows == unique ids sent, every row has
an outcome, every ``attempts`` == 1 (processed once). Each phase starts only
after the worker has finished the previous webhooks phase's backlog (bounded
wait), so /healthz is not measured against a draining worker; the worker does
run during the webhooks phases, as in production.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    /work/venv/bin/python bench/webhooks.py [--gunicorn-workers 2]
        [--worker-class gthread --threads 4] [--celery-concurrency 2]
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
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import stripe
from harness import (
    REDIS_URL,
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
TYPES = ("customer.created", "invoice.created", "invoice.finalized", "product.created")


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
    prefix = {"customer": "cus", "invoice": "in", "product": "prod"}[short]
    obj: dict[str, Any] = {
        "id": f"{prefix}_{secrets.token_hex(7)}",
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
            status="draft" if kind == "invoice.created" else "open",
            lines={"object": "list", "data": [], "has_more": False},
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


def wait_drained(database_url: str, timeout: float) -> tuple[float, int]:
    """Seconds until every stored event has an outcome (bounded), and how many still lack one."""
    engine = create_engine(database_url, poolclass=NullPool)
    began = time.perf_counter()
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
    finally:
        engine.dispose()
    return time.perf_counter() - began, pending


def check_database(
    database_url: str, expected: set[str], timeout: float, meter: CpuMeter
) -> list[str]:
    """Wait (bounded) until every stored event has an outcome, then check once-only."""
    engine = create_engine(database_url)
    lines: list[str] = []
    try:
        began = time.perf_counter()
        before = meter.sample()
        deadline = time.monotonic() + timeout
        pending = -1
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                pending = connection.scalar(
                    select(func.count()).where(WebhookEvent.outcome.is_(None))
                )
                stored = connection.scalar(select(func.count()).select_from(WebhookEvent))
            if pending == 0 and stored >= len(expected):
                break
            time.sleep(0.5)
        waited = time.perf_counter() - began
        cpu = meter.delta(before, meter.sample())
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    WebhookEvent.id,
                    WebhookEvent.outcome,
                    WebhookEvent.attempts,
                    WebhookEvent.received_at,
                    WebhookEvent.processed_at,
                )
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
        and set(attempts) == {1}
    )
    lines.append(
        f"stored rows {len(ids)} (unique ids sent {len(expected)}), missing {len(missing)}, "
        f"unexpected {len(unexpected)}"
    )
    lines.append(f"outcomes {dict(outcomes)}; attempts {dict(sorted(attempts.items()))}")
    done = [r.processed_at for r in rows if r.processed_at is not None]
    if done:
        first = min(r.received_at for r in rows)
        span = (max(done) - first).total_seconds()
        lines.append(
            f"worker: all {len(done)} handled {span:.1f} s after the first was stored "
            f"({len(done) / span:.0f}/s); waited {waited:.1f} s after the last phase"
        )
    spent = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    lines.append(f"CPU seconds while waiting: {spent}")
    if pending:
        lines.append(f"!!! {pending} events still without an outcome after {timeout:.0f} s")
    lines.append(
        "stored once and processed once: "
        + ("YES" if once and not pending else "NO  <-- every event must be stored once")
    )
    return lines


def print_phase(phase: Phase) -> None:
    unit = "accepted events" if phase.kind == "webhooks" else "requests"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default="sync")
    parser.add_argument("--threads", type=int, default=4, help="with --worker-class gthread")
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--unique", type=int, default=4000)
    parser.add_argument("--duplicates", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="healthz+webhooks pairs")
    parser.add_argument(
        "--worker-after",
        action="store_true",
        help="diagnostic: start the Celery worker only after the last phase, so the "
        "webhooks phases measure the endpoint without the worker competing for CPU",
    )
    parser.add_argument("--drain-timeout", type=float, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    terminate_on_sigterm()
    started = time.monotonic()
    rng = random.Random(args.seed)
    phases: list[Phase] = []
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
            )
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            gunicorn = processes.spawn(
                "web",
                gunicorn_argv(port, args.gunicorn_workers, args.worker_class, args.threads),
                env,
            )
            meter = CpuMeter({"web (gunicorn)": gunicorn.pid})

            def start_worker() -> None:
                worker = processes.spawn(
                    "worker", celery_argv("webhooks", args.celery_concurrency), env
                )
                wait_worker(celery_client(REDIS_URL), processes)
                meter.groups["worker (celery)"] = worker.pid

            wait_http(f"{base}/healthz", processes)
            if not args.worker_after:
                start_worker()
            total = args.unique + args.duplicates
            health: list[Request] = [("GET", None, {})] * total
            blast(f"{base}/healthz", health[:200], args.clients)  # warm the pools
            expected: set[str] = set()
            for number in range(1, args.rounds + 1):
                phase, _ = run_phase(
                    "healthz", number, f"{base}/healthz", health, args.clients, meter, processes
                )
                phases.append(phase)
                print_phase(phase)
                bodies, ids = build_events(args.unique, args.duplicates, rng)
                expected.update(ids)
                signed: list[Request] = [
                    (
                        "POST",
                        body,
                        {
                            "Content-Type": "application/json",
                            "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                                body, SECRET
                            ),
                        },
                    )
                    for body in bodies
                ]
                phase, results = run_phase(
                    "webhooks",
                    number,
                    f"{base}/webhooks/stripe",
                    signed,
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
                if not args.worker_after:
                    drained, left = wait_drained(database_url, args.drain_timeout)
                    phase.notes.append(
                        f"the worker finished this phase's backlog {drained:.1f} s after it "
                        + "ended"
                        + (f" ({left} STILL PENDING)" if left else "")
                        + "; the next phase starts after that"
                    )
                phases.append(phase)
                print_phase(phase)
            if args.worker_after:
                start_worker()
            checks = check_database(database_url, expected, args.drain_timeout, meter)
    finally:
        reset_redis(REDIS_URL)
    print("\n=== summary ===")
    print(
        f"{machine_facts()} gunicorn: {args.gunicorn_workers} workers, {args.worker_class}"
        + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
        + f"; celery -Q webhooks --concurrency {args.celery_concurrency}"
        + (" (started after the phases)" if args.worker_after else " (running)")
        + "; "
        f"{args.clients} aiohttp clients; {args.unique}+{args.duplicates} events per round"
    )
    print(f"{'phase':<13}{'2xx/sent':>12}{'rate/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for p in phases:
        print(
            f"{p.kind + ' #' + str(p.number):<13}{f'{p.accepted}/{p.sent}':>12}{p.rate:>9.0f}"
            f"{p.p50_ms:>9.1f}{p.p99_ms:>9.1f}{p.non_2xx:>9}"
        )
    rates: dict[str, float] = {}
    for kind in ("healthz", "webhooks"):
        values = [p.rate for p in phases if p.kind == kind]
        if values:
            median, mean = summary(values)
            rates[kind] = median
            worst = max(p.p99_ms for p in phases if p.kind == kind)
            print(
                f"{kind:<9} rate median {median:.0f}/s, mean {mean:.0f}/s, worst p99 {worst:.1f} ms"
            )
    if len(rates) == 2:
        ratio = rates["webhooks"] / rates["healthz"]
        worst = max(p.p99_ms for p in phases if p.kind == "webhooks")
        print(
            f"ratio webhooks/healthz (medians): {ratio:.2f} (target >= 0.50: "
            f"{'MET' if ratio >= 0.5 else 'NOT MET'}); webhooks p99 {worst:.1f} ms "
            f"(target < 50 ms: {'MET' if worst < 50 else 'NOT MET'})"
        )
    for line in checks:
        print(line)
    print(f"run took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
