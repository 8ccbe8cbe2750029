"""The composition root shared by web, worker and command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import LOCALSTRIPE_KEY, Settings
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


def database_url(settings: Settings) -> str:
    """The configured database, or the embedded one when none is configured."""
    if settings.database_url:
        return settings.database_url
    from shared.cli.embedded import embedded_database_url

    return embedded_database_url()


def build(settings: Settings | None = None, pool_size: int = 5) -> Runtime:
    settings = settings or Settings.from_env()
    engine = make_engine(database_url(settings), pool_size=pool_size)
    gateway = StripeGateway(settings.stripe_api_key or LOCALSTRIPE_KEY, settings.stripe_api_base)
    return Runtime(settings, engine, make_session_factory(engine), gateway)
