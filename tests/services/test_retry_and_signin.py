"""Issue 11's services: a failed purchase paid again with another card, new cards through a
SetupIntent, and one-time sign-in links."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from shared.domain.errors import Conflict, Forbidden, Invalid, NotFound
from shared.payments.fake_stripe import DECLINED_ON_CHARGE
from shared.services import cart, checkout, payment_methods, provisioning, purchases, signin
from shared.services.access import Actor
from shared.store.models import Purchase, Subscription
from tests.services.conftest import Shop


def declined(shop: Shop, target: int = 5) -> int:
    purchase = shop.checkout(target, shop.fake.card(DECLINED_ON_CHARGE))
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "failed"
    return purchase


def retry(shop: Shop, failed: int, card: str | None, key: str | None = None) -> int:
    again, status, _ = checkout.retry_purchase(
        shop.rt.uow(), shop.buyer, failed, key or secrets.token_hex(8), card
    )
    assert status == "pending"
    return again


def test_a_declined_purchase_is_paid_again_with_another_card_in_one_step(shop: Shop) -> None:
    failed = declined(shop)
    assert cart.get_cart(shop.rt.uow(), shop.buyer).items == []  # the cart was emptied
    card = shop.fake.card()
    again = retry(shop, failed, card)
    shop.charge(again)
    paid = shop.purchase(again)
    first = shop.purchase(failed)
    assert paid.status == "succeeded" and paid.retry_of_id == failed
    assert [(i.subscription_id, i.active_seats) for i in paid.items] == [(shop.plan, 5)]
    assert (
        paid.confirmed_amount == first.confirmed_amount and paid.amount_due <= paid.confirmed_amount
    )
    assert shop.counts() == (5, 5) and shop.organization().payment_method_id == card
    view = purchases.get_purchase(shop.rt.uow(), shop.buyer, again)
    assert view.retry_of == failed


def test_the_same_key_gives_the_same_retry_and_another_body_is_refused(shop: Shop) -> None:
    failed = declined(shop)
    card = shop.fake.card()
    again = retry(shop, failed, card, key="retry-1")
    assert retry(shop, failed, card, key="retry-1") == again
    with pytest.raises(Conflict) as other_card:
        retry(shop, failed, shop.fake.card(), key="retry-1")
    assert other_card.value.code == "idempotency_key_reused"
    checkout_key = "checkout-then-retry"
    cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 4, True)
    checkout.checkout(shop.rt.uow(), shop.buyer, checkout_key, card)
    with pytest.raises(Conflict) as reused:
        retry(shop, failed, card, key=checkout_key)
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(Conflict) as as_checkout:  # a retry's key is no checkout's either
        checkout.checkout(shop.rt.uow(), shop.buyer, "retry-1", card)
    assert as_checkout.value.code == "idempotency_key_reused"


def test_only_a_failed_purchase_is_paid_again_and_only_once_at_a_time(shop: Shop) -> None:
    paid = shop.checkout(4)
    with pytest.raises(Conflict) as pending:
        retry(shop, paid, shop.fake.card())
    assert pending.value.code == "not_failed"
    shop.charge(paid)
    failed = declined(shop, 6)
    again = retry(shop, failed, shop.fake.card())
    with pytest.raises(Conflict) as twice:
        retry(shop, failed, shop.fake.card())
    assert twice.value.code == "already_retried" and twice.value.details["purchase_id"] == again
    shop.charge(again)
    assert shop.counts() == (6, 6)


def test_a_second_retry_after_a_failed_retry_is_allowed(shop: Shop) -> None:
    failed = declined(shop)
    again = retry(shop, failed, shop.fake.card(DECLINED_ON_CHARGE))
    shop.charge(again)
    assert shop.purchase(again).status == "failed"
    third = retry(shop, failed, shop.fake.card())
    shop.charge(third)
    assert shop.purchase(third).status == "succeeded" and shop.counts() == (5, 5)


def test_seats_bought_meanwhile_are_not_bought_twice(shop: Shop) -> None:
    failed = declined(shop, 5)
    other = shop.another_buyer()
    shop.charge(shop.checkout(4, buyer=other))
    again = retry(shop, failed, shop.fake.card())
    shop.charge(again)
    done = shop.purchase(again)
    assert [i.seats_to_buy for i in done.items] == [1] and shop.counts() == (5, 5)
    failed = declined(shop, 7)
    shop.charge(shop.checkout(7, buyer=other))
    with pytest.raises(Conflict) as nothing:
        retry(shop, failed, shop.fake.card())
    assert nothing.value.code == "nothing_to_buy"


def test_never_more_than_the_buyer_confirmed(shop: Shop) -> None:
    failed = declined(shop)
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(Subscription).where(Subscription.id == shop.plan).values(unit_amount=99999)
        )
        uow.commit()
    with pytest.raises(Conflict) as dearer:
        retry(shop, failed, shop.fake.card())
    assert dearer.value.code == "quote_expired" and "CAD" in dearer.value.message
    assert "minor units" not in dearer.value.message


def test_who_may_pay_a_purchase_again(shop: Shop) -> None:
    failed = declined(shop)
    card = shop.fake.card()
    for actor, refusal in (
        (Actor(shop.buyer.user_id, shop.org + 10_000, "buyer"), NotFound),
        (Actor(shop.buyer.user_id, shop.org, "member"), Forbidden),
        (shop.another_buyer(), Forbidden),
    ):
        with pytest.raises(refusal):
            checkout.retry_purchase(shop.rt.uow(), actor, failed, "k", card)
    with pytest.raises(Invalid):
        checkout.retry_purchase(shop.rt.uow(), shop.buyer, failed, None, card)
    with pytest.raises(Invalid):
        checkout.retry_purchase(shop.rt.uow(), shop.buyer, failed, "k", "card_4242")
    with pytest.raises(Conflict) as no_card:  # the declined card was never saved
        checkout.retry_purchase(shop.rt.uow(), shop.buyer, failed, "k", None)
    assert no_card.value.code == "payment_method_required"


def test_a_new_card_starts_with_a_setup_intent_for_the_one_customer(shop: Shop) -> None:
    first = payment_methods.start_card_setup(shop.rt.uow(), shop.fake, shop.buyer)
    second = payment_methods.start_card_setup(shop.rt.uow(), shop.fake, shop.buyer)
    assert first.client_secret != second.client_secret
    customer = shop.organization().stripe_customer_id
    assert customer and len(shop.fake.customers) == 1
    assert {s["customer"] for s in shop.fake.setups.values()} == {customer}
    with pytest.raises(Forbidden):
        payment_methods.start_card_setup(
            shop.rt.uow(), shop.fake, Actor(shop.buyer.user_id, shop.org, "member")
        )


def test_the_confirmation_message_speaks_currency_not_minor_units(shop: Shop) -> None:
    with pytest.raises(Conflict) as asked:
        cart.add_item(shop.rt.uow(), shop.buyer, shop.plan, 5, False)
    assert "minor units" not in asked.value.message
    assert " CAD after the prorated coupon" in asked.value.message
    assert "days left of 365" in asked.value.message


def test_a_sign_in_link_works_once_within_15_minutes(shop: Shop) -> None:
    with shop.rt.uow() as uow:
        from shared.store.models import User

        email = uow.session.get_one(User, shop.buyer.user_id).email
    now = datetime.now(UTC)
    link = signin.issue_link(shop.rt.uow(), email, now=now)
    assert link.expires_at == now + timedelta(minutes=15)
    assert signin.use_link(shop.rt.uow(), link.token, now=now) == shop.buyer
    with pytest.raises(signin.LinkNotValid):
        signin.use_link(shop.rt.uow(), link.token, now=now)
    late = signin.issue_link(shop.rt.uow(), email, now=now)
    with pytest.raises(signin.LinkNotValid):
        signin.use_link(shop.rt.uow(), late.token, now=now + timedelta(minutes=15))
    for bad in ("", "x" * 500, "never-issued"):
        with pytest.raises(signin.LinkNotValid):
            signin.use_link(shop.rt.uow(), bad)
    with pytest.raises(NotFound):
        signin.issue_link(shop.rt.uow(), "nobody@example.com")


def test_an_operator_link_signs_in_the_operator_once_and_never_a_customer(shop: Shop) -> None:
    from sqlalchemy import select

    from shared.services import operators
    from shared.store.models import LoginLink, User

    email = f"ops-{secrets.token_hex(3)}@example.com"
    operator_id, _ = operators.create_operator(shop.rt.uow(), email)
    now = datetime.now(UTC)
    link = signin.issue_operator_link(shop.rt.uow(), email.upper(), now=now)
    assert link.url("http://h:1/").startswith("http://h:1/ops/login/")
    assert (link.operator_id, link.user_id) == (operator_id, None)
    assert link.expires_at == now + timedelta(minutes=15)
    with shop.rt.uow() as uow:  # only the hash is kept
        hashes = set(uow.session.scalars(select(LoginLink.token_hash)))
    assert link.token not in hashes and signin.hash_token(link.token) in hashes

    # an operator's link is not a customer's: refused at /login, and still unused
    with pytest.raises(signin.LinkNotValid):
        signin.use_link(shop.rt.uow(), link.token, now=now)
    assert signin.use_operator_link(shop.rt.uow(), link.token, now=now) == (
        operators.OperatorActor(operator_id, email)
    )
    with pytest.raises(signin.LinkNotValid):
        signin.use_operator_link(shop.rt.uow(), link.token, now=now)

    # a customer's link is not an operator's: refused under /ops, and still good at /login
    with shop.rt.uow() as uow:
        customer_email = uow.session.get_one(User, shop.buyer.user_id).email
    customer = signin.issue_link(shop.rt.uow(), customer_email, now=now)
    with pytest.raises(signin.LinkNotValid):
        signin.use_operator_link(shop.rt.uow(), customer.token, now=now)
    assert signin.use_link(shop.rt.uow(), customer.token, now=now) == shop.buyer

    late = signin.issue_operator_link(shop.rt.uow(), email, now=now)
    with pytest.raises(signin.LinkNotValid):
        signin.use_operator_link(shop.rt.uow(), late.token, now=now + timedelta(minutes=15))
    with pytest.raises(NotFound):
        signin.issue_operator_link(shop.rt.uow(), customer_email)  # a user is not an operator


def test_two_tabs_racing_on_one_link_start_one_session(shop: Shop) -> None:
    user, _ = provisioning.create_user(
        shop.rt.uow(), shop.org, f"race-{secrets.token_hex(3)}@example.com", "owner"
    )
    with shop.rt.uow() as uow:
        from shared.store.models import User

        email = uow.session.get_one(User, user).email
    link = signin.issue_link(shop.rt.uow(), email)
    wins: list[Actor] = []
    losses: list[Exception] = []
    start = threading.Barrier(4)

    def open_link() -> None:
        start.wait()
        try:
            wins.append(signin.use_link(shop.rt.uow(), link.token))
        except signin.LinkNotValid as error:
            losses.append(error)

    threads = [threading.Thread(target=open_link) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and len(losses) == 3


def test_the_purchase_view_says_which_purchase_it_retries(shop: Shop) -> None:
    failed = declined(shop)
    again = retry(shop, failed, shop.fake.card())
    with shop.rt.uow() as uow:
        assert uow.session.get_one(Purchase, again).retry_of_id == failed
    assert purchases.bought_by(shop.rt.uow(), shop.buyer, again) == shop.buyer.user_id
