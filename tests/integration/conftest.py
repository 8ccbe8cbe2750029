"""The web app over a socket with the in-memory Stripe, on a database of its own (its
customers never meet the stand-in's, so the e2e tier's ledger audit reads only real ones):
for pages whose actions call Stripe (an operator's retry or replay, a customer's new card)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from shared.bootstrap import Runtime
from shared.config import Settings
from shared.payments.fake_stripe import FakeStripe
from shared.queues import Dispatcher
from shared.store.db import make_engine, make_session_factory, upgrade
from tests.conftest import Server


@pytest.fixture(scope="module")
def fake_stripe() -> FakeStripe:
    return FakeStripe()


@pytest.fixture(scope="module")
def fake_runtime(
    fresh_database: Any, settings: Settings, fake_stripe: FakeStripe
) -> Iterator[Runtime]:
    url: str = fresh_database()
    upgrade(url)
    engine = make_engine(url, pool_size=10)
    yield Runtime(
        replace(settings, database_url=url), engine, make_session_factory(engine), fake_stripe
    )
    engine.dispose()


@pytest.fixture(scope="module")
def fake_web(fake_runtime: Runtime) -> Iterator[Server]:
    from web import create_app

    server = Server(create_app(runtime=fake_runtime))
    yield server
    server.close()


@pytest.fixture(scope="module")
def quiet_web(fake_runtime: Runtime) -> Iterator[Server]:
    """`fake_web` whose wake-up calls are kept in `sent` instead of sent to the broker: for
    the fuzzing, whose hundreds of checkouts and events must leave no message behind for a
    later module's worker in the same test process (it would take them for its own ids)."""
    from web import create_app
    from web.extensions import KEY

    app = create_app(runtime=fake_runtime)
    server = Server(app)
    server.sent = []  # type: ignore[attr-defined]
    app.extensions[KEY] = replace(
        app.extensions[KEY],
        dispatcher=Dispatcher(lambda name, **options: server.sent.append((name, options))),  # type: ignore[attr-defined]
    )
    yield server
    server.close()
