"""Settings read from the environment once, by the composition root, never at import."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

LOCALSTRIPE_KEY = "sk_test_localstripe"
LOCALSTRIPE_PUBLISHABLE_KEY = "pk_test_localstripe"
STRIPE_JS = "https://js.stripe.com/v3/"


def normalize_database_url(url: str) -> str:
    """Accept the usual postgres URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def parse_dunning_days(text: str) -> tuple[int, ...]:
    """`SEATS_DUNNING_DAYS=1,3,5,7`: the days after a failed renewal's date it is tried
    again, each from 1 to 365."""
    try:
        days = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        days = ()
    if not days or not all(1 <= day <= 365 for day in days):
        raise ValueError(f"SEATS_DUNNING_DAYS={text!r}: list days from 1 to 365, such as 1,3,5,7")
    return days


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds above 0, or a refusal naming the variable: 0, a negative, NaN or inf would
    only show later, as a lasting outage."""
    raw = env.get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r}: give a number of seconds above 0")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    raw = env.get(name) or ""
    if not raw:
        return default
    if not raw.strip().isdigit() or int(raw) < least:
        raise ValueError(f"{name}={raw!r}: give a whole number of at least {least}")
    return int(raw)


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    stripe_api_key: str | None
    stripe_api_base: str | None
    stripe_webhook_secret: str | None
    secret_key: str
    port: int
    sweep_interval: float
    reconcile_interval: float
    stuck_after: float
    charge_retries: int
    requires_action_ttl: float
    secret_key_given: bool = False
    dunning_days: tuple[int, ...] = (1, 3, 5, 7)
    renewal_scan_interval: float = 300
    off_session: bool = False
    worker_concurrency: int = 32
    webhook_batch: int = 25
    """Events one drain takes at a time; a full batch sends another drain at once, so a
    backlog spreads over the worker's threads."""
    task_events: bool = False
    stripe_js_url: str = STRIPE_JS
    stripe_publishable_key: str | None = None
    stripe_timeout: float = 20
    """Seconds a Stripe call may take before it counts as Stripe unreachable (then retried
    with backoff like any outage)."""
    base_url: str | None = None
    """Where people reach the pages (sign-in links point there); http://127.0.0.1:PORT when
    unset. An https address also makes the cookies Secure."""

    @property
    def public_url(self) -> str:
        return (self.base_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def stripe_test_mode(self) -> bool:
        """A test key (or none yet): no real money moves, failpoints may be armed."""
        return not self.stripe_api_key or self.stripe_api_key.startswith(("sk_test_", "rk_test_"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL") or None
        return cls(
            database_url=normalize_database_url(database_url) if database_url else None,
            redis_url=env.get("REDIS_URL") or None,
            stripe_api_key=env.get("STRIPE_API_KEY") or None,
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
            secret_key=env.get("SECRET_KEY") or secrets.token_hex(32),
            port=_whole(env, "PORT", 8000, 1),
            sweep_interval=_number(env, "SEATS_SWEEP_INTERVAL", 15),
            reconcile_interval=_number(env, "SEATS_RECONCILE_INTERVAL", 300),
            stuck_after=_number(env, "SEATS_STUCK_AFTER", 60),
            charge_retries=_whole(env, "SEATS_CHARGE_RETRIES", 5, 0),
            requires_action_ttl=_number(env, "SEATS_REQUIRES_ACTION_TTL", 3600),
            secret_key_given=bool(env.get("SECRET_KEY")),
            dunning_days=parse_dunning_days(env.get("SEATS_DUNNING_DAYS") or "1,3,5,7"),
            renewal_scan_interval=_number(env, "SEATS_RENEWAL_SCAN_INTERVAL", 300),
            off_session=_flag(env.get("SEATS_OFF_SESSION"), not env.get("STRIPE_API_BASE")),
            worker_concurrency=_whole(env, "SEATS_WORKER_CONCURRENCY", 32, 1),
            webhook_batch=_whole(env, "SEATS_WEBHOOK_BATCH", 25, 1),
            task_events=_flag(env.get("SEATS_TASK_EVENTS"), False),
            stripe_js_url=env.get("STRIPE_JS_URL") or STRIPE_JS,
            stripe_publishable_key=env.get("STRIPE_PUBLISHABLE_KEY") or None,
            base_url=env.get("SEATS_BASE_URL") or None,
            stripe_timeout=_number(env, "SEATS_STRIPE_TIMEOUT", 20),
        )
