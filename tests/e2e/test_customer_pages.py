"""The help article in a real browser: chromium (Playwright) against the web on a socket, a
Celery worker, PostgreSQL, Redis and localstripe with its fake Stripe.js.

Each test ends with a screenshot of its final page under artifacts/screenshots/, and the
pages it walks through are checked with axe-core (no serious violation).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.bootstrap import Runtime
from shared.services import signin
from shared.store.models import Organization, Purchase, User
from tests.conftest import Server, Tenant, Worker, seats_json
from tests.e2e.browser import axe_source, browser, check_accessibility, screenshot
from tests.e2e.stripe_helpers import DECLINED, GOOD, THREE_D_SECURE, succeeded_charges

pytestmark = pytest.mark.e2e
__all__ = ["axe_source", "browser"]  # fixtures

PAYMENT_TIMEOUT = 45_000


@pytest.fixture
def shop(stack_runtime: Runtime, stack_web: Server, worker: Worker) -> Tenant:
    return Tenant(stack_runtime, stack_web.url, seats=3, unit_amount=50000)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A French-speaking person's browser (Accept-Language fr-CA)."""
    context = browser.new_context(locale="fr-CA", viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    context.close()


def email(tenant: Tenant, role: str) -> str:
    with tenant.runtime.uow() as uow:
        return uow.session.get_one(User, tenant.user_ids[role]).email


def login_url(tenant: Tenant, role: str, web: Server) -> str:
    return signin.issue_link(tenant.runtime.uow(), email(tenant, role), tenant.org).url(web.url)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def visible_text(page: Any) -> str:
    raw: str = page.inner_text("main")
    return re.sub(r"\s+", " ", raw.replace("\u00a0", " ").replace("\u202f", " "))


def enter_card(page: Any, number: str, scope: Any = None) -> None:
    """The stand-in's Stripe Elements: plain inputs named by their placeholders."""
    where = scope or page
    where.get_by_role("radio", name="Nouvelle carte").check()
    for field, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "H2X1Y4"),
    ):
        where.get_by_placeholder(field, exact=True).fill(value)


def raise_to(page: Any, target: int) -> None:
    """The plan page: type the count, Enregistrer, and the dialog asks."""
    page.get_by_label("Nombre de licences", exact=True).fill(str(target))
    page.get_by_role("button", name="Enregistrer").click()


def counts(runtime: Runtime, tenant: Tenant) -> tuple[int, int]:
    from shared.store.models import Subscription

    with runtime.uow() as uow:
        plan = uow.session.get_one(Subscription, tenant.sub)
        return plan.paid_seats, plan.active_seats


def saved_card(runtime: Runtime, org: int, timeout: float = 20) -> tuple[str | None, str | None]:
    """The organization's card once its brand and last four are known (synced after paying)."""
    deadline = time.monotonic() + timeout
    while True:
        with runtime.uow() as uow:
            found = uow.session.get_one(Organization, org)
            card = (found.payment_method_brand, found.payment_method_last4)
        if card[1] is not None or time.monotonic() > deadline:
            return card
        time.sleep(0.2)


def purchases_of(runtime: Runtime, org: int) -> list[tuple[str, int | None]]:
    with runtime.uow() as uow:
        return [
            (p.status, p.retry_of_id)
            for p in uow.session.query(Purchase)
            .filter(Purchase.organization_id == org)
            .order_by(Purchase.id)
        ]


def test_the_help_article_in_french_with_a_new_card(
    shop: Tenant,
    page: Any,
    stack_web: Server,
    stack_runtime: Runtime,
    worker_env: dict[str, str],
    stripe_base: str,
    axe_source: str,
) -> None:
    # Sign in with the contract's command; the link opens the Profile page.
    env = {**worker_env, "SEATS_BASE_URL": stack_web.url}
    link = seats_json(
        env, "user", "login-link", "--email", email(shop, "buyer"), "--org", str(shop.org)
    )
    page.goto(link["url"])
    expect(page.get_by_role("heading", level=1)).to_have_text("Profil")
    check_accessibility(page, axe_source, "profile")

    # 1-4: the product's tab, Gérer, both counts.
    page.get_by_role("tab", name="Plateforme Logicim XLGL").click()
    page.get_by_role("button", name="Gérer").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Plateforme Logicim XLGL")
    paid = page.get_by_label("Nombre de licences original")
    expect(paid).to_have_value("3")
    expect(paid).not_to_be_editable()
    expect(page.get_by_label("Nombre de licences", exact=True)).to_have_value("3")
    shown = visible_text(page)
    assert "500,00 $ par licence par année" in shown and "Actif" in shown
    check_accessibility(page, axe_source, "plan")

    # The article's example: lower to 2, free and at once; back to 3, free too.
    raise_to(page, 2)
    expect(page.get_by_role("status")).to_contain_text("Enregistré : 2 licences actives.")
    assert counts(stack_runtime, shop) == (3, 2)
    raise_to(page, 3)
    expect(page.get_by_role("status")).to_contain_text("3 licences actives")

    # 5-7: above the paid count, the confirmation dialog, focus inside it.
    raise_to(page, 5)
    dialog = page.get_by_role("dialog", name="Acheter des licences?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(re.compile(r"Licences à acheter\s*2"))
    expect(dialog).to_contain_text("jours restants sur 365")
    assert page.evaluate("document.activeElement.closest('dialog') !== null")
    expect(page.get_by_role("button", name="Oui, continuer")).to_be_focused()
    check_accessibility(page, axe_source, "dialog")
    page.keyboard.press("Escape")  # Annuler by keyboard: closed, focus back on the count
    expect(dialog).to_be_hidden()
    expect(page.get_by_label("Nombre de licences", exact=True)).to_be_focused()
    assert counts(stack_runtime, shop) == (3, 3)
    raise_to(page, 5)
    page.get_by_role("button", name="Oui, continuer").click()

    # 8-9: the cart, its prorated coupon, the amount due.
    expect(page.get_by_role("heading", level=1)).to_have_text("Panier")
    quote = shop.buyer.post(f"/api/subscriptions/{shop.sub}/quote", json={"active_seats": 5})
    offer = quote.json()
    shown = visible_text(page)
    assert "Coupon au prorata" in shown
    assert f"{offer['remaining_days']} jours restants sur 365" in shown
    assert "Montant dû" in shown and "1 000,00 $" in shown
    assert "Une nouvelle carte devient votre carte enregistrée pour les renouvellements" in shown
    check_accessibility(page, axe_source, "cart")

    # 10: a new card in Stripe Elements, Payer on the cart page itself.
    enter_card(page, GOOD)
    page.get_by_role("button", name="Payer").click()
    expect(page.get_by_role("heading", name="Paiement réussi")).to_be_visible(
        timeout=PAYMENT_TIMEOUT
    )

    # 11-12: both counts raised at once, the card saved for renewals.
    shown = visible_text(page)
    assert "Nombre de licences original 5" in shown and "Nombre de licences 5" in shown
    assert counts(stack_runtime, shop) == (5, 5)
    assert saved_card(stack_runtime, shop.org) == ("visa", "4242")
    check_accessibility(page, axe_source, "purchase-succeeded")
    page.get_by_role("link", name="Plan").first.click()
    expect(page.get_by_label("Nombre de licences original")).to_have_value("5")
    expect(page.locator("main")).to_contain_text("Visa •••• 4242")
    with stack_runtime.uow() as uow:
        customer = uow.session.get_one(Organization, shop.org).stripe_customer_id
    assert [c.amount for c in succeeded_charges(stripe_base, str(customer))] == [
        offer["amount_due"]
    ]
    screenshot(page, "article-fr-plan-after-purchase")


def test_a_declined_card_shows_why_and_another_card_pays_the_same_lines(
    shop: Tenant, page: Any, stack_web: Server, stack_runtime: Runtime, axe_source: str
) -> None:
    page.goto(login_url(shop, "buyer", stack_web))
    page.goto(f"{stack_web.url}/plans/{shop.sub}")
    raise_to(page, 5)
    page.get_by_role("button", name="Oui, continuer").click()
    enter_card(page, DECLINED)
    page.get_by_role("button", name="Payer").click()

    alert = page.get_by_role("alert").filter(has_text="refusée")
    expect(alert).to_have_text(
        "Votre carte a été refusée. Essayez une autre carte ou communiquez avec votre banque.",
        timeout=PAYMENT_TIMEOUT,
    )
    expect(page.get_by_role("heading", name="Paiement refusé")).to_be_visible()
    assert counts(stack_runtime, shop) == (3, 3)
    check_accessibility(page, axe_source, "purchase-failed")
    screenshot(page, "declined-fr")

    # Another card, right here: the same lines, no trip back through the cart.
    retry = page.get_by_role("region", name="Payer avec une autre carte")
    enter_card(page, GOOD, retry)
    retry.get_by_role("button", name="Payer").click()
    expect(page.get_by_role("heading", name="Paiement réussi")).to_be_visible(
        timeout=PAYMENT_TIMEOUT
    )
    assert counts(stack_runtime, shop) == (5, 5)
    first, second = purchases_of(stack_runtime, shop.org)
    assert first == ("failed", None) and second[0] == "succeeded"
    assert shop.buyer.get("/api/cart").json()["items"] == []
    assert saved_card(stack_runtime, shop.org)[1] == "4242"
    screenshot(page, "declined-then-paid-fr")


def test_a_3d_secure_card_is_completed_in_the_dialog(
    shop: Tenant, page: Any, stack_web: Server, stack_runtime: Runtime
) -> None:
    page.goto(login_url(shop, "owner", stack_web))
    page.goto(f"{stack_web.url}/plans/{shop.sub}")
    raise_to(page, 4)
    page.get_by_role("button", name="Oui, continuer").click()
    enter_card(page, THREE_D_SECURE)
    page.get_by_role("button", name="Payer").click()
    # The bank checks the card as it is saved, then again for the payment itself.
    page.get_by_role("button", name="Complete authentication").click()
    expect(
        page.get_by_role("heading", name="Votre banque demande de confirmer le paiement")
    ).to_be_visible(timeout=PAYMENT_TIMEOUT)
    page.get_by_role("button", name="Complete authentication").click(timeout=PAYMENT_TIMEOUT)
    expect(page.get_by_role("heading", name="Paiement réussi")).to_be_visible(
        timeout=PAYMENT_TIMEOUT
    )
    assert counts(stack_runtime, shop) == (4, 4)
    assert "Nombre de licences original 4" in visible_text(page)
    screenshot(page, "three-d-secure-fr")


def test_a_member_sees_the_counts_with_no_controls(
    shop: Tenant, page: Any, stack_web: Server, axe_source: str
) -> None:
    page.goto(login_url(shop, "member", stack_web))
    expect(page.get_by_role("heading", level=1)).to_have_text("Profil")
    assert page.get_by_role("button", name="Gérer").count() == 0
    page.get_by_role("button", name="Voir").click()
    shown = visible_text(page)
    assert "Nombre de licences original 3" in shown and "Nombre de licences 3" in shown
    assert page.get_by_role("button", name="Enregistrer").count() == 0
    assert page.get_by_role("spinbutton").count() == 0
    assert page.get_by_role("textbox").count() == 0
    assert "Seuls les propriétaires et les acheteurs" in shown
    check_accessibility(page, axe_source, "member-plan")
    screenshot(page, "member-fr")


def test_the_english_switch_is_on_every_page_and_remembered(
    shop: Tenant, page: Any, stack_web: Server, axe_source: str
) -> None:
    page.goto(login_url(shop, "owner", stack_web))
    expect(page.get_by_role("heading", level=1)).to_have_text("Profil")
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Profile")
    assert page.evaluate("document.documentElement.lang") == "en-CA"
    page.get_by_role("button", name="Manage").click()
    expect(page.get_by_label("Original number of licences")).to_have_value("3")
    raise_to_en = page.get_by_label("Number of licences", exact=True)
    raise_to_en.fill("4")
    page.get_by_role("button", name="Save").click()
    dialog = page.get_by_role("dialog", name="Buy more licences?")
    expect(dialog).to_contain_text("$500.00")
    page.get_by_role("button", name="Yes, continue").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Cart")
    shown = visible_text(page)
    assert "Prorated coupon" in shown and "days left of 365" in shown
    assert page.get_by_role("button", name="Pay").count() == 1
    assert page.get_by_role("button", name="Français").count() == 1
    check_accessibility(page, axe_source, "cart-en")
    screenshot(page, "cart-en")
    page.goto(f"{stack_web.url}/profile")  # remembered across pages
    expect(page.get_by_role("heading", level=1)).to_have_text("Profile")


def test_a_past_due_plan_renews_with_a_new_card_saved_on_its_page(
    page: Any,
    stack_web: Server,
    stack_runtime: Runtime,
    worker: Worker,
    worker_env: dict[str, str],
    axe_source: str,
) -> None:
    """No card when the plan is due: past due, the reason on the plan page, a new card in
    Stripe Elements there, and the worker renews the plan with it."""
    from datetime import timedelta

    from shared.domain.periods import today_in
    from shared.store.models import Subscription

    today = today_in("America/Toronto")
    shop = Tenant(
        stack_runtime,
        stack_web.url,
        unit_amount=10000,
        period_start=today - timedelta(days=365),
        renews_at=today,
    )
    seats_json(worker_env, "renewals", "run")

    def status() -> str:
        with stack_runtime.uow() as uow:
            return uow.session.get_one(Subscription, shop.sub).status

    deadline = time.monotonic() + 45
    while status() != "past_due":
        assert time.monotonic() < deadline, status()
        time.sleep(0.2)

    page.goto(login_url(shop, "buyer", stack_web))
    page.goto(f"{stack_web.url}/plans/{shop.sub}")
    shown = visible_text(page)
    assert "En retard de paiement" in shown
    assert "Aucune carte n\u2019est enregistrée pour renouveler ce plan." in shown
    assert "Tentatives de paiement 1" in shown
    check_accessibility(page, axe_source, "plan-past-due")
    screenshot(page, "plan-past-due-fr")
    section = page.get_by_role("region", name="Renouveler avec une nouvelle carte")
    for field, value in (
        ("number", GOOD),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "H2X1Y4"),
    ):
        section.get_by_placeholder(field, exact=True).fill(value)
    section.get_by_role("button", name="Enregistrer la carte et renouveler").click()
    expect(page.get_by_role("status").first).to_contain_text(
        "Votre carte est enregistrée", timeout=PAYMENT_TIMEOUT
    )
    deadline = time.monotonic() + 45
    while status() != "active":
        assert time.monotonic() < deadline, status()
        time.sleep(0.2)
    page.reload()
    shown = visible_text(page)
    assert "Actif" in shown and "En retard" not in shown
    assert "Renouveler avec une nouvelle carte" not in shown
    with stack_runtime.uow() as uow:
        plan = uow.session.get_one(Subscription, shop.sub)
        assert plan.current_period_start == today  # renewed from the old date, once
    screenshot(page, "past-due-renewed-fr")
