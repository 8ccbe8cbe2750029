"""Stripe events of every type we handle, with objects of any shape (hypothesis): wrong types
for ids, huge or negative numbers, lists where objects go, ids of our own purchases and of
nothing. Stored as the endpoint stores them, handled as the worker handles them: each ends
`processed`, `ignored` or `invalid` (with its alert), never an exception that the worker
would retry until it gives up, and a replay ends the same way.

SEATS_FUZZ_EXAMPLES sets the examples per event type (25 by default).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from shared.services import webhooks
from shared.store.models import OperatorAlert, WebhookEvent
from tests.services.conftest import Shop
from tests.services.test_webhooks import paid
from tests.strategies import anything

EXAMPLES = int(os.environ.get("SEATS_FUZZ_EXAMPLES", "25"))


def ids(known: list[str]) -> st.SearchStrategy[Any]:
    """An id as Stripe writes one, one of ours, or anything at all."""
    return st.one_of(
        st.from_regex(r"(pi|ch|cus|pm|dp|re)_[A-Za-z0-9]{1,24}", fullmatch=True),
        st.sampled_from(known),
        anything,
    )


def objects(known: list[str], digits: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """The fields our handlers read, each there or not, of any type."""
    metadata = st.one_of(
        anything,
        st.dictionaries(
            st.sampled_from(["purchase_id", "renewal_id", "organization_id"]),
            st.one_of(st.sampled_from(digits), anything),
            max_size=2,
        ),
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "id": ids(known),
            "object": anything,
            "payment_intent": ids(known),
            "amount": st.one_of(st.integers(), anything),
            "amount_refunded": st.one_of(st.integers(min_value=0, max_value=10**20), anything),
            "currency": anything,
            "status": st.one_of(st.sampled_from(["succeeded", "canceled", "failed"]), anything),
            "metadata": metadata,
            "customer": ids(known),
            "invoice_settings": st.one_of(
                anything, st.fixed_dictionaries({"default_payment_method": ids(known)})
            ),
        },
    )


def outcome_of(shop: Shop, event_id: str) -> str | None:
    with shop.rt.uow() as uow:
        return uow.session.scalar(select(WebhookEvent.outcome).where(WebhookEvent.id == event_id))


def alerted(shop: Shop, event_id: str) -> bool:
    with shop.rt.uow() as uow:
        return bool(
            uow.session.scalar(select(OperatorAlert.id).where(OperatorAlert.event_id == event_id))
        )


@pytest.mark.parametrize("kind", sorted(webhooks.HANDLERS))
def test_any_object_of_a_handled_type_ends_in_a_known_outcome(shop: Shop, kind: str) -> None:
    purchase, intent = paid(shop)
    customer = shop.organization().stripe_customer_id
    card = shop.organization().payment_method_id
    known = [intent, str(customer), str(card), f"ch_{secrets.token_hex(4)}"]
    digits = [str(purchase), "0", "99999999999999999999"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(obj=objects(known, digits))
    def handled(obj: dict[str, Any]) -> None:
        event = {
            "id": f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "type": kind,
            "data": {"object": obj},
        }
        stored = webhooks.store_event(shop.rt.uow(), event)
        assert stored in {"new", "invalid", "processed"}
        if stored == "processed":  # done at once (the paid purchase's own intent): a replay
            again, _ = webhooks.process_event(shop.rt.uow(), shop.fake, event["id"], again=True)
            assert again == "processed", obj
        if stored == "new":
            outcome, _ = webhooks.process_event(shop.rt.uow(), shop.fake, event["id"])
            assert outcome in {"processed", "ignored", "invalid"}, obj
            assert outcome_of(shop, event["id"]) == outcome
            if outcome == "invalid":
                assert alerted(shop, event["id"]), obj
            again, _ = webhooks.process_event(shop.rt.uow(), shop.fake, event["id"], again=True)
            assert again == outcome or (outcome, again) == ("processed", "processed"), obj
        # seats never move for an event: the paid purchase's counts stay as they were
        assert shop.counts() == (4, 4)

    handled()


@pytest.mark.parametrize("kind", ["charge.refunded", "charge.dispute.created"])
@pytest.mark.parametrize(
    "odd",
    [
        {"payment_intent": {"id": "pi_1"}},
        {"payment_intent": 12},
        {"payment_intent": 2**70},
        {"payment_intent": ["pi_1"]},
        {"payment_intent": True},
        {"id": {"x": 1}},
        {"id": 7},
        {"id": None},
        {"id": ""},
    ],
    ids=repr,
)
def test_a_refund_or_dispute_without_string_ids_is_invalid_with_an_alert_not_retried(
    shop: Shop, kind: str, odd: dict[str, Any]
) -> None:
    """Found by the fuzzing above: such an event made the handler's SQL fail (a dict cannot be
    sent, text = integer has no operator), so it `failed` and the worker retried it until it
    gave up, and every replay failed again. It can never be applied: `invalid`, with an alert."""
    obj = {"id": "ch_1", "payment_intent": "pi_1", "amount": 5, "amount_refunded": 5, **odd}
    event = {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": kind,
        "data": {"object": obj},
    }
    assert webhooks.store_event(shop.rt.uow(), event) == "new"
    assert webhooks.process_event(shop.rt.uow(), shop.fake, event["id"]) == ("invalid", [])
    assert outcome_of(shop, event["id"]) == "invalid"
    assert alerted(shop, event["id"])
    assert webhooks.process_event(shop.rt.uow(), shop.fake, event["id"], again=True)[0] == "invalid"


@pytest.mark.parametrize("names", ["purchase_id", "renewal_id"])
def test_an_intent_stripe_does_not_have_is_invalid_with_an_alert_not_retried(
    shop: Shop, names: str
) -> None:
    """Found by the fuzzing above: an intent naming one of our purchases (or a renewal) that
    Stripe answers `resource_missing` for made the handler raise, so the event `failed`, was
    retried until the worker gave up and failed again at each replay."""
    purchase, _ = paid(shop)
    obj = {"id": f"pi_{secrets.token_hex(6)}", "metadata": {names: str(purchase)}}
    event = {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": obj},
    }
    assert webhooks.store_event(shop.rt.uow(), event) == "new"
    assert webhooks.process_event(shop.rt.uow(), shop.fake, event["id"]) == ("invalid", [])
    assert alerted(shop, event["id"])
    assert shop.counts() == (4, 4)
