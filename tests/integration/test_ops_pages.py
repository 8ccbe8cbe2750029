"""The operator pages under /ops over a real socket, without a browser: sign-in links,
the 404 everyone else gets, CSRF on every action, the audit log, and each page and action
(retry, replay, resolve) against the in-memory Stripe on a database of their own."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from shared.bootstrap import Runtime
from shared.payments.fake_stripe import THREE_D_SECURE, FakeStripe
from shared.payments.gateway import PaymentUnavailable
from shared.services import cart, charging, checkout, operators, signin, webhooks
from shared.services.access import Actor
from shared.store.models import (
    OperatorAction,
    OperatorAlert,
    Organization,
    Purchase,
    Renewal,
    Subscription,
    WebhookEvent,
)
from tests.conftest import Server, Tenant
from tests.integration.test_cli import run_seats
from tests.integration.test_pages import EN, csrf, sign_in, text


@dataclass
class Operator:
    id: int
    email: str
    token: str


def make_operator(runtime: Runtime) -> Operator:
    email = f"ops-{secrets.token_hex(4)}@example.com"
    operator_id, token = operators.create_operator(runtime.uow(), email)
    return Operator(operator_id, email, token)


def ops_session(web: Server, runtime: Runtime, operator: Operator) -> requests.Session:
    browser = requests.Session()
    browser.headers.update(EN)
    link = signin.issue_operator_link(runtime.uow(), operator.email)
    landed = browser.get(link.url(web.url), timeout=10)
    assert landed.status_code == 200 and landed.url == f"{web.url}/ops/", landed.text
    return browser


def audit_rows(runtime: Runtime, target: str) -> list[tuple[str, str, str]]:
    with runtime.uow() as uow:
        rows = uow.session.scalars(
            select(OperatorAction)
            .where(OperatorAction.target == target)
            .order_by(OperatorAction.id)
        )
        return [(row.actor, row.action, row.outcome) for row in rows]


def post_form(
    browser: requests.Session, web: Server, page: str, action: str, **data: str
) -> requests.Response:
    """Open the page, then submit the form it holds for `action` with its CSRF token."""
    html = browser.get(web.url + page, timeout=10).text
    assert f'action="{action}"' in html, (action, text(html))
    return browser.post(web.url + action, data={"csrf_token": csrf(html), **data}, timeout=30)


# -- the pages of the shared stack: who may see them --------------------------------------------


@pytest.fixture
def operator(runtime: Runtime) -> Operator:
    return make_operator(runtime)


def test_the_command_prints_a_link_that_opens_the_dashboard_once(
    web: Server, runtime: Runtime, database_url: str, operator: Operator
) -> None:
    run = run_seats(
        database_url, "operator", "login-link", "--email", operator.email.upper(), "--json"
    )
    assert run.code == 0, run.stdout + run.stderr
    url = json.loads(run.stdout)["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/ops/login/[A-Za-z0-9_-]{43}", url), url
    token = url.rsplit("/", 1)[1]

    browser = requests.Session()
    first = browser.get(f"{web.url}/ops/login/{token}", allow_redirects=False, timeout=10)
    assert first.status_code == 303 and first.headers["Location"] == "/ops/"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    dashboard = browser.get(f"{web.url}/ops/", timeout=10)
    assert dashboard.status_code == 200 and "<h1>Dashboard</h1>" in dashboard.text
    assert operator.email in dashboard.text

    again = requests.get(f"{web.url}/ops/login/{token}", allow_redirects=False, timeout=10)
    assert again.status_code == 404  # used: like any address that is not there
    assert audit_rows(runtime, f"operator:{operator.email.upper()}")[0][1:] == (
        "operator.login_link",
        "done",
    )
    assert audit_rows(runtime, f"operator:{operator.email}") == [
        (f"operator:{operator.email}", "operator.sign_in", "done")
    ]
    unknown = run_seats(database_url, "operator", "login-link", "--email", "no@x.test", "--json")
    assert unknown.code == 1 and json.loads(unknown.stdout)["error"] == "not_found"


OPS_REQUESTS = [
    ("GET", "/ops"),
    ("GET", "/ops/"),
    ("GET", "/ops/figures"),
    ("GET", "/ops/status.json"),
    ("GET", "/ops/purchases?status=failed"),
    ("GET", "/ops/purchases/1"),
    ("GET", "/ops/parked"),
    ("GET", "/ops/events"),
    ("GET", "/ops/events/evt_123"),
    ("GET", "/ops/alerts"),
    ("GET", "/ops/renewals"),
    ("GET", "/ops/subscriptions/1"),
    ("GET", "/ops/audit"),
    ("GET", "/ops/alerts/1/resolve"),  # a POST-only path: never a 405
    ("GET", "/ops/nothing-here"),
    ("GET", "/ops/login/not-a-link"),
    ("POST", "/ops/alerts/1/resolve"),
    ("POST", "/ops/purchases/1/retry"),
    ("POST", "/ops/events/evt_123/replay"),
    ("POST", "/ops/login/not-a-link"),
    ("PUT", "/ops/"),
    ("DELETE", "/ops/audit"),
]


def test_customers_and_strangers_get_the_404_of_an_unknown_address(
    web: Server, runtime: Runtime, tenant: Tenant, operator: Operator
) -> None:
    unknown = requests.get(f"{web.url}/no-such-page", timeout=10)
    assert unknown.status_code == 404
    customer = sign_in(web, tenant, "owner", EN)
    token = csrf(customer.get(f"{web.url}/profile", timeout=10).text)
    callers = {
        "nobody": requests.Session(),
        "a customer's session": customer,
        "a customer's token": tenant.owner.session,
        "a wrong token": requests.Session(),
    }
    callers["a wrong token"].headers["Authorization"] = "Bearer seat_nothing"
    for who, caller in callers.items():
        same = caller.get(f"{web.url}/no-such-page", timeout=10)  # its headers, for this caller
        for method, path in OPS_REQUESTS:
            answer = caller.request(
                method,
                web.url + path,
                data={"csrf_token": token} if method == "POST" else None,
                allow_redirects=False,
                timeout=10,
            )
            assert answer.status_code == 404, (who, method, path, answer.status_code)
            assert answer.headers["Content-Type"] == unknown.headers["Content-Type"]
            assert answer.content == unknown.content, (who, method, path)
            assert set(answer.headers) == set(same.headers), (who, method, path)
    # an operator's token reads but never acts: a POST with it is as unknown as the others
    holder = requests.Session()
    holder.headers["Authorization"] = f"Bearer {operator.token}"
    assert holder.get(f"{web.url}/ops/status.json", timeout=10).status_code == 200
    refused = holder.post(f"{web.url}/ops/alerts/1/resolve", timeout=10)
    assert refused.status_code == 404 and refused.content == unknown.content
    # the customer's session was left as it was
    assert customer.get(f"{web.url}/profile", timeout=10).status_code == 200


def test_an_operator_is_not_a_customer(web: Server, runtime: Runtime, operator: Operator) -> None:
    browser = ops_session(web, runtime, operator)
    for path in ("/profile", "/cart", "/plans/1"):
        answer = browser.get(web.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 303 and answer.headers["Location"] == "/", path
    assert "Sign in" in text(browser.get(f"{web.url}/", timeout=10).text)  # not signed in there
    api = requests.get(
        f"{web.url}/api/cart", headers={"Authorization": f"Bearer {operator.token}"}, timeout=10
    )
    assert api.status_code == 401
    # and the operator's own session is untouched
    assert browser.get(f"{web.url}/ops/", timeout=10).status_code == 200


def test_a_customer_link_opens_nothing_under_ops_and_stays_good(
    web: Server, runtime: Runtime, tenant: Tenant
) -> None:
    from tests.integration.test_pages import email_of

    link = signin.issue_link(runtime.uow(), email_of(tenant, "owner"), tenant.org)
    answer = requests.get(f"{web.url}/ops/login/{link.token}", allow_redirects=False, timeout=10)
    assert answer.status_code == 404
    assert requests.get(link.url(web.url), timeout=10).url == f"{web.url}/profile"


def test_signing_out_ends_the_operator_session(
    web: Server, runtime: Runtime, operator: Operator
) -> None:
    browser = ops_session(web, runtime, operator)
    out = post_form(browser, web, "/ops/", "/ops/logout")
    assert out.status_code == 200 and "Signed out" in text(out.text)
    assert browser.get(f"{web.url}/ops/", timeout=10).status_code == 404


def test_every_action_needs_its_csrf_token(
    web: Server, runtime: Runtime, operator: Operator
) -> None:
    browser = ops_session(web, runtime, operator)
    with runtime.uow() as uow:
        alert = OperatorAlert(kind="refund", message="a refund to look at")
        uow.session.add(alert)
        uow.session.flush()
        alert_id = alert.id
        uow.commit()
    for data in ({}, {"csrf_token": "forged"}):
        answer = browser.post(f"{web.url}/ops/alerts/{alert_id}/resolve", data=data, timeout=10)
        assert answer.status_code == 400 and "This form has expired" in answer.text
        assert 'role="alert"' in answer.text
    with runtime.uow() as uow:
        assert uow.session.get_one(OperatorAlert, alert_id).resolved_at is None
    assert audit_rows(runtime, f"alert:{alert_id}") == []


def test_the_dashboard_shows_the_ops_status_figures_and_refreshes(
    web: Server, runtime: Runtime, operator: Operator
) -> None:
    browser = ops_session(web, runtime, operator)
    page = browser.get(f"{web.url}/ops/", timeout=10)
    seen = text(page.text)
    for figure in ("Parked purchases", "Open alerts", "Failed webhook events", "Plans past due"):
        assert figure in seen
    assert "Workers online" in seen and "Purchases by status" in seen
    assert 'data-refresh-url="/ops/figures"' in page.text and "ops.js" in page.text
    assert '<noscript><meta http-equiv="refresh"' in page.text
    fragment = browser.get(f"{web.url}/ops/figures", timeout=10)
    assert fragment.status_code == 200 and "Parked purchases" in fragment.text
    assert "<html" not in fragment.text
    figures = browser.get(f"{web.url}/ops/status.json", timeout=10).json()
    by_token = requests.get(
        f"{web.url}/ops/status.json",
        headers={"Authorization": f"Bearer {operator.token}"},
        timeout=10,
    ).json()
    assert set(figures) == set(by_token) >= {"queues", "purchases_parked", "alerts_open"}
    with runtime.uow() as uow:
        open_alerts = uow.session.scalar(
            select(func.count())
            .select_from(OperatorAlert)
            .where(OperatorAlert.resolved_at.is_(None))
        )
    assert figures["alerts_open"] == open_alerts


def test_a_bad_filter_is_explained_not_ignored(
    web: Server, runtime: Runtime, operator: Operator
) -> None:
    browser = ops_session(web, runtime, operator)
    for path, word in (
        ("/ops/purchases?status=lost", "Status"),
        ("/ops/purchases?org=abc", "Organization"),
        ("/ops/purchases?older_than=-5", "Older than"),
        ("/ops/events?outcome=done", "Outcome"),
        ("/ops/events?type=<b>", "Type"),
        ("/ops/events?id=nope", "Event id"),
        ("/ops/renewals?status=active", "Status"),
        ("/ops/audit?before=x", "Before"),
    ):
        answer = browser.get(web.url + path, timeout=10)
        assert answer.status_code == 422, path
        assert 'role="alert"' in answer.text and word in text(answer.text), path
        assert "<b>" not in answer.text


# -- the actions, against the in-memory Stripe ---------------------------------------------------


@dataclass
class Stack:
    web: Server
    runtime: Runtime
    fake: FakeStripe
    operator: Operator
    browser: requests.Session

    @property
    def name(self) -> str:
        return f"operator:{self.operator.email}"

    def purchase(self, purchase_id: int) -> Purchase:
        with self.runtime.uow() as uow:
            found = uow.session.get_one(Purchase, purchase_id)
            uow.session.expunge(found)
            return found

    def counts(self, plan: int) -> tuple[int, int]:
        with self.runtime.uow() as uow:
            found = uow.session.get_one(Subscription, plan)
            return found.paid_seats, found.active_seats

    def event(self, event_id: str) -> WebhookEvent:
        with self.runtime.uow() as uow:
            found = uow.session.get_one(WebhookEvent, event_id)
            uow.session.expunge(found)
            return found


@pytest.fixture
def stack(fake_web: Server, fake_runtime: Runtime, fake_stripe: FakeStripe) -> Stack:
    operator = make_operator(fake_runtime)
    return Stack(
        fake_web, fake_runtime, fake_stripe, operator, ops_session(fake_web, fake_runtime, operator)
    )


def bought(stack: Stack, tenant: Tenant, target: int = 5) -> int:
    """A purchase checked out by the tenant's buyer with a new card (not charged yet)."""
    buyer = Actor(tenant.user_ids["buyer"], tenant.org, "buyer")
    cart.add_item(stack.runtime.uow(), buyer, tenant.sub, target, True)
    purchase, _, _ = checkout.checkout(
        stack.runtime.uow(), buyer, secrets.token_hex(8), stack.fake.card()
    )
    return purchase


@pytest.fixture
def shop(stack: Stack) -> Tenant:
    return Tenant(stack.runtime, stack.web.url)


def test_a_parked_purchase_is_retried_once_and_a_failed_retry_says_why(
    stack: Stack, shop: Tenant
) -> None:
    purchase = bought(stack, shop)
    charging.park(stack.runtime.uow(), stack.runtime.engine, purchase, "Stripe unavailable x5")
    parked = stack.browser.get(f"{stack.web.url}/ops/parked", timeout=10).text
    assert f'href="/ops/purchases/{purchase}"' in parked and "Stripe unavailable x5" in parked
    retry = f"/ops/purchases/{purchase}/retry"

    stack.fake.fail("create_customer")  # Stripe is still away
    answer = post_form(stack.browser, stack.web, "/ops/parked", retry, next="/ops/parked")
    assert answer.url == f"{stack.web.url}/ops/parked"
    seen = text(answer.text)
    assert f"Purchase {purchase} was not retried" in seen and "stays parked" in seen
    assert re.search(r'<div class="problem" role="alert">Purchase \d+ was not retried', answer.text)
    assert stack.purchase(purchase).attention is not None
    assert stack.counts(shop.sub) == (3, 3)

    answer = post_form(stack.browser, stack.web, f"/ops/purchases/{purchase}", retry)
    assert answer.url == f"{stack.web.url}/ops/purchases/{purchase}"
    assert f"Purchase {purchase} was retried: it is now succeeded." in text(answer.text)
    done = stack.purchase(purchase)
    assert (done.status, done.attention) == ("succeeded", None)
    assert stack.counts(shop.sub) == (5, 5)

    # a second click (a stale page, another operator): nothing more is charged or changed
    html = answer.text
    again = stack.browser.post(stack.web.url + retry, data={"csrf_token": csrf(html)}, timeout=30)
    assert "is not parked (it is succeeded); nothing to retry" in text(again.text)
    assert stack.purchase(purchase).status == "succeeded"
    assert stack.counts(shop.sub) == (5, 5)
    paid = stack.fake.succeeded(stack.fake.intents[str(done.stripe_payment_intent_id)].customer)
    assert [payment.amount for payment in paid] == [done.amount_due]
    assert audit_rows(stack.runtime, f"purchase:{purchase}") == [
        (stack.name, "purchase.retry", "refused: still_unavailable"),
        (stack.name, "purchase.retry", "done"),
        (stack.name, "purchase.retry", "refused: not_parked"),
    ]


@pytest.fixture
def quiet_stack(quiet_web: Server, fake_runtime: Runtime, fake_stripe: FakeStripe) -> Stack:
    """`stack` whose wake-up calls are kept in `quiet_web.sent`, emptied here."""
    operator = make_operator(fake_runtime)
    quiet_web.sent.clear()  # type: ignore[attr-defined]
    return Stack(
        quiet_web,
        fake_runtime,
        fake_stripe,
        operator,
        ops_session(quiet_web, fake_runtime, operator),
    )


def queued_behind(stack: Stack, shop: Tenant) -> int:
    """Another buyer's purchase of the shop's plan, checked out while the plan is held."""
    owner = Actor(shop.user_ids["owner"], shop.org, "owner")
    cart.add_item(stack.runtime.uow(), owner, shop.sub, 6, True)
    behind = checkout.checkout(stack.runtime.uow(), owner, secrets.token_hex(8), stack.fake.card())
    assert behind.queued
    return behind.purchase_id


def charges_sent(stack: Stack) -> list[tuple[str, list[object]]]:
    return [(name, options["args"]) for name, options in stack.web.sent]  # type: ignore[attr-defined]


def test_a_retry_on_the_page_sends_the_purchase_waiting_for_its_plan(
    quiet_stack: Stack,
) -> None:
    """The retried purchase, paid, lets go of its plan: the buyer queued behind it gets its
    charge message from the page at once (not from the sweep seconds later)."""
    stack = quiet_stack
    shop = Tenant(stack.runtime, stack.web.url)
    first = bought(stack, shop, 4)
    stack.fake.fail("confirm_payment")
    with pytest.raises(PaymentUnavailable):
        charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, first)
    charging.park(stack.runtime.uow(), stack.runtime.engine, first, "Stripe away")
    behind = queued_behind(stack, shop)

    retry = f"/ops/purchases/{first}/retry"
    answer = post_form(stack.browser, stack.web, f"/ops/purchases/{first}", retry)
    assert f"Purchase {first} was retried: it is now succeeded." in text(answer.text)
    assert charges_sent(stack) == [("seats.charge_purchase", [behind])]
    charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, behind)
    assert stack.counts(shop.sub) == (6, 6)


def test_a_replay_on_the_page_sends_the_purchase_waiting_for_its_plan(
    quiet_stack: Stack,
) -> None:
    """The bank said yes after 3-D Secure; the operator replays the stored success, which
    settles the purchase and frees its plan: the buyer queued behind it is sent at once."""
    stack = quiet_stack
    shop = Tenant(stack.runtime, stack.web.url)
    buyer = Actor(shop.user_ids["buyer"], shop.org, "buyer")
    cart.add_item(stack.runtime.uow(), buyer, shop.sub, 4, True)
    first, _, _ = checkout.checkout(
        stack.runtime.uow(), buyer, secrets.token_hex(8), stack.fake.card(THREE_D_SECURE)
    )
    charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, first)
    behind = queued_behind(stack, shop)
    stack.fake.authenticate(str(stack.purchase(first).stripe_payment_intent_id))
    paid = [e for e in stack.fake.events if e["type"] == "payment_intent.succeeded"][-1]
    assert webhooks.store_event(stack.runtime.uow(), paid) == "new"

    page = f"/ops/events/{paid['id']}"
    answer = post_form(stack.browser, stack.web, page, f"{page}/replay")
    assert f"{paid['id']} was handled again: processed." in text(answer.text)
    assert stack.purchase(first).status == "succeeded"
    assert charges_sent(stack) == [("seats.charge_purchase", [behind])]
    charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, behind)
    assert stack.counts(shop.sub) == (6, 6)


def test_a_purchase_page_shows_its_whole_history(stack: Stack, shop: Tenant) -> None:
    purchase = bought(stack, shop)
    charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, purchase)
    done = stack.purchase(purchase)
    intent = str(done.stripe_payment_intent_id)
    [event] = [
        e
        for e in stack.fake.events
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == intent
    ]
    webhooks.store_event(stack.runtime.uow(), event)
    webhooks.process_event(stack.runtime.uow(), stack.fake, event["id"])
    with stack.runtime.uow() as uow:
        uow.session.add(
            OperatorAlert(
                kind="dispute",
                message="ch_1 disputed",
                purchase_id=purchase,
                organization_id=shop.org,
            )
        )
        uow.commit()
    page = stack.browser.get(f"{stack.web.url}/ops/purchases/{purchase}", timeout=10)
    seen = text(page.text)
    assert f"Purchase {purchase} succeeded" in seen
    assert intent in seen and "Attempts to charge 1" in seen
    assert "Amount confirmed" in seen and done.payment_method_id in seen
    assert f"purchase {purchase} paid 3 → 5 3 → 5" in seen  # the seat change it made
    assert event["id"] in seen and "payment_intent.succeeded" in seen
    assert "ch_1 disputed" in seen
    assert f'href="/ops/subscriptions/{shop.sub}"' in page.text

    failed = stack.browser.get(
        f"{stack.web.url}/ops/purchases?status=succeeded&org={shop.org}", timeout=10
    )
    assert f'href="/ops/purchases/{purchase}"' in failed.text
    for filters in ("status=failed", f"org={shop.org + 1000}", "older_than=3600"):
        other = stack.browser.get(
            f"{stack.web.url}/ops/purchases?{filters}&org={shop.org}"
            if "org" not in filters
            else f"{stack.web.url}/ops/purchases?{filters}",
            timeout=10,
        )
        assert other.status_code == 200
        assert f'href="/ops/purchases/{purchase}"' not in other.text, filters
    ancient = stack.browser.get(  # older than anything: an empty list, not an overflow
        f"{stack.web.url}/ops/purchases?older_than={2**63 - 1}", timeout=10
    )
    assert ancient.status_code == 200 and "No purchase matches." in ancient.text
    missing = stack.browser.get(f"{stack.web.url}/ops/purchases/{10**12}", timeout=10)
    assert missing.status_code == 404 and "Not found" in missing.text


def test_a_replay_is_idempotent_and_a_failed_one_keeps_the_stored_outcome(
    stack: Stack, shop: Tenant
) -> None:
    purchase = bought(stack, shop)
    charging.charge(stack.runtime.uow(), stack.runtime.engine, stack.fake, purchase)
    with stack.runtime.uow() as uow:
        customer = uow.session.get_one(Organization, shop.org).stripe_customer_id
    # a customer.updated event makes its handler ask Stripe for the default card every time
    # (a settled payment_intent.succeeded would be answered from our own rows)
    event = {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": "customer.updated",
        "created": 1_700_000_000,
        "data": {"object": {"id": customer, "object": "customer"}},
    }
    webhooks.store_event(stack.runtime.uow(), event)
    webhooks.process_event(stack.runtime.uow(), stack.fake, event["id"])
    page = f"/ops/events/{event['id']}"
    replay = f"{page}/replay"

    for attempts in (2, 3):
        answer = post_form(stack.browser, stack.web, page, replay)
        assert answer.url == stack.web.url + page
        assert f"{event['id']} was handled again: processed." in text(answer.text)
        row = stack.event(event["id"])
        assert (row.outcome, row.attempts) == ("processed", attempts)
    assert stack.counts(shop.sub) == (5, 5)

    stack.fake.fail("default_card")
    answer = post_form(stack.browser, stack.web, page, replay)
    seen = text(answer.text)
    assert f"The replay of {event['id']} failed" in seen
    assert "Its stored outcome is unchanged (processed)." in seen
    assert 'role="alert"' in answer.text
    assert stack.event(event["id"]).outcome == "processed"
    assert stack.counts(shop.sub) == (5, 5)
    log = audit_rows(stack.runtime, f"event:{event['id']}")
    assert log[:2] == [(stack.name, "webhook.replay", "done")] * 2
    assert log[2][1] == "webhook.replay" and log[2][2].startswith("failed: ")
    assert len(log) == 3

    shown = stack.browser.get(stack.web.url + page, timeout=10).text
    assert "&#34;customer.updated&#34;" in shown or '"customer.updated"' in shown
    assert "Replay this event" in shown
    listed = stack.browser.get(f"{stack.web.url}/ops/events?type=customer.updated")
    assert f'href="{page}"' in listed.text
    found = stack.browser.get(
        f"{stack.web.url}/ops/events?id={event['id']}", allow_redirects=False, timeout=10
    )
    assert found.status_code == 303 and found.headers["Location"] == page


def test_an_event_payload_is_shown_as_text_never_as_markup(stack: Stack) -> None:
    event = {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": "customer.updated",
        "created": 1_700_000_000,
        "data": {"object": {"id": "cus_1", "note": "<script>alert(1)</script>"}},
    }
    webhooks.store_event(stack.runtime.uow(), event)
    page = stack.browser.get(f"{stack.web.url}/ops/events/{event['id']}", timeout=10).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "not handled yet" in page


def test_events_not_handled_yet_are_listed_oldest_first(stack: Stack) -> None:
    ids = []
    for _ in range(2):
        event = {
            "id": f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "type": "customer.updated",
            "created": 1_700_000_000,
            "data": {"object": {"id": f"cus_{secrets.token_hex(6)}"}},
        }
        assert webhooks.store_event(stack.runtime.uow(), event) == "new"
        ids.append(event["id"])
    page = stack.browser.get(f"{stack.web.url}/ops/events?outcome=pending", timeout=10).text
    assert "Events not handled yet, oldest first" in page
    assert page.index(ids[0]) < page.index(ids[1])
    everything = stack.browser.get(f"{stack.web.url}/ops/events", timeout=10).text
    assert "Stored events, newest first" in everything
    assert everything.index(ids[1]) < everything.index(ids[0])


def test_an_alert_is_resolved_once(stack: Stack) -> None:
    with stack.runtime.uow() as uow:
        alert = OperatorAlert(kind="late_payment", message="refunded pi_9 automatically")
        uow.session.add(alert)
        uow.session.flush()
        alert_id = alert.id
        uow.commit()
    listed = stack.browser.get(f"{stack.web.url}/ops/alerts", timeout=10).text
    assert "refunded pi_9 automatically" in listed
    resolve = f"/ops/alerts/{alert_id}/resolve"
    answer = post_form(stack.browser, stack.web, "/ops/alerts", resolve, next="/ops/alerts")
    assert answer.url == f"{stack.web.url}/ops/alerts"
    assert f"Alert {alert_id} is resolved." in text(answer.text)
    assert "refunded pi_9 automatically" not in answer.text  # open ones only
    with stack.runtime.uow() as uow:
        first = uow.session.get_one(OperatorAlert, alert_id).resolved_at
    assert first is not None
    again = stack.browser.post(
        stack.web.url + resolve, data={"csrf_token": csrf(answer.text)}, timeout=10
    )
    assert f"Alert {alert_id} was not changed" in text(again.text) and "already resolved" in (
        again.text
    )
    with stack.runtime.uow() as uow:
        assert uow.session.get_one(OperatorAlert, alert_id).resolved_at == first
    everything = stack.browser.get(f"{stack.web.url}/ops/alerts?all=1", timeout=10).text
    assert "refunded pi_9 automatically" in everything
    assert audit_rows(stack.runtime, f"alert:{alert_id}") == [
        (stack.name, "alert.resolve", "done"),
        (stack.name, "alert.resolve", "refused: already_resolved"),
    ]
    missing = stack.browser.post(
        f"{stack.web.url}/ops/alerts/{10**12}/resolve",
        data={"csrf_token": csrf(answer.text)},
        timeout=10,
    )
    assert missing.status_code == 404
    assert audit_rows(stack.runtime, f"alert:{10**12}") == [
        (stack.name, "alert.resolve", "refused: not_found")
    ]


def test_renewals_past_due_and_suspended_and_a_plans_seat_audit(stack: Stack, shop: Tenant) -> None:
    other = Tenant(stack.runtime, stack.web.url)
    for tenant, status in ((shop, "past_due"), (other, "suspended")):
        with stack.runtime.uow() as uow:
            plan = uow.session.get_one(Subscription, tenant.sub)
            plan.status = status
            uow.session.add(
                Renewal(
                    subscription_id=plan.id,
                    organization_id=plan.organization_id,
                    period_start=plan.renews_at,
                    status="failed",
                    currency="cad",
                    attempts=2,
                    next_attempt_at=(
                        datetime.now(UTC) + timedelta(days=2) if status == "past_due" else None
                    ),
                    failure_code="card_declined",
                    failure_message=f"declined for {status}",
                )
            )
            uow.commit()
    page = stack.browser.get(f"{stack.web.url}/ops/renewals", timeout=10)
    seen = text(page.text)
    assert "declined for past_due" in seen and "declined for suspended" in seen
    assert "none: the schedule is used up" in seen
    only = text(stack.browser.get(f"{stack.web.url}/ops/renewals?status=suspended").text)
    assert "declined for suspended" in only and "declined for past_due" not in only

    owner = Actor(shop.user_ids["owner"], shop.org, "owner")
    from shared.services import seats

    seats.change_seats(stack.runtime.uow(), owner, shop.sub, 2)
    audit = stack.browser.get(f"{stack.web.url}/ops/subscriptions/{shop.sub}", timeout=10)
    seen = text(audit.text)
    assert "Seat audit" in seen and "3 → 3 3 → 2" in seen
    with stack.runtime.uow() as uow:
        from shared.store.models import User

        email = uow.session.get_one(User, shop.user_ids["owner"]).email
    assert email in seen and "declined for past_due" in seen  # and its renewals
    listed = stack.browser.get(f"{stack.web.url}/ops/subscriptions?org={shop.org}").text
    assert f'href="/ops/subscriptions/{shop.sub}"' in listed
    assert f'href="/ops/subscriptions/{other.sub}"' not in listed


def test_the_audit_log_page_lists_the_newest_first_a_page_at_a_time(stack: Stack) -> None:
    for number in range(operators.AUDIT_PAGE + 5):
        operators.record(stack.runtime.uow(), "cli:someone", "test.action", f"t:{number}", "done")
    first = stack.browser.get(f"{stack.web.url}/ops/audit", timeout=10).text
    targets = re.findall(r"<td>t:(\d+)</td>", first)
    assert targets[:3] == [str(operators.AUDIT_PAGE + 4 - i) for i in range(3)]
    older = re.search(r'href="(/ops/audit\?before=\d+)"', first)
    assert older, "no link to older entries"
    second = stack.browser.get(stack.web.url + older.group(1), timeout=10).text
    assert "<td>t:4</td>" in second or "<td>t:0</td>" in second
    assert re.findall(r"<td>t:(\d+)</td>", second)[0] not in targets


def test_pages_have_headings_labels_and_table_headers(stack: Stack, shop: Tenant) -> None:
    purchase = bought(stack, shop)
    for path in (
        "/ops/",
        "/ops/purchases",
        f"/ops/purchases/{purchase}",
        "/ops/parked",
        "/ops/events",
        "/ops/alerts",
        "/ops/renewals",
        "/ops/subscriptions",
        f"/ops/subscriptions/{shop.sub}",
        "/ops/audit",
    ):
        html = stack.browser.get(stack.web.url + path, timeout=10).text
        assert '<html lang="en">' in html and html.count("<h1") == 1, path
        assert 'href="#main"' in html and 'id="main"' in html, path
        for table in re.findall(r"<table.*?</table>", html, re.S):
            assert "<caption>" in table and 'scope="col"' in table, path
        for field in re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', html):
            assert f'for="{field}"' in html, (path, field)
        for field in re.findall(r"<(?:input|select)(?![^>]*type=\"hidden\")[^>]*>", html):
            assert 'id="' in field, (path, field)
