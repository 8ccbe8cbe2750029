"""The cart an add answers and the purchase a checkout stores, each written in as few
statements as it takes (README "Benchmarks"): what the buyer sees must not change."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy import event

from shared.services import cart, checkout, provisioning
from shared.store.models import CartItem, Purchase
from tests.services.conftest import Shop


def second_plan(shop: Shop) -> int:
    return provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL-2", 1200, "month", 2, date.today() - timedelta(days=9)
    )


def money_of(line: Any) -> tuple[int, ...]:
    """What a cart line or a purchase line says the buyer pays for."""
    names = ("subscription_id", "active_seats", "seats_to_buy", "subtotal")
    names += ("proration_coupon", "amount_due")
    return tuple(getattr(line, name) for name in names)


def test_the_cart_an_add_answers_is_the_cart_read_back(shop: Shop) -> None:
    other = second_plan(shop)
    first = cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 5, True)
    cart.add_item(shop.rt.uow(), shop.buyer, other, 4, True)
    answered = cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 6, True)
    read_back = cart.get_cart(shop.rt.uow(), shop.buyer)
    assert asdict(answered) == asdict(read_back)
    assert [line.subscription_id for line in answered.items] == [shop.plan, other]
    assert answered.items[0].id == first.items[0].id  # the line was changed, not added again
    assert answered.items[0].active_seats == 6 and answered.items[0].seats_to_buy == 3
    assert answered.total_due == sum(line.amount_due for line in read_back.items) > 0


def test_a_two_plan_checkout_stores_every_line_as_priced_and_empties_the_cart(
    shop: Shop,
) -> None:
    other = second_plan(shop)
    cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 5, True)
    priced = cart.add_item(shop.rt.uow(), shop.buyer, other, 4, True)
    key, card = secrets.token_hex(8), shop.fake.card()
    purchase_id, status, _ = checkout.checkout(shop.rt.uow(), shop.buyer, key, card)
    assert status == "pending"
    again = checkout.checkout(shop.rt.uow(), shop.buyer, key, card)
    assert again == (purchase_id, "pending", False)
    with shop.rt.uow() as uow:
        purchase = uow.session.get_one(Purchase, purchase_id)
        stored = [money_of(item) for item in purchase.items]
        assert (purchase.amount_due, purchase.confirmed_amount) == (priced.total_due,) * 2
        assert (purchase.payment_method_id, purchase.new_card) == (card, True)
        assert purchase.card_sync_pending is False and purchase.attempts == 0
        assert purchase.items[0].renews_at is not None
        assert uow.session.query(CartItem).filter_by(user_id=shop.buyer.user_id).count() == 0
    assert stored == sorted(money_of(line) for line in priced.items)
    assert shop.charge(purchase_id).next == "done"
    assert shop.purchase(purchase_id).status == "succeeded"
    assert shop.counts() == (5, 5)


@contextmanager
def before_the_add_writes(shop: Shop, another_tab: Callable[[], Any]) -> Iterator[list[bool]]:
    """Runs `another_tab` to its end (in a thread) right before the add's first statement on
    the cart (its upsert), after the add read the plan; yields whether it finished before
    the add went on."""
    me, ran = threading.get_ident(), [False]
    finished: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == me and not ran[0] and "cart_items" in statement:
            ran[0] = True
            tab = threading.Thread(target=lambda: (another_tab(), finished.append(True)))
            tab.start()
            tab.join(timeout=5)  # a lock the add still held would make it wait instead

    event.listen(shop.rt.engine, "before_cursor_execute", before)
    try:
        yield finished
    finally:
        event.remove(shop.rt.engine, "before_cursor_execute", before)
    assert ran[0] and finished, "the other tab did not run to its end"


def test_an_add_racing_a_checkout_of_the_same_cart_answers_the_cart_left(shop: Shop) -> None:
    """Found by review: an answer built from the lines read before the upsert showed the
    line the other tab had just bought next to the new one (the plan twice)."""
    cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 5, True)

    def checkout_in_another_tab() -> None:
        checkout.checkout(shop.rt.uow(), shop.buyer, secrets.token_hex(8), shop.fake.card())

    with before_the_add_writes(shop, checkout_in_another_tab):
        answered = cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 7, True)
    assert asdict(answered) == asdict(cart.get_cart(shop.rt.uow(), shop.buyer))
    [line] = answered.items
    assert line.active_seats == 7 and answered.total_due == line.amount_due


def test_two_adds_at_once_each_answer_a_cart_that_exists(shop: Shop) -> None:
    other, third = second_plan(shop), second_plan(shop)
    cart.add_item(shop.rt.uow(), shop.buyer, third, 4, True)

    def add_in_another_tab() -> None:
        cart.add_item(shop.rt.uow(), shop.buyer, other, 4, True)

    with before_the_add_writes(shop, add_in_another_tab):
        answered = cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 5, True)
    read_back = cart.get_cart(shop.rt.uow(), shop.buyer)
    assert asdict(answered) == asdict(read_back)
    assert sorted(line.subscription_id for line in answered.items) == sorted(
        [third, other, shop.plan]
    )
