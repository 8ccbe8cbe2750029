"""Purchases per second through the whole stack, beside the same Stripe calls made directly.

Measures, in one run and in alternating phases (direct, pipeline, direct, pipeline):

- pipeline: the stack as deployed: gunicorn (``web/gunicorn_conf.py``: gthread,
  keep-alive), Celery workers on a thread pool (``--pool threads``), PostgreSQL, Redis
  (db 13) and localstripe, whose webhooks are registered with the web as in production
  (every event is stored, the handled ones processed by the worker). ``--plans``
  organizations each get one buyer and one plan; one PaymentMethod per purchase is
  made beforehand (as Stripe.js would); then ``--plans x --per-plan`` purchases (each to
  a higher seat count) go in over HTTP (``POST /api/cart/items`` with confirm, then
  ``POST /api/checkout`` with an Idempotency-Key) from ``--buyers`` client threads, each
  buyer's purchases one after another. purchases/s = succeeded / (last
  ``completed_at`` - first ``created_at``); latency = ``completed_at`` - the moment the
  client got the checkout's 202.
- direct: the same Stripe work per purchase (customer once per organization, attach
  the card, create and confirm a PaymentIntent, set the customer's default card) through
  the app's own adapter (``StripeGateway``) from ``--buyers`` threads; no web, queue or
  database.

``--latency-ms`` delays every answer of the stand-in, as real Stripe's 100 to 300 ms
would. localstripe is reset (``DELETE /_config/data``) before every phase. No beat
(no sweeps): each purchase moves by its own messages only.

Per purchase it prints CPU ms by process (web, worker, PostgreSQL, Redis, stand-in,
the client), the PostgreSQL statements and transactions of the web and the worker and
the Celery messages sent, counted inside those processes by ``bench/probe``; a phase's
CPU and counts include the webhooks it caused, up to the last one processed.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    .venv/bin/python bench/purchases.py [--latency-ms 100] [--worker-processes 2]
        [--web-processes 2] [--pgbouncer] [--no-webhooks] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import requests
from harness import (
    REDIS_URL,
    SERVER_URL,
    CpuMeter,
    Processes,
    celery_argv,
    celery_client,
    gunicorn_argv,
    log_folder,
    machine_facts,
    percentile,
    pgbouncer,
    probe_counts,
    probe_env,
    python_env,
    reset_localstripe,
    reset_redis,
    scratch_database,
    stripe_client,
    summary,
    terminate_on_sigterm,
    wait_http,
    wait_worker,
)
from sqlalchemy import func, select, text

from shared import queues
from shared.bootstrap import Runtime, build
from shared.cli.embedded import free_port, start_localstripe
from shared.cli.supervisor import register_webhook
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.payments.gateway import PaymentRequest
from shared.payments.stripe_adapter import StripeGateway
from shared.services import provisioning
from shared.store.models import Purchase, WebhookEvent

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
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def new_cards(client: Any, count: int) -> list[str]:
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
    base: str, number: int, plans: int, per_plan: int, threads: int, meter: CpuMeter
) -> Phase:
    """The four calls through the app's own adapter (`StripeGateway`: its transport, its
    keys, its reading of the answers), so the pipeline is compared with exactly the Stripe
    work it does and nothing else."""
    gateway = StripeGateway(LOCALSTRIPE_KEY, base)
    cards = new_cards(stripe_client(base), plans * per_plan)
    customers: dict[int, str] = {}
    locks = [threading.Lock() for _ in range(plans)]

    def customer_for(org: int) -> str:
        with locks[org]:
            if org not in customers:
                customers[org] = gateway.create_customer(number * 100_000 + org, f"Direct {org}")
            return customers[org]

    def purchase(job: int) -> tuple[float, float, str]:
        org, card = job % plans, cards[job]
        started = time.perf_counter()
        customer = customer_for(org)
        gateway.attach_card(card, customer)
        intent = gateway.create_payment(
            PaymentRequest(
                f"direct-{number}-{job}", 36301, "cad", customer, card, {"purchase_id": str(job)}
            )
        )
        confirmed = gateway.confirm_payment(intent.id)
        gateway.set_default_card(customer, card)
        return started, time.perf_counter(), confirmed.status

    before = meter.sample()
    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(purchase, range(plans * per_plan)))
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


def provision(runtime: Runtime, tag: str, plans: int) -> list[Tenant]:
    tenants = []
    start = date.today() - timedelta(days=100)
    for i in range(plans):
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


def wait_webhooks(runtime: Runtime, timeout: float) -> tuple[int, int]:
    """Until the stand-in has stopped sending and every stored event has an outcome:
    (events stored, still without an outcome)."""
    deadline = time.monotonic() + timeout
    last, steady = -1, 0
    stored = pending = 0
    while time.monotonic() < deadline and steady < 4:
        with runtime.uow() as uow:
            stored = int(uow.session.scalar(select(func.count(WebhookEvent.id))) or 0)
            pending = int(
                uow.session.scalar(
                    select(func.count(WebhookEvent.id)).where(WebhookEvent.outcome.is_(None))
                )
                or 0
            )
        steady = steady + 1 if (stored == last and pending == 0) else 0
        last = stored
        time.sleep(0.25)
    return stored, pending


def run_pipeline(
    base: str,
    web: str,
    runtime: Runtime,
    args: argparse.Namespace,
    number: int,
    meter: CpuMeter,
    processes: Processes,
    probe: Path,
) -> Phase:
    plans, per_plan = args.plans, args.per_plan
    tenants = provision(runtime, f"r{number}", plans)
    cards = new_cards(stripe_client(base), plans * per_plan)
    with runtime.uow() as uow:
        events_before = int(uow.session.scalar(select(func.count(WebhookEvent.id))) or 0)
    deadlocks_before = deadlocks(runtime)
    time.sleep(0.6)  # the probes' files are written four times a second
    counted_before = probe_counts(probe)
    before = meter.sample()
    began = time.perf_counter()
    with ThreadPoolExecutor(args.buyers) as pool:
        submitted = list(
            pool.map(
                lambda i: submit(web, tenants[i], cards[i * per_plan : (i + 1) * per_plan]),
                range(plans),
            )
        )
    submit_seconds = time.perf_counter() - began
    answered = dict(a for answers, _, _ in submitted for a in answers)
    errors = [e for _, errs, _ in submitted for e in errs]
    http = [t for _, _, times in submitted for t in times]
    deadline = time.monotonic() + args.timeout
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
    stored, pending = wait_webhooks(runtime, args.timeout)
    with runtime.uow() as uow:
        by_type = uow.session.execute(
            select(
                WebhookEvent.type,
                WebhookEvent.outcome,
                func.count(WebhookEvent.id),
                func.sum(WebhookEvent.attempts),
            ).group_by(WebhookEvent.type, WebhookEvent.outcome)
        ).all()
    cpu = meter.delta(before, meter.sample())
    time.sleep(0.6)
    counted = probe_counts(probe)
    counted.subtract(counted_before)
    succeeded = [r for r in rows if r.status == "succeeded"]
    failed = [r for r in rows if r.status == "failed"]
    notes = [
        f"submission: {len(http)} HTTP requests, {len(answered)} checkouts answered 202 in "
        f"{submit_seconds:.2f} s; request p50 {percentile(http, 50) * 1000:.0f} ms, "
        f"p95 {percentile(http, 95) * 1000:.0f} ms, max {max(http) * 1000:.0f} ms",
        f"webhook events stored in this phase: {stored - events_before}"
        + (f" ({pending} STILL WITHOUT AN OUTCOME)" if pending else ", all with an outcome"),
        f"PostgreSQL deadlocks in this phase: {deadlocks(runtime) - deadlocks_before}",
        "webhook events so far (type outcome: events/attempts): "
        + ", ".join(f"{t} {o}: {n}/{a}" for t, o, n, a in by_type),
    ]
    if errors:
        notes.append(f"{len(errors)} HTTP errors, first: {errors[0]}")
    open_ = [r for r in rows if r.status not in ("succeeded", "failed")]
    if open_:
        notes.append(f"NOT FINISHED after {args.timeout:.0f} s: {len(open_)} purchases still open")
    if failed:
        codes = collections.Counter(r.failure_code for r in failed)
        notes.append(f"FAILED purchases by code: {dict(codes)}")
    if succeeded:
        span = (
            max(r.completed_at for r in succeeded) - min(r.created_at for r in rows)
        ).total_seconds()
        latencies = [r.completed_at.timestamp() - answered[r.id] for r in succeeded]
        rate = len(succeeded) / span
    else:
        latencies, rate = [], 0.0
    return Phase(
        "pipeline",
        number,
        plans * per_plan,
        len(succeeded),
        len(failed),
        rate,
        percentile(latencies, 50),
        percentile(latencies, 95),
        wall,
        cpu,
        {k: v for k, v in counted.items() if v},
        notes,
    )


# --- report -------------------------------------------------------------------------------


def per_purchase(phase: Phase) -> dict[str, float]:
    """CPU ms by process, round trips, messages and charge tasks, each per purchase."""
    n = max(1, phase.succeeded)
    figures = {f"cpu ms {k}": v * 1000 / n for k, v in phase.cpu.items() if k != "other"}
    figures["cpu ms all processes"] = sum(figures.values())
    if phase.counts:
        statements = phase.counts.get("statements", 0)
        transactions = phase.counts.get("transactions", 0)
        published = sum(v for k, v in phase.counts.items() if k.startswith("published "))
        charges = sum(
            v for k, v in phase.counts.items() if k.startswith("ran seats.charge_purchase ")
        )
        figures["statements"] = statements / n
        figures["transactions"] = transactions / n
        figures["rolled back"] = phase.counts.get("rolled back", 0) / n
        figures["round trips"] = (statements + 2 * transactions) / n
        figures["messages"] = published / n
        figures["charge tasks"] = charges / n
    return figures


def print_phase(phase: Phase) -> None:
    print(
        f"{phase.kind} #{phase.number}: {phase.succeeded}/{phase.purchases} succeeded, "
        f"{phase.failed} failed, {phase.rate:.1f} purchases/s, p50 {phase.p50:.3f} s, "
        f"p95 {phase.p95:.3f} s, wall {phase.wall:.1f} s",
        flush=True,
    )
    if phase.succeeded != phase.purchases:
        print(f"  !!! only {phase.succeeded} of {phase.purchases} purchases succeeded", flush=True)
    figures = per_purchase(phase)
    cpu = ", ".join(
        f"{k[7:]} {v:.1f}"
        for k, v in sorted(figures.items(), key=lambda kv: -kv[1])
        if k.startswith("cpu ms ")
    )
    print(
        f"  CPU ms per purchase: {cpu}; other load on the machine "
        f"{phase.cpu.get('other', 0.0):.1f} s",
        flush=True,
    )
    if phase.counts:
        print(
            f"  per purchase: {figures['statements']:.1f} statements in "
            f"{figures['transactions']:.1f} transactions ({figures['rolled back']:.2f} rolled "
            f"back) = {figures['round trips']:.1f} "
            f"PostgreSQL round trips; {figures['messages']:.2f} messages; "
            f"{figures['charge tasks']:.2f} charge tasks",
            flush=True,
        )
        ran: collections.Counter[str] = collections.Counter()
        for key, value in phase.counts.items():
            if key.startswith("ran "):
                ran[key[4:].split(" in ", 1)[0]] += value  # "Retry in 0.3s: ..." as one
        print(f"  tasks run: {dict(sorted(ran.items()))}", flush=True)
    for note in phase.notes:
        print(f"  {note}", flush=True)


def print_summary(phases: list[Phase], args: argparse.Namespace) -> dict[str, Any]:
    print("\n=== summary ===")
    setup = (
        f"{machine_facts()} web {args.web_processes} x gthread {args.web_threads}, "
        f"worker {args.worker_processes} x threads {args.worker_threads}, "
        f"{args.buyers} buyers, {args.plans} plans x {args.per_plan} purchases, "
        f"stand-in latency {args.latency_ms:.0f} ms"
        + (", PgBouncer (session)" if args.pgbouncer else "")
        + (", no webhooks" if args.no_webhooks else "")
    )
    print(setup)
    print(f"{'phase':<12}{'ok/total':>10}{'purch/s':>10}{'p50 s':>9}{'p95 s':>9}{'wall s':>9}")
    for p in phases:
        print(
            f"{p.kind + ' #' + str(p.number):<12}{f'{p.succeeded}/{p.purchases}':>10}"
            f"{p.rate:>10.1f}{p.p50:>9.3f}{p.p95:>9.3f}{p.wall:>9.1f}"
        )
    rates: dict[str, float] = {}
    for kind in ("direct", "pipeline"):
        values = [p.rate for p in phases if p.kind == kind]
        if values:
            median, mean = summary(values)
            rates[kind] = median
            print(f"{kind:<9} rate median {median:.1f}/s, mean {mean:.1f}/s")
    ratio = rates.get("pipeline", 0.0) / rates["direct"] if rates.get("direct") else float("nan")
    print(f"ratio pipeline/direct (medians): {ratio:.2f}")
    figures: dict[str, float] = {}
    for phase in (p for p in phases if p.kind == "pipeline"):
        for key, value in per_purchase(phase).items():
            figures.setdefault(key, []).append(value)  # type: ignore[attr-defined]
    medians = {k: summary(v)[0] for k, v in figures.items()}  # type: ignore[arg-type]
    direct_cpu = [per_purchase(p)["cpu ms all processes"] for p in phases if p.kind == "direct"]
    if direct_cpu:
        medians["direct cpu ms all processes"] = summary(direct_cpu)[0]
    for key, value in medians.items():
        print(f"pipeline per purchase (median of phases): {key} {value:.2f}")
    bad = [p for p in phases if p.succeeded != p.purchases]
    if bad:
        names = ", ".join(f"{p.kind} #{p.number}" for p in bad)
        print(f"!!! NOT ALL PURCHASES SUCCEEDED in: {names}")
    return {
        "setup": setup,
        "rates": rates,
        "ratio": ratio,
        "per_purchase": medians,
        "all_succeeded": not bad,
        "phases": [asdict(p) for p in phases],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=32, help="client threads = direct threads")
    parser.add_argument("--plans", type=int, default=100)
    parser.add_argument("--per-plan", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0, help="added to each Stripe answer")
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--worker-threads", type=int, default=32)
    parser.add_argument("--pgbouncer", action="store_true", help="PostgreSQL behind PgBouncer")
    parser.add_argument(
        "--no-webhooks",
        action="store_true",
        help="the stand-in's events go nowhere: the charge alone (as benchmarks before 4ed10cf)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="direct+pipeline pairs")
    parser.add_argument("--timeout", type=float, default=240, help="per pipeline phase, s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
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
            tempfile.TemporaryDirectory(
                prefix="seats-probe-", ignore_cleanup_errors=True
            ) as probe_folder,
            contextlib.ExitStack() as stack,
        ):
            probe = Path(probe_folder)
            stripe_port = free_port()
            stand_in = start_localstripe(stripe_port, logs / "localstripe.log", args.latency_ms)
            processes.adopt("localstripe", stand_in)
            base = f"http://127.0.0.1:{stripe_port}"
            app_database = database_url
            if args.pgbouncer:
                bounced = stack.enter_context(pgbouncer(processes, SERVER_URL))
                app_database = bounced.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1]
            env = python_env(
                DATABASE_URL=app_database,
                REDIS_URL=REDIS_URL,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                STRIPE_API_BASE=base,
                STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                SEATS_SWEEP_INTERVAL="5",
                SEATS_STUCK_AFTER="30",
                SEATS_WORKER_CONCURRENCY=str(args.worker_threads),
                **probe_env(probe),
            )
            web_port = free_port()
            web = f"http://127.0.0.1:{web_port}"
            gunicorn = processes.spawn(
                "web",
                gunicorn_argv(web_port, args.web_processes, "gthread", args.web_threads),
                env,
            )
            groups = {"web": gunicorn.pid, "stand-in": stand_in.pid}
            for k in range(args.worker_processes):
                worker = processes.spawn(
                    f"worker-{k}",
                    [
                        *celery_argv(",".join(queues.ALL), args.worker_threads, pool="threads"),
                        *("--hostname", f"bench{k}@%h"),
                    ],
                    env,
                )
                groups[f"worker {k}" if args.worker_processes > 1 else "worker"] = worker.pid
            wait_http(f"{web}/healthz", processes)
            wait_worker(celery_client(REDIS_URL), processes, expected=args.worker_processes)
            meter = CpuMeter(groups)
            settings = replace(
                Settings.from_env({}),
                database_url=database_url,
                redis_url=REDIS_URL,
                stripe_api_key=LOCALSTRIPE_KEY,
                stripe_api_base=base,
            )
            runtime = build(settings, pool_size=2)
            try:
                for number in range(1, args.rounds + 1):
                    # the stand-in sends each event a second after it happens, to the
                    # endpoint registered then: the direct phase's go nowhere
                    register_webhook(base, "http://127.0.0.1:9/", WEBHOOK_SECRET)
                    reset_localstripe(base)
                    phases.append(
                        run_direct(base, number, args.plans, args.per_plan, args.buyers, meter)
                    )
                    print_phase(phases[-1])
                    time.sleep(1.5)
                    reset_localstripe(base)
                    if not args.no_webhooks:
                        register_webhook(base, f"{web}/webhooks/stripe", WEBHOOK_SECRET)
                    phases.append(
                        run_pipeline(base, web, runtime, args, number, meter, processes, probe)
                    )
                    print_phase(phases[-1])
            finally:
                runtime.engine.dispose()
    finally:
        reset_redis(REDIS_URL)
    report = print_summary(phases, args)
    print(f"run took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
