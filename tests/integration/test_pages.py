"""The customer pages over a real socket, without a browser: sign-in links, cookies, CSRF,
roles, languages and amounts as a person reads them (the browser tier drives the rest)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from shared.bootstrap import Runtime
from shared.services import signin
from shared.store.models import LoginLink, Subscription
from tests.conftest import Server, Tenant
from tests.integration.test_cli import run_seats

FR = {"Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"}
EN = {"Accept-Language": "en-CA,en;q=0.9"}


def text(html: str) -> str:
    """What a person reads: tags gone, every kind of space one space."""
    plain = re.sub(r"<[^>]+>", " ", html)
    return re.sub(r"\s+", " ", plain.replace("\u00a0", " ").replace("\u202f", " "))


def fr_money(cents: int) -> str:
    """CAD as fr-CA writes it: 1 234,56 $."""
    return f"{cents // 100:,}".replace(",", " ") + f",{cents % 100:02d} $"


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def email_of(tenant: Tenant, role: str) -> str:
    with tenant.runtime.uow() as uow:
        from shared.store.models import User

        return uow.session.get_one(User, tenant.user_ids[role]).email


def sign_in(web: Server, tenant: Tenant, role: str, headers: dict[str, str]) -> requests.Session:
    browser = requests.Session()
    browser.headers.update(headers)
    link = signin.issue_link(tenant.runtime.uow(), email_of(tenant, role), tenant.org)
    landed = browser.get(link.url(web.url), timeout=10)
    assert landed.status_code == 200 and landed.url == f"{web.url}/profile", landed.text
    return browser


def plan_counts(runtime: Runtime, plan: int) -> tuple[int, int]:
    with runtime.uow() as uow:
        found = uow.session.get_one(Subscription, plan)
        return found.paid_seats, found.active_seats


def test_the_front_page_is_a_page_not_a_json_404(web: Server) -> None:
    answer = requests.get(web.url + "/", headers=FR, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "Connexion" in answer.text and "seats user login-link --email" in answer.text


def test_the_command_prints_a_link_that_signs_in_once(
    tenant: Tenant, web: Server, database_url: str, runtime: Runtime
) -> None:
    email = email_of(tenant, "buyer").upper()  # emails match whatever their case
    run = run_seats(
        database_url, "user", "login-link", "--email", email, "--org", str(tenant.org), "--json"
    )
    assert run.code == 0, run.stdout + run.stderr
    url = __import__("json").loads(run.stdout)["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/login/[A-Za-z0-9_-]{43}", url), url
    token = url.rsplit("/", 1)[1]
    with runtime.uow() as uow:  # only the hash is kept
        stored = list(uow.session.scalars(select(LoginLink.token_hash)))
    assert token not in stored and signin.hash_token(token) in stored

    browser = requests.Session()
    first = browser.get(f"{web.url}/login/{token}", allow_redirects=False, timeout=10)
    assert first.status_code == 303 and first.headers["Location"].endswith("/profile")
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "seats_session=" in cookie
    assert browser.get(f"{web.url}/profile", timeout=10).status_code == 200

    again = requests.get(f"{web.url}/login/{token}", headers=EN, timeout=10)
    assert again.status_code == 400
    assert "already used" in again.text and 'role="alert"' in again.text


def test_a_link_older_than_15_minutes_is_refused(tenant: Tenant, web: Server) -> None:
    old = datetime.now(UTC) - timedelta(minutes=15, seconds=1)
    link = signin.issue_link(tenant.runtime.uow(), email_of(tenant, "owner"), now=old)
    answer = requests.get(link.url(web.url), headers=FR, timeout=10)
    assert answer.status_code == 400 and "pas valide" in answer.text
    fresh = datetime.now(UTC) - timedelta(minutes=14)
    link = signin.issue_link(tenant.runtime.uow(), email_of(tenant, "owner"), now=fresh)
    assert requests.get(link.url(web.url), timeout=10).url.endswith("/profile")


def test_an_email_in_two_organizations_needs_the_organization(
    runtime: Runtime, web: Server
) -> None:
    from shared.domain.errors import Conflict
    from shared.services import provisioning

    email = f"twice-{datetime.now().timestamp()}@example.com"
    for _ in range(2):
        org = provisioning.create_organization(runtime.uow(), "Twice", "cad", "America/Toronto")
        provisioning.create_user(runtime.uow(), org, email, "owner")
    with pytest.raises(Conflict) as refused:
        signin.issue_link(runtime.uow(), email)
    assert refused.value.code == "organization_required"
    assert signin.issue_link(runtime.uow(), email, org).url("http://x").startswith("http://x/")


def test_pages_need_a_session(web: Server) -> None:
    answer = requests.get(f"{web.url}/profile", allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/")


def test_profile_in_french_with_a_tab_per_product(tenant: Tenant, web: Server) -> None:
    browser = sign_in(web, tenant, "buyer", FR)
    page = browser.get(f"{web.url}/profile", timeout=10)
    assert '<html lang="fr-CA">' in page.text
    seen = text(page.text)
    assert "Profil" in seen and "Plateforme Logicim XLGL" in seen and "Gérer" in seen
    assert 'role="tab"' in page.text and "English" in seen
    headers = page.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_english_is_the_default_for_other_browsers_and_the_choice_is_remembered(
    tenant: Tenant, web: Server
) -> None:
    browser = sign_in(web, tenant, "owner", {"Accept-Language": "de-DE"})
    assert "Manage" in text(browser.get(f"{web.url}/profile", timeout=10).text)
    page = browser.get(f"{web.url}/profile", timeout=10).text
    switched = browser.post(
        f"{web.url}/language",
        data={"csrf_token": csrf(page), "lang": "fr", "next": "/profile"},
        allow_redirects=False,
        timeout=10,
    )
    assert switched.status_code == 303 and switched.headers["Location"] == "/profile"
    assert "seats_lang=fr" in switched.headers["Set-Cookie"]
    assert "HttpOnly" in switched.headers["Set-Cookie"]
    assert "Gérer" in text(browser.get(f"{web.url}/profile", timeout=10).text)


def test_the_language_switch_never_leaves_the_site(tenant: Tenant, web: Server) -> None:
    browser = sign_in(web, tenant, "owner", EN)
    page = browser.get(f"{web.url}/profile", timeout=10).text
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        answer = browser.post(
            f"{web.url}/language",
            data={"csrf_token": csrf(page), "lang": "fr", "next": target},
            allow_redirects=False,
            timeout=10,
        )
        assert answer.headers["Location"] == "/", target


def test_every_form_needs_its_csrf_token(tenant: Tenant, web: Server, runtime: Runtime) -> None:
    browser = sign_in(web, tenant, "owner", EN)
    plan = f"{web.url}/plans/{tenant.sub}"
    page = browser.get(plan, timeout=10).text
    for token in (None, "forged"):
        data = {"active_seats": "2"} | ({"csrf_token": token} if token else {})
        answer = browser.post(f"{plan}/seats", data=data, timeout=10)
        assert answer.status_code == 400 and "This form has expired" in answer.text
    assert plan_counts(runtime, tenant.sub) == (3, 3)
    saved = browser.post(f"{plan}/seats", data={"active_seats": "2", "csrf_token": csrf(page)})
    assert saved.status_code == 200 and "Saved: 2 licences are active." in text(saved.text)
    assert plan_counts(runtime, tenant.sub) == (3, 2)


def test_a_member_sees_counts_without_controls_and_is_refused_anyway(
    tenant: Tenant, web: Server, runtime: Runtime
) -> None:
    browser = sign_in(web, tenant, "member", FR)
    page = browser.get(f"{web.url}/plans/{tenant.sub}", timeout=10).text
    seen = text(page)
    assert "Nombre de licences original 3" in seen and "Nombre de licences 3" in seen
    assert "Enregistrer" not in seen and 'name="active_seats"' not in page
    token = csrf(page)
    for path, data in (
        (f"/plans/{tenant.sub}/seats", {"active_seats": "2"}),
        (
            "/cart/items",
            {"subscription_id": str(tenant.sub), "active_seats": "5", "confirm": "yes"},
        ),
        ("/checkout", {"checkout_key": "k-1", "card": "saved"}),
    ):
        answer = browser.post(web.url + path, data=data | {"csrf_token": token}, timeout=10)
        assert answer.status_code == 403, (path, answer.text)
        assert "Seuls les propriétaires et les acheteurs" in text(answer.text)
    setup = browser.post(f"{web.url}/cards/setup", headers={"X-CSRFToken": token}, timeout=10)
    assert setup.status_code == 403
    assert plan_counts(runtime, tenant.sub) == (3, 3)


def test_raising_above_the_paid_count_asks_first_then_fills_the_cart(
    tenant: Tenant, web: Server, runtime: Runtime
) -> None:
    browser = sign_in(web, tenant, "buyer", FR)
    plan = f"{web.url}/plans/{tenant.sub}"
    page = browser.get(plan, timeout=10).text
    asked = browser.post(f"{plan}/seats", data={"active_seats": "5", "csrf_token": csrf(page)})
    assert asked.status_code == 200 and "<dialog" in asked.text
    seen = text(asked.text)
    quote = tenant.buyer.post(
        f"/api/subscriptions/{tenant.sub}/quote", json={"active_seats": 5}
    ).json()
    assert "Licences à acheter 2" in seen and "Oui, continuer" in seen and "Annuler" in seen
    assert fr_money(quote["amount_due"]) in seen
    assert f"{quote['remaining_days']} jours restants sur {quote['period_days']}" in seen
    assert plan_counts(runtime, tenant.sub) == (3, 3)

    added = browser.post(
        f"{web.url}/cart/items",
        data={
            "subscription_id": str(tenant.sub),
            "active_seats": "5",
            "confirm": "yes",
            "csrf_token": csrf(asked.text),
        },
        timeout=10,
    )
    assert added.url == f"{web.url}/cart"
    seen = text(added.text)
    assert "Panier" in seen and "Coupon au prorata" in seen and "Montant dû" in seen
    assert "\u2212" + fr_money(quote["proration_coupon"]) in seen
    assert "minor units" not in added.text
    assert "Payer" in seen and "Nouvelle carte" in seen
    assert "Une nouvelle carte devient votre carte enregistrée pour les renouvellements" in seen


def test_a_bad_count_is_explained_next_to_the_field(tenant: Tenant, web: Server) -> None:
    browser = sign_in(web, tenant, "owner", EN)
    plan = f"{web.url}/plans/{tenant.sub}"
    page = browser.get(plan, timeout=10).text
    for bad in ("0", "abc", "100001", "2.5", ""):
        answer = browser.post(f"{plan}/seats", data={"active_seats": bad, "csrf_token": csrf(page)})
        assert answer.status_code == 422, bad
        assert 'aria-invalid="true"' in answer.text and 'role="alert"' in answer.text


def test_cookies_are_secure_over_https(runtime: Runtime, tenant: Tenant) -> None:
    from web import create_app

    app = create_app(runtime=runtime)
    client = app.test_client()
    link = signin.issue_link(runtime.uow(), email_of(tenant, "owner"), tenant.org)
    answer = client.get(f"/login/{link.token}", base_url="https://billing.example")
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_amounts_and_dates_follow_the_language() -> None:
    from datetime import date

    from web import i18n

    app = __import__("flask").Flask(__name__)
    i18n.install(app)
    for header, amount, day in (
        ("fr-CA", "1 234,56 $", "15 janvier 2027"),
        ("en-CA", "$1,234.56", "January 15, 2027"),
    ):
        with app.test_request_context(headers={"Accept-Language": header}):
            assert text(i18n.money(123456, "cad")) == amount
            assert i18n.day(date(2027, 1, 15)) == day
    with app.test_request_context(headers={"Accept-Language": "fr"}):
        assert text(i18n.money(500, "jpy")) == "500 ¥"


def test_every_message_has_a_french_translation_and_the_catalog_is_compiled() -> None:
    from pathlib import Path

    from babel.messages.extract import extract_from_dir
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    web_dir = Path(__file__).resolve().parents[2] / "web"
    found: set[Any] = set()
    for _name, _line, message, _comments, _context in extract_from_dir(
        str(web_dir),
        method_map=[("**.py", "python"), ("templates/**.html", "jinja2")],
        keywords={
            "_": None,
            "_l": None,  # web/page_text.py: lazy_gettext as _l
            "gettext": None,
            "ngettext": (1, 2),
            "lazy_gettext": None,
        },
    ):
        found.add(message if isinstance(message, str) else message[0])
    folder = web_dir / "translations" / "fr" / "LC_MESSAGES"
    with (folder / "messages.po").open("rb") as po:
        catalog = read_po(po)
    with (folder / "messages.mo").open("rb") as mo:
        compiled = read_mo(mo)
    translated = {(m.id if isinstance(m.id, str) else m.id[0]): m.string for m in catalog if m.id}
    missing = sorted(message for message in found if not translated.get(message))
    assert missing == [], "run pybabel extract/update and translate (README Development)"

    def pairs(messages: Any) -> dict[Any, Any]:
        def key(value: Any) -> Any:
            return value if isinstance(value, str) else tuple(value)

        return {key(m.id): key(m.string) for m in messages if m.id}

    assert pairs(compiled) == pairs(catalog), (
        "the .mo is older than the .po: run pybabel compile -d web/translations"
    )


def test_a_purchase_queued_behind_another_buyers_3d_secure_says_why_and_shows_both_amounts(
    tenant: Tenant, web: Server, runtime: Runtime
) -> None:
    """No worker runs in this tier: the first buyer's purchase is put where a charger leaves
    it when the bank asks for 3-D Secure, holding the plan."""
    from sqlalchemy import update

    from shared.store.models import Purchase

    card = {"payment_method": "pm_card_visa"}
    first = tenant.owner
    first.post(
        "/api/cart/items", json={"subscription_id": tenant.sub, "active_seats": 4, "confirm": True}
    )
    held = first.post("/api/checkout", json=card, headers={"Idempotency-Key": "held"}).json()
    with runtime.uow() as uow:
        uow.session.execute(
            update(Purchase)
            .where(Purchase.id == held["purchase_id"])
            .values(status="requires_action", client_secret="pi_x_secret_y")
        )
        uow.session.execute(
            update(Subscription)
            .where(Subscription.id == tenant.sub)
            .values(charging_purchase_id=held["purchase_id"])
        )
        uow.commit()
    browser = sign_in(web, tenant, "buyer", FR)
    page = browser.get(f"{web.url}/cart", timeout=10).text
    browser.post(
        f"{web.url}/cart/items",
        data={
            "subscription_id": str(tenant.sub),
            "active_seats": "5",
            "confirm": "yes",
            "csrf_token": csrf(page),
        },
        timeout=10,
    )
    page = browser.get(f"{web.url}/cart", timeout=10).text
    key = re.search(r'name="checkout_key" value="([^"]+)"', page)
    assert key
    answer = browser.post(
        f"{web.url}/checkout",
        data={
            "csrf_token": csrf(page),
            "checkout_key": key.group(1),
            "card": "new",
            "payment_method": "pm_card_visa",
        },
        timeout=10,
    )
    assert re.search(r"/purchases/\d+$", answer.url), answer.text
    seen = text(answer.text)
    assert "En attente du prélèvement" in seen
    assert "attend que son acheteur confirme le paiement auprès de sa banque" in seen
    assert "Montant confirmé" in seen and "Montant à prélever" in seen
    live = browser.get(answer.url + "/live", timeout=10).json()
    assert live["status"] == "pending" and live["terminal"] is False
    assert live["client_secret"] is None and "Montant confirmé" in live["html"]
    other = requests.get(answer.url + "/live", timeout=10)
    assert other.status_code == 401
