"""The composition root shared by web, worker and command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.payments.gateway import PaymentGateway
from shared.payments.stripe_adapter import StripeGateway
from shared.store.db import UnitOfWork, make_engine, make_session_factory


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    gateway: PaymentGateway

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.sessions)


class ConfigurationError(Exception):
    """A setting production cannot run without; the message names the variable."""


def require_database(settings: Settings) -> str:
    """Production entry points never start an embedded server: no URL, no start.

    Only `seats up` and the `seats` commands fill in an embedded database (see
    README "Configuration").
    """
    if not settings.database_url:
        raise ConfigurationError(
            "DATABASE_URL is not set: point it at PostgreSQL (postgresql://user@host/db). "
            "Only `seats up` and the `seats` commands start an embedded database."
        )
    return settings.database_url


def require_production(settings: Settings) -> None:
    """What the web and the worker refuse to start without, naming each variable.

    No setting falls back to a test value here: a misconfigured production must
    not start and retry every purchase against a stand-in's key. `seats up`
    fills these in for development (README "Configuration").
    """
    require_database(settings)
    missing = [
        name
        for name, value in (
            ("STRIPE_API_KEY", settings.stripe_api_key),
            ("STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"{' and '.join(missing)} not set: give your Stripe secret key and your webhook "
            "endpoint's signing secret. Only `seats up` starts the Stripe stand-in and fills "
            "them in for development."
        )
    if not settings.stripe_test_mode and not settings.secret_key_given:
        raise ConfigurationError(
            "SECRET_KEY is not set: it is required with a live Stripe key (sessions are "
            "signed with it; a generated one would change on every restart)."
        )


def build(settings: Settings | None = None, pool_size: int = 5) -> Runtime:
    settings = settings or Settings.from_env()
    engine = make_engine(require_database(settings), pool_size=pool_size)
    if not settings.stripe_api_key:
        raise ConfigurationError("STRIPE_API_KEY is not set")
    gateway = StripeGateway(
        settings.stripe_api_key, settings.stripe_api_base, timeout=settings.stripe_timeout
    )
    return Runtime(settings, engine, make_session_factory(engine), gateway)
