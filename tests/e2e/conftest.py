"""The end-to-end tier's closing audit: our ledger held against Stripe's.

After every e2e test of the session has run, each organization the tests
created is compared with the stand-in: the PaymentIntents that kept money
(succeeded and not refunded) must be exactly the PaymentIntents of our
succeeded purchases and renewals, or each difference must have an open operator alert.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from shared.bootstrap import Runtime
from shared.store.models import OperatorAlert, Organization, Purchase, Renewal
from tests.e2e.stripe_helpers import charges_of


def ledger_differences(runtime: Runtime, stripe_base: str) -> list[str]:
    problems = []
    with runtime.uow() as uow:
        customers = dict(
            uow.session.execute(
                select(Organization.id, Organization.stripe_customer_id).where(
                    Organization.stripe_customer_id.is_not(None)
                )
            ).all()
        )
        ours = {
            (org, intent)
            for org, intent in uow.session.execute(
                select(Purchase.organization_id, Purchase.stripe_payment_intent_id).where(
                    Purchase.status == "succeeded", Purchase.amount_due > 0
                )
            )
        } | {
            (org, intent)
            for org, intent in uow.session.execute(
                select(Renewal.organization_id, Renewal.stripe_payment_intent_id).where(
                    Renewal.status == "succeeded"
                )
            )
        }
        alerted = set(
            uow.session.scalars(
                select(OperatorAlert.stripe_object_id).where(OperatorAlert.resolved_at.is_(None))
            )
        )
    for org, customer in customers.items():
        kept = {
            charge.payment_intent
            for charge in charges_of(stripe_base, str(customer))
            if charge.status == "succeeded" and charge.paid and not charge.refunded
        }
        recorded = {intent for owner, intent in ours if owner == org}
        for intent in kept ^ recorded:
            if intent not in alerted:
                side = "kept by Stripe" if intent in kept else "recorded by us"
                problems.append(f"organization {org}: {intent} {side} only, and no open alert")
    return problems


@pytest.fixture(scope="session", autouse=True)
def ledger_matches_stripe(stack_runtime: Runtime, stripe_base: str) -> Iterator[None]:
    yield
    assert ledger_differences(stack_runtime, stripe_base) == []
