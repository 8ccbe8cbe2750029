"""Our ids as other systems echo them back (Stripe metadata is text)."""

from __future__ import annotations

MAX_ID = 2**63 - 1


def id_from_text(value: object) -> int | None:
    """An id we could have written: ASCII digits, 1 to 2**63-1; anything else is None.

    ASCII only: `"²".isdigit()` is true, yet `int("²")` raises.
    """
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if 1 <= number <= MAX_ID else None
