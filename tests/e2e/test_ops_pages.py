"""The operator pages in a real browser: signed in with the command's link, every page
checked with axe-core, used by keyboard alone, and the dashboard refreshing itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from shared.bootstrap import Runtime
from shared.services import operators
from shared.store.models import OperatorAction, OperatorAlert, Purchase
from tests.conftest import Server, Tenant, Worker, seats_json
from tests.e2e.browser import axe_source, browser, check_accessibility, screenshot
from tests.e2e.stripe_helpers import new_card, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["axe_source", "browser"]  # fixtures


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-CA", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def focused(page: Any) -> str:
    text: str = page.evaluate("document.activeElement && document.activeElement.textContent")
    return re.sub(r"\s+", " ", text or "").strip()


def tab_to(page: Any, name: str, limit: int = 80) -> None:
    """Press Tab until the focus is on the control whose text starts with `name`."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused(page).startswith(name):
            return
    raise AssertionError(f"Tab never reached {name!r} (at {focused(page)!r})")


def test_an_operator_uses_the_pages_by_keyboard(
    page: Any,
    stack_web: Server,
    stack_runtime: Runtime,
    worker: Worker,
    worker_env: dict[str, str],
    stripe_base: str,
    axe_source: str,
) -> None:
    # something to look at: a purchase paid through the worker, and an open alert
    shop = Tenant(stack_runtime, stack_web.url)
    shop.buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 4, "confirm": True}
    )
    paid = shop.buyer.post(
        "/api/checkout",
        json={"payment_method": new_card(stripe_base)},
        headers={"Idempotency-Key": f"ops-{shop.org}"},
    ).json()["purchase_id"]
    assert wait_for(shop.buyer, paid)["status"] == "succeeded"
    with stack_runtime.uow() as uow:
        alert = OperatorAlert(
            kind="dispute", message=f"a dispute on purchase {paid}", purchase_id=paid
        )
        uow.session.add(alert)
        uow.session.flush()
        alert_id = alert.id
        intent = uow.session.get_one(Purchase, paid).stripe_payment_intent_id
        uow.commit()

    email = f"ops-{shop.org}@example.com"
    operators.create_operator(stack_runtime.uow(), email)
    env = {**worker_env, "SEATS_BASE_URL": stack_web.url}
    link = seats_json(env, "operator", "login-link", "--email", email)
    page.goto(link["url"])
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    check_accessibility(page, axe_source, "ops-dashboard")

    # the figures refresh in place; the button pauses them
    stamp = page.locator("[data-refresh-stamp]")
    first = stamp.text_content()
    expect(stamp).not_to_have_text(first or "", timeout=25_000)
    toggle = page.get_by_role("button", name="Pause refreshing")
    toggle.click()
    expect(page.get_by_role("button", name="Resume refreshing")).to_have_attribute(
        "aria-pressed", "true"
    )

    # by keyboard: the skip link, then the menu, then a purchase and its history
    page.reload()
    page.keyboard.press("Tab")
    assert focused(page) == "Skip to content"
    tab_to(page, "Purchases")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Purchases")
    page.get_by_label("Organization id").fill(str(shop.org))
    page.get_by_label("Organization id").press("Enter")
    expect(page.get_by_role("link", name=f"Purchase {paid}", exact=True)).to_be_visible()
    check_accessibility(page, axe_source, "ops-purchases")
    tab_to(page, f"Purchase {paid}")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Purchase {paid}")
    shown = page.inner_text("main")
    assert str(intent) in shown and f"purchase {paid} paid" in shown
    check_accessibility(page, axe_source, "ops-purchase")

    # resolve the alert from the purchase's own page, by keyboard
    tab_to(page, "Resolve")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text(f"Alert {alert_id} is resolved.")
    with stack_runtime.uow() as uow:
        assert uow.session.get_one(OperatorAlert, alert_id).resolved_at is not None
        actions = uow.session.query(OperatorAction).filter_by(target=f"alert:{alert_id}").all()
        assert [(a.actor, a.outcome) for a in actions] == [(f"operator:{email}", "done")]
    screenshot(page, "ops-purchase")

    for path, heading, name in (
        ("/ops/events", "Webhook events", "ops-events"),
        ("/ops/alerts?all=1", "Alerts", "ops-alerts"),
        ("/ops/parked", "Parked purchases", "ops-parked"),
        ("/ops/renewals", "Renewals past due and suspended", "ops-renewals"),
        ("/ops/subscriptions", "Plans", "ops-plans"),
        (f"/ops/subscriptions/{shop.sub}", f"Plan {shop.sub}", "ops-seat-audit"),
        ("/ops/audit", "Audit log", "ops-audit"),
    ):
        page.goto(stack_web.url + path)
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        check_accessibility(page, axe_source, name)
    audit = page.inner_text("main")
    assert f"operator:{email}" in audit and "alert.resolve" in audit
    screenshot(page, "ops-audit")

    events = page.goto(f"{stack_web.url}/ops/events")
    assert events is not None
    event_link = page.locator("table a[href^='/ops/events/evt_']").first
    if event_link.count():
        event_link.click()
        expect(page.get_by_role("heading", name="Payload")).to_be_visible()
        check_accessibility(page, axe_source, "ops-event")
