"""Purchases per second through the whole stack, beside the same Stripe calls made directly.

Measures, in one run and in alternating phases (direct, pipeline, direct, pipeline):

- pipeline: gunicorn (web) + one Celery worker (``--width`` processes) + PostgreSQL +
  Redis (db 13) + localstripe. 30 organizations each get one buyer and one plan; one
  PaymentMethod per purchase is made beforehand (as Stripe.js would); then 300
  purchases (10 per organization, each to a higher seat count) go in over HTTP
  (``POST /api/cart/items`` with confirm, then ``POST /api/checkout`` with an
  Idempotency-Key), one client thread per organization. Figures come from the
  database: purchases/s = succeeded / (last ``completed_at`` - first ``created_at``),
  latency = ``completed_at`` - the moment the client got the checkout's 202.
- direct: the same Stripe work per purchase (customer once per organization,
  attach the card, create and confirm a PaymentIntent, set the customer's
  default card) with the ``stripe`` SDK from a ``ThreadPoolExecutor(width)``;
  no web, queue or database.

localstripe is reset (``DELETE /_config/data``) before every phase. No beat is
started (no sweeps): every purchase is driven by its own wake-up calls only, and
no webhooks are registered with localstripe. Target: pipeline rate >= 0.7 x direct.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    /work/venv/bin/python bench/purchases.py [--width 4] [--rounds 2] [--gunicorn-workers 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import requests
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
from sqlalchemy import select, text

from shared import queues
from shared.bootstrap import Runtime, build
from shared.cli.embedded import free_port, start_localstripe
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.services import provisioning
from shared.store.models import Purchase

CARD = "4242424242424242"
FIRST_SEATS = 3
WEBHOOK_SECRET = "whsec_bench"


@dataclass
class Phase:
    kind: str
    number: int
    purchases: int
    succeeded: int
    failed: int
    rate: float
    p50: float
    p95: float
    wall: float
    cpu: dict[str, float]
    notes: list[str] = field(default_factory=list)


def stripe_client(base: str) -> stripe.StripeClient:
    """Configured like the app's gateway: requests, no SDK retries."""
    return stripe.StripeClient(
        LOCALSTRIPE_KEY,
        base_addresses={"api": base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=20),
    )


def reset_localstripe(base: str) -> None:
    requests.delete(f"{base}/_config/data", timeout=10).raise_for_status()


def new_cards(client: stripe.StripeClient, count: int) -> list[str]:
    """PaymentMethods as Stripe.js makes them from the card form (not timed)."""

    def one(_: int) -> str:
        method = client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": CARD, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        return str(method.id)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


# --- direct -------------------------------------------------------------------------------


def run_direct(
    base: str, number: int, orgs: int, per_org: int, width: int, meter: CpuMeter
) -> Phase:
    client = stripe_client(base)
    cards = new_cards(client, orgs * per_org)
    customers: dict[int, str] = {}
    locks = [threading.Lock() for _ in range(orgs)]

    def customer_for(org: int) -> str:
        with locks[org]:
            if org not in customers:
                made = client.v1.customers.create(
                    params={"name": f"Direct {org}", "metadata": {"organization_id": str(org)}}
                )
                customers[org] = str(made.id)
            return customers[org]

    def purchase(job: int) -> tuple[float, float, str]:
        org, card = job % orgs, cards[job]
        started = time.perf_counter()
        customer = customer_for(org)
        client.v1.payment_methods.attach(card, params={"customer": customer})
        intent = client.v1.payment_intents.create(
            params={
                "amount": 36301,
                "currency": "cad",
                "customer": customer,
                "payment_method": card,
                "metadata": {"purchase_id": str(job)},
            }
        )
        confirmed = client.v1.payment_intents.confirm(intent.id)
        client.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": card}}
        )
        return started, time.perf_counter(), str(confirmed.status)

    before = meter.sample()
    began = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        done = list(pool.map(purchase, range(orgs * per_org)))
    wall = time.perf_counter() - began
    cpu = meter.delta(before, meter.sample())
    ok = [d for d in done if d[2] == "succeeded"]
    span = max(d[1] for d in done) - min(d[0] for d in done)
    durations = [d[1] - d[0] for d in done]
    return Phase(
        "direct",
        number,
        len(done),
        len(ok),
        len(done) - len(ok),
        len(ok) / span,
        percentile(durations, 50),
        percentile(durations, 95),
        wall,
        cpu,
    )


# --- pipeline -----------------------------------------------------------------------------


@dataclass
class Tenant:
    organization_id: int
    token: str
    subscription_id: int


def provision(runtime: Runtime, tag: str, orgs: int) -> list[Tenant]:
    tenants = []
    start = date.today() - timedelta(days=100)
    for i in range(orgs):
        org = provisioning.create_organization(
            runtime.uow(), f"Bench {tag}-{i}", "cad", "America/Toronto"
        )
        _, token = provisioning.create_user(
            runtime.uow(), org, f"buyer-{tag}-{i}@bench.example.com", "buyer"
        )
        sub = provisioning.create_subscription(
            runtime.uow(), org, "XLGL", 50000, "year", FIRST_SEATS, start
        )
        tenants.append(Tenant(org, token, sub))
    return tenants


class TaskEvents:
    """Counts what the worker's tasks returned, from Celery's own task events."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.results: collections.Counter[str] = collections.Counter()
        self.runtime: collections.Counter[str] = collections.Counter()
        self.receiver: Any = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as connection:
            self.receiver = self.app.events.Receiver(
                connection,
                handlers={
                    "task-succeeded": self._succeeded,
                    "task-failed": self._other("failed"),
                    "task-retried": self._other("retried"),
                },
            )
            self.ready.set()
            with contextlib.suppress(Exception):
                self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _succeeded(self, event: dict[str, Any]) -> None:
        result = str(event.get("result", "?")).strip("'\"")
        self.results[result] += 1
        self.runtime[result] += float(event.get("runtime") or 0)

    def _other(self, name: str) -> Any:
        def handle(event: dict[str, Any]) -> None:
            self.results[name] += 1

        return handle

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)
        time.sleep(0.5)  # the fanout queue is bound once capture starts consuming

    def take(self) -> tuple[dict[str, int], dict[str, float]]:
        results, runtime = dict(self.results), dict(self.runtime)
        self.results.clear()
        self.runtime.clear()
        return results, runtime

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=5)


def submit(
    web: str, tenant: Tenant, cards: list[str]
) -> tuple[list[tuple[int, float]], list[str], list[float]]:
    """One buyer's purchases, one after another (a cart holds one line per plan).

    Returns (purchase id, wall time of the 202), errors, and each request's seconds.
    """
    answers: list[tuple[int, float]] = []
    errors: list[str] = []
    seconds: list[float] = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {tenant.token}"
        for k, card in enumerate(cards):
            started = time.perf_counter()
            added = session.post(
                f"{web}/api/cart/items",
                json={
                    "subscription_id": tenant.subscription_id,
                    "active_seats": FIRST_SEATS + k + 1,
                    "confirm": True,
                },
                timeout=30,
            )
            seconds.append(time.perf_counter() - started)
            if added.status_code != 201:
                errors.append(f"cart {added.status_code} {added.text[:200]}")
                continue
            started = time.perf_counter()
            answer = session.post(
                f"{web}/api/checkout",
                json={"payment_method": card},
                headers={"Idempotency-Key": str(uuid.uuid4())},
                timeout=30,
            )
            seconds.append(time.perf_counter() - started)
            if answer.status_code != 202:
                errors.append(f"checkout {answer.status_code} {answer.text[:200]}")
                continue
            answers.append((int(answer.json()["purchase_id"]), time.time()))
    return answers, errors, seconds


def deadlocks(runtime: Runtime) -> int:
    """PostgreSQL's count of deadlocks in this database (its statistics lag up to ~1 s)."""
    with runtime.engine.connect() as connection:
        return int(
            connection.scalar(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
            or 0
        )


def run_pipeline(
    base: str,
    web: str,
    runtime: Runtime,
    events: TaskEvents,
    number: int,
    orgs: int,
    per_org: int,
    timeout: float,
    meter: CpuMeter,
    processes: Processes,
) -> Phase:
    tenants = provision(runtime, f"r{number}", orgs)
    cards = new_cards(stripe_client(base), orgs * per_org)
    events.take()
    deadlocks_before = deadlocks(runtime)
    before = meter.sample()
    began = time.perf_counter()
    with ThreadPoolExecutor(orgs) as pool:
        submitted = list(
            pool.map(
                lambda i: submit(web, tenants[i], cards[i * per_org : (i + 1) * per_org]),
                range(orgs),
            )
        )
    submit_seconds = time.perf_counter() - began
    answered = dict(a for answers, _, _ in submitted for a in answers)
    errors = [e for _, errs, _ in submitted for e in errs]
    http = [t for _, _, times in submitted for t in times]
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        processes.check_alive()
        with runtime.uow() as uow:
            rows = list(
                uow.session.execute(
                    select(
                        Purchase.id,
                        Purchase.status,
                        Purchase.created_at,
                        Purchase.completed_at,
                        Purchase.failure_code,
                    ).where(Purchase.id.in_(list(answered)))
                )
            )
        if all(r.status in ("succeeded", "failed") for r in rows):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - began
    cpu = meter.delta(before, meter.sample())
    time.sleep(1.5)  # let the last task events arrive
    results, task_seconds = events.take()
    succeeded = [r for r in rows if r.status == "succeeded"]
    failed = [r for r in rows if r.status == "failed"]
    notes = [
        f"submission: {len(http)} HTTP requests, {len(answered)} checkouts answered 202 in "
        f"{submit_seconds:.2f} s; request p50 {percentile(http, 50) * 1000:.0f} ms, "
        f"p95 {percentile(http, 95) * 1000:.0f} ms, max {max(http) * 1000:.0f} ms",
        f"PostgreSQL deadlocks in this phase: {deadlocks(runtime) - deadlocks_before}",
    ]
    if errors:
        notes.append(f"{len(errors)} HTTP errors, first: {errors[0]}")
    open_ = [r for r in rows if r.status not in ("succeeded", "failed")]
    if open_:
        notes.append(f"NOT FINISHED after {timeout:.0f} s: {len(open_)} purchases still open")
    if failed:
        codes = collections.Counter(r.failure_code for r in failed)
        notes.append(f"FAILED purchases by code: {dict(codes)}")
    notes.append(
        "worker task results: "
        + ", ".join(
            f"{k}={v} ({task_seconds.get(k, 0):.1f} s in tasks)" for k, v in sorted(results.items())
        )
    )
    done = [r for r in rows if r.completed_at is not None]
    if succeeded:
        span = (
            max(r.completed_at for r in succeeded) - min(r.created_at for r in rows)
        ).total_seconds()
        latencies = [r.completed_at.timestamp() - answered[r.id] for r in succeeded]
        created = [(r.completed_at - r.created_at).total_seconds() for r in done]
        notes.append(
            f"created_at->completed_at p50 {percentile(created, 50):.3f} s, "
            f"p95 {percentile(created, 95):.3f} s"
        )
        rate = len(succeeded) / span
    else:
        latencies, rate = [], 0.0
    return Phase(
        "pipeline",
        number,
        orgs * per_org,
        len(succeeded),
        len(failed),
        rate,
        percentile(latencies, 50),
        percentile(latencies, 95),
        wall,
        cpu,
        notes,
    )


# --- report -------------------------------------------------------------------------------


def print_phase(phase: Phase) -> None:
    print(
        f"{phase.kind} #{phase.number}: {phase.succeeded}/{phase.purchases} succeeded, "
        f"{phase.failed} failed, {phase.rate:.1f} purchases/s, p50 {phase.p50:.3f} s, "
        f"p95 {phase.p95:.3f} s, wall {phase.wall:.1f} s",
        flush=True,
    )
    if phase.succeeded != phase.purchases:
        print(f"  !!! only {phase.succeeded} of {phase.purchases} purchases succeeded", flush=True)
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(phase.cpu.items(), key=lambda kv: -kv[1]))
    busy = sum(phase.cpu.values())
    print(
        f"  CPU seconds: {cpu}; machine busy {busy:.1f} of "
        f"{phase.wall * (os.cpu_count() or 1):.1f} core-seconds",
        flush=True,
    )
    for note in phase.notes:
        print(f"  {note}", flush=True)


def print_summary(phases: list[Phase], args: argparse.Namespace) -> None:
    print("\n=== summary ===")
    print(
        f"{machine_facts()} width={args.width} gunicorn_workers={args.gunicorn_workers} "
        f"orgs={args.orgs} purchases/org={args.per_org} beat=no"
    )
    print(f"{'phase':<12}{'ok/total':>10}{'purch/s':>10}{'p50 s':>9}{'p95 s':>9}{'wall s':>9}")
    for p in phases:
        print(
            f"{p.kind + ' #' + str(p.number):<12}{f'{p.succeeded}/{p.purchases}':>10}"
            f"{p.rate:>10.1f}{p.p50:>9.3f}{p.p95:>9.3f}{p.wall:>9.1f}"
        )
    rates = {}
    for kind in ("direct", "pipeline"):
        values = [p.rate for p in phases if p.kind == kind]
        if not values:
            return
        median, mean = summary(values)
        rates[kind] = median
        print(f"{kind:<9} rate median {median:.1f}/s, mean {mean:.1f}/s")
    ratio = rates["pipeline"] / rates["direct"] if rates["direct"] else float("nan")
    verdict = "MET" if ratio >= 0.7 else "NOT MET"
    print(f"ratio pipeline/direct (medians): {ratio:.2f}  (target >= 0.70: {verdict})")
    bad = [p for p in phases if p.succeeded != p.purchases]
    if bad:
        names = ", ".join(f"{p.kind} #{p.number}" for p in bad)
        print(f"!!! NOT ALL PURCHASES SUCCEEDED in: {names}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4, help="worker processes = direct threads")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--orgs", type=int, default=30)
    parser.add_argument("--per-org", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="direct+pipeline pairs")
    parser.add_argument("--timeout", type=float, default=240, help="per pipeline phase, s")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    terminate_on_sigterm()
    started = time.monotonic()
    reset_redis(REDIS_URL)
    phases: list[Phase] = []
    try:
        with (
            log_folder(args.keep_logs) as logs,
            scratch_database() as database_url,
            Processes(logs) as processes,
        ):
            stripe_port = free_port()
            processes.adopt("localstripe", start_localstripe(stripe_port, logs / "localstripe.log"))
            base = f"http://127.0.0.1:{stripe_port}"
            env = python_env(
                DATABASE_URL=database_url,
                REDIS_URL=REDIS_URL,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                STRIPE_API_BASE=base,
                STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                SEATS_SWEEP_INTERVAL="5",
                SEATS_STUCK_AFTER="30",
            )
            web_port = free_port()
            web = f"http://127.0.0.1:{web_port}"
            gunicorn = processes.spawn(
                "web", gunicorn_argv(web_port, args.gunicorn_workers, "sync", 1), env
            )
            worker = processes.spawn("worker", celery_argv(",".join(queues.ALL), args.width), env)
            wait_http(f"{web}/healthz", processes)
            app = celery_client(REDIS_URL)
            wait_worker(app, processes)
            meter = CpuMeter(
                {
                    "web (gunicorn)": gunicorn.pid,
                    "worker (celery)": worker.pid,
                    "localstripe": processes.children[0][1].pid,
                }
            )
            settings = replace(
                Settings.from_env({}),
                database_url=database_url,
                redis_url=REDIS_URL,
                stripe_api_key=LOCALSTRIPE_KEY,
                stripe_api_base=base,
            )
            runtime = build(settings, pool_size=2)
            events = TaskEvents(app)
            events.start()
            try:
                for number in range(1, args.rounds + 1):
                    reset_localstripe(base)
                    phases.append(
                        run_direct(base, number, args.orgs, args.per_org, args.width, meter)
                    )
                    print_phase(phases[-1])
                    reset_localstripe(base)
                    phases.append(
                        run_pipeline(
                            base,
                            web,
                            runtime,
                            events,
                            number,
                            args.orgs,
                            args.per_org,
                            args.timeout,
                            meter,
                            processes,
                        )
                    )
                    print_phase(phases[-1])
            finally:
                events.stop()
                runtime.engine.dispose()
    finally:
        reset_redis(REDIS_URL)
    print_summary(phases, args)
    print(f"run took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
