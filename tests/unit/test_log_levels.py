"""What the process logs: our lines at SEATS_LOG_LEVEL, the Stripe SDK's per-call lines and
Celery's "received" line per task only when debugging (they cost about 7% of a worker's time,
and the task's "succeeded" line already says it came)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from shared import log_lines


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    chatty = [logging.getLogger(name) for name in ("stripe", "celery.worker.strategy")]
    kept = (root.handlers[:], root.level, [logger.level for logger in chatty])
    yield
    root.handlers, _, _ = kept
    root.setLevel(kept[1])
    for logger, level in zip(chatty, kept[2], strict=True):
        logger.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_stripe_call_lines_are_left_out_but_its_warnings_and_our_lines_are_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEATS_LOG_LEVEL", raising=False)
    log_lines.configure("worker")
    logging.getLogger("stripe").info("message='Request to Stripe api' method=post")
    logging.getLogger("stripe").warning("retrying the request")
    logging.getLogger("seats.charging").info("purchase 7 succeeded")
    logging.getLogger("celery.worker.strategy").info("Task seats.charge_purchase[a1] received")
    logging.getLogger("celery.app.trace").info("Task seats.charge_purchase[a1] succeeded")
    err = lines(capsys)
    assert "received" not in err
    assert "Task seats.charge_purchase[a1] succeeded" in err
    assert "Request to Stripe api" not in err
    assert "retrying the request" in err
    assert "purchase 7 succeeded" in err


@pytest.mark.usefixtures("restore_logging")
def test_debug_shows_every_stripe_call_and_every_task_received(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEATS_LOG_LEVEL", "DEBUG")
    log_lines.configure("worker")
    logging.getLogger("stripe").info("message='Request to Stripe api' method=post")
    logging.getLogger("celery.worker.strategy").info("Task seats.charge_purchase[a1] received")
    err = lines(capsys)
    assert "Request to Stripe api" in err
    assert "Task seats.charge_purchase[a1] received" in err
