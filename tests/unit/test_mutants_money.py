"""Amounts as operators read them, found untested by mutation testing (bench/mutation)."""

from __future__ import annotations

import pytest

from shared.domain.money import minor_digits, plain_amount


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (57600, "cad", "576.00 CAD"),
        (0, "cad", "0.00 CAD"),
        (123456789, "CAD", "1,234,567.89 CAD"),
        (-5, "usd", "-0.05 USD"),
        (5000, "jpy", "5,000 JPY"),
        (5000, "JPY", "5,000 JPY"),
        (1234, "kwd", "1.234 KWD"),
        (1234, "BHD", "1.234 BHD"),
    ],
)
def test_an_amount_is_written_with_its_currency_s_minor_digits(
    amount: int, currency: str, text: str
) -> None:
    assert plain_amount(amount, currency) == text


@pytest.mark.parametrize(("currency", "digits"), [("eur", 2), ("XOF", 0), ("omr", 3)])
def test_minor_digits(currency: str, digits: int) -> None:
    assert minor_digits(currency) == digits
