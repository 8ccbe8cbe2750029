"""The operator pages under /ops (README "Operator pages"), server-rendered, in English.

Operators are not members of any organization: they sign in with their own one-time link
(`seats operator login-link`) into a session key of their own (`operator_id`; customers
have `user_id`), or send their token (`seats operator create`) as `Authorization: Bearer`
to read. Everyone else (no session, a customer's session or token, a wrong token) gets
exactly the 404 any unknown address gets, for every method and path under /ops: nothing
says the pages exist. Each action is a POST form with a CSRF token, checked only once the
operator is known, and each is written to the audit log with the operator's name and its
outcome, whatever happens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.globals import request_ctx
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response as BaseResponse

from shared.domain.errors import Conflict, NotFound, Refused
from shared.domain.ids import MAX_ID
from shared.domain.money import plain_amount
from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import PurchaseStatus
from shared.payments.gateway import PaymentUnavailable
from shared.services import operations, operators, renewals, signin
from shared.services.operators import OperatorActor
from shared.services.views import to_json
from web.extensions import dispatcher, parts, runtime
from web.security import csrf

ops = Blueprint("ops", __name__, url_prefix="/ops")

SESSION_KEY = "operator_id"
"""Customers' sessions hold `user_id`; an operator's holds this, never both."""
PREFIX = "/ops"
LOGIN = "/ops/login/"
READS = ("GET", "HEAD")
ROWS = 200
"""At most this many rows on a list page (the newest first)."""
REFRESH_SECONDS = 10
EVENT_OUTCOMES = ("pending", "processed", "ignored", "failed", "invalid")
EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,100}")
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
AGES = {
    60: "1 minute",
    300: "5 minutes",
    900: "15 minutes",
    3600: "1 hour",
    21600: "6 hours",
    86400: "1 day",
    604800: "7 days",
    2592000: "30 days",
}

Page = str | BaseResponse | tuple[str, int]


# -- who: operators only, everyone else a plain 404 ----------------------------------------


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and len(token) <= 200 else None


def _identify() -> OperatorActor | None:
    """The operator behind this request: a token (reads only) or an operator's session."""
    if "ops_operator" in g:
        found: OperatorActor | None = g.ops_operator
        return found
    operator = None
    token = _bearer()
    with runtime().uow() as uow:
        if token is not None:
            if request.method in READS:
                operator = operators.operator_for_token(uow.session, token)
        else:
            # peek without marking the session accessed (Flask's `session` proxy would, and
            # that adds `Vary: Cookie`): a refused request's 404 then carries exactly the
            # headers any unknown address gets
            stored = request_ctx._session
            operator_id = stored.get(SESSION_KEY) if stored is not None else None
            if isinstance(operator_id, int) and not isinstance(operator_id, bool):
                operator = operators.operator_by_id(uow.session, operator_id)
                if operator is not None:
                    session.accessed = True  # an operator's page depends on the cookie
    g.ops_operator = operator
    return operator


def current_operator() -> OperatorActor:
    operator = _identify()
    if operator is None:
        abort(404)
    return operator


@ops.before_app_request
def gate() -> None:
    """Runs before routing errors too, so a 405 or a redirect never tells a customer that a
    path exists under /ops; the CSRF token is checked once the operator is known."""
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return
    if path.startswith(LOGIN) and request.method in READS:
        return  # the link is the credential
    current_operator()
    if request.method not in READS and request.blueprint == ops.name:
        csrf.protect()


# -- how things read -------------------------------------------------------------------------


@ops.app_template_filter("ops_time")
def ops_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@ops.app_template_filter("ops_money")
def ops_money(amount: int | None, currency: str) -> str:
    return "—" if amount is None else plain_amount(amount, currency)


@ops.app_template_filter("ops_age")
def ops_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = max(int(seconds), 0)
    if whole >= 86400:
        return f"{whole // 86400} d {whole % 86400 // 3600} h"
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    if whole >= 60:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole} s"


@ops.app_template_filter("ops_json")
def ops_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _since(value: datetime) -> float:
    return (datetime.now(UTC) - value).total_seconds()


@ops.context_processor
def ops_globals() -> dict[str, Any]:
    return {"operator": g.get("ops_operator"), "since": _since, "refresh": REFRESH_SECONDS}


def _error(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("ops/error.html", title=title, message=message), status


@ops.errorhandler(NotFound)
def not_found(error: NotFound) -> tuple[str, int]:
    return _error(404, "Not found", error.message)


@ops.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    return _error(
        400,
        "This form has expired",
        "Nothing was done. Go back, reload the page and try again.",
    )


@ops.errorhandler(Refused)
def refused(error: Refused) -> tuple[str, int]:
    return _error(409 if isinstance(error, Conflict) else 422, "This cannot be done", error.message)


@ops.errorhandler(PaymentUnavailable)
def stripe_away(error: PaymentUnavailable) -> tuple[str, int]:
    return _error(503, "Stripe cannot be reached", f"Nothing was changed ({error}).")


# -- signing in and out ----------------------------------------------------------------------


@ops.get("/login/<token>")
def login(token: str) -> BaseResponse:
    try:
        operator = signin.use_operator_link(runtime().uow(), token)
    except signin.LinkNotValid:
        abort(404)  # unknown, used or expired: like any address that is not there
    session.clear()  # a fresh session: no customer, nothing from before
    session[SESSION_KEY] = operator.id
    session.permanent = True
    g.ops_operator = operator
    _record("operator.sign_in", f"operator:{operator.email}", "done")
    return redirect(url_for("ops.dashboard"), 303)


@ops.post("/logout")
def logout() -> str:
    session.clear()
    g.ops_operator = None
    return render_template("ops/signed_out.html")


# -- the audit log -----------------------------------------------------------------------------


def _record(action: str, target: str, outcome: str, detail: dict[str, Any] | None = None) -> None:
    operator = current_operator()
    operators.record(
        runtime().uow(),
        operator.name,
        action,
        target,
        outcome,
        {"via": "ops pages", **(detail or {})},
        operator_id=operator.id,
    )


@dataclass(frozen=True)
class Done:
    """What an action says on the page and writes in the audit log."""

    ok: bool
    outcome: str
    message: str
    detail: dict[str, Any]


def _act(action: str, target: str, run: Callable[[], Done]) -> Done:
    """Run one action and record it; an unexpected error is recorded too, then raised."""
    try:
        done = run()
    except NotFound as error:
        _record(action, target, f"refused: {error.code}", {"message": error.message})
        raise
    except Exception as error:
        _record(action, target, f"failed: {type(error).__name__}: {error}")
        raise
    _record(action, target, done.outcome, done.detail)
    flash(done.message, "success" if done.ok else "error")
    return done


# -- the dashboard -----------------------------------------------------------------------------


def _status() -> operations.Status:
    return operations.status(runtime().uow(), parts().broker, runtime().settings.stuck_after)


@ops.get("/")
def dashboard() -> str:
    return render_template("ops/dashboard.html", figures=_status(), at=datetime.now(UTC))


@ops.get("/figures")
def figures() -> str:
    """The dashboard's figures alone: what its script fetches every few seconds."""
    return render_template("ops/_figures.html", figures=_status(), at=datetime.now(UTC))


@ops.get("/status.json")
def status_json() -> Response:
    """`seats ops status --json`, for a session or an operator's token."""
    return jsonify(to_json(_status()))


# -- filters -------------------------------------------------------------------------------------


def _whole(name: str, label: str, problems: list[str]) -> int | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 1 <= int(raw) <= MAX_ID:
        return int(raw)
    problems.append(f"{label}: {raw!r} is not a whole number above 0.")
    return None


def _choice(name: str, label: str, allowed: tuple[str, ...], problems: list[str]) -> str | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    if raw in allowed:
        return raw
    problems.append(f"{label}: {raw!r} is not one of {', '.join(allowed)}.")
    return None


def _listing(template: str, problems: list[str], **context: Any) -> Page:
    page = render_template(template, problems=problems, **context)
    return (page, 422) if problems else page


# -- purchases ---------------------------------------------------------------------------------


@ops.get("/purchases")
def purchases() -> Page:
    problems: list[str] = []
    status = _choice("status", "Status", tuple(PurchaseStatus), problems)
    organization = _whole("org", "Organization", problems)
    older_than = _whole("older_than", "Older than", problems)
    parked = request.args.get("parked") == "1"
    rows = (
        []
        if problems
        else operations.list_purchases(
            runtime().uow(), status, parked, organization, older_than, limit=ROWS
        )
    )
    ages = dict(AGES)
    if older_than is not None and older_than not in ages:
        ages[older_than] = f"{older_than} seconds"
    return _listing(
        "ops/purchases.html",
        problems,
        rows=rows,
        statuses=list(PurchaseStatus),
        ages=sorted(ages.items()),
        chosen={
            "status": status or "",
            "org": organization or "",
            "older_than": older_than or "",
            "parked": parked,
        },
        limit=ROWS,
    )


@ops.get("/purchases/<int:purchase_id>")
def purchase(purchase_id: int) -> str:
    detail = operations.get_purchase(runtime().uow(), purchase_id)
    return render_template("ops/purchase.html", p=detail)


@ops.get("/parked")
def parked() -> str:
    rows = operations.list_purchases(runtime().uow(), None, True, limit=ROWS)
    return render_template("ops/parked.html", rows=rows, limit=ROWS)


def _back(default: str) -> str:
    """Where an action returns: the page its form was on (a path on this site), or `default`."""
    given = request.form.get("next", "")
    if given.startswith(PREFIX + "/") and not given.startswith("//") and "\\" not in given:
        return given
    return default


@ops.post("/purchases/<int:purchase_id>/retry")
def retry_purchase(purchase_id: int) -> BaseResponse:
    """Un-park and charge now (`seats purchases retry ID`), only while it is parked."""

    def run() -> Done:
        rt = runtime()
        try:
            status = operations.retry_purchase(
                rt.uow(),
                rt.engine,
                rt.gateway,
                purchase_id,
                parked_only=True,
                wake=dispatcher().charge,
            )
        except Conflict as error:
            return Done(
                False,
                f"refused: {error.code}",
                f"Purchase {purchase_id} was not retried: {error.message}",
                {"message": error.message},
            )
        return Done(
            True,
            "done",
            f"Purchase {purchase_id} was retried: it is now {status}.",
            {"status": status},
        )

    _act("purchase.retry", f"purchase:{purchase_id}", run)
    return redirect(_back(url_for("ops.purchase", purchase_id=purchase_id)), 303)


# -- Stripe events -----------------------------------------------------------------------------


@ops.get("/events")
def events() -> Page:
    problems: list[str] = []
    wanted = (request.args.get("id") or "").strip()
    if wanted:
        if EVENT_ID.fullmatch(wanted):
            return redirect(url_for("ops.event", event_id=wanted), 303)
        problems.append(f"Event id: {wanted!r} is not a Stripe event id (evt_...).")
    outcome = _choice("outcome", "Outcome", EVENT_OUTCOMES, problems)
    kind = (request.args.get("type") or "").strip() or None
    if kind is not None and not EVENT_TYPE.fullmatch(kind):
        problems.append(f"Type: {kind!r} is not an event type (such as charge.refunded).")
    rows = [] if problems else operations.list_events(runtime().uow(), outcome, kind, ROWS)
    return _listing(
        "ops/events.html",
        problems,
        rows=rows,
        outcomes=EVENT_OUTCOMES,
        chosen={"outcome": outcome or "", "type": kind or "", "id": wanted},
        limit=ROWS,
    )


@ops.get("/events/<event_id>")
def event(event_id: str) -> str:
    if not EVENT_ID.fullmatch(event_id):
        raise NotFound(f"no stored event {event_id}", "not_found")
    return render_template("ops/event.html", e=operations.get_event(runtime().uow(), event_id))


@ops.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> BaseResponse:
    """Handle a stored event again (`seats webhooks replay EVENT_ID`). A replay that fails
    keeps the stored outcome, and the page says why."""
    if not EVENT_ID.fullmatch(event_id):
        raise NotFound(f"no stored event {event_id}", "not_found")

    def run() -> Done:
        outcome = operations.replay_events(
            runtime().uow(), runtime().gateway, [event_id], dispatcher().charge
        )[event_id]
        stored = operations.get_event(runtime().uow(), event_id).outcome or "not handled yet"
        if outcome.startswith("failed"):
            why = outcome.removeprefix("failed: ")
            return Done(
                False,
                outcome[:500],
                f"The replay of {event_id} failed: {why}. Its stored outcome is unchanged "
                f"({stored}).",
                {"stored_outcome": stored},
            )
        return Done(
            True,
            "done",
            f"{event_id} was handled again: {outcome}.",
            {"outcome": outcome},
        )

    _act("webhook.replay", f"event:{event_id}", run)
    return redirect(_back(url_for("ops.event", event_id=event_id)), 303)


# -- alerts --------------------------------------------------------------------------------------


@ops.get("/alerts")
def alerts() -> Page:
    problems: list[str] = []
    after = _whole("after", "After", problems)
    everything = request.args.get("all") == "1"
    rows, next_after = (
        ([], None)
        if problems
        else operations.list_alerts(runtime().uow(), everything, after, operations.PAGE)
    )
    return _listing(
        "ops/alerts.html",
        problems,
        rows=rows,
        next_after=next_after,
        everything=everything,
        after=after,
    )


@ops.post("/alerts/<int:alert_id>/resolve")
def resolve_alert(alert_id: int) -> BaseResponse:
    def run() -> Done:
        try:
            operations.resolve_alert(runtime().uow(), alert_id)
        except Conflict as error:
            return Done(
                False,
                f"refused: {error.code}",
                f"Alert {alert_id} was not changed: {error.message}.",
                {"message": error.message},
            )
        return Done(True, "done", f"Alert {alert_id} is resolved.", {})

    _act("alert.resolve", f"alert:{alert_id}", run)
    return redirect(_back(url_for("ops.alerts")), 303)


# -- plans and renewals ----------------------------------------------------------------------


@ops.get("/subscriptions")
def subscriptions() -> Page:
    problems: list[str] = []
    organization = _whole("org", "Organization", problems)
    status = _choice("status", "Status", tuple(SubscriptionStatus), problems)
    rows = (
        []
        if problems
        else operations.list_subscriptions(runtime().uow(), organization, status, ROWS)
    )
    return _listing(
        "ops/subscriptions.html",
        problems,
        rows=rows,
        statuses=list(SubscriptionStatus),
        chosen={"org": organization or "", "status": status or ""},
        limit=ROWS,
    )


@ops.get("/subscriptions/<int:subscription_id>")
def seat_audit(subscription_id: int) -> str:
    audit = operations.seat_audit(runtime().uow(), subscription_id)
    return render_template("ops/subscription.html", audit=audit, plan=audit.subscription)


@ops.get("/renewals")
def renewals_page() -> Page:
    problems: list[str] = []
    unsettled = (SubscriptionStatus.PAST_DUE.value, SubscriptionStatus.SUSPENDED.value)
    status = _choice("status", "Status", unsettled, problems)
    rows = [] if problems else renewals.unsettled(runtime().uow(), status, ROWS)
    return _listing(
        "ops/renewals.html",
        problems,
        rows=rows,
        statuses=unsettled,
        chosen={"status": status or ""},
        limit=ROWS,
    )


# -- the audit log itself ------------------------------------------------------------------


@ops.get("/audit")
def audit() -> Page:
    problems: list[str] = []
    before = _whole("before", "Before", problems)
    rows, next_before = ([], None) if problems else operators.list_actions(runtime().uow(), before)
    return _listing("ops/audit.html", problems, rows=rows, next_before=next_before, before=before)
