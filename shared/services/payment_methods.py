"""Cards outside a purchase: taking a new one on the pages (a SetupIntent for the
organization's Stripe customer: the browser confirms it with Stripe.js, 3-D Secure
included, which is also how Stripe saves a card for later off-session renewals), and
saving one as the card for renewals, here and as Stripe's default."""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.cards import Card, check_payment_method
from shared.domain.errors import Conflict
from shared.domain.seats import require_manager
from shared.payments.gateway import PaymentGateway, PaymentRefused
from shared.services import renewals
from shared.services.access import Actor
from shared.services.charging import stripe_customer
from shared.services.views import CardSetupView
from shared.store.db import UnitOfWork
from shared.store.models import Organization


def start_card_setup(uow: UnitOfWork, gateway: PaymentGateway, actor: Actor) -> CardSetupView:
    """Only owners and buyers may choose the card; the customer is made if needed."""
    require_manager(actor.role)
    customer = stripe_customer(uow, gateway, actor.organization_id)
    setup = gateway.create_card_setup(
        customer,
        {"organization_id": str(actor.organization_id), "user_id": str(actor.user_id)},
    )
    return CardSetupView(client_secret=setup.client_secret)


@dataclass(frozen=True)
class SavedCard:
    payment_method: Card
    renewals_retried: int


def save_card(
    uow: UnitOfWork, gateway: PaymentGateway, actor: Actor, payment_method: str
) -> tuple[SavedCard, list[int]]:
    """Attach the card, make it the default (Stripe's and ours), and name the renewals a
    past-due or suspended plan should try with it at once (the caller sends them)."""
    require_manager(actor.role)
    check_payment_method(payment_method)
    customer = stripe_customer(uow, gateway, actor.organization_id)
    try:
        card = gateway.attach_card(payment_method, customer)
    except PaymentRefused as refusal:
        raise Conflict(refusal.message, refusal.code) from refusal
    gateway.set_default_card(customer, payment_method)
    with uow:
        organization = uow.session.get_one(
            Organization, actor.organization_id, with_for_update={"key_share": True}
        )
        organization.keep_card(card)
        uow.commit()
    retry = renewals.retry_now(uow, actor.organization_id)
    return SavedCard(card, len(retry)), retry
