"""Renewals: each period ends with the plan charged once, to the saved card, for its
active seats, and `paid_seats := active_seats` (README "Renewals and failed payments").

The database decides what is due: a scan (beat, or `seats renewals run`) inserts one
renewal row per subscription and period (unique), and each row is charged by one
PaymentIntent whose id is recorded before it is confirmed. A failure makes the plan
`past_due` and is tried again on the dunning schedule; after the last try the plan is
`suspended`. Whoever reports a success first (the charger, a webhook, the poll) applies
it once, in one transaction that moves the period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, joinedload

from shared.domain.ids import id_from_text
from shared.domain.money import plain_amount
from shared.domain.periods import next_renewal
from shared.domain.renewals import RenewalStatus, SubscriptionStatus, next_attempt, renewal_amount
from shared.domain.seats import TERMINAL, SeatCounts
from shared.payments.gateway import (
    Payment,
    PaymentGateway,
    PaymentRefused,
    PaymentRequest,
    friendly_message,
)
from shared.services.alerts import raise_alert
from shared.services.seats import record_change
from shared.store.db import RENEWAL_LOCKS, AdvisoryLock, UnitOfWork
from shared.store.models import Organization, Purchase, Renewal, Subscription

log = logging.getLogger("seats.renewals")

BATCH = 500

Checkpoint = Callable[[str], None]


def no_checkpoint(name: str) -> None:
    """Production runs straight through; crash tests stop the worker at a named step."""


class Step(StrEnum):
    DONE = "done"
    WAIT = "wait"
    BUSY = "busy"
    NOT_DUE = "not_due"


@dataclass(frozen=True)
class Dunning:
    """When failed renewals are tried again, and whether the customer is away."""

    days: tuple[int, ...]
    off_session: bool = False


NEW_DUE = text(
    """
    WITH batch AS (
        SELECT s.id, s.organization_id, s.renews_at, s.currency
        FROM subscriptions s
        JOIN organizations o ON o.id = s.organization_id
        WHERE s.id > :after
          AND s.renews_at <= :bound
          AND s.renews_at <= COALESCE(
              CAST(:as_of AS date), (CAST(:now AS timestamptz) AT TIME ZONE o.timezone)::date
          )
          AND NOT EXISTS (
              SELECT 1 FROM renewals r
              WHERE r.subscription_id = s.id AND r.period_start = s.renews_at
          )
        ORDER BY s.id
        LIMIT :batch
    ), made AS (
        INSERT INTO renewals (subscription_id, organization_id, period_start, status, currency)
        SELECT id, organization_id, renews_at, 'pending', currency FROM batch
        ON CONFLICT (subscription_id, period_start) DO NOTHING
        RETURNING id
    )
    SELECT (SELECT max(id) FROM batch) AS last, ARRAY(SELECT id FROM made ORDER BY id) AS made
    """
)
"""One round trip per batch: find plans due today in their own time zone (or on `as_of`)
that have no renewal for this period yet, and make theirs; a keyset cursor walks them."""

AGAIN = text(
    """
    SELECT id FROM renewals
    WHERE id > :after AND attention IS NULL AND (
        (status = 'failed' AND next_attempt_at <= :now)
        OR (status IN ('pending', 'processing') AND updated_at < :stale)
        OR (status = 'failed' AND client_secret IS NOT NULL AND updated_at < :stale)
        -- "stale" is real time since the row was last touched (the database's clock), while
        -- "due" is the billing clock (`now`), which tests and `--as-of` may move
    )
    ORDER BY id
    LIMIT :batch
    """
)
"""Retries whose time has come, renewals a lost message or a crash left behind, and those
waiting for the customer's bank (polled, in case their webhook is lost)."""


@dataclass
class Scan:
    due: int = 0
    retries: int = 0


def scan(
    uow: UnitOfWork,
    *,
    now: datetime,
    as_of: date | None = None,
    stuck_after: float = 60,
    batch: int = BATCH,
    tally: Scan | None = None,
) -> Iterator[list[int]]:
    """Batches of renewal ids to run now: new ones for the plans due, then retries.

    Memory stays flat however many plans are due: each batch is one statement with a
    keyset cursor, and nothing is kept between batches but the cursor.
    """
    tally = tally if tally is not None else Scan()
    bound = as_of or (now.astimezone(UTC).date() + timedelta(days=1))
    after = 0
    while True:
        with uow:
            row = uow.session.execute(
                NEW_DUE,
                {"after": after, "bound": bound, "as_of": as_of, "now": now, "batch": batch},
            ).one()
            uow.commit()
        if row.last is None:
            break
        after = row.last
        tally.due += len(row.made)
        if row.made:
            yield list(row.made)
    after = 0
    stale = datetime.now(UTC) - timedelta(seconds=stuck_after)
    while True:
        with uow:
            found = list(
                uow.session.scalars(
                    AGAIN, {"after": after, "now": now, "stale": stale, "batch": batch}
                )
            )
        if not found:
            break
        after = found[-1]
        tally.retries += len(found)
        yield found


def _locked_renewal(session: Session, renewal_id: int) -> Renewal:
    return session.scalars(
        select(Renewal).where(Renewal.id == renewal_id).with_for_update(key_share=True)
    ).one()


def _locked_plan(session: Session, subscription_id: int) -> Subscription:
    """The plan row-locked, with its organization (time zone, card) in the same round trip."""
    return session.scalars(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .options(joinedload(Subscription.organization, innerjoin=True))
        .with_for_update(key_share=True, of=Subscription)
    ).one()


def _purchase_in_flight(session: Session, plan: Subscription) -> bool:
    """A purchase priced for the ending period is being charged: renew after it, so its
    seats are counted in the new period's charge."""
    if plan.charging_purchase_id is None:
        return False
    holder = session.get(Purchase, plan.charging_purchase_id)
    return holder is not None and holder.status not in TERMINAL


def _fail(
    renewal: Renewal,
    plan: Subscription,
    code: str,
    message: str,
    now: datetime,
    dunning: Dunning,
    client_secret: str | None = None,
) -> None:
    """A failed try: the plan is past due until the next try, suspended after the last."""
    renewal.status = RenewalStatus.FAILED
    renewal.failure_code = code
    renewal.failure_message = message
    renewal.client_secret = client_secret
    renewal.next_attempt_at = next_attempt(
        renewal.period_start, dunning.days, plan.organization.timezone, now
    )
    plan.status = (
        SubscriptionStatus.PAST_DUE if renewal.next_attempt_at else SubscriptionStatus.SUSPENDED
    )
    log.info(
        "renewal %s of subscription %s failed (%s); plan %s, next try %s",
        renewal.id,
        plan.id,
        code,
        plan.status,
        renewal.next_attempt_at,
    )


NO_CARD = (
    "There is no saved card to renew this plan with. Save a card to renew it and keep "
    "changing your seats."
)
AUTHENTICATE = (
    "Your bank asks you to confirm the renewal payment. Confirm it to renew the plan, or "
    "save another card."
)


@dataclass(frozen=True)
class _Attempt:
    renewal_id: int
    subscription_id: int
    period_start: date
    intent_id: str | None
    amount: int
    currency: str
    customer: str
    card: str
    attempt: int


def _begin(
    session: Session, renewal_id: int, now: datetime, dunning: Dunning, force: bool
) -> _Attempt | Step:
    """Decide, under the renewal's and the plan's row locks, whether and what to charge."""
    renewal = _locked_renewal(session, renewal_id)
    if renewal.status == RenewalStatus.SUCCEEDED or renewal.attention:
        return Step.DONE
    plan = _locked_plan(session, renewal.subscription_id)
    if plan.renews_at != renewal.period_start:
        return Step.DONE
    due = renewal.next_attempt_at is not None and renewal.next_attempt_at <= now
    if renewal.status == RenewalStatus.FAILED and not (force or due):
        return Step.NOT_DUE
    if _purchase_in_flight(session, plan):
        return Step.WAIT
    organization: Organization = plan.organization
    card = organization.payment_method_id
    if card is None or organization.stripe_customer_id is None:
        renewal.attempts += 1
        _fail(renewal, plan, "no_payment_method", NO_CARD, now, dunning)
        return Step.DONE
    renewal.seats = plan.active_seats
    renewal.amount = renewal_amount(plan.active_seats, plan.unit_amount)
    renewal.payment_method_id = card
    renewal.status = RenewalStatus.PROCESSING
    renewal.attempts += 1
    return _Attempt(
        renewal_id=renewal.id,
        subscription_id=plan.id,
        period_start=renewal.period_start,
        intent_id=renewal.stripe_payment_intent_id,
        amount=renewal.amount,
        currency=plan.currency,
        customer=organization.stripe_customer_id,
        card=card,
        attempt=renewal.attempts,
    )


def renew(
    uow: UnitOfWork,
    engine: Engine,
    gateway: PaymentGateway,
    renewal_id: int,
    *,
    dunning: Dunning,
    now: datetime | None = None,
    force: bool = False,
    checkpoint: Checkpoint = no_checkpoint,
) -> Step:
    """Take one renewal as far as it goes now. Safe to run any number of times, at once.

    `force`: try a failed renewal before its scheduled time (the customer saved a card).
    """
    now = now or datetime.now(UTC)
    with engine.connect() as connection:  # one connection, the lock held on it
        own = UnitOfWork.on_connection(connection)
        lock = AdvisoryLock(connection, RENEWAL_LOCKS, renewal_id)
        try:
            return _renew(own, lock, gateway, renewal_id, dunning, now, force, checkpoint)
        finally:
            lock.release()


def _renew(
    uow: UnitOfWork,
    lock: AdvisoryLock,
    gateway: PaymentGateway,
    renewal_id: int,
    dunning: Dunning,
    now: datetime,
    force: bool,
    checkpoint: Checkpoint,
) -> Step:
    with uow:
        if not lock.take(uow.session):
            return Step.BUSY
        begun = _begin(uow.session, renewal_id, now, dunning, force)
        uow.commit()
    if begun == Step.NOT_DUE:  # not its time; but its customer may have paid meanwhile
        return poll(uow, gateway, renewal_id, dunning, now)
    if not isinstance(begun, _Attempt):
        return begun
    try:
        payment = _pay(uow, gateway, begun, dunning, checkpoint)
    except PaymentRefused as refusal:
        with uow:
            renewal = _locked_renewal(uow.session, renewal_id)
            plan = _locked_plan(uow.session, renewal.subscription_id)
            if renewal.status == RenewalStatus.PROCESSING:
                _fail(renewal, plan, refusal.code, refusal.message, now, dunning)
            uow.commit()
        return Step.DONE
    return settle(uow, renewal_id, payment, dunning, now)


def _pay(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    attempt: _Attempt,
    dunning: Dunning,
    checkpoint: Checkpoint,
) -> Payment:
    """One PaymentIntent per subscription and period, whatever happens: created once (its
    id recorded before it is confirmed), then updated and confirmed again on each try."""
    intent = attempt.intent_id
    if intent is None:
        created = gateway.create_payment(
            PaymentRequest(
                reference=f"renewal-{attempt.subscription_id}-{attempt.period_start}",
                amount=attempt.amount,
                currency=attempt.currency,
                customer_id=attempt.customer,
                payment_method_id=attempt.card,
                metadata={
                    "renewal_id": str(attempt.renewal_id),
                    "subscription_id": str(attempt.subscription_id),
                },
                one_per_reference=True,
            )
        )
        checkpoint("renewal_unrecorded")
        with uow:
            renewal = _locked_renewal(uow.session, attempt.renewal_id)
            renewal.stripe_payment_intent_id = renewal.stripe_payment_intent_id or created.id
            intent = renewal.stripe_payment_intent_id
            uow.commit()
        checkpoint("renewal_created")
        payment = created if created.id == intent else gateway.get_payment(intent)
    else:
        payment = gateway.get_payment(intent)
    new_card = payment.payment_method_id != attempt.card
    changed = new_card or payment.amount != attempt.amount
    if (
        payment.status == "requires_payment_method"
        or (payment.status == "requires_confirmation" and changed)
        # a card saved while the old one waits for 3-D Secure: the customer chose it to
        # renew with, so it replaces the waiting one (Stripe then wants a new confirmation)
        or (payment.status == "requires_action" and new_card)
    ):
        try:
            payment = gateway.update_payment(
                intent,
                amount=attempt.amount,
                payment_method_id=attempt.card,
                attempt=attempt.attempt,
            )
        except PaymentRefused as refusal:
            if refusal.code != "payment_intent_unexpected_state":
                raise
            # the intent moved meanwhile (the customer finished 3-D Secure with the old
            # card): what it is now decides, never a failure recorded for a paid period
            payment = gateway.get_payment(intent)
    if payment.status == "requires_confirmation":
        payment = gateway.confirm_payment(
            intent, off_session=dunning.off_session, attempt=attempt.attempt
        )
    checkpoint("renewal_confirmed")
    return payment


def settle(
    uow: UnitOfWork, renewal_id: int, payment: Payment, dunning: Dunning, now: datetime
) -> Step:
    """Bring the renewal in line with its PaymentIntent; only forward, applied once."""
    with uow:
        session = uow.session
        renewal = _locked_renewal(session, renewal_id)
        if renewal.status == RenewalStatus.SUCCEEDED:
            return Step.DONE
        if renewal.stripe_payment_intent_id != payment.id:
            return Step.DONE
        plan = _locked_plan(session, renewal.subscription_id)
        if payment.status == "succeeded":
            _apply(session, renewal, plan, payment)
        elif renewal.status != RenewalStatus.PROCESSING:
            return Step.DONE  # a failure is recorded once, by the try it belongs to
        elif payment.status in ("requires_payment_method", "canceled"):
            code = payment.failure_code or "payment_failed"
            secret = payment.client_secret if code == "authentication_required" else None
            message = AUTHENTICATE if secret else friendly_message(code, payment.failure_message)
            _fail(renewal, plan, code, message, now, dunning, secret)
        elif payment.status == "requires_action":
            _fail(
                renewal,
                plan,
                "authentication_required",
                AUTHENTICATE,
                now,
                dunning,
                payment.client_secret,
            )
        else:
            return Step.WAIT  # processing: the poll or the webhook settles it
        uow.commit()
        return Step.DONE


def _apply(session: Session, renewal: Renewal, plan: Subscription, payment: Payment) -> None:
    """The new period starts at the old renewal date (a late success gives no free days)."""
    if plan.renews_at != renewal.period_start or payment.amount % plan.unit_amount:
        raise_alert(
            session,
            kind="renewal_mismatch",
            message=f"{payment.id} took {plain_amount(payment.amount, payment.currency)} for "
            f"renewal {renewal.id} of plan {plan.id}, which does not match the plan "
            f"(renews at {plan.renews_at}, {plain_amount(plan.unit_amount, plan.currency)} "
            "a seat): nothing was applied, review it",
            organization_id=plan.organization_id,
            stripe_object_id=payment.id,
            amount=payment.amount,
            dedupe_key=f"payment:{payment.id}",
        )
        return
    charged = payment.amount // plan.unit_amount
    counts = SeatCounts(plan.paid_seats, plan.active_seats).renewed(charged)
    record_change(session, plan, counts, "renewal")
    plan.current_period_start = renewal.period_start
    plan.renews_at = next_renewal(renewal.period_start, plan.interval, plan.anchor_day)
    plan.status = SubscriptionStatus.ACTIVE
    renewal.status = RenewalStatus.SUCCEEDED
    renewal.seats, renewal.amount = charged, payment.amount
    renewal.client_secret = renewal.failure_code = renewal.failure_message = None
    renewal.next_attempt_at = None
    renewal.completed_at = datetime.now(UTC)


def settle_success(uow: UnitOfWork, renewal_id: int, payment: Payment) -> bool:
    """What a webhook does: apply a renewal's succeeded payment (once). Failures are
    recorded by the try they belong to (its charger, or the scan that reruns it)."""
    if payment.status != "succeeded":
        return False
    with uow:
        renewal = _locked_renewal(uow.session, renewal_id)
        if renewal.status == RenewalStatus.SUCCEEDED or renewal.stripe_payment_intent_id != (
            payment.id
        ):
            return False
        _apply(uow.session, renewal, _locked_plan(uow.session, renewal.subscription_id), payment)
        uow.commit()
        return True


def poll(
    uow: UnitOfWork, gateway: PaymentGateway, renewal_id: int, dunning: Dunning, now: datetime
) -> Step:
    """Read a failed renewal's intent again (its webhook may be lost): a customer who
    confirmed with the bank, or paid it with another card, renews the plan."""
    with uow:
        intent = uow.session.scalar(
            select(Renewal.stripe_payment_intent_id).where(Renewal.id == renewal_id)
        )
    if intent is None:
        return Step.NOT_DUE
    settle(uow, renewal_id, gateway.get_payment(intent), dunning, now)
    return Step.NOT_DUE


def retry_now(uow: UnitOfWork, organization_id: int) -> list[int]:
    """The organization's renewals that a newly saved card should try at once."""
    with uow:
        return list(
            uow.session.scalars(
                select(Renewal.id)
                .join(Subscription, Subscription.id == Renewal.subscription_id)
                .where(
                    Renewal.organization_id == organization_id,
                    Renewal.status.in_([RenewalStatus.FAILED, RenewalStatus.PENDING]),
                    Subscription.renews_at == Renewal.period_start,
                )
                .order_by(Renewal.id)
            )
        )


def park(uow: UnitOfWork, renewal_id: int, reason: str) -> None:
    """Stop retrying after repeated outages and show the renewal to an operator."""
    with uow:
        renewal = _locked_renewal(uow.session, renewal_id)
        if renewal.status != RenewalStatus.SUCCEEDED:
            renewal.attention = reason[:500]
            uow.commit()


def renewal_for_intent(uow: UnitOfWork, payment: Payment) -> int | None:
    """The renewal a PaymentIntent belongs to: recorded by us, or (after a crash between
    creating and recording it) named in its metadata and made for that plan's customer."""
    with uow:
        found = uow.session.scalar(
            select(Renewal.id).where(Renewal.stripe_payment_intent_id == payment.id)
        )
        if found is not None:
            return found
        claimed = id_from_text(payment.metadata.get("renewal_id"))
        if claimed is None or uow.session.get(Renewal, claimed) is None:
            return None
        renewal = _locked_renewal(uow.session, claimed)
        customer = uow.session.scalar(
            select(Organization.stripe_customer_id).where(
                Organization.id == renewal.organization_id
            )
        )
        ours = (
            customer is not None
            and payment.customer_id == customer
            and payment.currency == renewal.currency
            and payment.amount == renewal.amount
            and renewal.status == RenewalStatus.PROCESSING
        )
        if not ours or renewal.stripe_payment_intent_id is not None:
            return None
        renewal.stripe_payment_intent_id = payment.id
        uow.commit()
        return renewal.id


def run_due(
    uow: UnitOfWork,
    engine: Engine,
    gateway: PaymentGateway,
    dunning: Dunning,
    *,
    now: datetime,
    as_of: date | None = None,
    stuck_after: float = 60,
) -> dict[str, int]:
    """What `seats renewals run` does: find what is due and renew it here, one by one."""
    tally = Scan()
    outcomes: dict[str, int] = {}
    for batch in scan(uow, now=now, as_of=as_of, stuck_after=stuck_after, tally=tally):
        for renewal_id in batch:
            renew(uow, engine, gateway, renewal_id, dunning=dunning, now=now)
            with uow:
                status = uow.session.get_one(Renewal, renewal_id).status
            outcomes[status] = outcomes.get(status, 0) + 1
    return {"due": tally.due, "retries": tally.retries, **outcomes}


@dataclass(frozen=True)
class RenewalRow:
    subscription_id: int
    organization_id: int
    status: str
    renews_at: date
    attempts: int
    next_attempt_at: datetime | None
    failure_code: str | None
    failure_message: str | None
    renewal_id: int
    attention: str | None


def unsettled(uow: UnitOfWork, status: str | None = None, limit: int = 500) -> list[RenewalRow]:
    """Plans that are past due or suspended, with their current renewal (for operators)."""
    query = (
        select(Subscription, Renewal)
        .join(
            Renewal,
            (Renewal.subscription_id == Subscription.id)
            & (Renewal.period_start == Subscription.renews_at),
        )
        .where(Subscription.status != SubscriptionStatus.ACTIVE)
        .order_by(Subscription.id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(Subscription.status == status)
    with uow:
        return [
            RenewalRow(
                subscription_id=plan.id,
                organization_id=plan.organization_id,
                status=plan.status,
                renews_at=plan.renews_at,
                attempts=renewal.attempts,
                next_attempt_at=renewal.next_attempt_at,
                failure_code=renewal.failure_code,
                failure_message=renewal.failure_message,
                renewal_id=renewal.id,
                attention=renewal.attention,
            )
            for plan, renewal in uow.session.execute(query)
        ]
