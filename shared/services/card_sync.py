"""Our saved card follows Stripe's default for the customer: one sync per customer at a
time, never a detached card, never an answer older than a card a purchase is pushing.

Run by the webhook handlers of `customer.updated` and `payment_method.detached`, and by a
charger whose push of a new card Stripe refused for good (`replace_refused_card`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Session

from shared.domain.cards import Card
from shared.payments.gateway import PaymentGateway, PaymentRefused
from shared.store.db import CARD_SYNC_LOCKS, UnitOfWork
from shared.store.models import ORGANIZATIONS, PURCHASES, Organization


def _card_on_its_way(organization: ColumnElement[Any]) -> Select[tuple[int]]:
    """A purchase of the organization whose new card is still on its way to Stripe."""
    return (
        select(PURCHASES.c.id)
        .where(PURCHASES.c.organization_id == organization, PURCHASES.c.card_sync_pending)
        .limit(1)
    )


_row_version = literal_column("CAST(organizations.xmin AS text)", Text)
"""The transaction that wrote the organization's row as it is: any write changes it."""
SAVED_CARD = (
    select(
        ORGANIZATIONS.c.id,
        ORGANIZATIONS.c.payment_method_id,
        ORGANIZATIONS.c.payment_method_brand,
        _row_version,
        _card_on_its_way(ORGANIZATIONS.c.id).scalar_subquery(),
    )
    .where(ORGANIZATIONS.c.stripe_customer_id == bindparam("customer"))
    .with_for_update(read=True, of=ORGANIZATIONS)
)
"""Whose customer this is, the card we keep for it and the row's version (its latest
committed version: FOR SHARE), and a purchase of theirs whose new card is still on its way
to Stripe (every customer event asks): one round trip, which also tries the customer's
sync lock."""
KEEP_CARD = (
    update(ORGANIZATIONS)
    .where(ORGANIZATIONS.c.id == bindparam("organization"))
    .values(
        payment_method_id=bindparam("card"),
        payment_method_brand=bindparam("brand"),
        payment_method_last4=bindparam("last4"),
    )
)
"""The card kept for renewals (its id, brand and last four digits)."""
KEEP_STRIPES_CARD = KEEP_CARD.where(
    _row_version == bindparam("version"), ~_card_on_its_way(ORGANIZATIONS.c.id).exists()
)
"""Keep Stripe's answer only if the organization's row is still the version read before
asking. A charger keeping a card (even the same one) writes that row in the transaction that
marks the card on its way to Stripe: the row lock makes this statement wait for its commit,
then check the row's new version, which differs (the subquery alone would read the
purchases as of this statement's start, before that commit). The subquery covers the other
order: a read FOR SHARE returns the row's newest version but the purchases as of its own
start, so it can see a charger's row without its card on its way. One statement."""


PUSHES_THAT_CANNOT_LAND = (
    update(PURCHASES)
    .where(
        PURCHASES.c.organization_id == bindparam("organization"),
        PURCHASES.c.card_sync_pending,
        PURCHASES.c.payment_method_id.is_distinct_from(
            select(ORGANIZATIONS.c.payment_method_id)
            .where(ORGANIZATIONS.c.id == bindparam("organization"))
            .scalar_subquery()
        ),
    )
    .values(card_sync_pending=False, updated_at=func.now())
)
"""The organization's pushes to Stripe of a card that is not its card any more (the card
detached, an older one): ended, since only the current card is ever pushed (`save_card`)
and Stripe refuses a detached one. Run in the transaction that changed the card."""

SYNC_TRIES = 3
"""Times a card sync asks Stripe before it leaves the event to its retries."""


class CardSyncContended(RuntimeError):
    """The organization's row kept changing while its card was synced: the event is left to
    its retries (`failed` for now), and Stripe is asked again then."""


class CardOnItsWay(CardSyncContended):
    """A card a purchase has just paid with is being made Stripe's default. The change this
    event tells of may have come after that push landed (a default set in the dashboard
    then): Stripe is asked again once the push is done. The event is left waiting (no
    outcome, the reason in its error), tried again by its task and, for as long as the push
    takes (the sweep retries it), by the sweep: no retry budget runs out on it."""


def sync_saved_card(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    customer_id: str,
    gone: str | None = None,
    named: str | None = None,
) -> str:
    """Our saved card follows Stripe's current default for the customer (never a detached one).

    An event that `named` our saved card (and whose details we have) as the default asks
    for nothing: usually our own update coming back. Stripe is not asked again; a later
    change has its own event, which names another card and is read from Stripe.

    One sync per customer at a time (an advisory lock, tried in the statement that reads
    the customer, and only if the customer is ours): an answer Stripe gave a handler is
    written before any later event about that customer is read, here or by the inbox.
    """
    customer = {"customer": customer_id}
    with uow.named_lock(CARD_SYNC_LOCKS, customer_id, SAVED_CARD, customer) as (alone, found):
        if found is None:  # not a customer of ours: no lock was taken
            return "ignored"
        return _sync_saved_card_alone(uow, alone, gateway, customer, found, gone, named)


def _sync_saved_card_alone(
    uow: UnitOfWork,
    alone: Connection,
    gateway: PaymentGateway,
    customer: dict[str, str],
    found: tuple[Any, ...],
    gone: str | None,
    named: str | None,
) -> str:
    """The sync, holding the customer's lock, from what `found` read under it; its own
    statements on the lock's connection (autocommit: each stands alone)."""
    known, saved, brand, version, saving = found
    if gone is None and named is not None and named == saved and brand is not None:
        return "processed"
    if gone is not None:  # a detached card is never kept, nor pushed to Stripe later
        with uow:
            organization = uow.session.get_one(
                Organization, known, with_for_update={"key_share": True}
            )
            if organization.payment_method_id == gone:
                organization.keep_card(None)
            # pushes of a card no longer ours never land: they end here, and Stripe's
            # default (an older card, say) is read below instead of waiting for them
            uow.session.flush()
            uow.session.execute(PUSHES_THAT_CANNOT_LAND, {"organization": known})
            uow.commit()
        known, saved, brand, version, saving = alone.execute(SAVED_CARD, customer).one()
    for _ in range(SYNC_TRIES):
        if saving is not None:
            if gone is not None:  # ours, another card, is on its way: Stripe's will be it
                return "processed"
            raise CardOnItsWay(
                f"the card purchase {saving} paid with is on its way to Stripe as the default "
                f"of {customer['customer']}: Stripe's default is read again once it landed"
            )
        card = gateway.default_card(customer["customer"])
        if card is not None and card.id == gone:
            card = None
        if (card.id if card else None) == saved and (card is None or brand is not None):
            return "processed"  # Stripe agrees with what we keep: nothing to write
        answer = {
            "organization": known,
            "version": version,
            "card": card.id if card else None,
            "brand": card.brand if card else None,
            "last4": card.last4 if card else None,
        }
        if alone.execute(KEEP_STRIPES_CARD, answer).rowcount:
            return "processed"
        # the row changed since it was read. Another card kept since: its own event follows.
        # The same card kept again (and perhaps pushed already), or another column: Stripe's
        # answer may be older than that write, so read the row and ask Stripe again
        again = alone.execute(SAVED_CARD, customer).one()
        if again[1] != saved:
            return "processed"
        known, saved, brand, version, saving = again
    raise CardSyncContended(
        f"the organization of {customer['customer']} changed {SYNC_TRIES} times while its "
        "card was synced: the event is tried again later"
    )


Told = Callable[[Session, Card | None], None]
"""Run in the transaction that replaces a refused card, with the card kept in its place."""


def replace_refused_card(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    purchase_id: int,
    organization_id: int,
    customer_id: str,
    refused: str,
    tell: Told,
) -> bool:
    """Stripe refused for good to make `refused`, the card purchase `purchase_id` paid
    with, the customer's default: pushing it again would fail forever and hold every event
    about the customer waiting. Under the customer's sync lock, Stripe's default is read
    first (away: nothing has changed and the push stays on, for the sweep); then one
    transaction, the organization's row locked first (as a detach locks it), replaces the
    card by that default if `refused` is still ours (and runs `tell`), and ends the
    purchase's push and those of every card no longer ours. False when nothing was
    replaced: the card was not ours any more (a detach or another purchase came first), or
    Stripe's default is that very card after all (a push of it landed)."""
    customer = {"customer": customer_id}
    with uow.named_lock(CARD_SYNC_LOCKS, customer_id, SAVED_CARD, customer) as (_, found):
        card = None
        if found is not None:  # (not our customer any more: nothing to read or replace)
            try:
                card = gateway.default_card(customer_id)
            except PaymentRefused:  # no such customer any more: it has no default either
                card = None
        landed = card is not None and card.id == refused
        organization = {"organization": organization_id}
        with uow:
            ours = None
            if found is not None and not landed:
                ours = uow.session.scalar(OURS_LOCKED, {**organization, "card": refused})
            if ours is not None:
                instead = {
                    "card": card.id if card else None,
                    "brand": card.brand if card else None,
                    "last4": card.last4 if card else None,
                }
                uow.session.execute(KEEP_CARD, {**organization, **instead})  # row locked above
                tell(uow.session, card)
            uow.session.execute(PUSH_ENDED, {"purchase_id": purchase_id})
            uow.session.execute(PUSHES_THAT_CANNOT_LAND, organization)
            uow.commit()
        return ours is not None


PUSH_ENDED = (
    update(PURCHASES)
    .where(PURCHASES.c.id == bindparam("purchase_id"))
    .values(card_sync_pending=False, updated_at=func.now())
)
OURS_LOCKED = (
    select(ORGANIZATIONS.c.id)
    .where(
        ORGANIZATIONS.c.id == bindparam("organization"),
        ORGANIZATIONS.c.payment_method_id == bindparam("card"),
    )
    .with_for_update(key_share=True)
)
"""The organization, its row locked, if `card` is the card it keeps."""
