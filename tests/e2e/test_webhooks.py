"""Stripe webhooks over HTTP: verified, stored once, order-proof, reconciled, replayable."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import stripe
from sqlalchemy import func, select

from shared.bootstrap import Runtime
from shared.cli.embedded import free_port
from shared.cli.supervisor import register_webhook
from shared.payments.gateway import PaymentRequest
from shared.store.models import OperatorAlert, Organization, Purchase, SeatChange, WebhookEvent
from tests.conftest import Server, Tenant, Worker, seats_json
from tests.e2e.stripe_helpers import (
    THREE_D_SECURE,
    authenticate,
    buy,
    new_card,
    stripe_client,
    succeeded_charges,
    wait_for,
)
from tests.e2e.test_buying_seats import customer_of

pytestmark = pytest.mark.e2e


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)


def post_event(web: Server, body: bytes, header: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return requests.post(f"{web.url}/webhooks/stripe", data=body, headers=headers, timeout=10)


def event_around(obj: dict[str, Any], kind: str, event_id: str) -> bytes:
    """A correctly shaped event built around a real object fetched from the stand-in."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "data": {"object": obj},
        }
    ).encode()


def stored(runtime: Runtime, event_id: str) -> WebhookEvent | None:
    with runtime.uow() as uow:
        event = uow.session.get(WebhookEvent, event_id)
        if event is not None:
            uow.session.expunge(event)
        return event


def wait_processed(runtime: Runtime, event_id: str, timeout: float = 30) -> WebhookEvent:
    deadline = time.monotonic() + timeout
    while True:
        event = stored(runtime, event_id)
        if event is not None and event.outcome in ("processed", "ignored", "failed"):
            return event
        assert time.monotonic() < deadline, f"event {event_id} not processed: {event}"
        time.sleep(0.1)


def intent_of(runtime: Runtime, purchase_id: int) -> str:
    with runtime.uow() as uow:
        intent = uow.session.get_one(Purchase, purchase_id).stripe_payment_intent_id
    assert intent
    return intent


def audit_rows(runtime: Runtime, purchase_id: int) -> int:
    with runtime.uow() as uow:
        return int(
            uow.session.scalar(
                select(func.count())
                .select_from(SeatChange)
                .where(SeatChange.purchase_id == purchase_id)
            )
            or 0
        )


def intent_as_stripe_has_it(runtime: Runtime, stripe_base: str, purchase: int) -> dict[str, Any]:
    """The real PaymentIntent of a purchase, fetched from the stand-in."""
    intent: dict[str, Any] = (
        stripe_client(stripe_base)
        .v1.payment_intents.retrieve(intent_of(runtime, purchase))
        .to_dict()
    )
    return intent


def paid_purchase(
    runtime: Runtime, web: Server, stripe_base: str, target: int, key: str
) -> tuple[Tenant, int]:
    """A fresh organization whose buyer bought seats with a new card, and the purchase."""
    shop = Tenant(runtime, web.url)
    purchase = buy(shop.buyer, shop.sub, target, key, new_card(stripe_base))
    assert wait_for(shop.buyer, purchase)["status"] == "succeeded"
    return shop, purchase


@pytest.fixture
def secret(stack_runtime: Runtime) -> str:
    return str(stack_runtime.settings.stripe_webhook_secret)


class TestSignature:
    body = event_around({"id": "cus_sig", "object": "customer"}, "customer.created", "evt_sig")

    def fresh(self) -> bytes:
        return self.body.replace(b"evt_sig", f"evt_sig{time.monotonic_ns()}".encode())

    def test_good_signature_is_stored(
        self, stack_web: Server, stack_runtime: Runtime, secret: str
    ) -> None:
        body = self.fresh()
        answer = post_event(stack_web, body, sign(body, secret))
        assert answer.status_code == 200, answer.text
        assert stored(stack_runtime, json.loads(body)["id"]) is not None

    @pytest.mark.parametrize(
        "case", ["wrong_secret", "byte_changed", "stale", "missing", "garbage_header"]
    )
    def test_bad_signatures_are_400_and_store_nothing(
        self, case: str, stack_web: Server, stack_runtime: Runtime, secret: str
    ) -> None:
        body = self.fresh()
        header: str | None = sign(body, secret)
        if case == "wrong_secret":
            header = sign(body, "whsec_not_ours")
        elif case == "byte_changed":
            body = body.replace(b"customer.created", b"customer.createe")
        elif case == "stale":
            header = sign(body, secret, int(time.time()) - 301)
        elif case == "missing":
            header = None
        else:
            header = "t=abc,v1=zz"
        answer = post_event(stack_web, body, header)
        assert answer.status_code == 400
        assert answer.json()["error"] == "bad_signature"
        assert stored(stack_runtime, json.loads(body)["id"]) is None

    def test_two_v1_values_one_valid(self, stack_web: Server, secret: str) -> None:
        body = self.fresh()
        good = sign(body, secret)
        timestamp, valid = good.split(",")
        header = f"{timestamp},v1={'0' * 64},{valid}"
        assert post_event(stack_web, body, header).status_code == 200

    def test_signed_non_json_and_oversized_bodies_are_refused(
        self, stack_web: Server, secret: str
    ) -> None:
        body = b"this is not json"
        answer = post_event(stack_web, body, sign(body, secret))
        assert answer.status_code == 400 and answer.json()["error"] == "malformed_event"
        shapeless = b'{"id": "evt_x", "type": "customer.created"}'
        assert post_event(stack_web, shapeless, sign(shapeless, secret)).status_code == 400
        huge = event_around({"id": "cus_big", "pad": "x" * 300_000}, "customer.created", "evt_big")
        answer = post_event(stack_web, huge, sign(huge, secret))
        assert answer.status_code == 413


def test_five_parallel_deliveries_have_one_effect(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
    secret: str,
) -> None:
    """The charger is paused after Stripe confirmed: the webhook is what applies the purchase."""
    marker = tmp_path / "reached"
    paused = Worker(worker_env, tmp_path / "paused.log")
    paused.start(
        SEATS_FAILPOINT="payment_confirmed",
        SEATS_FAILPOINT_FILE=str(marker),
        SEATS_SWEEP_INTERVAL="3600",
        SEATS_RECONCILE_INTERVAL="3600",
    )
    try:
        shop = Tenant(stack_runtime, stack_web.url)
        purchase = buy(shop.buyer, shop.sub, 5, "five-times", new_card(stripe_base))
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        intent = intent_as_stripe_has_it(stack_runtime, stripe_base, purchase)
        assert intent["status"] == "succeeded"
        body = event_around(intent, "payment_intent.succeeded", f"evt_five_{purchase}")
        barrier = threading.Barrier(5)

        def deliver(_: int) -> int:
            barrier.wait()
            return post_event(stack_web, body, sign(body, secret)).status_code

        with ThreadPoolExecutor(5) as pool:
            codes = list(pool.map(deliver, range(5)))
        assert codes == [200] * 5
        event = wait_processed(stack_runtime, f"evt_five_{purchase}")
        assert event.outcome == "processed" and event.attempts == 1
        done = wait_for(shop.buyer, purchase)
        assert done["status"] == "succeeded"
        assert audit_rows(stack_runtime, purchase) == 1
        plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
        assert (plan["paid_seats"], plan["active_seats"]) == (5, 5)
        assert plan["payment_method"]["last4"] == "4242"
    finally:
        paused.kill()
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_a_payment_made_before_the_purchase_was_charged_is_refunded(
    stack_runtime: Runtime,
    stack_web: Server,
    stripe_base: str,
    secret: str,
    worker: Worker,
    redis_url: str,
) -> None:
    """A succeeded intent naming a purchase that our charger never priced or claimed.

    Our own charger only pays a purchase after claiming its plans, so this money
    is not owed: it is refunded with an alert, and the purchase is charged once
    by its own intent when the (lost, then swept) charge task runs.
    """
    worker.stop()
    try:
        shop = Tenant(stack_runtime, stack_web.url)
        card = new_card(stripe_base)
        purchase = buy(shop.buyer, shop.sub, 4, "early-success", card)
        redis.Redis.from_url(redis_url).flushdb()
        with stack_runtime.uow() as uow:
            amount = uow.session.get_one(Purchase, purchase).amount_due
        gateway = stack_runtime.gateway
        customer = gateway.create_customer(shop.org, "early")
        with stack_runtime.uow() as uow:
            uow.session.get_one(Organization, shop.org).stripe_customer_id = customer
            uow.commit()
        gateway.attach_card(card, customer)
        created = gateway.create_payment(
            PaymentRequest(
                reference=f"early-{purchase}",
                amount=amount,
                currency="cad",
                customer_id=customer,
                payment_method_id=card,
                metadata={"purchase_id": str(purchase)},
            )
        )
        gateway.confirm_payment(created.id)
        intent = stripe_client(stripe_base).v1.payment_intents.retrieve(created.id).to_dict()
        body = event_around(intent, "payment_intent.succeeded", f"evt_early_{purchase}")
        assert post_event(stack_web, body, sign(body, secret)).status_code == 200
    finally:
        worker.start()
    done = wait_for(shop.buyer, purchase)
    assert done["status"] == "succeeded"
    assert intent_of(stack_runtime, purchase) != created.id
    assert audit_rows(stack_runtime, purchase) == 1
    with stack_runtime.uow() as uow:
        alert = uow.session.scalars(
            select(OperatorAlert).where(OperatorAlert.stripe_object_id == created.id)
        ).one()
        assert (alert.kind, alert.purchase_id) == ("duplicate_payment", purchase)
        assert alert.refund_id is not None
    kept = [c for c in succeeded_charges(stripe_base, customer) if not c.refunded]
    assert [c.payment_intent for c in kept] == [intent_of(stack_runtime, purchase)]


DEAD_ENDPOINT = "http://127.0.0.1:9/webhooks/stripe"
"""Where Stripe's deliveries go when they must be lost: nothing listens on port 9."""


def events_of(runtime: Runtime, intent: str, kind: str) -> list[tuple[str, str | None]]:
    """(source, outcome) of every stored event of this type about this PaymentIntent."""
    with runtime.uow() as uow:
        return [
            (event.source, event.outcome)
            for event in uow.session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.object_id == intent, WebhookEvent.type == kind)
                .order_by(WebhookEvent.received_at)
            )
        ]


@contextlib.contextmanager
def webhooks_lost(stripe_base: str, stack_web: Server, secret: str) -> Iterator[None]:
    """Stripe's deliveries go to a dead port until the block ends."""
    register_webhook(stripe_base, DEAD_ENDPOINT, secret)
    try:
        yield
    finally:
        register_webhook(stripe_base, f"{stack_web.url}/webhooks/stripe", secret)


@dataclass
class Stage:
    """The module's worker stopped and the broker emptied: only the workers a test starts
    here run, each with its own settings (sweep, reconciliation, Stripe's address)."""

    runtime: Runtime
    web: Server
    stripe_base: str
    worker_env: dict[str, str]
    tmp_path: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str, **env: str) -> Worker:
        started = Worker(self.worker_env, self.tmp_path / f"{name}.log")
        self.started.append(started)
        started.start(**env)
        return started

    def paid_with_charger_paused(self, target: int, key: str) -> tuple[Worker, Tenant, int]:
        """A purchase whose PaymentIntent succeeded at Stripe while its charger stopped right
        after the confirmation, with no sweep and no reconciliation: until something else
        settles it, it stays `processing`. The paused worker still handles webhooks with its
        other process until the test kills it."""
        marker = self.tmp_path / f"reached-{key}"
        paused = self.start(
            f"paused-{key}",
            SEATS_FAILPOINT="payment_confirmed",
            SEATS_FAILPOINT_FILE=str(marker),
            SEATS_SWEEP_INTERVAL="3600",
            SEATS_RECONCILE_INTERVAL="3600",
        )
        shop = Tenant(self.runtime, self.web.url)
        purchase = buy(shop.buyer, shop.sub, target, key, new_card(self.stripe_base))
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the charger never reached payment_confirmed"
            time.sleep(0.05)
        assert shop.buyer.get(f"/api/purchases/{purchase}").json()["status"] == "processing"
        intent = intent_as_stripe_has_it(self.runtime, self.stripe_base, purchase)
        assert intent["status"] == "succeeded"
        return paused, shop, purchase


@pytest.fixture
def stage(
    worker: Worker,
    redis_url: str,
    stack_runtime: Runtime,
    stack_web: Server,
    stripe_base: str,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Stage]:
    worker.stop()
    redis.Redis.from_url(redis_url).flushdb()
    staged = Stage(stack_runtime, stack_web, stripe_base, worker_env, tmp_path)
    try:
        yield staged
    finally:
        for started in staged.started:
            started.kill()
        redis.Redis.from_url(redis_url).flushdb()
        worker.start()


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("payment_intent.payment_failed", "requires_payment_method"),
        # Canceling is never retried on our side, so a handler that believed this body would
        # leave the purchase failed until the success came.
        ("payment_intent.canceled", "canceled"),
    ],
)
def test_late_failure_never_undoes_a_success(
    kind: str,
    status: str,
    stage: Stage,
    stack_runtime: Runtime,
    stack_web: Server,
    stripe_base: str,
    secret: str,
) -> None:
    """The webhook is the only thing that can settle here. An event whose body says the
    payment failed arrives for an intent that in fact succeeded at Stripe, then the success,
    then the failure once more: handlers trust Stripe's current state, not the body, so the
    purchase succeeds at the first event and stays succeeded, applied once."""
    _, shop, purchase = stage.paid_with_charger_paused(5, f"late-{status}")
    intent = intent_as_stripe_has_it(stack_runtime, stripe_base, purchase)
    stale = {
        **intent,
        "status": status,
        "last_payment_error": {"code": "card_declined", "message": "declined"},
    }
    failed = event_around(stale, kind, f"evt_late_{purchase}")
    assert post_event(stack_web, failed, sign(failed, secret)).status_code == 200
    assert wait_processed(stack_runtime, f"evt_late_{purchase}").outcome == "processed"
    after = shop.buyer.get(f"/api/purchases/{purchase}").json()
    assert after["status"] == "succeeded", after
    assert after.get("failure_code") is None, after

    for event_kind, body, event_id in [
        ("payment_intent.succeeded", intent, f"evt_late_ok_{purchase}"),
        (kind, stale, f"evt_later_{purchase}"),
    ]:
        event = event_around(body, event_kind, event_id)
        assert post_event(stack_web, event, sign(event, secret)).status_code == 200
        assert wait_processed(stack_runtime, event_id).outcome == "processed"
    after = shop.buyer.get(f"/api/purchases/{purchase}").json()
    assert after["status"] == "succeeded", after
    assert after.get("failure_code") is None, after
    assert audit_rows(stack_runtime, purchase) == 1
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (5, 5)
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_three_d_secure_completed_by_the_stand_ins_webhook(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
    worker: Worker,
    redis_url: str,
) -> None:
    """No sweep and no reconciliation here: only localstripe's signed event can finish it."""
    worker.stop()
    redis.Redis.from_url(redis_url).flushdb()
    quiet = Worker(worker_env, tmp_path / "quiet.log")
    quiet.start(SEATS_SWEEP_INTERVAL="3600", SEATS_RECONCILE_INTERVAL="3600")
    try:
        shop = Tenant(stack_runtime, stack_web.url)
        purchase = buy(
            shop.buyer, shop.sub, 6, "3ds-webhook", new_card(stripe_base, THREE_D_SECURE)
        )
        waiting = wait_for(shop.buyer, purchase, ("requires_action",))
        intent = intent_of(stack_runtime, purchase)
        authenticate(stripe_base, intent, waiting["client_secret"])
        done = wait_for(shop.buyer, purchase)
        assert done["status"] == "succeeded"
        with stack_runtime.uow() as uow:
            events = uow.session.scalars(
                select(WebhookEvent).where(
                    WebhookEvent.object_id == intent,
                    WebhookEvent.type == "payment_intent.succeeded",
                )
            ).all()
            assert [e.source for e in events] == ["webhook"]
            assert wait_processed(stack_runtime, events[0].id).outcome == "processed"
        plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
        assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)
    finally:
        quiet.stop()
        worker.start()


def test_lost_webhooks_are_recovered_by_reconciliation(
    stage: Stage, stack_runtime: Runtime, stack_web: Server, stripe_base: str, secret: str
) -> None:
    """The bank's answer comes after the charger left (3-D Secure), its webhook is lost and
    the sweep never polls: only reconciliation, reading Stripe's event list, can settle it."""
    stage.start("reconcile", SEATS_SWEEP_INTERVAL="3600", SEATS_RECONCILE_INTERVAL="2")
    with webhooks_lost(stripe_base, stack_web, secret):
        shop = Tenant(stack_runtime, stack_web.url)
        card = new_card(stripe_base, THREE_D_SECURE)
        purchase = buy(shop.buyer, shop.sub, 7, "lost-hook", card)
        waiting = wait_for(shop.buyer, purchase, ("requires_action",))
        intent = intent_of(stack_runtime, purchase)
        authenticate(stripe_base, intent, waiting["client_secret"])
        done = wait_for(shop.buyer, purchase, timeout=60)
    assert done["status"] == "succeeded", done
    deadline = time.monotonic() + 30
    while (rows := events_of(stack_runtime, intent, "payment_intent.succeeded")) != [
        ("reconcile", "processed")
    ]:
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert audit_rows(stack_runtime, purchase) == 1
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (7, 7)
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_the_sweep_alone_settles_a_payment_authenticated_at_the_bank(
    stage: Stage, stack_runtime: Runtime, stack_web: Server, stripe_base: str, secret: str
) -> None:
    """Webhooks lost and reconciliation off: the sweep's poll of `requires_action` settles it."""
    stage.start("sweep", SEATS_SWEEP_INTERVAL="1", SEATS_RECONCILE_INTERVAL="3600")
    with webhooks_lost(stripe_base, stack_web, secret):
        shop = Tenant(stack_runtime, stack_web.url)
        card = new_card(stripe_base, THREE_D_SECURE)
        purchase = buy(shop.buyer, shop.sub, 6, "swept-3ds", card)
        waiting = wait_for(shop.buyer, purchase, ("requires_action",))
        intent = intent_of(stack_runtime, purchase)
        authenticate(stripe_base, intent, waiting["client_secret"])
        done = wait_for(shop.buyer, purchase, timeout=60)
        assert events_of(stack_runtime, intent, "payment_intent.succeeded") == []
    assert done["status"] == "succeeded", done
    assert audit_rows(stack_runtime, purchase) == 1
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_refund_is_flagged_and_seats_stay(
    stack_runtime: Runtime, stack_web: Server, worker: Worker, stripe_base: str, secret: str
) -> None:
    shop, purchase = paid_purchase(stack_runtime, stack_web, stripe_base, 5, "refund")
    [charge] = succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))
    refunded = {**charge.to_dict(), "refunded": True, "amount_refunded": charge.amount}
    body = event_around(refunded, "charge.refunded", f"evt_refund_{purchase}")
    for _ in range(2):
        assert post_event(stack_web, body, sign(body, secret)).status_code == 200
    refund_event = wait_processed(stack_runtime, f"evt_refund_{purchase}")
    assert refund_event.outcome == "processed", refund_event.error
    with stack_runtime.uow() as uow:
        alerts = uow.session.scalars(
            select(OperatorAlert).where(OperatorAlert.purchase_id == purchase)
        ).all()
        assert [(a.kind, a.amount) for a in alerts] == [("refund", charge.amount)]
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (5, 5)


def test_saved_card_follows_stripe_default(
    stack_runtime: Runtime, stack_web: Server, worker: Worker, stripe_base: str, secret: str
) -> None:
    shop = Tenant(stack_runtime, stack_web.url)
    first = new_card(stripe_base)
    purchase = buy(shop.buyer, shop.sub, 4, "card-sync", first)
    assert wait_for(shop.buyer, purchase)["status"] == "succeeded"
    customer = customer_of(stack_runtime, shop.org)
    client = stripe_client(stripe_base)
    second = new_card(stripe_base, "5555555555554444")
    client.v1.payment_methods.attach(second, params={"customer": customer})
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": second}}
    )
    deadline = time.monotonic() + 30
    while shop.owner.get(f"/api/subscriptions/{shop.sub}").json()["payment_method"]["id"] != second:
        assert time.monotonic() < deadline, "customer.updated never moved our saved card"
        time.sleep(0.2)
    detached = client.v1.payment_methods.detach(second).to_dict()
    body = event_around(detached, "payment_method.detached", f"evt_detach_{purchase}")
    assert post_event(stack_web, body, sign(body, secret)).status_code == 200
    assert wait_processed(stack_runtime, f"evt_detach_{purchase}").outcome == "processed"
    # Stripe has no default card for renewals any more (the stand-in still names the detached
    # card, which is gone): nothing is saved, and certainly not the older first card.
    assert client.v1.payment_methods.retrieve(second).customer is None
    assert shop.owner.get(f"/api/subscriptions/{shop.sub}").json()["payment_method"] is None
    # Back to the first card at Stripe: ours follows, exactly that card.
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": first}}
    )
    deadline = time.monotonic() + 30
    while (saved := shop.owner.get(f"/api/subscriptions/{shop.sub}").json()["payment_method"]) != {
        "id": first,
        "brand": "visa",
        "last4": "4242",
    }:
        assert time.monotonic() < deadline, f"our saved card never followed Stripe's: {saved}"
        time.sleep(0.2)


def test_the_endpoint_hears_only_the_events_it_handles(
    stack_runtime: Runtime, stack_web: Server, worker: Worker, stripe_base: str
) -> None:
    """`seats up` subscribes the stand-in's endpoint as the README asks of Stripe's, and the
    worker's reconciliation recovers those types only: a customer made and then changed
    gives `customer.created` (no handler) and `customer.updated`; only the second is
    stored."""
    client = stripe_client(stripe_base)
    customer = client.v1.customers.create(params={"name": "Subscribed"}).id
    client.v1.customers.update(customer, params={"description": "changed"})

    def kinds() -> list[str]:
        with stack_runtime.uow() as uow:
            return list(
                uow.session.scalars(
                    select(WebhookEvent.type).where(WebhookEvent.object_id == customer)
                )
            )

    deadline = time.monotonic() + 30
    while "customer.updated" not in kinds():
        assert time.monotonic() < deadline, "customer.updated never arrived"
        time.sleep(0.2)
    time.sleep(1)  # customer.created was sent first: it would be here by now
    assert kinds() == ["customer.updated"]


def test_replay_of_a_processed_event_changes_nothing(
    stack_runtime: Runtime,
    stack_web: Server,
    worker: Worker,
    stripe_base: str,
    secret: str,
    worker_env: dict[str, str],
) -> None:
    shop, purchase = paid_purchase(stack_runtime, stack_web, stripe_base, 5, "replay")
    intent = intent_as_stripe_has_it(stack_runtime, stripe_base, purchase)
    event_id = f"evt_replay_{purchase}"
    body = event_around(intent, "payment_intent.succeeded", event_id)
    assert post_event(stack_web, body, sign(body, secret)).status_code == 200
    assert wait_processed(stack_runtime, event_id).outcome == "processed"
    before = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    for _ in range(2):
        replayed = seats_json(worker_env, "webhooks", "replay", event_id)
        assert replayed == {"events": {event_id: "processed"}}
    assert shop.owner.get(f"/api/subscriptions/{shop.sub}").json() == before
    assert audit_rows(stack_runtime, purchase) == 1
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1
    # stored done at once (its purchase was settled: never queued), then the two replays
    assert stored(stack_runtime, event_id).attempts == 2  # type: ignore[union-attr]


def test_a_replay_settles_an_event_that_failed_while_stripe_was_away(
    stage: Stage,
    stack_runtime: Runtime,
    stack_web: Server,
    stripe_base: str,
    secret: str,
    worker_env: dict[str, str],
) -> None:
    """The success event is the only thing that can settle this purchase, and handling it
    failed while Stripe was unreachable: the operator's `seats webhooks replay` settles it
    (no worker runs then); a second replay changes nothing."""
    paused, shop, purchase = stage.paid_with_charger_paused(5, "replay-settles")
    paused.kill()
    intent = intent_as_stripe_has_it(stack_runtime, stripe_base, purchase)
    event_id = f"evt_replay_settles_{purchase}"
    outage = stage.start(
        "outage",
        STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",
        SEATS_CHARGE_RETRIES="1",
        SEATS_SWEEP_INTERVAL="3600",
        SEATS_RECONCILE_INTERVAL="3600",
    )
    body = event_around(intent, "payment_intent.succeeded", event_id)
    assert post_event(stack_web, body, sign(body, secret)).status_code == 200
    deadline = time.monotonic() + 30
    while (event := wait_processed(stack_runtime, event_id)).attempts < 2:
        assert time.monotonic() < deadline, (event.outcome, event.attempts)
        time.sleep(0.2)
    # the drain's try, then the event's own task and its one retry: seen after the second
    # (the retry waiting) or the third, it is `failed` either way
    assert event.outcome == "failed" and event.attempts in (2, 3), event.attempts
    assert "Unavailable" in str(event.error)
    outage.stop()
    # its retry may have run before the worker stopped: count the replays from here
    tried = stored(stack_runtime, event_id).attempts  # type: ignore[union-attr]
    assert shop.buyer.get(f"/api/purchases/{purchase}").json()["status"] == "processing"
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)

    replayed = seats_json(worker_env, "webhooks", "replay", event_id)
    assert replayed == {"events": {event_id: "processed"}}
    assert shop.buyer.get(f"/api/purchases/{purchase}").json()["status"] == "succeeded"
    settled = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (settled["paid_seats"], settled["active_seats"]) == (5, 5)
    assert audit_rows(stack_runtime, purchase) == 1

    replayed = seats_json(worker_env, "webhooks", "replay", event_id)
    assert replayed == {"events": {event_id: "processed"}}
    assert shop.owner.get(f"/api/subscriptions/{shop.sub}").json() == settled
    assert audit_rows(stack_runtime, purchase) == 1
    assert stored(stack_runtime, event_id).attempts == tried + 2  # type: ignore[union-attr]
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_stripes_default_card_is_read_in_one_call_with_its_details(
    stripe_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call to Stripe costs 100 to 300 ms there: the customer comes with its default
    card expanded, and the card is never asked for on its own."""
    from shared.config import LOCALSTRIPE_KEY
    from shared.payments.stripe_adapter import PooledTransport, StripeGateway

    client = stripe_client(stripe_base)
    customer = client.v1.customers.create(params={"name": "one call"}).id
    card = new_card(stripe_base, "5555555555554444")
    client.v1.payment_methods.attach(card, params={"customer": customer})
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": card}}
    )
    asked: list[str] = []
    send = PooledTransport.request

    def counted(self: PooledTransport, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(f"{method} {url.removeprefix(stripe_base).split('?')[0]}")
        return send(self, method, url, *args, **kwargs)

    monkeypatch.setattr(PooledTransport, "request", counted)
    found = StripeGateway(LOCALSTRIPE_KEY, stripe_base).default_card(customer)
    as_stripe_has_it = client.v1.payment_methods.retrieve(card).card
    assert found is not None and as_stripe_has_it is not None
    assert (found.id, found.brand, found.last4) == (card, as_stripe_has_it.brand, "4444")
    assert asked == [f"get /v1/customers/{customer}"]
