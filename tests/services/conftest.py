"""Service tests: the real PostgreSQL and the in-memory Stripe, one test per branch."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shared.bootstrap import Runtime, build
from shared.config import Settings
from shared.payments.fake_stripe import FakeStripe
from shared.services import cart, charging, checkout, provisioning
from shared.services.access import Actor
from shared.services.charging import Outcome
from shared.store.db import upgrade
from shared.store.models import OperatorAlert, Organization, Purchase, Subscription


def runtime_on_own_database(fresh_database: Any, settings: Settings) -> Iterator[Runtime]:
    url: str = fresh_database(migrated=True)
    upgrade(url)
    rt = build(replace(settings, database_url=url), pool_size=10)
    yield rt
    rt.engine.dispose()


@pytest.fixture(scope="session")
def runtime(fresh_database: Any, settings: Settings) -> Iterator[Runtime]:
    """A database of the tier's own: the in-memory Stripe's customers never meet the
    stand-in's, so the e2e tier's ledger audit reads only real ones."""
    yield from runtime_on_own_database(fresh_database, settings)


@pytest.fixture
def fake() -> FakeStripe:
    return FakeStripe()


@dataclass
class Shop:
    """One organization with a buyer and a plan, driven through the services."""

    rt: Runtime
    fake: FakeStripe
    org: int
    plan: int
    buyer: Actor

    def member_actor(self) -> Actor:
        user, _ = provisioning.create_user(
            self.rt.uow(), self.org, f"m-{secrets.token_hex(4)}@example.com", "member"
        )
        return Actor(user, self.org, "member")

    def another_buyer(self) -> Actor:
        user, _ = provisioning.create_user(
            self.rt.uow(), self.org, f"b-{secrets.token_hex(4)}@example.com", "buyer"
        )
        return Actor(user, self.org, "buyer")

    def checkout(
        self,
        target: int,
        card: str | None = None,
        buyer: Actor | None = None,
        now: datetime | None = None,
    ) -> int:
        who = buyer or self.buyer
        cart.add_item(self.rt.uow(), who, self.plan, target, True, now)
        purchase, _, _ = checkout.checkout(
            self.rt.uow(), who, secrets.token_hex(8), card or self.fake.card(), now
        )
        return purchase

    def paid_while_its_card_push_fails(self, target: int, card: str) -> int:
        """A purchase paid with `card`, whose push to Stripe as the default failed for now."""
        purchase = self.checkout(target, card)
        self.fake.fail("set_default_card")
        self.charge(purchase)
        assert self.purchase(purchase).card_sync_pending
        return purchase

    def charge(self, purchase: int, **options: object) -> Outcome:
        return charging.charge(self.rt.uow(), self.rt.engine, self.fake, purchase, **options)  # type: ignore[arg-type]

    def purchase(self, purchase: int) -> Purchase:
        with self.rt.uow() as uow:
            found = uow.session.get_one(Purchase, purchase)
            for item in found.items:
                uow.session.expunge(item)
            uow.session.expunge(found)
            return found

    def counts(self) -> tuple[int, int]:
        with self.rt.uow() as uow:
            plan = uow.session.get_one(Subscription, self.plan)
            return plan.paid_seats, plan.active_seats

    def organization(self) -> Organization:
        with self.rt.uow() as uow:
            found = uow.session.get_one(Organization, self.org)
            uow.session.expunge(found)
            return found

    def alerts(self) -> list[OperatorAlert]:
        with self.rt.uow() as uow:
            found = list(
                uow.session.query(OperatorAlert)
                .filter(OperatorAlert.organization_id == self.org)
                .order_by(OperatorAlert.id)
            )
            for alert in found:
                uow.session.expunge(alert)
            return found

    def kept_money(self) -> int:
        """What Stripe holds for this organization: succeeded and not refunded."""
        customer = self.organization().stripe_customer_id
        return sum(p.amount for p in self.fake.succeeded(customer)) if customer else 0

    def lock_is_free(self, lock: str, /, **params: Any) -> bool:
        """Whether a connection of another pool can take the advisory lock `lock` (SQL
        arguments) at once; one of ours that held it would take it again, a lock being
        re-entrant. The lock is given back before that connection closes: a closed
        connection's locks are freed by its server process a moment later, and a charger
        trying meanwhile would find the lock taken."""
        elsewhere = create_engine(self.rt.engine.url)
        try:
            with elsewhere.connect() as other:
                took = bool(other.scalar(text(f"SELECT pg_try_advisory_lock({lock})"), params))
                if took:
                    other.scalar(text(f"SELECT pg_advisory_unlock({lock})"), params)
                return took
        finally:
            elsewhere.dispose()


@pytest.fixture
def shop(runtime: Runtime, fake: FakeStripe) -> Shop:
    org = provisioning.create_organization(
        runtime.uow(), f"Shop {secrets.token_hex(3)}", "cad", "America/Toronto"
    )
    user, _ = provisioning.create_user(
        runtime.uow(), org, f"buyer-{secrets.token_hex(3)}@example.com", "buyer"
    )
    plan = provisioning.create_subscription(
        runtime.uow(), org, "XLGL", 36500, "year", 3, date.today() - timedelta(days=100)
    )
    return Shop(runtime, fake, org, plan, Actor(user, org, "buyer"))


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
