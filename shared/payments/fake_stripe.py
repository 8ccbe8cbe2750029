"""An in-memory card processor that behaves like Stripe's PaymentIntents, for service tests.

It keeps what Stripe keeps (customers, cards, intents, refunds, events) and
honours idempotency keys the way Stripe does (the same key with other
parameters is an error, which the real adapter reports as "try again later").
Faults are scripted per call so a test can drive every branch: the processor
unreachable before it acted, or after it acted with the answer lost.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shared.domain.cards import Card
from shared.payments.gateway import (
    CardSetup,
    Payment,
    PaymentRefused,
    PaymentRequest,
    PaymentUnavailable,
    friendly_message,
)

GOOD = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
DECLINED_ON_ATTACH = "4000000000000002"
THREE_D_SECURE = "4000002760003184"

DECLINES = {
    DECLINED_ON_CHARGE: "card_declined",
    "4000000000009995": "insufficient_funds",
    "4000000000000069": "expired_card",
}


@dataclass
class _Intent:
    id: str
    amount: int
    currency: str
    customer: str
    method: str | None
    metadata: dict[str, str]
    client_secret: str
    status: str = "requires_confirmation"
    failure_code: str | None = None
    refunded: int = 0


@dataclass
class Fault:
    """`before`: nothing happened. `after`: Stripe acted, then the answer was lost."""

    when: str
    message: str = "connection reset"


@dataclass
class FakeStripe:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, _Intent] = field(default_factory=dict)
    refunds: dict[str, tuple[str, int]] = field(default_factory=dict)
    setups: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    keys: dict[str, tuple[tuple[Any, ...], Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    """Ids are unique across instances, as Stripe's are, since databases outlive a fake."""

    # -- test controls -------------------------------------------------------------

    def card(self, number: str = GOOD) -> str:
        """What Stripe.js makes from a card form: a PaymentMethod id."""
        method = f"pm_fake{self.tag}x{next(self.ids)}"
        brand = "visa" if number.startswith("4") else "mastercard"
        self.cards[method] = {"number": number, "brand": brand, "customer": None}
        return method

    def detach(self, method: str) -> None:
        """The card is removed from the customer (in the dashboard, say) after checkout."""
        self.cards[method]["detached"] = True

    def refund_by_hand(self, intent_id: str, amount: int) -> None:
        """An operator refunds part of a payment in the dashboard."""
        self.refunds[f"re_fake{self.tag}x{next(self.ids)}"] = (intent_id, amount)
        self.intents[intent_id].refunded += amount

    def fail(self, call: str, when: str = "before", times: int = 1) -> None:
        """Script the next `times` calls named `call` to fail."""
        self.faults.setdefault(call, []).extend(Fault(when) for _ in range(times))

    def authenticate(self, intent_id: str, success: bool = True) -> Payment:
        """The customer passes (or fails) the bank's 3-D Secure check."""
        with self.lock:
            intent = self.intents[intent_id]
            assert intent.status == "requires_action"
            if success:
                self._charge(intent)
            else:
                intent.status, intent.method = "requires_payment_method", None
                intent.failure_code = "payment_intent_authentication_failure"
                self._event("payment_intent.payment_failed", intent)
            return self._payment(intent)

    def pay_with(self, intent_id: str, method: str) -> Payment:
        """Stripe.js `confirmCardPayment(client_secret, {payment_method})` from a browser."""
        with self.lock:
            intent = self.intents[intent_id]
            if intent.status not in ("requires_payment_method", "requires_confirmation"):
                raise PaymentRefused("payment_intent_unexpected_state", "cannot pay this intent")
            intent.method = method
            intent.status = "requires_confirmation"
            self._confirm(intent)
            return self._payment(intent)

    def create_foreign_payment(
        self, amount: int, currency: str, customer: str, metadata: dict[str, str]
    ) -> Payment:
        """Someone else's succeeded intent in the same account."""
        with self.lock:
            intent = self._new_intent(amount, currency, customer, self.card(), metadata)
            self._charge(intent)
            return self._payment(intent)

    def succeeded(self, customer: str | None = None) -> list[Payment]:
        """Money kept: succeeded and not refunded, what an auditor reads in Stripe."""
        return [
            self._payment(i)
            for i in self.intents.values()
            if i.status == "succeeded"
            and i.refunded < i.amount
            and (customer is None or i.customer == customer)
        ]

    # -- the gateway port --------------------------------------------------------

    def _call(
        self, name: str, key: str | None, params: tuple[Any, ...], act: Callable[[], Any]
    ) -> Any:
        with self.lock:
            self.calls.append(name)
            faults = self.faults.get(name)
            fault = faults.pop(0) if faults else None
            if fault is not None and fault.when == "before":
                raise PaymentUnavailable(f"APIConnectionError: {fault.message}")
            if key is not None and key in self.keys:
                seen, result = self.keys[key]
                if seen != params:
                    raise PaymentUnavailable(
                        "IdempotencyError: keys for idempotent requests can only be used "
                        "with the same parameters they were first used with"
                    )
            else:
                result = act()
                if key is not None:
                    self.keys[key] = (params, result)
            if fault is not None:
                raise PaymentUnavailable(f"APIConnectionError: {fault.message} (after acting)")
            return result

    def create_customer(self, organization_id: int, name: str) -> str:
        def act() -> str:
            customer = f"cus_fake{self.tag}x{next(self.ids)}"
            self.customers[customer] = {"name": name, "default": None}
            return customer

        key = f"org-{organization_id}-customer"
        result: str = self._call("create_customer", key, (organization_id, name), act)
        return result

    def attach_card(self, payment_method_id: str, customer_id: str) -> Card:
        def act() -> Card:
            card = self.cards.get(payment_method_id)
            if card is None:
                raise PaymentRefused(
                    "payment_method_unknown", friendly_message("payment_method_unknown")
                )
            if card["number"] == DECLINED_ON_ATTACH:
                raise PaymentRefused("card_declined", friendly_message("card_declined"))
            card["customer"] = customer_id
            return self.get_card(payment_method_id)

        result: Card = self._call("attach_card", None, (), act)
        return result

    def create_card_setup(self, customer_id: str, metadata: dict[str, str]) -> CardSetup:
        def act() -> CardSetup:
            if customer_id not in self.customers:
                raise PaymentRefused("resource_missing", friendly_message("resource_missing"))
            setup = f"seti_fake{self.tag}x{next(self.ids)}"
            self.setups[setup] = {"customer": customer_id, "metadata": dict(metadata)}
            return CardSetup(setup, f"{setup}_secret_x")

        result: CardSetup = self._call("create_card_setup", None, (), act)
        return result

    def _new_intent(
        self, amount: int, currency: str, customer: str, method: str, metadata: dict[str, str]
    ) -> _Intent:
        number = f"{self.tag}x{next(self.ids)}"
        intent = _Intent(
            id=f"pi_fake{number}",
            amount=amount,
            currency=currency,
            customer=customer,
            method=method,
            metadata=metadata,
            client_secret=f"pi_fake{number}_secret_x",
        )
        self.intents[intent.id] = intent
        return intent

    def create_payment(self, request: PaymentRequest) -> Payment:
        def act() -> Payment:
            if request.payment_method_id not in self.cards:
                raise PaymentRefused(
                    "payment_method_unknown", friendly_message("payment_method_unknown")
                )
            intent = self._new_intent(
                request.amount,
                request.currency,
                request.customer_id,
                request.payment_method_id,
                dict(request.metadata),
            )
            return self._payment(intent)

        result: Payment = self._call("create_payment", request.idempotency_key, (request,), act)
        return replace(result, status=self.intents[result.id].status)

    def confirm_payment(
        self, payment_id: str, *, off_session: bool = False, attempt: int = 1
    ) -> Payment:
        def act() -> Payment:
            intent = self.intents[payment_id]
            if intent.status == "requires_confirmation":
                if self.cards.get(intent.method or "", {}).get("detached"):
                    raise PaymentRefused(
                        "payment_method_unexpected_state",
                        friendly_message("payment_method_unexpected_state"),
                    )
                self._confirm(intent, off_session)
            return self._payment(intent)

        key = f"{payment_id}-confirm" + (f"-{attempt}" if attempt > 1 else "")
        self._call("confirm_payment", key, (payment_id, off_session), act)
        return self.get_payment(payment_id)

    def update_payment(
        self, payment_id: str, *, amount: int, payment_method_id: str, attempt: int
    ) -> Payment:
        def act() -> Payment:
            intent = self.intents[payment_id]
            if intent.status not in (
                "requires_payment_method",
                "requires_confirmation",
                "requires_action",  # as Stripe: a new card needs a new confirmation
            ):
                raise PaymentRefused(
                    "payment_intent_unexpected_state",
                    friendly_message("payment_intent_unexpected_state"),
                )
            intent.amount, intent.method = amount, payment_method_id
            intent.status, intent.failure_code = "requires_confirmation", None
            return self._payment(intent)

        key = f"{payment_id}-update-{attempt}"
        self._call("update_payment", key, (payment_id, amount, payment_method_id), act)
        return self.get_payment(payment_id)

    def get_payment(self, payment_id: str) -> Payment:
        def act() -> Payment:
            intent = self.intents.get(payment_id)
            if intent is None:
                raise PaymentRefused("resource_missing", friendly_message("resource_missing"))
            return self._payment(intent)

        result: Payment = self._call("get_payment", None, (), act)
        return result

    def cancel_payment(self, payment_id: str) -> Payment:
        def act() -> Payment:
            intent = self.intents[payment_id]
            if intent.status in (
                "requires_payment_method",
                "requires_confirmation",
                "requires_action",
            ):
                intent.status = "canceled"
                self._event("payment_intent.canceled", intent)
            return self._payment(intent)

        result: Payment = self._call("cancel_payment", None, (), act)
        return result

    def refund_payment(self, payment_id: str) -> str:
        def act() -> str:
            intent = self.intents[payment_id]
            done = [refund for refund, (paid, _) in self.refunds.items() if paid == payment_id]
            if done and intent.refunded >= intent.amount:
                return done[0]
            if intent.status != "succeeded":
                raise PaymentRefused("charge_not_refundable", "only a succeeded payment refunds")
            refund_id = f"re_fake{self.tag}x{next(self.ids)}"
            self.refunds[refund_id] = (payment_id, intent.amount - intent.refunded)
            intent.refunded = intent.amount
            charge = {
                "id": f"ch_{intent.id}",
                "object": "charge",
                "payment_intent": intent.id,
                "amount": intent.amount,
                "amount_refunded": intent.amount,
                "currency": intent.currency,
            }
            self._event("charge.refunded", None, charge)
            return refund_id

        result: str = self._call("refund_payment", f"refund-{payment_id}", (payment_id,), act)
        return result

    def set_default_card(self, customer_id: str, payment_method_id: str) -> None:
        def act() -> None:
            card = self.cards.get(payment_method_id)
            # Stripe: "The customer does not have a payment method with the ID ...". A card
            # attached to no one yet is let through: tests set one as the dashboard would.
            if card is None or card.get("detached") or card["customer"] not in (None, customer_id):
                raise PaymentRefused("resource_missing", friendly_message("resource_missing"))
            self.customers[customer_id]["default"] = payment_method_id
            self._event(
                "customer.updated",
                None,
                {
                    "id": customer_id,
                    "object": "customer",
                    "invoice_settings": {"default_payment_method": payment_method_id},
                },
            )

        self._call("set_default_card", None, (), act)

    def get_card(self, payment_method_id: str) -> Card:
        card = self.cards.get(payment_method_id)
        if card is None:
            raise PaymentRefused("resource_missing", friendly_message("resource_missing"))
        return Card(payment_method_id, card["brand"], card["number"][-4:])

    def default_card(self, customer_id: str) -> Card | None:
        def act() -> Card | None:
            method = self.customers[customer_id]["default"]  # detaching leaves it here:
            if not method or self.cards[method].get("detached"):  # the adapter's check
                return None
            return self.get_card(method)

        result: Card | None = self._call("default_card", None, (), act)
        return result

    def list_events(self, created_after: int) -> list[dict[str, Any]]:
        def act() -> list[dict[str, Any]]:
            return [event for event in self.events if event["created"] > created_after]

        result: list[dict[str, Any]] = self._call("list_events", None, (), act)
        return result

    # -- what Stripe does inside -------------------------------------------------

    def _confirm(self, intent: _Intent, off_session: bool = False) -> None:
        card = self.cards.get(intent.method or "")
        if card is not None and card["number"] == THREE_D_SECURE and intent.failure_code is None:
            if off_session:  # the bank wants the customer, who is not there: a decline
                intent.status, intent.failure_code = (
                    "requires_payment_method",
                    ("authentication_required"),
                )
                self._event("payment_intent.payment_failed", intent)
                return
            intent.status = "requires_action"
            self._event("payment_intent.requires_action", intent)
            return
        self._charge(intent)

    def _charge(self, intent: _Intent) -> None:
        card = self.cards.get(intent.method or "")
        decline = DECLINES.get(card["number"]) if card else "card_declined"
        if decline:
            intent.status, intent.failure_code = "requires_payment_method", decline
            self._event("payment_intent.payment_failed", intent)
            return
        intent.status, intent.failure_code = "succeeded", None
        self._event("payment_intent.succeeded", intent)

    def _payment(self, intent: _Intent) -> Payment:
        code = intent.failure_code if intent.status == "requires_payment_method" else None
        return Payment(
            id=intent.id,
            status=intent.status,
            amount=intent.amount,
            currency=intent.currency,
            customer_id=intent.customer,
            payment_method_id=intent.method,
            client_secret=intent.client_secret,
            failure_code=code,
            failure_message=friendly_message(code) if code else None,
            metadata=dict(intent.metadata),
        )

    def _event(self, kind: str, intent: _Intent | None, obj: dict[str, Any] | None = None) -> None:
        if obj is None:
            assert intent is not None
            obj = {
                "id": intent.id,
                "object": "payment_intent",
                "status": intent.status,
                "amount": intent.amount,
                "currency": intent.currency,
                "customer": intent.customer,
                "metadata": dict(intent.metadata),
            }
        self.events.append(
            {
                "id": f"evt_fake{self.tag}x{next(self.ids)}",
                "object": "event",
                "type": kind,
                "created": int(time.time()),
                "data": {"object": obj},
            }
        )
