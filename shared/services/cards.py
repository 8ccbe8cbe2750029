"""Taking a new card on the pages: a SetupIntent for the organization's Stripe customer.

The browser confirms it with Stripe.js (`confirmCardSetup`, 3-D Secure included)
and sends the PaymentMethod it gives to checkout; that is also how Stripe saves
a card for later off-session renewals.
"""

from __future__ import annotations

from shared.domain.seats import require_manager
from shared.payments.gateway import PaymentGateway
from shared.services.access import Actor
from shared.services.charging import ensure_customer
from shared.services.views import CardSetupView
from shared.store.db import UnitOfWork


def start_card_setup(uow: UnitOfWork, gateway: PaymentGateway, actor: Actor) -> CardSetupView:
    """Only owners and buyers may choose the card; the customer is made if needed."""
    require_manager(actor.role)
    customer = ensure_customer(uow, gateway, actor.organization_id)
    setup = gateway.create_card_setup(
        customer,
        {"organization_id": str(actor.organization_id), "user_id": str(actor.user_id)},
    )
    return CardSetupView(client_secret=setup.client_secret)
