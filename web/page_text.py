"""Words the pages show for the codes services give (failures, waiting reasons, statuses),
in the page's language. The services' own English messages are the fallback."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

FAILURES = {
    "card_declined": _l("Your card was declined. Try another card or contact your bank."),
    "expired_card": _l("Your card has expired. Try another card."),
    "incorrect_cvc": _l("The card's security code is incorrect."),
    "insufficient_funds": _l("Your card has insufficient funds. Try another card."),
    "processing_error": _l(
        "The card could not be charged because of a processing error. Try again."
    ),
    "resource_missing": _l("We could not find this card. Enter the card again."),
    "payment_method_unknown": _l("We could not find this card. Enter the card again."),
    "payment_canceled": _l(
        "The payment was not confirmed with your bank in time, so it was canceled and "
        "nothing was charged."
    ),
    "payment_intent_authentication_failure": _l(
        "Your bank's 3-D Secure check failed, so nothing was charged."
    ),
    "already_paid": _l("These seats were already bought, so nothing was charged."),
    "quote_expired": _l(
        "The price changed since you confirmed it, so nothing was charged. Add the seats to "
        "your cart again to see the new price."
    ),
    "renewal_pending": _l(
        "This plan is due for renewal, so nothing was charged. Seats can be bought after it renews."
    ),
}

RENEWAL_FAILURES = {
    "no_payment_method": _l("There is no saved card to renew this plan with."),
    "authentication_required": _l(
        "Your bank asked to confirm the renewal payment, and it was not confirmed."
    ),
}
"""Why a renewal failed, by code; card refusals read as for a purchase (FAILURES)."""

NOT_RETRYABLE = frozenset({"already_paid", "quote_expired", "renewal_pending"})
"""Failures another card does not fix: the page points back to the plan instead."""

WAITING = {
    "parked": _l(
        "Charging this purchase is paused after repeated errors reaching the card processor. "
        "Our team has been told and will retry it; nothing was charged yet."
    ),
    "behind_authentication": _l(
        "Another purchase of the same plan is waiting for its buyer to confirm the payment "
        "with their bank. Yours is priced and charged right after it, for the seats still to "
        "buy (never more than you confirmed)."
    ),
    "behind_parked": _l(
        "Another purchase of the same plan is held up by errors reaching the card processor, "
        "and our team has been told. Yours is priced and charged right after it."
    ),
    "plan_busy": _l(
        "Another purchase of the same plan is being charged. Yours is priced and charged "
        "right after it, for the seats still to buy (never more than you confirmed)."
    ),
}

PURCHASE_STATUS = {
    "pending": _l("Waiting to be charged"),
    "processing": _l("Payment in progress"),
    "requires_action": _l("Your bank asks you to confirm the payment"),
    "succeeded": _l("Payment succeeded"),
    "failed": _l("Payment failed"),
}

PLAN_STATUS = {
    "active": _l("Active"),
    "past_due": _l("Past due"),
    "suspended": _l("Suspended"),
}

ROLES = {"owner": _l("Owner"), "buyer": _l("Buyer"), "member": _l("Member")}

INTERVALS = {"month": _l("per seat per month"), "year": _l("per seat per year")}

CARD_ERRORS = {
    "card_declined": FAILURES["card_declined"],
    "expired_card": FAILURES["expired_card"],
    "incorrect_cvc": FAILURES["incorrect_cvc"],
    "insufficient_funds": FAILURES["insufficient_funds"],
    "processing_error": FAILURES["processing_error"],
}
"""Stripe.js errors while a new card is checked, by code (its own text otherwise)."""


def failure_text(code: str | None, fallback: str | None) -> str:
    if code and code in FAILURES:
        return str(FAILURES[code])
    return fallback or str(_l("The payment could not be completed."))


def waiting_text(code: str, fallback: str) -> str:
    return str(WAITING[code]) if code in WAITING else fallback


def renewal_failure_text(code: str | None, fallback: str | None) -> str:
    if code and code in RENEWAL_FAILURES:
        return str(RENEWAL_FAILURES[code])
    if code and code in CARD_ERRORS:
        return str(CARD_ERRORS[code])
    return fallback or str(_l("The renewal payment could not be completed."))
