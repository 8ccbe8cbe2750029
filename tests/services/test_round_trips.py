"""Database round trips per purchase, counted so they cannot creep back (README
"Benchmarks": each statement and each BEGIN/COMMIT is a round trip to PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event

from shared.services import webhooks
from tests.services.conftest import Shop


@dataclass
class Count:
    statements: int = 0
    transactions: int = 0  # explicit ones: a BEGIN and a COMMIT (or ROLLBACK) round trip each

    @property
    def round_trips(self) -> int:
        return self.statements + 2 * self.transactions


@contextmanager
def counted(shop: Shop) -> Iterator[Count]:
    count = Count()

    def statement(*_: Any) -> None:
        count.statements += 1

    def transaction(connection: Any) -> None:
        if not connection.connection.dbapi_connection.autocommit:  # BEGIN and COMMIT sent
            count.transactions += 1

    event.listen(shop.rt.engine, "before_cursor_execute", statement)
    event.listen(shop.rt.engine, "begin", transaction)
    try:
        yield count
    finally:
        event.remove(shop.rt.engine, "before_cursor_execute", statement)
        event.remove(shop.rt.engine, "begin", transaction)


def test_a_purchase_costs_few_round_trips(shop: Shop) -> None:
    shop.charge(shop.checkout(4))  # the organization's first: its Stripe customer is made
    card = shop.fake.card()
    with counted(shop) as web:
        purchase = shop.checkout(6, card)  # what the web does: cart line, then checkout
    sent = len(shop.fake.events)
    with counted(shop) as worker:
        shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded"
    echoes = shop.fake.events[sent:]  # what Stripe sends back: the payment, the card
    assert {e["type"] for e in echoes} == {"payment_intent.succeeded", "customer.updated"}
    with counted(shop) as hook:  # each stored done in its insert: no worker, no message
        assert {webhooks.store_event(shop.rt.uow(), e) for e in echoes} == {"processed"}
    # the add (no transaction): plan, upsert (which checks the cart's currency), the cart
    # read after it; checkout: buyer, key, locked cart, its plans held, one store
    assert web.statements <= 8 and web.transactions <= 1, web
    # claim (the lock tried in the read of the purchase and its plans, the line ahead, one
    # write), the intent's record, apply (the same read, then one statement that writes
    # and names who waits), the card's sync and the unlock
    assert worker.statements <= 8 and worker.transactions <= 2, worker
    # each echo is the inbox's one INSERT, sent on the driver (SQLAlchemy's events do not
    # see it): nothing else may run for it
    assert hook == Count(), hook
    assert web.round_trips + worker.round_trips + len(echoes) <= 24, (web, worker, echoes)
