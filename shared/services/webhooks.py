"""Stripe events: stored once by id, then applied by looking at the current state.

A handler never trusts the event's snapshot or its arrival order: it re-reads
the object from Stripe and moves our records only forward, so duplicates,
reordering and replays all end the same way.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import accumulate
from typing import Any, cast

from sqlalchemy import (
    Table,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared import log_lines
from shared.domain.errors import NotFound, Refused
from shared.domain.ids import id_from_text
from shared.domain.renewals import RenewalStatus
from shared.domain.seats import PurchaseStatus
from shared.payments.gateway import Payment, PaymentGateway, PaymentRefused
from shared.services import charging, renewals
from shared.services.card_sync import CardOnItsWay, CardSyncContended, sync_saved_card
from shared.store.db import UnitOfWork
from shared.store.inbox import insert_event
from shared.store.models import (
    PURCHASES,
    RENEWALS,
    OperatorAlert,
    Organization,
    Purchase,
    SyncCursor,
    WebhookEvent,
)

MAX_EVENT_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_AMOUNT = 2**63 - 1
TOLERANCE_SECONDS = 300
BACKFILL_WINDOW = 3 * 24 * 3600
CURSOR = "stripe_events"

log = logging.getLogger("seats.webhooks")

Handled = tuple[str, list[int]]
Handler = Callable[[UnitOfWork, PaymentGateway, dict[str, Any], str], Handled]


EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,250}")
# A string token, its closing quote optional so that an unterminated one is still one match
# (no rescans: the scan stays linear); the brackets left once strings are taken out.
STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
"""What PostgreSQL cannot hold in a JSONB string (NUL) or in UTF-8 at all (lone surrogates)."""


class BadEvent(Refused):
    code = "bad_event"


class InvalidEvent(Exception):
    """A handler's word that an event can never be applied (an amount past what we hold):
    it is recorded `invalid` with an operator alert instead of failing and retrying forever."""


def signed_in_future(header: str | None, now: float | None = None) -> bool:
    """Stripe's check refuses stale timestamps only; a signature dated ahead would stay
    replayable until then. Any `t=` more than the tolerance ahead is refused (parsed as
    Stripe parses it, so the value checked is the value that is verified)."""
    if not header:
        return False
    limit = (time.time() if now is None else now) + TOLERANCE_SECONDS
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] != "t" or len(parts) < 2:
            continue
        try:
            stamp = int(parts[1])
        except ValueError:
            continue  # not a timestamp: the signature check refuses it
        if stamp > limit:
            return True
    return False


def _well_formed(event: Any) -> bool:
    """Only the shape we rely on is checked; the rest is kept as Stripe sent it."""
    if not isinstance(event, dict):
        return False
    data = event.get("data")
    return (
        isinstance(event.get("id"), str)
        and EVENT_ID.fullmatch(event["id"]) is not None
        and isinstance(event.get("type"), str)
        and EVENT_TYPE.fullmatch(event["type"]) is not None
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    )


def _too_deep(text: str) -> bool:
    """Counted on the text, before parsing: a parser would recurse once per level. A text
    with few brackets cannot nest deeper than it has brackets (most events); the others are
    counted in C passes (strings out, brackets found, depths summed): a Python step per
    token cost several times the parse of the event."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False
    steps = map(_DEPTH_STEP.__getitem__, BRACKETS.findall(STRING.sub("", text)))
    return max(accumulate(steps), default=0) > MAX_DEPTH


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: JSON allows the text, nothing can hold the number
        raise ValueError(f"{text} is out of range")
    return value


def parse_event(raw: bytes) -> dict[str, Any]:
    """RFC 8259 JSON only (no NaN or Infinity), at most MAX_DEPTH levels, in Stripe's shape."""
    return _parsed(raw)[0]


def _parsed(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """The event, and the text it was read from when PostgreSQL reads that text as the same
    JSON: not when a number has an exponent (`1e-20000` is 0.0 here, too small for
    PostgreSQL's numeric; `1.0e2`, a float here, would come back an integer). Such an event
    is stored as Python writes it (whole floats from 1e16 up still come back integers; no
    amount Stripe sends is a float)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadEvent("the body is not UTF-8 JSON", "malformed_event") from error
    if _too_deep(text):
        raise BadEvent(f"the body is nested deeper than {MAX_DEPTH} levels", "malformed_event")
    exponents: list[str] = []

    def number(literal: str) -> float:
        if "e" in literal or "E" in literal:
            exponents.append(literal)
        return _finite(literal)

    try:
        event = json.loads(text, parse_constant=_no_constant, parse_float=number)
    except ValueError as error:
        raise BadEvent("the body is not JSON", "malformed_event") from error
    if not _well_formed(event):
        raise BadEvent("an event is a JSON object with id, type and data.object", "malformed_event")
    return dict(event), None if exponents else text


def receive(uow: UnitOfWork, raw: bytes) -> str:
    """A webhook's verified body, parsed and stored (`store_event`'s answer).

    The body's own text is what is stored, as a rule (PostgreSQL reads it as JSONB: no
    second serialization), and only a body with `\\u` escapes is searched for characters our
    database cannot hold: NUL and lone surrogates reach JSON text as escapes only (a raw
    control character is not JSON; a surrogate is not UTF-8)."""
    event, text = _parsed(raw)
    return store_event(uow, event, text=text)


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def _sanitized(value: Any) -> Any:
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_sanitized(key): _sanitized(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_sanitized(item) for item in value]
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _indexable_id(value: Any) -> str | None:
    """The object's id for lookups; one no Stripe id resembles (not text, or longer than a
    btree index entry may be) is left out rather than refusing the whole event."""
    return value if isinstance(value, str) and len(value) <= 255 else None


def _row(event: dict[str, Any], source: str, text: str | None = None) -> dict[str, Any]:
    """A well-formed event our database cannot hold as sent is kept with U+FFFD in place of
    those characters and is done at once (`invalid`): it can never be applied as Stripe meant.
    `text`: the JSON the event was read from, when there is one (`receive`)."""
    invalid = (text is None or "\\u" in text) and _unstorable(event)
    if invalid:
        event = _sanitized(event)
    obj = event["data"]["object"]
    # a type no handler reads is done the moment it is stored: never queued, never a task
    outcome = "invalid" if invalid else None if event["type"] in HANDLERS else "ignored"
    return {
        "id": event["id"],
        "type": event["type"],
        "object_id": _indexable_id(obj.get("id")),
        "payload": event,
        "source": source,
        "attempts": 0,
        "outcome": outcome,
        "error": "NUL or lone surrogate characters, replaced by U+FFFD" if invalid else None,
        "processed_at": datetime.now(UTC) if outcome else None,
    }


EVENTS = cast(Table, WebhookEvent.__table__)
STORE = (
    insert(EVENTS)
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(EVENTS.c.id, EVENTS.c.outcome)
)
"""One Core statement, compiled once and run without the ORM's bulk machinery: it is
the hot path of every webhook."""

CLAIM = (
    update(EVENTS)
    .where(
        EVENTS.c.id == bindparam("event_id"),
        or_(EVENTS.c.outcome.is_(None), EVENTS.c.outcome.in_(bindparam("again", expanding=True))),
    )
    .values(attempts=EVENTS.c.attempts + 1, claimed_at=func.now())
    .returning(EVENTS.c.type, EVENTS.c.payload, EVENTS.c.outcome)
)
"""Count an attempt at an event still to do (or, `again`, one done) and read it back."""

FINISH = (
    update(EVENTS)
    .where(EVENTS.c.id == bindparam("event_id"))
    .values(
        outcome=bindparam("new_outcome"),
        error=bindparam("new_error"),
        processed_at=bindparam("at"),
    )
)
"""Record an event's outcome. Core statements like STORE: a worker runs both per event."""

FAIL = FINISH.where(or_(EVENTS.c.outcome.is_(None), EVENTS.c.outcome == "failed"))
"""Never over an end another run of the same event reached meanwhile (the sweep re-sends a
failed event whose retry may still be on its way): for a failure, and for the outcomes a
drain writes at the end of its batch."""

WAIT = (
    update(EVENTS)
    .where(
        EVENTS.c.id == bindparam("event_id"),
        or_(EVENTS.c.outcome.is_(None), EVENTS.c.outcome == "failed"),
    )
    .values(
        outcome=None,
        error=bindparam("reason"),
        processed_at=None,
        attempts=func.greatest(EVENTS.c.attempts - 1, 1),
    )
)
"""An event left to wait for our own card to land at Stripe (`CardOnItsWay`): no outcome,
not handled (no `processed_at`), and the try the claim counted taken back, down to one (which
keeps it from the drains: theirs are events no run has tried): however long it waits, it
counts as one attempt, so a Stripe error once the card landed still has its retries and the
sweep's."""


def _stored(
    uow: UnitOfWork, events: list[dict[str, Any]], source: str, text: str | None = None
) -> dict[str, str | None]:
    """Insert in one statement; the new ids and their outcome (None: to be handled).

    The usual insert is its own transaction (autocommit: no BEGIN/COMMIT round trips);
    one that stores an `invalid` event raises its alert in the same transaction. `text`:
    the one event's JSON, stored as it came (`receive`)."""
    if not events:
        return {}
    rows = [_row(event, source, text) for event in events]
    invalid = any(row["outcome"] == "invalid" for row in rows)
    if len(rows) == 1 and not invalid:  # a webhook: the hot path, one statement
        return insert_event(uow, rows[0], *_done_if(events[0]), text=text)
    with uow if invalid else uow.single() as unit:
        inserted = {row.id: row.outcome for row in unit.session.execute(STORE, rows)}
        for event_id, outcome in inserted.items():
            if outcome == "invalid":
                _flag_in(
                    unit.session,
                    "invalid_event",
                    event_id,
                    f"event {event_id} holds characters our database cannot store (NUL or lone "
                    "surrogates); it was kept with U+FFFD in their place and not applied: "
                    "look at it in Stripe",
                )
        unit.commit()
        return inserted


def store_events(uow: UnitOfWork, events: list[dict[str, Any]], source: str) -> list[str]:
    """Return the new ids to handle; duplicates are no-ops, `invalid` ones are done already."""
    return [
        event_id for event_id, outcome in _stored(uow, events, source).items() if outcome is None
    ]


def store_event(
    uow: UnitOfWork, event: dict[str, Any], source: str = "webhook", text: str | None = None
) -> str:
    """`new` (to handle), `ignored` (no handler: done at once), `processed` (what it asks
    for is done already), `invalid` (stored done, with an alert) or `duplicate` (a no-op)."""
    stored = _stored(uow, [event], source, text)
    if not stored:
        return "duplicate"
    return stored[event["id"]] or "new"


def _purchase_named_by(uow: UnitOfWork, metadata: dict[str, Any]) -> int | None:
    """The purchase an intent that is not on record names in its metadata, if it exists.

    Whether a naming intent really is ours (customer, amount, currency) is
    for `charging.settle` to decide: it adopts it, refunds it or raises an alert.
    """
    claimed = id_from_text(metadata.get("purchase_id"))
    if claimed is None:
        return None
    with uow.single() as reading:
        return reading.session.scalar(select(Purchase.id).where(Purchase.id == claimed))


def _flag_in(session: Session, kind: str, event_id: str, message: str, **fields: Any) -> None:
    """One alert per event, in the caller's transaction."""
    session.execute(
        insert(OperatorAlert)
        .values(kind=kind, event_id=event_id, message=message, **fields)
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


def _flag(uow: UnitOfWork, kind: str, event_id: str, message: str, **fields: Any) -> None:
    with uow:
        _flag_in(uow.session, kind, event_id, message, **fields)
        uow.commit()


def _amount(obj: dict[str, Any], field: str) -> int:
    """An amount we can hold (bigint, never negative); anything else can never be recorded."""
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise InvalidEvent(f"{field} is {value!r}, not a whole number from 0 to {MAX_AMOUNT}")
    return value


_INTENT = bindparam("intent", type_=Text())
INTENT_STATE = select(
    select(RENEWALS.c.id).where(RENEWALS.c.stripe_payment_intent_id == _INTENT).scalar_subquery(),
    select(RENEWALS.c.status == RenewalStatus.SUCCEEDED.value)
    .where(RENEWALS.c.stripe_payment_intent_id == _INTENT)
    .scalar_subquery(),
    select(PURCHASES.c.id).where(PURCHASES.c.stripe_payment_intent_id == _INTENT).scalar_subquery(),
    select((PURCHASES.c.status == PurchaseStatus.SUCCEEDED.value) & ~PURCHASES.c.card_sync_pending)
    .where(PURCHASES.c.stripe_payment_intent_id == _INTENT)
    .scalar_subquery(),
)
"""Is this intent ours (a renewal's, a purchase's) and is its work done: one round trip, one
Core statement built once (every payment event asks it)."""


def _object_id(obj: dict[str, Any], prefix: str) -> str:
    """The id of the object an event is about; without one it can never be applied."""
    value = obj.get("id")
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) > 255:
        raise InvalidEvent(f"the event's object has no {prefix}... id (it has {value!r})")
    return value


def _current(gateway: PaymentGateway, intent_id: str) -> Payment:
    """The intent as Stripe has it now. One Stripe says it does not have (`resource_missing`,
    for good: an outage is PaymentUnavailable) can never be applied."""
    try:
        return gateway.get_payment(intent_id)
    except PaymentRefused as refusal:
        if refusal.code != "resource_missing":
            raise
        raise InvalidEvent(f"Stripe has no payment intent {intent_id}") from refusal


def on_payment_intent(
    uow: UnitOfWork, gateway: PaymentGateway, intent: dict[str, Any], event_id: str
) -> Handled:
    """Settle from the intent as Stripe has it now; the seats never wait for the card."""
    given = intent.get("metadata")
    metadata: dict[str, Any] = given if isinstance(given, dict) else {}
    intent = {**intent, "id": _object_id(intent, "pi_"), "metadata": metadata}
    with uow.single() as reading:
        known_renewal, renewal_done, known_purchase, purchase_done = reading.session.execute(
            INTENT_STATE, {"intent": intent["id"]}
        ).one()
    if renewal_done or purchase_done:
        # paid by this very intent and nothing left to do: whatever Stripe now says of it
        # (a success again, or a late failure of an earlier try) changes nothing
        return "processed", []
    if known_renewal is not None or "renewal_id" in metadata:
        payment = _current(gateway, intent["id"])
        renewal_id = renewals.renewal_for_intent(uow, payment)
        if renewal_id is None:
            return "ignored", []
        renewals.settle_success(uow, renewal_id, payment)
        return "processed", []
    purchase_id = known_purchase or _purchase_named_by(uow, metadata)
    if purchase_id is None:
        return "ignored", []
    payment = _current(gateway, intent["id"])
    outcome = charging.settle(uow, gateway, purchase_id, payment)
    charging.save_card_later(uow, gateway, purchase_id, outcome.card)
    return "processed", outcome.wake


def on_money_back(
    kind: str,
    verb: str,
    uow: UnitOfWork,
    gateway: PaymentGateway,
    obj: dict[str, Any],
    event_id: str,
) -> Handled:
    """Money went back to the customer: tell an operator, never remove seats silently."""
    charge = obj.get("id")
    intent = obj.get("payment_intent")
    if not isinstance(charge, str) or not charge:
        raise InvalidEvent(f"the {kind} has no id (it has {charge!r})")
    if intent is not None and not isinstance(intent, str):
        # neither a payment of ours nor none at all: which one it was can never be known
        raise InvalidEvent(f"the {kind}'s payment_intent is {intent!r}, not an id")
    with uow:
        ours = kind == "refund" and uow.session.scalar(
            select(OperatorAlert.id).where(
                OperatorAlert.stripe_object_id == intent,
                or_(OperatorAlert.refund_id.is_not(None), OperatorAlert.refund_pending),
            )
        )
        if ours:  # our own automatic refund: its alert already tells the story
            return "processed", []
        purchase = (
            uow.session.scalar(select(Purchase).where(Purchase.stripe_payment_intent_id == intent))
            if intent is not None
            else None
        )
        organization_id = purchase.organization_id if purchase else None
        purchase_id = purchase.id if purchase else None
    amount = _amount(obj, "amount_refunded" if kind == "refund" else "amount")
    where = f"purchase {purchase_id}" if purchase_id else "no purchase of ours"
    _flag(
        uow,
        kind,
        event_id,
        f"{charge} {verb} ({amount} {obj.get('currency')}) for {where}; "
        "seat counts were left as they are: review the plan",
        organization_id=organization_id,
        purchase_id=purchase_id,
        stripe_object_id=charge,
        amount=amount,
    )
    return "processed", []


def _named_default(customer: dict[str, Any]) -> str | None:
    """The default card a customer event names, if it names one."""
    settings = customer.get("invoice_settings")
    named = settings.get("default_payment_method") if isinstance(settings, dict) else None
    return named if isinstance(named, str) else None


def on_customer_updated(
    uow: UnitOfWork, gateway: PaymentGateway, customer: dict[str, Any], event_id: str
) -> Handled:
    named = _named_default(customer)
    return sync_saved_card(uow, gateway, _object_id(customer, "cus_"), named=named), []


def on_payment_method_detached(
    uow: UnitOfWork, gateway: PaymentGateway, method: dict[str, Any], event_id: str
) -> Handled:
    method = {**method, "id": _object_id(method, "pm_")}
    with uow:
        customers = list(
            uow.session.scalars(
                select(Organization.stripe_customer_id).where(
                    Organization.payment_method_id == method["id"],
                    Organization.stripe_customer_id.is_not(None),
                )
            )
        )
    for customer in customers:
        if customer:
            sync_saved_card(uow, gateway, customer, gone=method["id"])
    return ("processed" if customers else "ignored"), []


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": on_payment_intent,
    "payment_intent.payment_failed": on_payment_intent,
    "payment_intent.requires_action": on_payment_intent,
    "payment_intent.canceled": on_payment_intent,
    "payment_intent.processing": on_payment_intent,
    # partial, not a closure made here: the handler's code runs (and is looked up) per event
    "charge.refunded": partial(on_money_back, "refund", "was refunded"),
    "charge.dispute.created": partial(on_money_back, "dispute", "is disputed"),
    "customer.updated": on_customer_updated,
    "payment_method.detached": on_payment_method_detached,
}
# What a Stripe endpoint should be subscribed to (README, "Stripe webhooks"); `seats up`
# subscribes the stand-in's to these.
HANDLED_EVENTS = tuple(sorted(HANDLERS))


def _done_if(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """What the inbox may check as it stores an event (`inbox.INSERT`): the first thing its
    handler would read, when that alone says there is nothing to do (a payment of ours
    already settled, the card we keep named as the default). Such an event is stored
    `processed` in the same statement and never queued: most events Stripe sends are the
    echo of what a charger has just done."""
    handler = HANDLERS.get(event["type"])
    if handler is on_payment_intent:
        return "intent", None
    if handler is on_customer_updated:
        named = _named_default(event["data"]["object"])
        return ("saved_card", named) if named is not None else (None, None)
    return None, None


DONE = frozenset({"processed", "ignored", "invalid"})
"""Outcomes that end an event; only a replay (`again`) handles one of these again."""


def _finish(
    uow: UnitOfWork, event_id: str, outcome: str, error: str | None, alert: str | None = None
) -> None:
    """Record the outcome; an `invalid` one raises its operator alert in the same transaction
    (the usual one is a single statement: no transaction of its own)."""
    with uow if alert is not None else uow.single() as unit:
        unit.session.execute(
            FAIL if outcome == "failed" else FINISH,
            {"event_id": event_id, "new_outcome": outcome, "new_error": error, "at": _now()},
        )
        if alert is not None:
            _flag_in(unit.session, "invalid_event", event_id, alert)
        unit.commit()


def process_event(
    uow: UnitOfWork, gateway: PaymentGateway, event_id: str, *, again: bool = False
) -> Handled:
    """Apply one stored event. Done events are skipped unless `again` (a replay).

    The usual run is three statements: claim the event (one conditional UPDATE that
    counts the attempt and reads it back), the handler, and the outcome.
    """
    allowed = [None, "failed"] + (["processed", "ignored"] if again else [])
    with uow.single() as claiming:  # each statement stands alone: no BEGIN/COMMIT
        claimed = claiming.session.execute(
            CLAIM, {"event_id": event_id, "again": allowed[1:]}
        ).one_or_none()
        if claimed is None:  # unknown, done, or `invalid` (never applied, not even again)
            stored = claiming.session.scalar(
                select(WebhookEvent.outcome).where(WebhookEvent.id == event_id)
            )
            if stored is None and not claiming.session.scalar(
                select(func.count()).select_from(WebhookEvent).where(WebhookEvent.id == event_id)
            ):
                raise NotFound(f"no stored event {event_id}", "not_found")
            return str(stored), []
        event_type, payload, before = claimed
        claiming.commit()
    outcome, wake = _apply(uow, gateway, event_id, event_type, payload["data"]["object"], before)
    if outcome != "invalid":  # recorded already, with its alert
        _finish(uow, event_id, outcome, None)
    return outcome, wake


def _apply(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    event_id: str,
    event_type: str,
    obj: dict[str, Any],
    before: str | None,
) -> Handled:
    """Run the event's handler. One that can never be applied is recorded `invalid` here; a
    failure is recorded `failed` and raised; any other outcome is the caller's to record."""
    handler = HANDLERS.get(event_type)
    if handler is None:  # stored before its type lost its handler
        return "ignored", []
    try:
        outcome, wake = handler(uow, gateway, obj, event_id)
    except InvalidEvent as error:
        _finish(
            uow,
            event_id,
            "invalid",
            str(error)[:1000],
            f"event {event_id} ({event_type}) cannot be applied: {error}"[:1000],
        )
        return "invalid", []
    except CardOnItsWay as wait:
        if before not in DONE:  # waiting, not failed: no retry budget runs out on a push
            with uow.single() as waiting:  # Stripe is slow to take
                waiting.session.execute(WAIT, {"event_id": event_id, "reason": f"waiting: {wait}"})
                waiting.commit()
        raise
    except Exception as error:
        if before not in DONE:  # a replay that could not reach Stripe keeps what was done
            _finish(uow, event_id, "failed", f"{type(error).__name__}: {error}"[:1000])
        raise
    if before == "processed" and outcome == "ignored":
        # a replay that finds nothing left to do (the first handling did it) never
        # downgrades what was applied
        outcome = "processed"
    return outcome, wake


DRAIN = (
    update(EVENTS)
    .where(
        EVENTS.c.id.in_(
            select(EVENTS.c.id)
            .where(EVENTS.c.outcome.is_(None), EVENTS.c.attempts == 0)
            .order_by(EVENTS.c.received_at)
            .limit(bindparam("size"))
            .with_for_update(skip_locked=True)
        )
    )
    .values(attempts=EVENTS.c.attempts + 1, claimed_at=func.now())
    .returning(EVENTS.c.id, EVENTS.c.type, EVENTS.c.payload, EVENTS.c.received_at)
)
"""Take up to `size` events no run has tried yet, the oldest; rows another drain holds are
skipped. (An UPDATE returns its rows in no particular order: the caller sorts them.)"""


@dataclass
class Drained:
    taken: int
    woken: list[int] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    """Taken, not finished here: each goes to a task of its own, with its retries."""


def drain(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    size: int,
    when_full: Callable[[], object] = lambda: None,
) -> Drained:
    """Handle up to `size` stored events in one claim and one write of their outcomes, so
    an event costs its handler's own statements and no message of its own.

    The first event that fails is left `failed`, and it and the rest of the batch are
    handed back (`left`) for tasks of their own: when Stripe is away each then waits out
    its own timeout and retries on its own thread, not one after another here. One that
    only met a charger's work on its customer's card (`CardSyncContended`) goes alone, and
    the batch goes on. An event taken here and never finished (a crash) still has no
    outcome: the sweep sends it on its own like any event whose message was lost. A full
    batch calls `when_full` before handling it, so that the rest of a backlog is taken in
    parallel."""
    with uow.single() as claiming:
        taken = sorted(claiming.session.execute(DRAIN, {"size": size}), key=lambda row: row[3])
        claiming.commit()
    if len(taken) == size:
        when_full()
    drained = Drained(len(taken))
    finished: list[dict[str, Any]] = []
    for done, (event_id, event_type, payload, _) in enumerate(taken):
        log_lines.bind(event_id=event_id)  # each line a handler logs names its event
        try:
            outcome, wake = _apply(
                uow, gateway, event_id, event_type, payload["data"]["object"], None
            )
        except CardSyncContended as race:  # a race with a charger, not Stripe away: the rest
            log.info("event %s (%s) tried again later: %s", event_id, event_type, race)
            drained.left.append(event_id)  # of the batch goes on here
            continue
        except Exception:
            log.warning(
                "event %s (%s) failed; it and the %s after it go to tasks of their own",
                event_id,
                event_type,
                len(taken) - done - 1,
                exc_info=True,
            )
            drained.left.extend(row[0] for row in taken[done:])
            break
        finally:
            log_lines.unbind("event_id")
        drained.woken.extend(wake)
        if outcome != "invalid":  # recorded already, with its alert
            finished.append(
                {"event_id": event_id, "new_outcome": outcome, "new_error": None, "at": _now()}
            )
    if finished:
        with uow.single() as finishing:
            finishing.session.execute(FAIL, finished)
            finishing.commit()
    return drained


def backfill(uow: UnitOfWork, gateway: PaymentGateway, now: float | None = None) -> list[str]:
    """Store the events Stripe has that we never received; return the new ones. Only the
    types the endpoint is subscribed to (`HANDLED_EVENTS`): an account's other events would
    be rows stored `ignored`. The cursor still moves past every event listed."""
    now = now or time.time()
    with uow:
        cursor = uow.session.get(SyncCursor, CURSOR)
        since = (cursor.value - TOLERANCE_SECONDS) if cursor else int(now) - BACKFILL_WINDOW
    listed = [event for event in gateway.list_events(since) if _well_formed(event)]
    events = [event for event in listed if event["type"] in HANDLERS]
    with uow:
        known = set(
            uow.session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.id.in_([e["id"] for e in events]))
            )
        )
    fresh = store_events(uow, [e for e in events if e["id"] not in known], "reconcile")
    newest = max((int(event.get("created") or 0) for event in listed), default=0)
    if newest:
        with uow:
            uow.session.execute(
                insert(SyncCursor)
                .values(name=CURSOR, value=newest)
                .on_conflict_do_update(
                    index_elements=["name"],
                    set_={"value": newest, "updated_at": datetime.now(UTC)},
                    where=SyncCursor.value < newest,
                )
            )
            uow.commit()
    return fresh


def unprocessed_events(uow: UnitOfWork, older_than: float, retries: int = 0) -> list[str]:
    """Stored but not handled, and not taken by any run since the cutoff (their wake-up
    call was lost, or the run that took them died; one a drain is working through right
    now is not sent twice), and events whose handling failed and was not tried again since
    the cutoff while they still have retries left (`attempts <= retries`, the budget the
    task itself has): their retry message was lost with a flushed broker or a killed
    worker. Past the budget they wait for an operator."""
    cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
    with uow:
        return list(
            uow.session.scalars(
                select(WebhookEvent.id)
                .where(
                    or_(
                        and_(
                            WebhookEvent.outcome.is_(None),
                            func.coalesce(WebhookEvent.claimed_at, WebhookEvent.received_at)
                            < cutoff,
                        ),
                        and_(
                            WebhookEvent.outcome == "failed",
                            WebhookEvent.attempts <= retries,
                            WebhookEvent.processed_at < cutoff,
                        ),
                    )
                )
                .order_by(WebhookEvent.received_at)
                .limit(1000)
            )
        )


EventKey = tuple[datetime, str]


def failed_events(
    uow: UnitOfWork, after: EventKey | None = None, limit: int = 100
) -> list[EventKey]:
    """One page of failed events as (received_at, id), in that order; pass the last key of a
    page as `after` for the next. A keyset cursor: an event that fails again when replayed
    stays behind it, so walking the pages always ends."""
    query = (
        select(WebhookEvent.received_at, WebhookEvent.id)
        .where(WebhookEvent.outcome == "failed")
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(WebhookEvent.received_at, WebhookEvent.id) > tuple_(*after))
    with uow:
        return [(received_at, event_id) for received_at, event_id in uow.session.execute(query)]
