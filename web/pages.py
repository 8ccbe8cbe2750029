"""The customer pages (README "Customer pages"): the help article's path, server-rendered.

Each view: who (the session's user, as the same `Actor` the API uses), one or two
service calls, a template. Roles are checked by the services, so a member is
refused here exactly as on the API, whatever the page shows.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response as BaseResponse

from shared.domain.errors import Conflict, Forbidden, Invalid, NotFound, Refused
from shared.domain.ids import MAX_ID
from shared.domain.products import product_name
from shared.domain.seats import MANAGING_ROLES, MAX_SEATS, TERMINAL
from shared.payments.gateway import PaymentRefused, PaymentUnavailable
from shared.services import cart, checkout, payment_methods, purchases, seats, signin
from shared.services.access import Actor, actor_for_user
from shared.services.views import PurchaseView, SubscriptionView, to_json
from web import i18n, page_text
from web.extensions import dispatcher, runtime
from web.security import cookie_secure

pages = Blueprint("pages", __name__)

Page = str | BaseResponse | tuple[str, int]


class SignInNeeded(Exception):
    """No session (or its user is gone): the page asks to sign in."""


def page_actor() -> Actor:
    user_id = session.get("user_id")
    if not isinstance(user_id, int):
        raise SignInNeeded()
    with runtime().uow().single() as uow:  # one statement: no BEGIN, no COMMIT
        actor = actor_for_user(uow.session, user_id)
    if actor is None:
        session.clear()
        raise SignInNeeded()
    return actor


def can_manage(actor: Actor) -> bool:
    return actor.role in MANAGING_ROLES


@pages.app_context_processor
def page_globals() -> dict[str, Any]:
    settings = runtime().settings
    return {
        "product_name": product_name,
        "page_text": page_text,
        "stripe_js_url": settings.stripe_js_url,
        "stripe_key": settings.stripe_publishable_key,
        "signed_in": isinstance(session.get("user_id"), int),
        "max_seats": MAX_SEATS,
        "card_errors": lambda: {code: str(text) for code, text in page_text.CARD_ERRORS.items()},
        "field_names": lambda: {
            "number": _("Card number"),
            "exp_month": _("Expiry month (MM)"),
            "exp_year": _("Expiry year (YY)"),
            "cvc": _("Security code (CVC)"),
            "postal_code": _("Postal code"),
        },
    }


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message), status


@pages.errorhandler(SignInNeeded)
def sign_in_needed(error: SignInNeeded) -> BaseResponse:
    flash(_("Sign in to continue."), "info")
    return redirect(url_for("pages.home"), 303)


@pages.errorhandler(NotFound)
def not_found(error: NotFound) -> tuple[str, int]:
    return _error_page(404, _("Not found"), _("This page does not exist or is not yours to see."))


@pages.errorhandler(Forbidden)
def forbidden(error: Forbidden) -> tuple[str, int]:
    return _error_page(
        403,
        _("Not allowed"),
        _("Only an owner or a buyer of the organization may change seats, fill the cart or pay."),
    )


@pages.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    return _error_page(
        400,
        _("This form has expired"),
        _("Go back, reload the page and try again. Nothing was changed."),
    )


@pages.errorhandler(Refused)
def refused(error: Refused) -> tuple[str, int]:
    status = 409 if isinstance(error, Conflict) else 422 if isinstance(error, Invalid) else 400
    return _error_page(status, _("This cannot be done now"), error.message)


@pages.errorhandler(PaymentUnavailable)
def stripe_away(error: PaymentUnavailable) -> tuple[str, int]:
    return _error_page(
        503,
        _("The card processor cannot be reached"),
        _("Nothing was changed. Try again in a moment."),
    )


# -- signing in ----------------------------------------------------------------------


@pages.get("/")
def home() -> Page:
    if isinstance(session.get("user_id"), int):
        return redirect(url_for("pages.profile"), 303)
    return render_template("signin.html")


@pages.get("/login/<token>")
def login(token: str) -> Page:
    try:
        actor = signin.use_link(runtime().uow(), token)
    except signin.LinkNotValid:
        return (
            render_template(
                "signin.html",
                problem=_(
                    "This sign-in link is not valid: it was already used, it is more than "
                    "15 minutes old, or it was never issued. Ask for a new one."
                ),
            ),
            400,
        )
    session.clear()  # a fresh session: nothing from before the sign-in is kept
    session["user_id"] = actor.user_id
    session.permanent = True
    return redirect(url_for("pages.profile"), 303)


@pages.post("/logout")
def logout() -> BaseResponse:
    session.clear()
    flash(_("You are signed out."), "info")
    return redirect(url_for("pages.home"), 303)


def _local_path(value: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return url_for("pages.home")
    return value


@pages.post("/language")
def switch_language() -> BaseResponse:
    chosen = request.form.get("lang", "")
    response = redirect(_local_path(request.form.get("next")), 303)
    if chosen in i18n.LANGUAGES:
        response.set_cookie(
            i18n.COOKIE,
            chosen,
            max_age=i18n.COOKIE_AGE,
            httponly=True,
            samesite="Lax",
            secure=cookie_secure(current_app),
        )
    return response


# -- the profile and a plan -------------------------------------------------------------


@pages.get("/profile")
def profile() -> Page:
    actor = page_actor()
    view = seats.get_profile(runtime().uow(), actor)
    products: dict[str, list[SubscriptionView]] = {}
    for plan in view.subscriptions:
        products.setdefault(plan.product, []).append(plan)
    return render_template("profile.html", me=view, products=products, manage=can_manage(actor))


def next_attempt_on(actor: Actor, plan: SubscriptionView) -> date | None:
    """The day the failed renewal is tried again, in the organization's time zone (the
    schedule starts each try at the start of that day there)."""
    moment = plan.renewal.next_attempt_at if plan.renewal else None
    if moment is None:
        return None
    return moment.astimezone(ZoneInfo(seats.billing_timezone(runtime().uow(), actor))).date()


def _plan_page(actor: Actor, plan: SubscriptionView, status: int = 200, **extra: Any) -> Page:
    page = render_template(
        "plan.html",
        plan=plan,
        status=plan.status,
        next_attempt=next_attempt_on(actor, plan),
        manage=can_manage(actor),
        **extra,
    )
    return page, status


@pages.get("/plans/<int:plan_id>")
def plan(plan_id: int) -> Page:
    actor = page_actor()
    return _plan_page(actor, seats.get_subscription(runtime().uow(), actor, plan_id))


def _seat_count(raw: str | None) -> int | None:
    text = (raw or "").strip()
    if not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if 1 <= number <= MAX_SEATS else None


def _form_id(raw: str | None) -> int | None:
    text = (raw or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


@pages.post("/plans/<int:plan_id>/seats")
def change_seats(plan_id: int) -> Page:
    """Free changes are saved at once; above the paid count the page asks to confirm."""
    actor = page_actor()
    target = _seat_count(request.form.get("active_seats"))
    if target is None:
        current = seats.get_subscription(runtime().uow(), actor, plan_id)
        largest = i18n.number(MAX_SEATS)
        problem = _("Enter a whole number of licences from 1 to %(max)s.", max=largest)
        return _plan_page(
            actor, current, 422, problem=problem, entered=request.form.get("active_seats")
        )
    try:
        changed = seats.change_seats(runtime().uow(), actor, plan_id, target)
    except Conflict as error:
        if error.code != "purchase_required":
            current = seats.get_subscription(runtime().uow(), actor, plan_id)
            return _plan_page(actor, current, 409, problem=error.message, entered=target)
        current = seats.get_subscription(runtime().uow(), actor, plan_id)
        offer = seats.quote_seats(runtime().uow(), actor, plan_id, target)
        return _plan_page(actor, current, quote=offer, entered=target)
    flash(
        ngettext(
            "Saved: %(num)s licence is active.",
            "Saved: %(num)s licences are active.",
            changed.active_seats,
        ),
        "success",
    )
    return redirect(url_for("pages.plan", plan_id=plan_id), 303)


@pages.post("/plans/<int:plan_id>/card")
def save_card(plan_id: int) -> Page:
    """A past-due or suspended plan: the new card (confirmed with Stripe.js through a
    SetupIntent) becomes the card for renewals, and the renewal is tried with it at once,
    as `PUT /api/payment-method` does."""
    actor = page_actor()
    current = seats.get_subscription(runtime().uow(), actor, plan_id)  # 404 if not theirs
    method = request.form.get("payment_method", "").strip()
    if not method:
        return _plan_page(actor, current, 422, card_problem=_("Enter the new card, then save it."))
    try:
        saved, retry = payment_methods.save_card(runtime().uow(), runtime().gateway, actor, method)
    except (Conflict, Invalid) as refusal:
        problem = page_text.renewal_failure_text(refusal.code, refusal.message)
        status = 409 if isinstance(refusal, Conflict) else 422
        return _plan_page(actor, current, status, card_problem=problem)
    dispatcher().renew(*retry, force=True)
    if saved.renewals_retried:
        flash(
            _(
                "Your card is saved. The renewal is being charged to it now; reload this page "
                "in a moment to see your plan's status."
            ),
            "success",
        )
    else:
        flash(_("Your card is saved for renewals."), "success")
    return redirect(url_for("pages.plan", plan_id=plan_id), 303)


# -- the cart and paying --------------------------------------------------------------------


@pages.post("/cart/items")
def add_to_cart() -> BaseResponse:
    """ "Yes, continue": the extra seats go in the cart, and the cart page opens."""
    actor = page_actor()
    plan_id = _form_id(request.form.get("subscription_id"))
    target = _seat_count(request.form.get("active_seats"))
    if plan_id is None or target is None:
        abort(400)
    cart.add_item(runtime().uow(), actor, plan_id, target, request.form.get("confirm") == "yes")
    flash(_("The licences are in your cart."), "success")
    return redirect(url_for("pages.cart_page"), 303)


@pages.get("/cart")
def cart_page() -> Page:
    actor = page_actor()
    view = cart.get_cart(runtime().uow(), actor)
    saved = seats.get_profile(runtime().uow(), actor)
    card = next((plan.payment_method for plan in saved.subscriptions), None)
    return render_template(
        "cart.html",
        cart=view,
        manage=can_manage(actor),
        saved_card=card,
        checkout_key=str(uuid.uuid4()),
    )


@pages.post("/cart/items/<int:item_id>/remove")
def remove_line(item_id: int) -> BaseResponse:
    actor = page_actor()
    cart.remove_item(runtime().uow(), actor, item_id)
    flash(_("The line was removed from your cart."), "success")
    return redirect(url_for("pages.cart_page"), 303)


@pages.post("/cards/setup")
def card_setup() -> Response:
    """A SetupIntent for the new card the page is about to confirm with Stripe.js."""
    try:
        actor = page_actor()
    except SignInNeeded:
        return _json_error(401, "unauthorized", _("Sign in to continue."))
    try:
        view = payment_methods.start_card_setup(runtime().uow(), runtime().gateway, actor)
    except Forbidden:
        return _json_error(403, "forbidden", _("Only an owner or a buyer may choose the card."))
    except (PaymentUnavailable, PaymentRefused):
        return _json_error(
            503, "payment_unavailable", _("The card processor cannot be reached. Try again.")
        )
    return jsonify(to_json(view))


def _json_error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


def _chosen_card() -> str | None:
    """The saved card (None) or the PaymentMethod Stripe.js made from the new one."""
    if request.form.get("card") == "new":
        method = request.form.get("payment_method", "").strip()
        if not method:
            raise Invalid(_("Enter the new card, then pay."), "payment_method_required")
        return method
    return None


@pages.post("/checkout")
def pay() -> BaseResponse:
    actor = page_actor()
    purchase_id, _status, queued = checkout.checkout(
        runtime().uow(), actor, request.form.get("checkout_key"), _chosen_card()
    )
    if not queued:
        dispatcher().charge(purchase_id)
    return redirect(url_for("pages.purchase", purchase_id=purchase_id), 303)


@pages.post("/purchases/<int:purchase_id>/retry")
def retry(purchase_id: int) -> BaseResponse:
    """After a failure: the same lines, priced again, with another card, in one step."""
    actor = page_actor()
    new_id, _status, queued = checkout.retry_purchase(
        runtime().uow(), actor, purchase_id, request.form.get("checkout_key"), _chosen_card()
    )
    if not queued:
        dispatcher().charge(new_id)
    return redirect(url_for("pages.purchase", purchase_id=new_id), 303)


# -- following a purchase ----------------------------------------------------------------


def _after(actor: Actor, view: PurchaseView) -> list[SubscriptionView]:
    """The plans as they are now: after a success, the new counts."""
    return [
        seats.get_subscription(runtime().uow(), actor, item.subscription_id) for item in view.items
    ]


def _purchase_context(actor: Actor, purchase_id: int) -> dict[str, Any]:
    view = purchases.get_purchase(runtime().uow(), actor, purchase_id)
    plans = _after(actor, view) if view.status in ("succeeded", "failed") else []
    card = plans[0].payment_method if plans else None
    mine = purchases.bought_by(runtime().uow(), actor, purchase_id) == actor.user_id
    return {
        "purchase": view,
        "plans": plans,
        "saved_card": card,
        "terminal": view.status in TERMINAL,
        "retryable": (
            view.status == "failed"
            and view.failure_code not in page_text.NOT_RETRYABLE
            and can_manage(actor)
            and mine
        ),
        "checkout_key": str(uuid.uuid4()),
        "manage": can_manage(actor),
    }


@pages.get("/purchases/<int:purchase_id>")
def purchase(purchase_id: int) -> Page:
    actor = page_actor()
    return render_template("purchase.html", **_purchase_context(actor, purchase_id))


@pages.get("/purchases/<int:purchase_id>/live")
def purchase_live(purchase_id: int) -> Response:
    """What the following page polls: the status and the state, rendered here."""
    try:
        actor = page_actor()
    except SignInNeeded:
        return _json_error(401, "unauthorized", _("Sign in to continue."))
    context = _purchase_context(actor, purchase_id)
    view: PurchaseView = context["purchase"]
    return jsonify(
        {
            "status": view.status,
            "terminal": context["terminal"],
            "client_secret": view.client_secret,
            "html": render_template("_purchase_state.html", **context),
        }
    )
