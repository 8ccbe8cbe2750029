"""French and English on the pages: which language a request gets, and money and dates
written the way a person of that language in Canada reads them (README "Customer pages")."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from flask import Flask, request
from flask_babel import Babel, get_locale

from shared.domain.money import minor_digits

LANGUAGES = ("fr", "en")
DEFAULT = "en"
COOKIE = "seats_lang"
COOKIE_AGE = 365 * 24 * 3600
REGIONS = {"fr": "fr_CA", "en": "en_CA"}
"""Formatting locales: `1 234,56 $` in fr-CA, `$1,234.56` in en-CA."""
NAMES = {"fr": "Français", "en": "English"}


def select_language() -> str:
    """The remembered choice first, then the browser's: French for a `fr` browser,
    English otherwise."""
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES, default=DEFAULT) or DEFAULT


def language() -> str:
    locale = get_locale()
    code = locale.language if locale is not None else DEFAULT
    return code if code in LANGUAGES else DEFAULT


def region() -> str:
    return REGIONS[language()]


def html_lang() -> str:
    return region().replace("_", "-")


def money(amount: int, currency: str) -> str:
    """Minor units as a person reads them in the page's locale; never "minor units"."""
    value = Decimal(amount).scaleb(-minor_digits(currency))
    return format_currency(value, currency.upper(), locale=region())


def number(value: int) -> str:
    return format_decimal(value, locale=region())


def day(value: date) -> str:
    return format_date(value, format="long", locale=region())


def install(app: Flask) -> None:
    Babel(app, locale_selector=select_language, default_locale=DEFAULT)
    app.jinja_env.filters["money"] = money
    app.jinja_env.filters["day"] = day
    app.jinja_env.globals.update(
        language=language, html_lang=html_lang, language_names=NAMES, languages=LANGUAGES
    )
