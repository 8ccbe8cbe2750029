"""What a person calls a product: the plan keeps a code (XLGL), pages show its name."""

from __future__ import annotations

NAMES = {"XLGL": "Plateforme Logicim XLGL"}
"""The same name in every language (it is a brand)."""


def product_name(code: str) -> str:
    """The product's name, or its code when we do not know a better one."""
    return NAMES.get(code.strip().upper(), code)
