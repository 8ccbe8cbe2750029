"""The plan page's status block (README "Renewals and failed payments"): a past-due plan
says why and takes a new card that retries the renewal; a suspended plan shows its counts
read-only; in French and English."""

from __future__ import annotations

import json
from datetime import timedelta
from zoneinfo import ZoneInfo

import redis
from babel.dates import format_date

from shared import queues
from shared.bootstrap import Runtime
from shared.domain.periods import start_of_day
from shared.payments.fake_stripe import DECLINED_ON_ATTACH, FakeStripe
from shared.store.models import Organization, Renewal, Subscription
from tests.conftest import Server, Tenant
from tests.integration.test_pages import EN, FR, csrf, sign_in, text


def renewal_failed(
    tenant: Tenant, status: str, code: str = "card_declined", attempts: int = 1
) -> int:
    """The plan as the renewal leaves it after a failed try (as `renewals._fail` does)."""
    with tenant.runtime.uow() as uow:
        plan = uow.session.get_one(Subscription, tenant.sub)
        plan.status = status
        renewal = Renewal(
            subscription_id=plan.id,
            organization_id=plan.organization_id,
            period_start=plan.renews_at,
            status="failed",
            currency="cad",
            attempts=attempts,
            next_attempt_at=(
                start_of_day(plan.renews_at + timedelta(days=3), "America/Toronto")
                if status == "past_due"
                else None
            ),
            failure_code=code,
            failure_message="Your card was declined.",
        )
        uow.session.add(renewal)
        uow.commit()
        return renewal.id


def next_try(tenant: Tenant, locale: str) -> str:
    with tenant.runtime.uow() as uow:
        renewal = uow.session.query(Renewal).filter_by(subscription_id=tenant.sub).one()
        assert renewal.next_attempt_at is not None
        day = renewal.next_attempt_at.astimezone(ZoneInfo("America/Toronto")).date()
    return format_date(day, format="long", locale=locale)


def test_an_active_plan_shows_only_its_status(tenant: Tenant, web: Server) -> None:
    page = sign_in(web, tenant, "owner", EN).get(f"{web.url}/plans/{tenant.sub}").text
    assert "Plan status Active" in text(page)
    assert "renewal-state" not in page and "Renew with a new card" not in page


def test_a_past_due_plan_says_why_and_takes_a_new_card(tenant: Tenant, web: Server) -> None:
    renewal_failed(tenant, "past_due", attempts=2)
    page = sign_in(web, tenant, "owner", FR).get(f"{web.url}/plans/{tenant.sub}").text
    seen = text(page)
    assert "État du plan En retard de paiement" in seen
    assert "n\u2019a pas pu être payé" in seen
    assert "Raison Votre carte a été refusée." in seen
    assert "Tentatives de paiement 2" in seen
    assert f"Prochaine tentative {next_try(tenant, 'fr_CA')}" in seen
    assert "Renouveler avec une nouvelle carte" in seen
    assert f'action="/plans/{tenant.sub}/card"' in page and "data-new-card-only" in page
    assert "Enregistrer la carte et renouveler" in seen
    assert 'name="active_seats"' in page  # lowering seats still works while past due
    assert '<script src="https://js.stripe.com/v3/" defer>' in page

    english = sign_in(web, tenant, "buyer", EN).get(f"{web.url}/plans/{tenant.sub}").text
    seen = text(english)
    assert "Plan status Past due" in seen and "Reason Your card was declined." in seen
    assert f"Next attempt {next_try(tenant, 'en_CA')}" in seen
    assert "Save the card and renew" in seen

    profile = text(sign_in(web, tenant, "owner", EN).get(f"{web.url}/profile").text)
    assert "Plan status Past due" in profile


def test_a_member_sees_why_but_no_card_form(tenant: Tenant, web: Server) -> None:
    renewal_failed(tenant, "past_due", code="no_payment_method")
    page = sign_in(web, tenant, "member", EN).get(f"{web.url}/plans/{tenant.sub}").text
    seen = text(page)
    assert "Reason There is no saved card to renew this plan with." in seen
    assert "Only an owner or a buyer of your organization can save a card." in seen
    assert "/card" not in page and "js.stripe.com" not in page


def test_a_suspended_plan_shows_read_only_counts(tenant: Tenant, web: Server) -> None:
    renewal_failed(tenant, "suspended", attempts=5)
    page = sign_in(web, tenant, "owner", FR).get(f"{web.url}/plans/{tenant.sub}").text
    seen = text(page)
    assert "État du plan Suspendu" in seen and "le plan est donc suspendu" in seen
    assert "Tentatives de paiement 5" in seen
    assert "Prochaine tentative Aucune : le renouvellement n\u2019est plus tenté" in seen
    assert "Nombre de licences original 3" in seen and "Nombre de licences 3" in seen
    assert 'name="active_seats"' not in page and "Enregistrer</button>" not in page
    assert "le nombre de licences ne peut pas être modifié" in seen
    assert "Enregistrer la carte et renouveler" in seen  # saving a card is still allowed


def test_a_new_card_is_saved_and_the_renewal_is_tried_again_with_it(
    fake_web: Server, fake_runtime: Runtime, fake_stripe: FakeStripe
) -> None:
    shop = Tenant(fake_runtime, fake_web.url)
    renewal = renewal_failed(shop, "past_due")
    browser = sign_in(fake_web, shop, "buyer", EN)
    plan = f"{fake_web.url}/plans/{shop.sub}"
    broker = redis.Redis.from_url(str(fake_runtime.settings.redis_url))
    before = broker.llen(queues.ROUTES[queues.RENEW])

    refused = browser.post(
        f"{plan}/card",
        data={
            "csrf_token": csrf(browser.get(plan).text),
            "payment_method": fake_stripe.card(DECLINED_ON_ATTACH),
        },
    )
    assert refused.status_code == 409
    assert 'role="alert" data-pay-problem>Your card was declined.' in refused.text
    empty = browser.post(f"{plan}/card", data={"csrf_token": csrf(refused.text)})
    assert empty.status_code == 422 and "Enter the new card, then save it." in empty.text
    assert broker.llen(queues.ROUTES[queues.RENEW]) == before

    card = fake_stripe.card()
    saved = browser.post(
        f"{plan}/card", data={"csrf_token": csrf(empty.text), "payment_method": card}
    )
    assert saved.url == plan
    assert "Your card is saved. The renewal is being charged to it now" in text(saved.text)
    with fake_runtime.uow() as uow:
        organization = uow.session.get_one(Organization, shop.org)
        assert organization.payment_method_id == card
        customer = str(organization.stripe_customer_id)
    assert fake_stripe.customers[customer]["default"] == card
    assert broker.llen(queues.ROUTES[queues.RENEW]) == before + 1
    sent = json.loads(broker.lindex(queues.ROUTES[queues.RENEW], 0) or b"{}")
    assert sent["headers"]["task"] == queues.RENEW
    assert sent["headers"]["argsrepr"] == f"[{renewal}, True]"  # forced: tried at once

    member = sign_in(fake_web, shop, "member", EN)
    forbidden = member.post(
        f"{plan}/card",
        data={"csrf_token": csrf(member.get(plan).text), "payment_method": fake_stripe.card()},
    )
    assert forbidden.status_code == 403
    other = Tenant(fake_runtime, fake_web.url)
    stranger = sign_in(fake_web, other, "owner", EN)
    elsewhere = stranger.post(
        f"{plan}/card",
        data={
            "csrf_token": csrf(stranger.get(f"{fake_web.url}/profile").text),
            "payment_method": card,
        },
    )
    assert elsewhere.status_code == 404
    with fake_runtime.uow() as uow:
        assert uow.session.get_one(Organization, other.org).payment_method_id is None
