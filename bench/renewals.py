"""Renewals of N plans due the same day: the scan, the settle, and database round trips.

Against a throw-away PostgreSQL database, Redis db 13 and a localstripe stand-in of its
own, in four phases. localstripe is reset (``DELETE /_config/data``) before each phase
that uses it, and by default runs with an index of its store by object type
(``harness.index_localstripe``): unpatched, it walks its whole store about a dozen times
per PaymentIntent created and confirmed, so within a phase of 10,000 each renewal costs it
more than the one before (``--stand-in plain`` runs it as ``seats up`` does).

1. scan: N plans due today (organizations and subscriptions bulk-inserted with SQL, as
   ``seats org create`` / ``seats subscription create --renews-at`` make them, with the
   seat audit row; no cards: the scan does not look at them). ``renewals.scan`` walks
   every batch in this process, first only counting the ids, then sending one
   ``seats.renew`` per id through a Celery client the way ``seats.renewal_scan`` does
   (no worker runs yet; the queue is emptied afterwards). Each run is timed on its own
   and again under ``tracemalloc`` (the scan's peak Python heap); the process's RSS is
   sampled every 2 ms during the timed runs. Runs at 1,000 plans and at N: the peak
   must not grow with N. The statements the scan sends are counted (SQLAlchemy events).
2. direct: N Stripe customers with a saved card (made beforehand, not timed), then the
   calls one renewal makes, create a PaymentIntent with the saved card and confirm it
   (same parameters and idempotency keys as ``StripeGateway``), from ``--width`` threads.
3. settle: N plans as in 1, each organization with its own Stripe customer and saved
   card at the stand-in. One Celery worker (prefork, ``--width`` processes, queue
   ``renewals``), then the scan in this process sends the tasks, and the clock runs from
   the scan's start until every renewal is ``succeeded`` (``completed_at``, from the
   database). renewals/s = succeeded / that time; ratio = that rate / direct rate (the
   ratio the purchase benchmark reports). PostgreSQL's own transaction count for the
   database (``pg_stat_database``) over the phase, less this process's, gives the
   worker's transactions per renewal.
4. round trips: ``--sample`` more plans with cards, scanned and renewed one by one in
   this process by ``renewals.renew`` (what the task calls) with the real gateway, every
   statement, BEGIN, COMMIT and ROLLBACK counted (psycopg sends BEGIN as its own round
   trip); the statement list of one renewal is printed. Cross-checked against
   ``pg_stat_database``.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on :6379)::

    .venv/bin/python bench/renewals.py [--plans 10000] [--width 4] [--sample 200]
        [--stand-in indexed|plain] [--skip scan] [--skip direct]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psutil
from harness import (
    REDIS_URL,
    CpuMeter,
    Processes,
    celery_argv,
    celery_client,
    log_folder,
    machine_facts,
    percentile,
    python_env,
    redis_neighbours,
    reset_localstripe,
    reset_redis,
    scratch_database,
    start_stand_in,
    stripe_client,
    terminate_on_sigterm,
    wait_worker,
)
from sqlalchemy import Engine, bindparam, event, insert, text, update
from sqlalchemy.engine import make_url

from shared import queues
from shared.bootstrap import Runtime, build
from shared.cli.embedded import free_port
from shared.config import LOCALSTRIPE_KEY, Settings
from shared.domain.periods import add_months, today_in
from shared.payments.gateway import PaymentRequest
from shared.payments.stripe_adapter import StripeGateway
from shared.services import renewals
from shared.store.models import Organization

TIMEZONE = "America/Toronto"
CURRENCY = "cad"
SEATS = 3
UNIT_AMOUNT = 50000
CARD = "4242424242424242"
WEBHOOK_SECRET = "whsec_bench"
SETUP_THREADS = 8
PROBE_SMALL = 1000


# --- counting what reaches PostgreSQL ----------------------------------------------------


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0
    connects: int = 0

    @property
    def round_trips(self) -> int:
        """Each statement, and BEGIN, COMMIT, ROLLBACK (psycopg sends BEGIN on its own)."""
        return len(self.statements) + self.begins + self.commits + self.rollbacks


class Counter:
    """SQLAlchemy events on an engine: every statement and transaction, always on;
    `take()` returns what happened since the last `take()`."""

    def __init__(self, engine: Engine) -> None:
        self.tally = Tally()
        self.lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)
        event.listen(engine, "connect", self._connect)

    def _statement(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        with self.lock:
            self.tally.statements.append(statement)

    def _begin(self, conn: Any) -> None:
        with self.lock:
            self.tally.begins += 1

    def _commit(self, conn: Any) -> None:
        with self.lock:
            self.tally.commits += 1

    def _rollback(self, conn: Any) -> None:
        with self.lock:
            self.tally.rollbacks += 1

    def _connect(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            self.tally.connects += 1

    def take(self) -> Tally:
        with self.lock:
            taken, self.tally = self.tally, Tally()
        return taken


def short(statement: str, width: int = 110) -> str:
    flat = re.sub(r"\s+", " ", statement).strip()
    flat = re.sub(r"\bSELECT (\w+)\.id, .*? FROM", r"SELECT \1.* FROM", flat)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


READER = 2
"""Transactions a `transactions()` read adds to the next one: its SELECT, and the one
PostgreSQL runs to start any session (so each new connection of ours counts one too)."""


def transactions(database_url: str) -> int:
    """PostgreSQL's committed + rolled back transactions in the bench database so far.

    A backend reports its counts when idle for a while or when it exits, so callers close
    their pools first. Read with plain psycopg (SQLAlchemy's first connect sends queries of
    its own) on a connection that then closes."""
    import psycopg

    url = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    time.sleep(0.5)  # the reading backend reports its own transaction as it exits
    return int(row[0] or 0) if row else 0


# --- provisioning -------------------------------------------------------------------------


def due_date() -> date:
    return today_in(TIMEZONE)


def insert_plans(engine: Engine, tag: str, count: int) -> list[int]:
    """Organizations and yearly plans due today (in their time zone), bulk-inserted: the
    rows `seats org create` and `seats subscription create --renews-at TODAY` make (anchor
    day = the renewal date's day, status active, the 'subscription created' audit row)."""
    today = due_date()
    table = Organization.__table__
    rows = [
        {"name": f"Bench {tag}-{i}", "currency": CURRENCY, "timezone": TIMEZONE}
        for i in range(count)
    ]
    with engine.begin() as connection:
        ids = list(
            connection.execute(
                insert(table).returning(table.c.id, sort_by_parameter_order=True), rows
            ).scalars()
        )
        params = {
            "ids": ids,
            "unit": UNIT_AMOUNT,
            "seats": SEATS,
            "start": add_months(today, -12),
            "today": today,
            "anchor": today.day,
        }
        connection.execute(
            text(
                """
                INSERT INTO subscriptions (organization_id, product, unit_amount, currency,
                    interval, current_period_start, renews_at, paid_seats, active_seats,
                    status, anchor_day)
                SELECT id, 'XLGL', :unit, currency, 'year', :start, :today, :seats, :seats,
                    'active', :anchor
                FROM organizations WHERE id = ANY(:ids) ORDER BY id
                """
            ),
            params,
        )
        connection.execute(
            text(
                """
                INSERT INTO seat_changes (subscription_id, reason, paid_before, paid_after,
                    active_before, active_after)
                SELECT id, 'subscription created', :seats, :seats, :seats, :seats
                FROM subscriptions WHERE organization_id = ANY(:ids) ORDER BY id
                """
            ),
            params,
        )
    return ids


def make_customers(client: Any, organization_ids: Sequence[int]) -> list[tuple[str, str]]:
    """One Stripe customer per organization with a saved card (default for invoices),
    two calls each: the card as Stripe.js makes it, then the customer holding it."""

    def one(organization_id: int) -> tuple[str, str]:
        method = client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": CARD, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        customer = client.v1.customers.create(
            params={
                "name": f"Bench {organization_id}",
                "metadata": {"organization_id": str(organization_id)},
                "payment_method": method.id,
                "invoice_settings": {"default_payment_method": method.id},
            },
            options={"idempotency_key": f"org-{organization_id}-customer"},
        )
        return str(customer.id), str(method.id)

    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        return list(pool.map(one, organization_ids))


def save_cards(
    engine: Engine, organization_ids: Sequence[int], made: list[tuple[str, str]]
) -> None:
    """What `save_card` leaves in the organization's row: customer, card, brand, last four."""
    table = Organization.__table__
    with engine.begin() as connection:
        connection.execute(
            update(table)
            .where(table.c.id == bindparam("oid"))
            .values(
                stripe_customer_id=bindparam("customer"),
                payment_method_id=bindparam("card"),
                payment_method_brand="visa",
                payment_method_last4=CARD[-4:],
            ),
            [
                {"oid": oid, "customer": customer, "card": card}
                for oid, (customer, card) in zip(organization_ids, made, strict=True)
            ],
        )


def forget_plans(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("TRUNCATE renewals, seat_changes, subscriptions, organizations CASCADE")
        )


def forget_renewals(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("DELETE FROM renewals"))
        connection.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE renewals"))


# --- phase 1: the scan ---------------------------------------------------------------------


class RssPeak:
    """The highest resident set size of this process while the block runs (every 2 ms)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.base = self.peak = self.process.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


@dataclass
class ScanRun:
    plans: int
    mode: str
    seconds: float
    found: int
    batches: int
    tally: Tally
    heap_peak: int = 0
    rss_growth: int = 0
    queued: int | None = None


def walk(runtime: Runtime, send: Callable[..., None] | None) -> tuple[int, int, list[int]]:
    """`seats.renewal_scan` without Celery around it: every batch, sent or only counted.
    Returns (ids found, batches, [first id, last id])."""
    found = batches = 0
    bounds: list[int] = []
    for batch in renewals.scan(runtime.uow(), now=datetime.now(UTC)):
        if send is not None:
            send(*batch)
        found += len(batch)
        batches += 1
        bounds = [bounds[0] if bounds else batch[0], batch[-1]]
    return found, batches, bounds


def queue_length(app: Any, queue: str) -> int:
    with app.connection_for_write() as connection:
        return int(connection.default_channel.client.llen(queue))


def purge(app: Any, queue: str) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


def scan_runs(
    runtime: Runtime, counter: Counter, app: Any, plans: int
) -> tuple[list[ScanRun], float]:
    """The scan over `plans` due plans: counted, then sent; timed, then traced.
    Returns the runs and the seconds the plans took to insert."""
    began = time.perf_counter()
    insert_plans(runtime.engine, f"scan{plans}", plans)
    inserted = time.perf_counter() - began
    send = queues.Dispatcher(app.send_task).renew
    runs: list[ScanRun] = []
    walk(runtime, None)  # warm up: statement caches, the pool, type loaders
    forget_renewals(runtime.engine)
    send(0)  # and the broker connection and producer
    purge(app, queues.RENEWALS)
    for mode, sender in (("count", None), ("send", send)):
        counter.take()
        with RssPeak() as rss:
            started = time.perf_counter()
            found, batches, _ = walk(runtime, sender)
            seconds = time.perf_counter() - started
        run = ScanRun(plans, mode, seconds, found, batches, counter.take())
        run.rss_growth = rss.growth
        if sender is not None:
            run.queued = queue_length(app, queues.RENEWALS)
            purge(app, queues.RENEWALS)
        forget_renewals(runtime.engine)
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        walk(runtime, sender)
        run.heap_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        if sender is not None:
            purge(app, queues.RENEWALS)
        forget_renewals(runtime.engine)
        runs.append(run)
        print_scan(run)
    forget_plans(runtime.engine)
    return runs, inserted


# --- phase 2: direct ----------------------------------------------------------------------


@dataclass
class Rate:
    kind: str
    total: int
    succeeded: int
    seconds: float
    rate: float
    first_tenth: float
    last_tenth: float
    p50: float = float("nan")
    p95: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def tenths(start: float, finished: Sequence[float]) -> tuple[float, float]:
    """Rates over the first and the last tenth of completions (shows a slowing stand-in)."""
    ordered = sorted(finished)
    k = max(1, len(ordered) // 10)
    if len(ordered) < 2:
        return float("nan"), float("nan")
    first = k / max(ordered[k - 1] - start, 1e-9)
    last = k / max(ordered[-1] - ordered[-k - 1], 1e-9) if len(ordered) > k else float("nan")
    return first, last


def run_direct(base: str, plans: int, width: int, meter: CpuMeter) -> Rate:
    reset_localstripe(base)
    gateway = StripeGateway(LOCALSTRIPE_KEY, base)
    began = time.perf_counter()
    made = make_customers(stripe_client(base), range(1, plans + 1))
    setup = time.perf_counter() - began
    period = due_date()

    def renew(i: int) -> tuple[float, float, str]:
        """Through the app's own adapter, as the pipeline's renewal calls Stripe."""
        customer, card = made[i]
        started = time.perf_counter()
        intent = gateway.create_payment(
            PaymentRequest(
                f"renewal-{i + 1}-{period}",
                SEATS * UNIT_AMOUNT,
                CURRENCY,
                customer,
                card,
                {"renewal_id": str(i + 1), "subscription_id": str(i + 1)},
                one_per_reference=True,
            )
        )
        confirmed = gateway.confirm_payment(intent.id)
        return started, time.perf_counter(), confirmed.status

    before = meter.sample()
    began = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        done = list(pool.map(renew, range(plans)))
    seconds = time.perf_counter() - began
    cpu = meter.delta(before, meter.sample())
    ok = [d for d in done if d[2] == "succeeded"]
    first, last = tenths(began, [d[1] for d in ok])
    durations = [d[1] - d[0] for d in done]
    return Rate(
        "direct",
        plans,
        len(ok),
        seconds,
        len(ok) / seconds,
        first,
        last,
        percentile(durations, 50),
        percentile(durations, 95),
        cpu,
        [f"setup (not timed): {plans} customers with a saved card in {setup:.1f} s"],
    )


# --- phase 3: the worker settles them ------------------------------------------------------


def statuses(runtime: Runtime, low: int, high: int) -> dict[str, int]:
    with runtime.engine.connect() as connection:
        return {
            str(status): int(count)
            for status, count in connection.execute(
                text(
                    "SELECT status, count(*) FROM renewals WHERE id BETWEEN :low AND :high "
                    "GROUP BY status"
                ),
                {"low": low, "high": high},
            )
        }


def run_settle(
    base: str,
    runtime: Runtime,
    counter: Counter,
    app: Any,
    database_url: str,
    plans: int,
    timeout: float,
    meter: CpuMeter,
    processes: Processes,
) -> tuple[Rate, float, Tally, int]:
    """Returns the rate, the scan's seconds (beside the worker), the scan's statements,
    and PostgreSQL's transactions in the phase less this process's."""
    reset_localstripe(base)
    began = time.perf_counter()
    ids = insert_plans(runtime.engine, "settle", plans)
    save_cards(runtime.engine, ids, make_customers(stripe_client(base), ids))
    setup = time.perf_counter() - began
    runtime.engine.dispose()
    xacts_before = transactions(database_url)
    counter.take()
    send = queues.Dispatcher(app.send_task).renew
    before = meter.sample()
    start_wall, start = time.time(), time.perf_counter()
    found, batches, bounds = walk(runtime, send)
    scan_seconds = time.perf_counter() - start
    scan_tally = counter.take()
    low, high = bounds or [0, -1]
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        processes.check_alive()
        counts = statuses(runtime, low, high)
        polls += 1
        if counts.get("succeeded", 0) + counts.get("failed", 0) >= found:
            break
        time.sleep(0.5)
    cpu = meter.delta(before, meter.sample())
    with runtime.engine.connect() as connection:
        finished = [
            float(v)
            for v in connection.scalars(
                text(
                    "SELECT extract(epoch FROM completed_at) FROM renewals "
                    "WHERE id BETWEEN :low AND :high AND status = 'succeeded'"
                ),
                {"low": low, "high": high},
            )
        ]
        failures = dict(
            connection.execute(
                text(
                    "SELECT coalesce(failure_code, status), count(*) FROM renewals "
                    "WHERE id BETWEEN :low AND :high AND status <> 'succeeded' GROUP BY 1"
                ),
                {"low": low, "high": high},
            ).all()
        )
        plans_moved = connection.scalar(
            text("SELECT count(*) FROM subscriptions WHERE renews_at > :today"),
            {"today": due_date()},
        )
    latencies = [f - start_wall for f in finished]
    settle = max(latencies) if latencies else float("nan")
    first, last = tenths(0.0, latencies)
    notes = [
        f"setup (not timed): {plans} plans with Stripe customers and saved cards in {setup:.1f} s",
        f"scan beside the worker: {found} renewals in {batches} batches, sent in "
        f"{scan_seconds:.2f} s",
        f"plans moved to their next period: {plans_moved}",
    ]
    if failures:
        notes.append(f"NOT SUCCEEDED: {failures}")
    if found != plans:
        notes.append(f"the scan found {found} renewals for {plans} plans")
    mine = counter.take()
    processes.stop(processes.children[-1][1])  # the worker: its backends report as they exit
    runtime.engine.dispose()
    ours = scan_tally.begins + scan_tally.connects + mine.begins + mine.connects
    theirs = transactions(database_url) - xacts_before - READER - ours
    notes.append(
        f"PostgreSQL transactions by the worker: {theirs} ({theirs / max(found, 1):.1f} per "
        f"renewal); this process: {scan_tally.begins} for the scan, {mine.begins} for "
        f"{polls} polls"
    )
    rate = Rate(
        "settle",
        plans,
        len(finished),
        settle,
        len(finished) / settle if finished else 0.0,
        first,
        last,
        percentile(latencies, 50),
        percentile(latencies, 95),
        cpu,
        notes,
    )
    return rate, scan_seconds, scan_tally, theirs


# --- phase 4: round trips of one renewal ---------------------------------------------------


@dataclass
class RoundTrips:
    sample: int
    succeeded: int
    per: list[Tally]
    scan: Tally
    seconds: float
    pg_transactions: int


def run_round_trips(
    base: str, runtime: Runtime, counter: Counter, database_url: str, sample: int
) -> RoundTrips:
    reset_localstripe(base)
    ids = insert_plans(runtime.engine, "trips", sample)
    save_cards(runtime.engine, ids, make_customers(stripe_client(base), ids))
    runtime.engine.dispose()
    xacts_before = transactions(database_url)
    counter.take()
    batches = list(renewals.scan(runtime.uow(), now=datetime.now(UTC)))
    scan = counter.take()
    dunning = renewals.Dunning(Settings.from_env({}).dunning_days, off_session=False)
    per: list[Tally] = []
    began = time.perf_counter()
    steps: collections.Counter[str] = collections.Counter()
    for renewal_id in (i for batch in batches for i in batch):
        step = renewals.renew(
            runtime.uow(), runtime.engine, runtime.gateway, renewal_id, dunning=dunning
        )
        per.append(counter.take())
        steps[step.value] += 1
    seconds = time.perf_counter() - began
    runtime.engine.dispose()
    counted = sum(t.begins for t in [scan, *per])
    connects = sum(t.connects for t in [scan, *per])
    pg = transactions(database_url) - xacts_before - READER - connects
    with runtime.engine.connect() as connection:
        succeeded = int(
            connection.scalar(
                text(
                    "SELECT count(*) FROM renewals r JOIN subscriptions s "
                    "ON s.id = r.subscription_id WHERE s.organization_id = ANY(:ids) "
                    "AND r.status = 'succeeded'"
                ),
                {"ids": ids},
            )
            or 0
        )
    counter.take()
    if pg != counted:
        print(f"  note: PostgreSQL counted {pg} transactions, the events {counted}")
    return RoundTrips(sample, succeeded, per, scan, seconds, pg)


# --- report -------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB"


def print_scan(run: ScanRun) -> None:
    queued = "" if run.queued is None else f", {run.queued} tasks in the queue"
    print(
        f"scan {run.mode:<5} {run.plans:>6} plans: {run.found} found in {run.batches} batches, "
        f"{run.seconds:.2f} s ({run.found / run.seconds:,.0f}/s); {len(run.tally.statements)} "
        f"statements, {run.tally.round_trips} round trips; heap peak {kib(run.heap_peak)}, "
        f"RSS growth {mib(run.rss_growth)}{queued}",
        flush=True,
    )


def print_rate(rate: Rate) -> None:
    print(
        f"{rate.kind}: {rate.succeeded}/{rate.total} succeeded in {rate.seconds:.1f} s, "
        f"{rate.rate:.1f} renewals/s (first tenth {rate.first_tenth:.1f}/s, last tenth "
        f"{rate.last_tenth:.1f}/s); p50 {rate.p50:.2f} s, p95 {rate.p95:.2f} s",
        flush=True,
    )
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(rate.cpu.items(), key=lambda kv: -kv[1]))
    busy = sum(rate.cpu.values())
    print(
        f"  CPU seconds: {cpu}; machine busy {busy:.1f} of "
        f"{rate.seconds * (os.cpu_count() or 1):.1f} core-seconds",
        flush=True,
    )
    for note in rate.notes:
        print(f"  {note}", flush=True)


def print_round_trips(trips: RoundTrips, plans: int, scan: ScanRun | None) -> None:
    n = max(len(trips.per), 1)
    statements = sum(len(t.statements) for t in trips.per) / n
    xacts = sum(t.begins for t in trips.per) / n
    rts = sum(t.round_trips for t in trips.per) / n
    print(
        f"round trips: {trips.succeeded}/{trips.sample} renewed in this process in "
        f"{trips.seconds:.1f} s ({trips.seconds / n * 1000:.0f} ms each, one at a time); per "
        f"renewal {statements:.2f} statements, {xacts:.2f} transactions, {rts:.2f} round "
        f"trips; PostgreSQL counted {trips.pg_transactions} transactions for scan and renewals "
        f"(events: {trips.scan.begins + sum(t.begins for t in trips.per)})",
        flush=True,
    )
    shapes = collections.Counter(len(t.statements) for t in trips.per)
    print(f"  statements per renewal (how many renewals): {dict(sorted(shapes.items()))}")
    if trips.per:
        one = trips.per[0]
        print(
            f"  one renewal: {len(one.statements)} statements + {one.begins} BEGIN + "
            f"{one.commits} COMMIT + {one.rollbacks} ROLLBACK = {one.round_trips} round trips:"
        )
        for k, statement in enumerate(one.statements, 1):
            print(f"    {k:>2}. {short(statement)}")
    if scan is not None:
        print(
            f"  scan at {scan.plans} plans: {len(scan.tally.statements)} statements, "
            f"{scan.tally.round_trips} round trips = "
            f"{len(scan.tally.statements) / scan.plans:.4f} statements and "
            f"{scan.tally.round_trips / scan.plans:.4f} round trips per renewal",
            flush=True,
        )


def print_summary(
    args: argparse.Namespace,
    scans: list[ScanRun],
    direct: Rate | None,
    settle: Rate | None,
    settle_scan: float,
    worker_xacts: int,
    trips: RoundTrips | None,
) -> None:
    print("\n=== summary ===")
    print(
        f"{machine_facts()} plans={args.plans} width={args.width} batch={renewals.BATCH} "
        f"sample={args.sample} stand-in={args.stand_in} beat=no"
    )
    print(f"{'what':<56}{'figure':>44}")

    def row(what: str, figure: str) -> None:
        print(f"{what:<56}{figure:>44}")

    for run in scans:
        row(
            f"scan, {run.plans:,} due, ids {'counted' if run.mode == 'count' else 'sent'}",
            f"{run.seconds:.2f} s, {run.batches} batches, heap peak {kib(run.heap_peak)}",
        )
    for run in scans:
        row(f"  RSS growth during that scan ({run.plans:,}, {run.mode})", mib(run.rss_growth))
    if direct is not None:
        row(
            f"direct Stripe calls, {args.width} threads (create+confirm)",
            f"{direct.rate:.1f} renewals/s ({direct.seconds:.1f} s)",
        )
        per = {k: v / max(direct.succeeded, 1) * 1000 for k, v in direct.cpu.items()}
        row(
            "  CPU ms per renewal: client / stand-in; other processes",
            f"{per.get('client (this script)', 0):.1f} / {per.get('localstripe', 0):.1f}; "
            f"{direct.cpu.get('other', 0) / (direct.seconds * (os.cpu_count() or 1)):.0%}",
        )
    if settle is not None:
        row(
            f"scan -> all {settle.total:,} succeeded, worker x{args.width}",
            f"{settle.seconds:.1f} s, {settle.succeeded}/{settle.total} succeeded",
        )
        row("  renewals per second", f"{settle.rate:.1f}/s")
        row("  of which the scan sending the tasks", f"{settle_scan:.2f} s")
        if direct is not None and direct.rate:
            row("ratio worker / direct", f"{settle.rate / direct.rate:.2f}")
        per = {k: v / max(settle.succeeded, 1) * 1000 for k, v in settle.cpu.items()}
        row(
            "  CPU ms per renewal: worker / PostgreSQL / stand-in",
            f"{per.get('worker (celery)', 0):.1f} / {per.get('postgresql', 0):.1f} / "
            f"{per.get('localstripe', 0):.1f}",
        )
        row(
            "  machine busy / of which other processes",
            f"{sum(settle.cpu.values()) / (settle.seconds * (os.cpu_count() or 1)):.0%} / "
            f"{settle.cpu.get('other', 0) / (settle.seconds * (os.cpu_count() or 1)):.0%}",
        )
        row(
            "PostgreSQL transactions per renewal, worker (pg_stat)",
            f"{worker_xacts / max(settle.total, 1):.2f}",
        )
    if trips is not None and trips.per:
        n = len(trips.per)
        row(
            "per renewal: statements / transactions / round trips",
            f"{sum(len(t.statements) for t in trips.per) / n:.2f} / "
            f"{sum(t.begins for t in trips.per) / n:.2f} / "
            f"{sum(t.round_trips for t in trips.per) / n:.2f}",
        )
    big = [run for run in scans if run.mode == "count" and run.plans == max(r.plans for r in scans)]
    if big:
        run = big[0]
        per_statement = len(run.tally.statements) / run.plans
        row(
            "scan per renewal: statements / round trips",
            f"{per_statement:.4f} / {run.tally.round_trips / run.plans:.4f}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=10_000, help="plans due today")
    parser.add_argument("--width", type=int, default=4, help="worker processes = direct threads")
    parser.add_argument("--sample", type=int, default=200, help="renewals counted in-process")
    parser.add_argument("--timeout", type=float, default=3600, help="for the settle phase, s")
    parser.add_argument("--skip", action="append", default=[], choices=["scan", "direct"])
    parser.add_argument(
        "--stand-in",
        choices=["indexed", "plain"],
        default="indexed",
        help="localstripe with an index of its store by type (default), or as `seats up` runs it",
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the main figures here")
    args = parser.parse_args()
    terminate_on_sigterm()
    started = time.monotonic()
    neighbours = redis_neighbours(args.redis_url)
    if neighbours:
        raise SystemExit(
            f"{args.redis_url} is in use ({'; '.join(neighbours[:3])}): its workers could take "
            "our tasks and flushing it would empty their queues; pass another --redis-url"
        )
    reset_redis(args.redis_url)
    scans: list[ScanRun] = []
    direct = settle = None
    trips = None
    settle_scan, worker_xacts = float("nan"), 0
    try:
        with (
            log_folder(args.keep_logs) as logs,
            scratch_database() as database_url,
            Processes(logs) as processes,
        ):
            stripe_port = free_port()
            stand_in = start_stand_in(
                stripe_port, logs / "localstripe.log", indexed=args.stand_in == "indexed"
            )
            processes.adopt("localstripe", stand_in)
            base = f"http://127.0.0.1:{stripe_port}"
            settings = replace(
                Settings.from_env({}),
                database_url=database_url,
                redis_url=args.redis_url,
                stripe_api_key=LOCALSTRIPE_KEY,
                stripe_api_base=base,
            )
            runtime = build(settings, pool_size=2)
            counter = Counter(runtime.engine)
            app = celery_client(args.redis_url)
            meter = CpuMeter({"localstripe": stand_in.pid})
            try:
                if "scan" not in args.skip:
                    for size in sorted({min(PROBE_SMALL, args.plans), args.plans}):
                        runs, inserted = scan_runs(runtime, counter, app, size)
                        print(f"  ({size} plans inserted in {inserted:.1f} s)", flush=True)
                        scans.extend(runs)
                if "direct" not in args.skip:
                    direct = run_direct(base, args.plans, args.width, meter)
                    print_rate(direct)
                env = python_env(
                    DATABASE_URL=database_url,
                    REDIS_URL=args.redis_url,
                    STRIPE_API_KEY=LOCALSTRIPE_KEY,
                    STRIPE_API_BASE=base,
                    STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                )
                worker = processes.spawn("worker", celery_argv(queues.RENEWALS, args.width), env)
                wait_worker(app, processes)
                meter.groups["worker (celery)"] = worker.pid
                settle, settle_scan, _, worker_xacts = run_settle(
                    base,
                    runtime,
                    counter,
                    app,
                    database_url,
                    args.plans,
                    args.timeout,
                    meter,
                    processes,
                )
                print_rate(settle)
                if args.sample:
                    trips = run_round_trips(base, runtime, counter, database_url, args.sample)
                    count_run = next(
                        (r for r in scans if r.mode == "count" and r.plans == args.plans), None
                    )
                    print_round_trips(trips, args.plans, count_run)
            finally:
                runtime.engine.dispose()
    finally:
        reset_redis(args.redis_url)
    print_summary(args, scans, direct, settle, settle_scan, worker_xacts, trips)
    print(f"run took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures(args, scans, direct, settle, trips), indent=2))


def figures(
    args: argparse.Namespace,
    scans: list[ScanRun],
    direct: Rate | None,
    settle: Rate | None,
    trips: RoundTrips | None,
) -> dict[str, Any]:
    """What `bench/run` puts in its table."""
    out: dict[str, Any] = {"plans": args.plans, "width": args.width}
    for run in scans:
        if run.mode == "count":
            out[f"scan_seconds_{run.plans}"] = run.seconds
            out[f"scan_heap_peak_kib_{run.plans}"] = run.heap_peak / 1024
    if direct is not None:
        out["direct_rate"] = direct.rate
    if settle is not None:
        out["settle_rate"] = settle.rate
        out["settled"] = f"{settle.succeeded}/{settle.total}"
        worker_cpu = settle.cpu.get("worker (celery)", 0)
        out["worker_cpu_ms"] = worker_cpu / max(settle.succeeded, 1) * 1000
    if trips is not None and trips.per:
        out["round_trips"] = sum(t.round_trips for t in trips.per) / len(trips.per)
    return out


if __name__ == "__main__":
    main()
