"""The seat ledger as a hypothesis state machine (issue 14, item 3).

One organization, one plan and two buyers are driven through the real services (those
the web views and the worker tasks call) on PostgreSQL, with the in-memory Stripe:
free changes, purchases that succeed, are declined or wait for 3-D Secure, two buyers
of the same plan charged in either order, the clock moving, renewals that succeed or
are declined, dunning retries and new cards. A small model of the plan predicts each
step's answer; after every step the invariants are read back from the database and
from Stripe:

- 1 <= active_seats <= paid_seats, and both equal the model's counts;
- paid seats never drop inside a period;
- the audit trail is a chain (each change starts where the last ended) that ends at
  the plan's counts, one row per change, each with its reason;
- money kept by Stripe for a purchase = the seats it granted x the prorated quote of
  the day it was priced (exact integers, one rounding, half up), once;
- one renewal per plan and period, charged once, for the seats it made paid;
- any other money kept by Stripe has an open operator alert.

Longer runs: SEATS_STATEFUL_EXAMPLES (examples, default 15) and SEATS_STATEFUL_STEPS
(steps per example, default 40), e.g.

    SEATS_STATEFUL_EXAMPLES=500 SEATS_STATEFUL_STEPS=80 \
        .venv/bin/pytest tests/services/test_ledger_state_machine.py -n 0
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from shared.bootstrap import Runtime, build
from shared.config import Settings
from shared.domain.errors import Conflict
from shared.domain.periods import add_months, start_of_day
from shared.payments.fake_stripe import (
    DECLINED_ON_ATTACH,
    DECLINED_ON_CHARGE,
    GOOD,
    THREE_D_SECURE,
    FakeStripe,
)
from shared.services import cart, charging, checkout, payment_methods, provisioning, renewals
from shared.services import seats as seat_service
from shared.services.access import Actor
from shared.services.renewals import Dunning
from shared.store.db import upgrade
from shared.store.models import (
    OperatorAlert,
    Organization,
    Purchase,
    Renewal,
    SeatChange,
    Subscription,
)
from tests.conftest import empty_tables

EXAMPLES = int(os.environ.get("SEATS_STATEFUL_EXAMPLES", "15"))
STEPS = int(os.environ.get("SEATS_STATEFUL_STEPS", "40"))
DUNNING = Dunning((1, 3, 5, 7))
CARDS = {"good": GOOD, "declined": DECLINED_ON_CHARGE, "3ds": THREE_D_SECURE}
TERMINAL = ("succeeded", "failed")
TALLY: Counter[str] = Counter()


def seen(outcome: str) -> None:
    """Count what the examples went through (printed at the end, with -s)."""
    TALLY[outcome] += 1
    event(outcome)


@pytest.fixture(scope="module")
def ledger_runtime(fresh_database: Any, settings: Settings) -> Iterator[Runtime]:
    """A database of this module's own: a renewal scan renews every plan that is due, so
    no other test's plan may be in it; each example starts from empty tables."""
    url: str = fresh_database()
    upgrade(url)
    rt = build(replace(settings, database_url=url), pool_size=4)
    yield rt
    rt.engine.dispose()


def prorated(subtotal: int, remaining: int, period: int) -> int:
    """The money rule, written again here in integers: subtotal x remaining / period,
    rounded half up, once."""
    return (2 * subtotal * remaining + period) // (2 * period)


def next_try(period_start: date, tz: str, now: datetime) -> datetime | None:
    for days in DUNNING.days:
        moment = start_of_day(period_start + timedelta(days=days), tz)
        if moment > now:
            return moment
    return None


def renewal_after(start: date, interval: str, anchor: int) -> date:
    moved = add_months(start, 1 if interval == "month" else 12)
    last = (add_months(moved.replace(day=1), 1) - timedelta(days=1)).day
    return moved.replace(day=min(anchor, last))


@dataclass
class Bought:
    """The model of one purchase."""

    id: int
    buyer: str
    target: int
    card: str  # good, declined, 3ds, attach_declined
    method: str
    new_card: bool
    confirmed: int
    status: str = "pending"
    failure: str | None = None
    price: int | None = None  # set when the charger priced it
    seats: int | None = None
    intent: str | None = None
    retry_of: int | None = None


@dataclass
class Period:
    """The model of the current period's renewal, once the scan made it."""

    start: date
    status: str = "pending"
    attempts: int = 0
    next_at: datetime | None = None
    intent: str | None = None
    failure: str | None = None


@dataclass
class Model:
    tz: str
    unit: int
    interval: str
    anchor: int
    period_start: date
    renews_at: date
    paid: int
    active: int
    status: str = "active"
    saved: str | None = None  # the kind of the saved card
    saved_id: str | None = None
    holder: int | None = None  # the purchase the plan is being charged for
    carts: dict[str, int] = field(default_factory=dict)
    purchases: dict[int, Bought] = field(default_factory=dict)
    renewal: Period | None = None
    renewed: list[tuple[date, int, int]] = field(default_factory=list)  # period, seats, amount
    audit: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    floor: int = 0  # the lowest the paid count may be in this period


class LedgerMachine(RuleBasedStateMachine):
    rt: ClassVar[Runtime]

    def __init__(self) -> None:
        super().__init__()
        empty_tables(str(self.rt.engine.url.render_as_string(hide_password=False)))
        self.fake = FakeStripe()
        self.buyers: dict[str, Actor] = {}
        self.model: Model | None = None
        TALLY["examples"] += 1
        self.now = datetime(2027, 1, 1, tzinfo=UTC)

    # -- the world ------------------------------------------------------------------

    @initialize(
        tz=st.sampled_from(["America/Toronto", "Pacific/Auckland", "UTC"]),
        interval=st.sampled_from(["month", "year"]),
        unit=st.sampled_from([1, 7, 999, 36500, 50000]),
        seats=st.integers(1, 6),
        renews_at=st.dates(date(2027, 1, 1), date(2029, 12, 31)),
        days_left=st.integers(1, 40),
        hour=st.integers(0, 23),
        card=st.sampled_from([None, "good", "good", "declined", "3ds"]),
    )
    def start(
        self,
        tz: str,
        interval: str,
        unit: int,
        seats: int,
        renews_at: date,
        days_left: int,
        hour: int,
        card: str | None,
    ) -> None:
        rt = self.rt
        org = provisioning.create_organization(rt.uow(), "Ledger", "cad", tz)
        for name in ("a", "b"):
            user, _ = provisioning.create_user(
                rt.uow(), org, f"{name}-{secrets.token_hex(3)}@example.com", "buyer"
            )
            self.buyers[name] = Actor(user, org, "buyer")
        period_start = add_months(renews_at, -1 if interval == "month" else -12)
        days_left = min(days_left, (renews_at - period_start).days)
        self.plan = provisioning.create_subscription(
            rt.uow(), org, "XLGL", unit, interval, seats, period_start, renews_at
        )
        self.org = org
        self.now = start_of_day(renews_at - timedelta(days=days_left), tz) + timedelta(hours=hour)
        self.model = Model(
            tz=tz,
            unit=unit,
            interval=interval,
            anchor=renews_at.day,
            period_start=period_start,
            renews_at=renews_at,
            paid=seats,
            active=seats,
            floor=seats,
        )
        self.model.audit.append(("subscription created", seats, seats, seats, seats))
        if card is not None:  # a card saved before, with nothing to renew yet
            self.save_card(card)

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def today(self) -> date:
        return self.now.astimezone(ZoneInfo(self.m.tz)).date()

    def card(self, kind: str) -> str:
        number = DECLINED_ON_ATTACH if kind == "attach_declined" else CARDS[kind]
        method = self.fake.card(number)
        return method

    def refusal(self, *, buying: bool) -> str | None:
        """What `price` (or a free change) refuses on the plan as the model has it."""
        if self.m.status == "suspended":
            return "suspended"
        if buying and self.m.status == "past_due":
            return "past_due"
        if buying and self.today() >= self.m.renews_at:
            return "renewal_pending"
        return None

    def quote(self, target: int) -> tuple[int, int]:
        """(seats to buy, amount due) today."""
        m = self.m
        period = (m.renews_at - m.period_start).days
        remaining = min((m.renews_at - self.today()).days, period)
        buying = max(target - m.paid, 0)
        return buying, prorated(buying * m.unit, remaining, period)

    def record(self, reason: str, paid: int, active: int) -> None:
        m = self.m
        m.audit.append((reason, m.paid, paid, m.active, active))
        m.paid, m.active = paid, active

    # -- free changes ---------------------------------------------------------------

    @rule(data=st.data())
    def change_seats(self, data: st.DataObject) -> None:
        m = self.m
        within = st.integers(1, m.paid)
        target = data.draw(st.one_of(within, within, st.just(m.paid + 1)), label="target")
        expected = self.refusal(buying=False)
        if expected is None and target > m.paid:
            expected = self.refusal(buying=True) or "purchase_required"
        try:
            view = seat_service.change_seats(
                self.rt.uow(), self.buyers["a"], self.plan, target, self.now
            )
        except Conflict as refused:
            assert refused.code == expected, (refused.code, expected)
            seen(f"refused: {refused.code}")
            return
        assert expected is None, f"{target} seats were changed for free, expected {expected}"
        assert view.active_seats == target
        if target != m.active:
            self.record("free change", m.paid, target)

    # -- buying -----------------------------------------------------------------------

    @rule(buyer=st.sampled_from(["a", "b"]), more=st.integers(-1, 4))
    def add_to_cart(self, buyer: str, more: int) -> None:
        target = max(self.m.paid + more, 1)
        expected = self.refusal(buying=True)
        if expected is None and target <= self.m.paid:
            expected = "nothing_to_buy"
        try:
            cart.add_item(self.rt.uow(), self.buyers[buyer], self.plan, target, True, self.now)
        except Conflict as refused:
            assert refused.code == expected, (refused.code, expected)
            seen(f"refused: {refused.code}")
            return
        assert expected is None, f"{target} seats went in the cart, expected {expected}"
        self.m.carts[buyer] = target

    @precondition(lambda self: self.model is not None and self.m.carts)
    @rule(
        data=st.data(),
        card=st.sampled_from(["saved", "good", "declined", "3ds", "attach_declined"]),
    )
    def pay_the_cart(self, data: st.DataObject, card: str) -> None:
        """A buyer who filled the cart earlier pays it (an empty cart: see `buy`)."""
        buyer = data.draw(st.sampled_from(sorted(self.m.carts)), label="buyer")
        self.check_out(buyer, card)

    def check_out(self, buyer: str, card: str) -> None:
        m = self.m
        target = m.carts.get(buyer)
        method = None if card == "saved" else self.card(card)
        expected: str | None = None
        if card == "saved" and m.saved is None:
            expected = "payment_method_required"
        elif target is None:
            expected = "cart_empty"
        else:
            expected = self.refusal(buying=True)
            if expected is None and target <= m.paid:
                expected = "cart_empty"  # bought meanwhile: the line goes
                del m.carts[buyer]
        try:
            purchase, status, _ = checkout.checkout(
                self.rt.uow(), self.buyers[buyer], secrets.token_hex(8), method, self.now
            )
        except Conflict as refused:
            assert refused.code == expected, (refused.code, expected)
            seen(f"refused: {refused.code}")
            return
        assert expected is None, f"checkout made purchase {purchase}, expected {expected}"
        assert target is not None and status == "pending"
        _, amount = self.quote(target)
        with self.rt.uow() as uow:
            stored = uow.session.get_one(Purchase, purchase)
            assert stored.confirmed_amount == amount, (stored.confirmed_amount, amount)
        kind = m.saved if card == "saved" else card
        assert kind is not None
        m.purchases[purchase] = Bought(
            purchase,
            buyer,
            target,
            kind,
            method or str(m.saved_id),
            new_card=card != "saved",
            confirmed=amount,
        )
        del m.carts[buyer]

    @rule(
        buyer=st.sampled_from(["a", "b"]),
        more=st.integers(1, 4),
        card=st.sampled_from(["saved", "good", "good", "declined", "3ds", "attach_declined"]),
    )
    def buy(self, buyer: str, more: int, card: str) -> None:
        """ "Yes, continue" then "Pay", the usual way through."""
        self.add_to_cart(buyer, more)
        self.check_out(buyer, card)

    @precondition(
        lambda self: (
            self.model is not None and any(p.status == "failed" for p in self.m.purchases.values())
        )
    )
    @rule(data=st.data(), card=st.sampled_from(["saved", "good", "declined", "3ds"]))
    def pay_again(self, data: st.DataObject, card: str) -> None:
        """ "Payer avec une autre carte" after a failure: the same lines, priced again today,
        never above what was confirmed the first time."""
        m = self.m
        failed = data.draw(
            st.sampled_from(sorted(p.id for p in m.purchases.values() if p.status == "failed")),
            label="failed purchase",
        )
        first = m.purchases[failed]
        method = None if card == "saved" else self.card(card)
        again = [p for p in m.purchases.values() if p.retry_of == failed and p.status != "failed"]
        expected: str | None = None
        if again:
            expected = "already_retried"
        elif card == "saved" and m.saved is None:
            expected = "payment_method_required"
        else:
            expected = self.refusal(buying=True)
            if expected is None:
                buying, amount = self.quote(first.target)
                if buying == 0:
                    expected = "nothing_to_buy"
                elif amount > first.confirmed:
                    expected = "quote_expired"
        try:
            purchase, status, _ = checkout.retry_purchase(
                self.rt.uow(),
                self.buyers[first.buyer],
                failed,
                secrets.token_hex(8),
                method,
                self.now,
            )
        except Conflict as refused:
            assert refused.code == expected, (refused.code, expected)
            seen(f"refused: {refused.code}")
            return
        assert expected is None, f"retry {purchase} made, expected {expected}"
        assert status == "pending"
        kind = m.saved if card == "saved" else card
        assert kind is not None
        m.purchases[purchase] = Bought(
            purchase,
            first.buyer,
            first.target,
            kind,
            method or str(m.saved_id),
            new_card=card != "saved",
            confirmed=first.confirmed,
            retry_of=failed,
        )
        seen("paid again after a failure")

    def open_purchases(self) -> list[int]:
        return sorted(p.id for p in self.m.purchases.values() if p.status not in TERMINAL)

    @precondition(lambda self: self.model is not None and self.open_purchases())
    @rule(data=st.data())
    def charge(self, data: st.DataObject) -> None:
        """What the worker does with a purchase's message (or the sweep's poll)."""
        purchase = self.m.purchases[
            data.draw(st.sampled_from(self.open_purchases()), label="purchase")
        ]
        self.predict_charge(purchase)
        charging.charge(self.rt.uow(), self.rt.engine, self.fake, purchase.id, now=self.now)
        self.check_purchase(purchase)

    def pending_pair(self) -> list[int]:
        return sorted(p.id for p in self.m.purchases.values() if p.status == "pending")[:2]

    @precondition(lambda self: self.model is not None and len(self.pending_pair()) == 2)
    @rule(newer_first=st.booleans())
    def two_workers_at_once(self, newer_first: bool) -> None:
        """Two workers charge the two oldest purchases of the plan at the same moment: the
        older one goes through as if alone; the newer one either waits its turn (and is
        charged when woken) or came after: then for what the older one left to buy."""
        older, newer = (self.m.purchases[i] for i in self.pending_pair())
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def work(purchase: int) -> None:
            try:
                barrier.wait(10)
                charging.charge(self.rt.uow(), self.rt.engine, self.fake, purchase, now=self.now)
            except BaseException as error:  # asserted below
                errors.append(error)

        order = [newer.id, older.id] if newer_first else [older.id, newer.id]
        threads = [threading.Thread(target=work, args=(purchase,)) for purchase in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        self.predict_charge(older)
        self.check_purchase(older)
        with self.rt.uow() as uow:
            waited = uow.session.get_one(Purchase, newer.id).status == "pending"
        seen("two at once: the newer " + ("waited" if waited else "came after"))
        if waited:  # woken when the older one is done (still waiting if it waits for the bank)
            charging.charge(self.rt.uow(), self.rt.engine, self.fake, newer.id, now=self.now)
        # either way the same end as one after the other, which keeps the examples replayable
        self.predict_charge(newer)
        self.check_purchase(newer)

    @precondition(lambda self: self.model is not None and self.open_purchases())
    @rule()
    def charge_the_oldest(self) -> None:
        """The worker's usual order: purchases are charged as they were checked out."""
        purchase = self.m.purchases[self.open_purchases()[0]]
        self.predict_charge(purchase)
        charging.charge(self.rt.uow(), self.rt.engine, self.fake, purchase.id, now=self.now)
        self.check_purchase(purchase)

    def predict_charge(self, p: Bought) -> None:
        m = self.m
        if p.status == "pending":
            held = m.holder is not None and m.holder != p.id
            older = any(q.status == "pending" and q.id < p.id for q in m.purchases.values())
            if held or older:
                return  # waits its turn
            refused = self.refusal(buying=True)
            if refused is not None:
                self.fail(p, refused)
                return
            buying, amount = self.quote(p.target)
            if amount > p.confirmed:
                self.fail(p, "quote_expired")
                return
            if buying == 0:
                self.fail(p, "already_paid")
                return
            p.price, p.seats = amount, buying
            m.holder = p.id
            if amount == 0:
                self.succeed(p, free=True)
                return
            if p.new_card and p.card == "attach_declined":
                self.fail(p, "card_declined")
                return
            p.status = "processing"
            if p.card == "good":
                self.succeed(p)
            elif p.card == "declined":
                self.fail(p, "card_declined")
            else:
                p.status = "requires_action"
            return
        # waiting for 3-D Secure: what the bank said decides
        assert p.status == "requires_action" and p.intent is not None
        intent = self.fake.intents[p.intent]
        if intent.status == "succeeded":
            self.succeed(p)
        elif intent.status == "requires_payment_method":
            self.fail(p, "payment_intent_authentication_failure")
        elif intent.status == "canceled":
            self.fail(p, "payment_canceled")

    def succeed(self, p: Bought, free: bool = False) -> None:
        m = self.m
        assert p.seats is not None
        p.status = "succeeded"
        seen("purchase succeeded" + (" (free: rounds to 0)" if free else ""))
        self.record(f"purchase {p.id} paid", m.paid + p.seats, m.paid + p.seats)
        m.holder = None
        if p.new_card and not free:
            m.saved, m.saved_id = p.card, p.method

    def fail(self, p: Bought, code: str) -> None:
        p.status, p.failure = "failed", code
        seen(f"purchase failed: {code}")
        if self.m.holder == p.id:
            self.m.holder = None

    def check_purchase(self, p: Bought) -> None:
        with self.rt.uow() as uow:
            stored = uow.session.get_one(Purchase, p.id)
            seen = (stored.status, stored.failure_code)
            p.intent = stored.stripe_payment_intent_id
        assert seen == (p.status, p.failure), f"purchase {p.id}: {seen}, model {p}"

    @precondition(
        lambda self: (
            self.model is not None
            and any(p.status == "requires_action" for p in self.m.purchases.values())
        )
    )
    @rule(data=st.data(), success=st.booleans())
    def bank_answers(self, data: st.DataObject, success: bool) -> None:
        """The buyer passes (or fails) 3-D Secure at the bank; the charger learns it later."""
        waiting = [
            p
            for p in self.m.purchases.values()
            if p.status == "requires_action"
            and p.intent
            and self.fake.intents[p.intent].status == "requires_action"
        ]
        if waiting:
            p = data.draw(st.sampled_from(waiting), label="purchase")
            self.fake.authenticate(str(p.intent), success)

    @precondition(
        lambda self: (
            self.model is not None
            and any(p.status == "requires_action" for p in self.m.purchases.values())
        )
    )
    @rule(data=st.data())
    def abandon_3d_secure(self, data: st.DataObject) -> None:
        """The buyer never comes back: past the TTL the charger cancels the payment."""
        p = data.draw(
            st.sampled_from(
                [p for p in self.m.purchases.values() if p.status == "requires_action"]
            ),
            label="purchase",
        )
        assert p.intent is not None
        if self.fake.intents[p.intent].status == "requires_action":
            self.fail(p, "payment_canceled")  # the charger cancels it
        else:
            self.predict_charge(p)
        charging.charge(
            self.rt.uow(),
            self.rt.engine,
            self.fake,
            p.id,
            now=datetime.now(UTC) + timedelta(seconds=3601),
            action_ttl=3600,
        )
        self.check_purchase(p)

    # -- time, renewals and cards ---------------------------------------------------

    @rule(days=st.sampled_from([0, 0, 0, 1, 1, 2, 3, 7, 15, 30]), hours=st.integers(0, 23))
    def time_passes(self, days: int, hours: int) -> None:
        self.now += timedelta(days=days, hours=hours)

    @rule()
    def renewal_scan(self) -> None:
        """What beat's scan and the renew tasks do, at the model's clock: new renewals for
        the plans due, then the retries whose day came and the ones waiting on the bank."""
        m = self.m
        if self.today() >= m.renews_at and (m.renewal is None or m.renewal.start != m.renews_at):
            m.renewal = Period(m.renews_at)
            self.predict_renewal(force=False)
        r = m.renewal
        if r is not None and r.status != "succeeded":
            again = (
                r.status == "pending"
                or (r.status == "failed" and r.next_at is not None and r.next_at <= self.now)
                or (r.status == "failed" and self.secret_waits(r))
            )
            if again:
                self.predict_renewal(force=False)
        renewals.run_due(
            self.rt.uow(), self.rt.engine, self.fake, DUNNING, now=self.now, stuck_after=-1
        )
        self.check_renewal()

    @precondition(
        lambda self: (
            self.model is not None
            and self.m.renewal is not None
            and self.m.renewal.intent is not None
        )
    )
    @rule(success=st.booleans())
    def bank_answers_for_the_renewal(self, success: bool) -> None:
        """The customer confirms (or fails) the renewal's 3-D Secure on the plan page."""
        r = self.m.renewal
        assert r is not None and r.intent is not None
        if self.fake.intents[r.intent].status == "requires_action":
            self.fake.authenticate(r.intent, success)

    def secret_waits(self, r: Period) -> bool:
        return r.failure == "authentication_required"

    def predict_renewal(self, *, force: bool) -> None:
        m = self.m
        r = m.renewal
        assert r is not None
        if r.status == "succeeded" or m.renews_at != r.start:
            return
        due = r.next_at is not None and r.next_at <= self.now
        if r.status == "failed" and not (force or due):
            if r.intent and self.fake.intents[r.intent].status == "succeeded":
                self.renewed(r, self.fake.intents[r.intent].amount)
            return
        holder = m.purchases.get(m.holder) if m.holder is not None else None
        if holder is not None and holder.status not in TERMINAL:
            return  # renews after the purchase being charged
        r.attempts += 1
        if m.saved is None:
            self.renewal_failed(r, "no_payment_method")
            return
        amount = m.active * m.unit
        intent = self.fake.intents.get(r.intent) if r.intent else None
        status = intent.status if intent else "requires_confirmation"
        if status == "succeeded":
            assert intent is not None
            self.renewed(r, intent.amount)
            return
        waits_for_the_bank = (
            status == "requires_action" and intent is not None and intent.method == m.saved_id
        )
        if not waits_for_the_bank:
            # confirmed again with the saved card, for the active seats (README: a new card
            # saved for a plan past due renews it at once, even while an older card waits
            # for 3-D Secure)
            if m.saved == "good":
                self.renewed(r, amount)
            elif m.saved == "declined":
                self.renewal_failed(r, "card_declined")
            else:
                self.renewal_failed(r, "authentication_required")
            return
        # the saved card still waits for the bank
        self.renewal_failed(r, "authentication_required")

    def renewal_failed(self, r: Period, code: str) -> None:
        r.status, r.failure = "failed", code
        seen(f"renewal failed: {code}")
        r.next_at = next_try(r.start, self.m.tz, self.now)
        self.m.status = "past_due" if r.next_at else "suspended"

    def renewed(self, r: Period, amount: int) -> None:
        m = self.m
        charged = amount // m.unit
        seen("renewal succeeded" + (" after a failure" if r.attempts > 1 else ""))
        assert amount % m.unit == 0
        r.status, r.failure, r.next_at = "succeeded", None, None
        self.record("renewal", charged, min(m.active, charged))
        m.renewed.append((r.start, charged, amount))
        m.period_start = r.start
        m.renews_at = renewal_after(r.start, m.interval, m.anchor)
        m.status = "active"
        m.floor = m.paid

    def check_renewal(self) -> None:
        m = self.m
        r = m.renewal
        with self.rt.uow() as uow:
            plan = uow.session.get_one(Subscription, self.plan)
            rows = list(
                uow.session.scalars(
                    select(Renewal).where(Renewal.subscription_id == self.plan).order_by(Renewal.id)
                )
            )
            seen = (plan.status, plan.current_period_start, plan.renews_at)
            current = [row for row in rows if r is not None and row.period_start == r.start]
            if r is not None:
                assert len(current) == 1, f"renewals of {r.start}: {len(current)}"
                row = current[0]
                r.intent = row.stripe_payment_intent_id
                got = (row.status, row.attempts, row.failure_code, row.next_attempt_at)
                want = (r.status, r.attempts, r.failure, r.next_at)
                assert got == want, f"renewal {row.id}: {got}, model {want}"
        assert seen == (m.status, m.period_start, m.renews_at), (seen, m)

    @rule(kind=st.sampled_from(["good", "declined", "3ds", "attach_declined"]))
    def save_card(self, kind: str) -> None:
        """A new card on the plan page: saved, and the renewal tried with it at once."""
        method = self.card(kind)
        try:
            _, retry = payment_methods.save_card(self.rt.uow(), self.fake, self.buyers["b"], method)
        except Conflict as refused:
            assert kind == "attach_declined" and refused.code == "card_declined"
            return
        assert kind != "attach_declined"
        m = self.m
        m.saved, m.saved_id = kind, method
        r = m.renewal
        waiting = r is not None and r.start == m.renews_at and r.status in ("failed", "pending")
        assert len(retry) == (1 if waiting else 0), (retry, r)
        if waiting:
            self.predict_renewal(force=True)
        for renewal_id in retry:
            renewals.renew(
                self.rt.uow(),
                self.rt.engine,
                self.fake,
                renewal_id,
                dunning=DUNNING,
                now=self.now,
                force=True,
            )
        self.check_renewal()

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def the_ledger_holds(self) -> None:
        if self.model is None:
            return
        TALLY["steps, each followed by the invariants"] += 1
        m = self.m
        with self.rt.uow() as uow:
            s = uow.session
            plan = s.get_one(Subscription, self.plan)
            counts = (plan.paid_seats, plan.active_seats)
            audit = list(
                s.scalars(
                    select(SeatChange)
                    .where(SeatChange.subscription_id == self.plan)
                    .order_by(SeatChange.id)
                )
            )
            purchases = {
                p.id: p
                for p in s.scalars(select(Purchase).where(Purchase.organization_id == self.org))
            }
            for p in purchases.values():
                _ = p.items
            done = list(
                s.scalars(
                    select(Renewal).where(
                        Renewal.subscription_id == self.plan, Renewal.status == "succeeded"
                    )
                )
            )
            alerts = list(
                s.scalars(
                    select(OperatorAlert).where(
                        OperatorAlert.organization_id == self.org,
                        OperatorAlert.resolved_at.is_(None),
                    )
                )
            )
            customer = s.scalar(
                select(Organization.stripe_customer_id).where(Organization.id == self.org)
            )

            # 1 <= active <= paid, as the model says; paid never drops inside a period
            assert 1 <= counts[1] <= counts[0], counts
            assert counts == (m.paid, m.active), (counts, m.paid, m.active)
            assert counts[0] >= m.floor, f"paid dropped to {counts[0]} from {m.floor} in a period"
            m.floor = counts[0]

            # every change audited: a chain from the creation to the counts, as the model made it
            rows = [
                (a.reason, a.paid_before, a.paid_after, a.active_before, a.active_after)
                for a in audit
            ]
            assert rows == m.audit, (rows, m.audit)
            for before, after in pairwise(audit):
                assert (after.paid_before, after.active_before) == (
                    before.paid_after,
                    before.active_after,
                )
            granted = {a.purchase_id: a.paid_after - a.paid_before for a in audit if a.purchase_id}

            # money for purchases = seats granted x the prorated quote of the day it was priced
            kept = {p.id: p for p in self.fake.succeeded(customer)} if customer else {}
            explained: set[str] = set()
            for pid, stored in purchases.items():
                model = m.purchases[pid]
                paid_for = [k for k in kept.values() if k.metadata.get("purchase_id") == str(pid)]
                assert stored.amount_due <= stored.confirmed_amount
                if stored.status == "succeeded":
                    assert model.seats is not None and model.price is not None
                    assert (
                        granted.get(pid) == model.seats == sum(i.seats_to_buy for i in stored.items)
                    )
                    assert stored.amount_due == model.price, (stored.amount_due, model.price)
                    assert sum(i.amount_due for i in stored.items) == model.price
                    if model.price == 0:
                        assert paid_for == [] and stored.stripe_payment_intent_id is None
                    else:
                        assert [k.id for k in paid_for] == [stored.stripe_payment_intent_id]
                        assert paid_for[0].amount == model.price
                        explained.add(paid_for[0].id)
                elif stored.status == "failed":
                    assert pid not in granted, f"failed purchase {pid} changed seats"
                    assert paid_for == [], f"purchase {pid} failed and Stripe kept money"
                else:  # the bank said yes; the charger's next poll gives the seats
                    assert pid not in granted, f"purchase {pid} ({stored.status}) changed seats"
                    explained.update(k.id for k in paid_for)

            # one renewal per period, charged once for the seats it made paid
            assert [
                (r.period_start, r.seats, r.amount) for r in sorted(done, key=lambda r: r.id)
            ] == (m.renewed)
            for renewal in done:
                paid_for = [
                    k for k in kept.values() if k.metadata.get("renewal_id") == str(renewal.id)
                ]
                assert [k.id for k in paid_for] == [renewal.stripe_payment_intent_id]
                assert paid_for[0].amount == renewal.amount == (renewal.seats or 0) * m.unit
                explained.add(paid_for[0].id)
            waiting = m.renewal.intent if m.renewal and m.renewal.status != "succeeded" else None
            explained.add(
                str(waiting)
            )  # the customer confirmed it: the next scan's poll settles it

            # any other money kept: an open alert
            alerted = {a.stripe_object_id for a in alerts}
            for intent in set(kept) - explained:
                assert intent in alerted, f"{intent} kept by Stripe, matched by nothing"
            assert [a.kind for a in alerts] == [], [a.message for a in alerts]


def test_the_seat_ledger_holds_whatever_happens(ledger_runtime: Runtime) -> None:
    LedgerMachine.rt = ledger_runtime
    TALLY.clear()
    started = time.monotonic()
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(f"\nledger state machine: {time.monotonic() - started:.1f} s, up to {STEPS} steps each")
    for outcome, count in sorted(TALLY.items()):
        print(f"  {outcome}: {count}")
