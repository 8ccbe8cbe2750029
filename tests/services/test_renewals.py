"""Renewals against the real PostgreSQL and the in-memory Stripe: every rule of README
"Renewals and failed payments", with the clock passed in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.bootstrap import Runtime, build
from shared.config import Settings
from shared.domain.errors import Conflict, Forbidden
from shared.domain.periods import start_of_day
from shared.payments.fake_stripe import DECLINED_ON_CHARGE, THREE_D_SECURE
from shared.services import cart, payment_methods, provisioning, renewals, seats, webhooks
from shared.services.access import Actor
from shared.services.renewals import Dunning
from shared.store.db import upgrade
from shared.store.models import Renewal, SeatChange, Subscription
from tests.services.conftest import Shop

TZ = "America/Toronto"


@pytest.fixture
def runtime(fresh_database: Any, settings: Settings) -> Iterator[Runtime]:
    """A database per test: a scan renews every plan due, so tests must not see each other's."""
    url: str = fresh_database()
    upgrade(url)
    rt = build(replace(settings, database_url=url), pool_size=10)
    yield rt
    rt.engine.dispose()


@pytest.fixture(autouse=True)
def _shop_plan_not_due(shop: Shop) -> None:
    """The shop's own plan renews far away, so each test counts only the plans it made."""
    with shop.rt.uow() as uow:
        uow.session.get_one(Subscription, shop.plan).renews_at = date(2099, 1, 1)
        uow.commit()


DAYS = Dunning((1, 3, 5, 7))


@dataclass
class Plan:
    shop: Shop
    id: int

    @property
    def rt(self):  # type: ignore[no-untyped-def]
        return self.shop.rt

    def row(self) -> Subscription:
        with self.rt.uow() as uow:
            found = uow.session.get_one(Subscription, self.id)
            uow.session.expunge(found)
            return found

    def renewals(self) -> list[Renewal]:
        with self.rt.uow() as uow:
            found = list(
                uow.session.scalars(
                    select(Renewal).where(Renewal.subscription_id == self.id).order_by(Renewal.id)
                )
            )
            for row in found:
                uow.session.expunge(row)
            return found

    def run(
        self, now: datetime, dunning: Dunning = DAYS, stuck_after: float = 60
    ) -> dict[str, int]:
        return renewals.run_due(
            self.rt.uow(), self.rt.engine, self.shop.fake, dunning, now=now, stuck_after=stuck_after
        )

    def renew_now(self, now: datetime, force: bool = False) -> renewals.Step:
        [current] = [r for r in self.renewals() if r.period_start == self.row().renews_at]
        return renewals.renew(
            self.rt.uow(),
            self.rt.engine,
            self.shop.fake,
            current.id,
            dunning=DAYS,
            now=now,
            force=force,
        )

    def charges(self) -> list[int]:
        """Amounts Stripe kept for this plan's renewals."""
        return [
            p.amount
            for p in self.shop.fake.succeeded()
            if p.metadata.get("subscription_id") == str(self.id)
        ]

    def audit(self) -> list[tuple[str, int, int]]:
        with self.rt.uow() as uow:
            return [
                (c.reason, c.paid_after, c.active_after)
                for c in uow.session.scalars(
                    select(SeatChange)
                    .where(SeatChange.subscription_id == self.id)
                    .order_by(SeatChange.id)
                )
            ]


def plan(
    shop: Shop,
    start: date,
    interval: str = "year",
    seats_: int = 3,
    renews_at: date | None = None,
    unit: int = 10000,
) -> Plan:
    plan_id = provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", unit, interval, seats_, start, renews_at
    )
    return Plan(shop, plan_id)


def save_card(shop: Shop, number: str = "4242424242424242", who: Actor | None = None) -> str:
    card = shop.fake.card(number)
    saved, _ = payment_methods.save_card(shop.rt.uow(), shop.fake, who or shop.buyer, card)
    assert saved.payment_method.id == card
    return card


def morning(day: date) -> datetime:
    """An hour after the day starts in the billing time zone."""
    return start_of_day(day, TZ) + timedelta(hours=1)


def test_a_yearly_plan_renews_once_for_its_active_seats(shop: Shop) -> None:
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    assert yearly.run(morning(date(2027, 3, 10)) - timedelta(days=2))["due"] == 0
    tally = yearly.run(morning(date(2028, 3, 10)))
    assert tally["due"] == 1 and tally["succeeded"] == 1
    row = yearly.row()
    assert (row.current_period_start, row.renews_at) == (date(2028, 3, 10), date(2029, 3, 10))
    assert (row.paid_seats, row.active_seats, row.status) == (3, 3, "active")
    assert yearly.charges() == [3 * 10000]
    assert yearly.audit()[-1] == ("renewal", 3, 3)
    assert yearly.run(morning(date(2028, 3, 10)))["due"] == 0  # the same day again: nothing
    assert yearly.charges() == [3 * 10000]


def test_the_success_event_of_a_settled_renewal_is_stored_done_and_never_queued(
    shop: Shop,
) -> None:
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    yearly.run(morning(date(2028, 3, 10)))
    [intent] = {r.stripe_payment_intent_id for r in yearly.renewals()}
    [event] = [
        e
        for e in shop.fake.events
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == intent
    ]
    assert webhooks.store_event(shop.rt.uow(), event) == "processed"
    assert yearly.charges() == [3 * 10000] and yearly.row().paid_seats == 3


def test_lowered_seats_are_charged_and_become_the_paid_seats(shop: Shop) -> None:
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    seats.change_seats(shop.rt.uow(), shop.buyer, yearly.id, 2)
    yearly.run(morning(date(2028, 3, 10)))
    row = yearly.row()
    assert (row.paid_seats, row.active_seats) == (2, 2)
    assert yearly.charges() == [2 * 10000]


def test_a_monthly_plan_keeps_its_anchor_day_over_short_months(shop: Shop) -> None:
    save_card(shop)
    monthly = plan(shop, date(2028, 1, 31), interval="month")
    assert monthly.row().renews_at == date(2028, 2, 29)
    for due, after in [
        (date(2028, 2, 29), date(2028, 3, 31)),
        (date(2028, 3, 31), date(2028, 4, 30)),
        (date(2028, 4, 30), date(2028, 5, 31)),
    ]:
        monthly.run(morning(due))
        assert monthly.row().renews_at == after
    assert monthly.charges() == [30000] * 3


def test_a_leap_day_yearly_plan_comes_back_to_february_29(shop: Shop) -> None:
    save_card(shop)
    leap = plan(shop, date(2028, 2, 29))
    seen = []
    for _ in range(4):
        due = leap.row().renews_at
        seen.append(due)
        leap.run(morning(due))
    assert seen == [date(2029, 2, 28), date(2030, 2, 28), date(2031, 2, 28), date(2032, 2, 29)]


def test_the_billing_time_zone_decides_the_day(shop: Shop) -> None:
    """20:00 on D-1 in Toronto is already D in UTC: not due yet."""
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    eve = start_of_day(date(2028, 3, 9), TZ) + timedelta(hours=20)
    assert eve.astimezone(UTC).date() == date(2028, 3, 10)
    assert yearly.run(eve)["due"] == 0
    assert yearly.run(start_of_day(date(2028, 3, 10), TZ) + timedelta(minutes=5))["due"] == 1


def test_a_declined_renewal_is_past_due_then_a_new_card_renews_it_once(shop: Shop) -> None:
    save_card(shop, DECLINED_ON_CHARGE)
    yearly = plan(shop, date(2027, 3, 10))
    renewal_day = date(2028, 3, 10)
    tally = yearly.run(morning(renewal_day))
    assert tally["failed"] == 1
    row = yearly.row()
    assert (row.status, row.paid_seats, row.renews_at) == ("past_due", 3, renewal_day)
    [failed] = yearly.renewals()
    assert failed.failure_code == "card_declined"
    assert failed.next_attempt_at == start_of_day(renewal_day + timedelta(days=1), TZ)
    view = seats.get_subscription(shop.rt.uow(), shop.buyer, yearly.id)
    assert view.status == "past_due" and view.renewal is not None
    assert view.renewal.failure_code == "card_declined" and view.renewal.attempts == 1

    later = morning(renewal_day) + timedelta(hours=3)
    with pytest.raises(Conflict) as refused:
        cart.add_item(shop.rt.uow(), shop.buyer, yearly.id, 5, True, later)
    assert refused.value.code == "past_due"
    lowered = seats.change_seats(shop.rt.uow(), shop.buyer, yearly.id, 2, later)
    assert lowered.active_seats == 2  # free changes still work while past due

    card = shop.fake.card()
    saved, retry = payment_methods.save_card(shop.rt.uow(), shop.fake, shop.buyer, card)
    assert retry == [failed.id] and saved.renewals_retried == 1
    renewals.renew(
        shop.rt.uow(), shop.rt.engine, shop.fake, failed.id, dunning=DAYS, now=later, force=True
    )
    row = yearly.row()
    assert (row.status, row.current_period_start, row.renews_at) == (
        "active",
        renewal_day,
        date(2029, 3, 10),
    )
    assert (row.paid_seats, row.active_seats) == (2, 2)
    assert yearly.charges() == [2 * 10000]
    [intent] = {r.stripe_payment_intent_id for r in yearly.renewals()}
    assert [i for i in shop.fake.intents.values() if i.metadata.get("renewal_id")] == [
        shop.fake.intents[str(intent)]
    ]


def test_every_retry_failing_suspends_the_plan(shop: Shop) -> None:
    save_card(shop, DECLINED_ON_CHARGE)
    yearly = plan(shop, date(2027, 3, 10))
    renewal_day = date(2028, 3, 10)
    yearly.run(morning(renewal_day))
    for days in (1, 3, 5):
        assert yearly.run(morning(renewal_day + timedelta(days=days)))["retries"] == 1
        assert yearly.row().status == "past_due"
    assert yearly.run(morning(renewal_day + timedelta(days=2)))["retries"] == 0  # not its day
    yearly.run(morning(renewal_day + timedelta(days=7)))
    row = yearly.row()
    [renewal] = yearly.renewals()
    assert (row.status, renewal.attempts, renewal.next_attempt_at) == ("suspended", 5, None)
    assert yearly.run(morning(renewal_day + timedelta(days=30)))["retries"] == 0
    with pytest.raises(Conflict) as refused:
        seats.change_seats(shop.rt.uow(), shop.buyer, yearly.id, 2)
    assert refused.value.code == "suspended"
    assert seats.get_subscription(shop.rt.uow(), shop.member_actor(), yearly.id).status == (
        "suspended"
    )
    # a late success starts the new period at the old renewal date: no free days
    save_card(shop)
    renewals.renew(
        shop.rt.uow(),
        shop.rt.engine,
        shop.fake,
        renewal.id,
        dunning=DAYS,
        now=morning(renewal_day + timedelta(days=40)),
        force=True,
    )
    row = yearly.row()
    assert (row.status, row.current_period_start, row.renews_at) == (
        "active",
        renewal_day,
        date(2029, 3, 10),
    )


def test_without_a_saved_card_the_plan_is_past_due_and_nothing_is_charged(shop: Shop) -> None:
    yearly = plan(shop, date(2027, 3, 10))
    yearly.run(morning(date(2028, 3, 10)))
    [renewal] = yearly.renewals()
    assert (renewal.failure_code, renewal.stripe_payment_intent_id) == ("no_payment_method", None)
    assert yearly.row().status == "past_due" and shop.fake.calls.count("create_payment") == 0


def test_a_bank_asking_for_authentication_gives_the_customer_a_client_secret(
    shop: Shop,
) -> None:
    card = save_card(shop, THREE_D_SECURE)
    yearly = plan(shop, date(2027, 3, 10))
    yearly.run(morning(date(2028, 3, 10)))
    [renewal] = yearly.renewals()
    assert renewal.failure_code == "authentication_required" and renewal.client_secret
    view = seats.get_subscription(shop.rt.uow(), shop.buyer, yearly.id)
    assert view.renewal is not None and view.renewal.client_secret == renewal.client_secret
    hidden = seats.get_subscription(shop.rt.uow(), shop.member_actor(), yearly.id)
    assert hidden.renewal is not None and hidden.renewal.client_secret is None
    intent = str(renewal.stripe_payment_intent_id)
    shop.fake.authenticate(intent)
    webhooks.on_payment_intent(
        shop.rt.uow(), shop.fake, {"id": intent, "metadata": {"renewal_id": str(renewal.id)}}, "e"
    )
    assert yearly.row().status == "active" and yearly.charges() == [30000]
    assert card


def waiting_for_3d_secure(shop: Shop) -> tuple[Any, date, Any]:
    """A yearly plan whose renewal today waits for 3-D Secure on the saved card."""
    save_card(shop, THREE_D_SECURE)
    yearly = plan(shop, date(2027, 3, 10))
    renewal_day = date(2028, 3, 10)
    yearly.run(morning(renewal_day))
    [waiting] = yearly.renewals()
    return yearly, renewal_day, waiting


def renewed_again(shop: Shop, gateway: Any, renewal_id: int, day: date) -> None:
    """The retry a new card sends at once, two hours into the renewal day."""
    renewals.renew(
        shop.rt.uow(),
        shop.rt.engine,
        gateway,
        renewal_id,
        dunning=DAYS,
        now=morning(day) + timedelta(hours=2),
        force=True,
    )


def test_a_card_saved_while_the_renewal_waits_for_3d_secure_renews_at_once(shop: Shop) -> None:
    """Found by the ledger state machine: the waiting intent kept the old card, so the new
    one was never charged and every retry failed the same way until the plan was suspended."""
    yearly, renewal_day, waiting = waiting_for_3d_secure(shop)
    assert waiting.failure_code == "authentication_required" and yearly.row().status == "past_due"
    card = shop.fake.card()
    _, retry = payment_methods.save_card(shop.rt.uow(), shop.fake, shop.buyer, card)
    assert retry == [waiting.id]
    renewed_again(shop, shop.fake, waiting.id, renewal_day)
    row = yearly.row()
    assert (row.status, row.current_period_start) == ("active", renewal_day)
    assert yearly.charges() == [30000]
    [renewed] = yearly.renewals()
    assert renewed.stripe_payment_intent_id == waiting.stripe_payment_intent_id  # one intent
    assert shop.fake.intents[str(renewed.stripe_payment_intent_id)].method == card


def test_3d_secure_finished_while_a_new_card_is_saved_renews_with_the_old_card_once(
    shop: Shop,
) -> None:
    """The customer passes 3-D Secure on the waiting intent just as the renewal puts the new
    card on it: Stripe refuses the update (the intent succeeded), and the renewal follows the
    intent: paid once, the plan active, no failure or dunning attempt."""
    yearly, renewal_day, waiting = waiting_for_3d_secure(shop)
    intent = str(waiting.stripe_payment_intent_id)
    payment_methods.save_card(shop.rt.uow(), shop.fake, shop.buyer, shop.fake.card())

    class CustomerFirst:
        def __getattr__(self, name: str) -> Any:
            return getattr(shop.fake, name)

        def update_payment(self, payment_id: str, **changes: Any) -> Any:
            shop.fake.authenticate(intent)  # in the customer's browser, a moment earlier
            return shop.fake.update_payment(payment_id, **changes)

    renewed_again(shop, CustomerFirst(), waiting.id, renewal_day)
    row = yearly.row()
    assert (row.status, row.current_period_start) == ("active", renewal_day)
    assert yearly.charges() == [30000]
    [renewed] = yearly.renewals()
    assert (renewed.status, renewed.stripe_payment_intent_id) == ("succeeded", intent)


def test_off_session_authentication_required_is_a_failure_the_customer_can_fix(
    shop: Shop,
) -> None:
    save_card(shop, THREE_D_SECURE)
    yearly = plan(shop, date(2027, 3, 10))
    yearly.run(morning(date(2028, 3, 10)), Dunning((1, 3, 5, 7), off_session=True))
    [renewal] = yearly.renewals()
    assert renewal.failure_code == "authentication_required" and renewal.client_secret
    intent = str(renewal.stripe_payment_intent_id)
    shop.fake.pay_with(intent, shop.fake.card())  # the customer, back on the page
    assert renewals.poll(shop.rt.uow(), shop.fake, renewal.id, DAYS, datetime.now(UTC))
    assert yearly.row().status == "active"


def test_two_scans_at_once_renew_each_plan_once(shop: Shop) -> None:
    save_card(shop)
    plans = [plan(shop, date(2027, 3, 10)) for _ in range(6)]
    now = morning(date(2028, 3, 10))
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def scan() -> None:
        try:
            barrier.wait()
            plans[0].run(now)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=scan) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for each in plans:
        assert each.charges() == [30000]
        assert len(each.renewals()) == 1 and each.row().renews_at == date(2029, 3, 10)
    assert shop.fake.calls.count("create_payment") == 6


@pytest.mark.parametrize("step", ["renewal_unrecorded", "renewal_created", "renewal_confirmed"])
def test_a_worker_that_dies_mid_renewal_charges_once(shop: Shop, step: str) -> None:
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    now = morning(date(2028, 3, 10))

    def die(name: str) -> None:
        if name == step:
            raise RuntimeError("killed")

    [batch] = list(renewals.scan(shop.rt.uow(), now=now))
    with pytest.raises(RuntimeError):
        renewals.renew(
            shop.rt.uow(),
            shop.rt.engine,
            shop.fake,
            batch[0],
            dunning=DAYS,
            now=now,
            checkpoint=die,
        )
    later = now + timedelta(minutes=5)  # the scan picks up what was left processing
    yearly.run(later, stuck_after=-1)
    assert yearly.row().status == "active" and yearly.charges() == [30000]
    assert len([i for i in shop.fake.intents.values() if i.metadata.get("renewal_id")]) == 1


def test_a_purchase_being_charged_is_renewed_after_it(shop: Shop) -> None:
    save_card(shop)
    yearly = plan(shop, date(2027, 3, 10))
    with shop.rt.uow() as uow:
        uow.session.get_one(Subscription, yearly.id).charging_purchase_id = shop.checkout(4)
        uow.commit()
    yearly.run(morning(date(2028, 3, 10)))
    [renewal] = yearly.renewals()
    assert renewal.status == "pending" and yearly.charges() == []


def test_the_scan_walks_due_plans_in_batches_and_makes_each_once(shop: Shop) -> None:
    save_card(shop)
    plans = [plan(shop, date(2027, 3, 10)) for _ in range(5)]
    now = morning(date(2028, 3, 10))
    batches = list(renewals.scan(shop.rt.uow(), now=now, batch=2))
    made = [renewal for batch in batches for renewal in batch]
    assert len(made) == len(set(made)) >= 5
    assert all(len(batch) <= 2 for batch in batches)
    again = [r for batch in renewals.scan(shop.rt.uow(), now=now, batch=2) for r in batch]
    assert not set(again) - set(made)
    with shop.rt.uow() as uow:
        count = uow.session.scalar(
            select(func.count())
            .select_from(Renewal)
            .where(Renewal.subscription_id.in_([p.id for p in plans]))
        )
    assert count == 5


def test_a_member_cannot_save_a_card(shop: Shop) -> None:
    with pytest.raises(Forbidden):
        save_card(shop, who=shop.member_actor())


def test_a_late_failure_event_never_moves_the_schedule(shop: Shop) -> None:
    save_card(shop, DECLINED_ON_CHARGE)
    yearly = plan(shop, date(2027, 3, 10))
    yearly.run(morning(date(2028, 3, 10)))
    [before] = yearly.renewals()
    intent = str(before.stripe_payment_intent_id)
    renewals.settle(
        shop.rt.uow(),
        before.id,
        shop.fake.get_payment(intent),
        DAYS,
        morning(date(2028, 3, 20)),
    )
    [after] = yearly.renewals()
    assert (after.next_attempt_at, yearly.row().status) == (before.next_attempt_at, "past_due")
