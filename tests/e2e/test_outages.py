"""Stripe unreachable: bounded retries, then parked for an operator, who fixes it."""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.bootstrap import Runtime
from shared.cli.embedded import free_port
from shared.payments.gateway import PaymentRefused, PaymentUnavailable
from shared.payments.stripe_adapter import StripeGateway
from shared.services import sweep
from shared.store.models import Purchase
from tests.conftest import Server, Tenant, Worker, seats_json
from tests.e2e.stripe_helpers import buy, new_card, stripe_client, succeeded_charges, wait_for
from tests.e2e.test_buying_seats import customer_of
from tests.e2e.test_webhooks import event_around, post_event, sign, wait_processed

pytestmark = pytest.mark.e2e


class Answer(BaseHTTPRequestHandler):
    status = 500
    body = b"{}"

    def do_POST(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def fake_stripe() -> Iterator[tuple[str, type[Answer]]]:
    handler = type("Scripted", (Answer,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_rate_limits_and_server_errors_are_transient(
    fake_stripe: tuple[str, type[Answer]], status: int
) -> None:
    base, handler = fake_stripe
    handler.status = status
    handler.body = json.dumps({"error": {"type": "api_error", "message": "try later"}}).encode()
    with pytest.raises(PaymentUnavailable):
        StripeGateway("sk_test_x", base).get_payment("pi_123")


def test_a_decline_is_final(fake_stripe: tuple[str, type[Answer]]) -> None:
    base, handler = fake_stripe
    handler.status = 402
    handler.body = json.dumps(
        {
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "message": "Your card was declined.",
            }
        }
    ).encode()
    with pytest.raises(PaymentRefused) as refused:
        StripeGateway("sk_test_x", base).attach_card("pm_1", "cus_1")
    assert refused.value.code == "card_declined"


def test_unreachable_stripe_is_transient() -> None:
    with pytest.raises(PaymentUnavailable):
        StripeGateway("sk_test_x", f"http://127.0.0.1:{free_port()}", timeout=2).get_payment("pi")


INTENT = {
    "id": "pi_1",
    "object": "payment_intent",
    "amount": 900,
    "currency": "eur",
    "status": "succeeded",
    "metadata": {},
}


class KeptAlive(Answer):
    """HTTP/1.1 with a length: a client may keep the connection; counts connections and
    remembers each request line (a proxy's sees the absolute address)."""

    protocol_version = "HTTP/1.1"
    status = 200
    body = json.dumps(INTENT).encode()
    connections = 0
    lines: list[str] = []
    proxy_auth: list[str | None] = []
    bodies: list[bytes] = []
    delay = 0.0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_POST(self) -> None:
        type(self).lines.append(self.requestline)
        type(self).proxy_auth.append(self.headers.get("Proxy-Authorization"))
        type(self).bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST


@pytest.fixture
def kept_alive() -> Iterator[tuple[str, type[KeptAlive]]]:
    handler = type("Counted", (KeptAlive,), {"lines": [], "proxy_auth": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()


def test_one_threads_calls_share_one_kept_alive_connection(
    kept_alive: tuple[str, type[KeptAlive]],
) -> None:
    base, handler = kept_alive
    gateway = StripeGateway("sk_test_x", base)
    assert [gateway.get_payment("pi_1").amount for _ in range(5)] == [900] * 5
    assert handler.connections == 1 and len(handler.lines) == 5


def test_every_parameter_reaches_stripe(kept_alive: tuple[str, type[KeptAlive]]) -> None:
    """The SDK's `raw_request` keeps some names for itself (`usage`...): the card form's
    SetupIntent still asks for off-session use, and the adapter refuses to send such a name
    through `raw_request` rather than lose it."""
    base, handler = kept_alive
    handler.body = json.dumps({"id": "seti_1", "client_secret": "seti_1_secret_x"}).encode()
    gateway = StripeGateway("sk_test_x", base)
    assert gateway.create_card_setup("cus_1", {"organization_id": "7"}).id == "seti_1"
    assert handler.lines == ["POST /v1/setup_intents HTTP/1.1"]
    assert b"usage=off_session" in handler.bodies[0].split(b"&")
    with pytest.raises(ValueError, match="usage"):
        gateway._json("post", "/v1/setup_intents", usage="off_session")
    assert len(handler.lines) == 1


def test_a_stripe_that_never_answers_is_transient_once_the_timeout_passes(
    kept_alive: tuple[str, type[KeptAlive]],
) -> None:
    base, handler = kept_alive
    handler.delay = 3
    started = time.monotonic()
    with pytest.raises(PaymentUnavailable, match="Timeout"):
        StripeGateway("sk_test_x", base, timeout=0.5).get_payment("pi_1")
    assert time.monotonic() - started < 2.5


def test_the_environments_https_proxy_carries_every_call(
    kept_alive: tuple[str, type[KeptAlive]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, handler = kept_alive
    monkeypatch.setenv("https_proxy", proxy)
    payment = StripeGateway("sk_test_x", "http://stripe.invalid").get_payment("pi_1")
    assert payment.status == "succeeded"
    assert handler.lines == ["GET http://stripe.invalid/v1/payment_intents/pi_1 HTTP/1.1"]


def test_a_proxy_written_without_scheme_and_with_credentials_carries_the_calls(
    kept_alive: tuple[str, type[KeptAlive]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As requests took it: `http://` assumed, the credentials sent to the proxy."""
    proxy, handler = kept_alive
    monkeypatch.setenv("https_proxy", proxy.replace("http://", "user:p%40ss@"))
    assert StripeGateway("sk_test_x", "http://stripe.invalid").get_payment("pi_1").amount == 900
    assert handler.proxy_auth == ["Basic " + base64.b64encode(b"user:p@ss").decode()]


def test_an_address_that_is_not_http_is_refused_before_the_key_is_sent(
    kept_alive: tuple[str, type[KeptAlive]],
) -> None:
    base, handler = kept_alive
    for odd in (base.removeprefix("http://"), base.replace("http://", "ftp://")):
        with pytest.raises(PaymentUnavailable, match="not an http"):
            StripeGateway("sk_live_secret", odd).get_payment("pi_1")
    assert handler.connections == 0


@pytest.mark.parametrize("key, body", [("sk_test_x\n", None), ("sk_test_x", b"\xff\xfe{}")])
def test_a_request_or_answer_http_cannot_carry_is_transient_not_a_crash(
    kept_alive: tuple[str, type[KeptAlive]], key: str, body: bytes | None
) -> None:
    """A key read from a file with its newline; an answer that is not UTF-8."""
    base, handler = kept_alive
    if body is not None:
        handler.body = body
    with pytest.raises(PaymentUnavailable):
        StripeGateway(key, base).get_payment("pi_1")


def test_an_informational_answer_never_hands_one_calls_answer_to_the_next() -> None:
    """A 103 then, later on the same connection, the real answer: the call fails (transient)
    and the next call reads its own answer, not the first one's."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(amount: int) -> bytes:
        body = json.dumps({**INTENT, "amount": amount}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    requests = itertools.count(1)  # over every connection

    def serve(connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as reader:
            while True:
                while (line := reader.readline()) not in (b"\r\n", b""):
                    pass
                if not line:
                    return
                if next(requests) == 1:
                    connection.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n")
                    time.sleep(0.3)
                    connection.sendall(answer(111))
                else:
                    connection.sendall(answer(222))

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    gateway = StripeGateway("sk_test_x", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(PaymentUnavailable):
            gateway.get_payment("pi_1")
        assert gateway.get_payment("pi_2").amount == 222
    finally:
        listener.close()


def test_a_certificate_stripe_never_signed_is_refused(
    kept_alive: tuple[str, type[KeptAlive]], tmp_path: Path
) -> None:
    """The calls check Stripe's certificate against the SDK's own authorities: a server
    with a self-made one is never sent the request (no key, no card leaves)."""
    _, handler = kept_alive
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(PaymentUnavailable, match="SSL"):
            StripeGateway("sk_test_x", f"https://127.0.0.1:{server.server_port}").get_payment(
                "pi_1"
            )
    finally:
        server.shutdown()
    assert handler.lines == []


SWEPT = re.compile(r"Task seats\.sweep\[[^\]]+\] succeeded")


def sweeps_run(worker: Worker) -> int:
    """How many sweeps the worker has finished, as its log tells."""
    return len(SWEPT.findall(worker.log.read_text(errors="replace")))


def wait_past_stuck_then_two_sweeps(
    runtime: Runtime, worker: Worker, purchase_id: int, worker_env: dict[str, str]
) -> None:
    """Until the purchase has been left alone long enough for the sweep to re-send it
    (`SEATS_STUCK_AFTER`), then until the worker has finished two more sweeps."""
    stuck_after = timedelta(seconds=float(worker_env["SEATS_STUCK_AFTER"]))
    deadline = time.monotonic() + 60
    while True:
        with runtime.uow() as uow:
            touched = uow.session.get_one(Purchase, purchase_id).updated_at
            now = uow.session.scalar(select(func.clock_timestamp()))
        if now - touched > stuck_after:
            break
        assert time.monotonic() < deadline, "the purchase never became old enough"
        time.sleep(0.2)
    before = sweeps_run(worker)
    while sweeps_run(worker) < before + 2:
        assert time.monotonic() < deadline, "the worker stopped sweeping"
        time.sleep(0.2)


def test_outage_parks_the_purchase_and_an_operator_retries_it(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    down = {"STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}", "SEATS_CHARGE_RETRIES": "2"}
    outage = Worker(worker_env, tmp_path / "outage.log")
    outage.start(**down)
    try:
        shop = Tenant(stack_runtime, stack_web.url)
        purchase = buy(shop.buyer, shop.sub, 5, "outage", new_card(stripe_base))
        deadline = time.monotonic() + 60
        while True:
            with stack_runtime.uow() as uow:
                row = uow.session.get_one(Purchase, purchase)
                attention, status, attempts = row.attention, row.status, row.attempts
            if attention:
                break
            assert time.monotonic() < deadline, "the purchase was never parked"
            time.sleep(0.2)
        assert "unavailable" in attention
        # the first try and its two retries; under load the sweep may also have sent one
        # while a retry was waiting out its countdown (the purchase looked stuck)
        assert status in ("pending", "processing") and attempts >= 3
        parked = seats_json(worker_env, "purchases", "list", "--parked")["purchases"]
        assert purchase in [p["id"] for p in parked]  # type: ignore[union-attr, index]
        wait_past_stuck_then_two_sweeps(stack_runtime, outage, purchase, worker_env)
        assert purchase not in sweep.due_purchases(
            stack_runtime.uow(), float(worker_env["SEATS_STUCK_AFTER"])
        )
        with stack_runtime.uow() as uow:
            row = uow.session.get_one(Purchase, purchase)
            assert row.attempts == attempts, "parked means no retry"
            assert row.attention == attention
        plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
        assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)
    finally:
        outage.stop()
    assert seats_json(worker_env, "purchases", "retry", str(purchase)) == {
        "id": purchase,
        "status": "succeeded",
    }
    done = wait_for(shop.buyer, purchase)
    assert done["status"] == "succeeded"
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_failed_event_is_parked_then_replayed(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    healthy = Worker(worker_env, tmp_path / "healthy.log")
    healthy.start()
    shop = Tenant(stack_runtime, stack_web.url)
    try:
        purchase = buy(shop.buyer, shop.sub, 4, "event-outage", new_card(stripe_base))
        assert wait_for(shop.buyer, purchase)["status"] == "succeeded"
    finally:
        healthy.stop()
    # an event whose handler must ask Stripe: it names a default card set elsewhere (the
    # dashboard), not the one we saved, so the handler reads the customer's card from Stripe
    customer = (
        stripe_client(stripe_base)
        .v1.customers.retrieve(customer_of(stack_runtime, shop.org))
        .to_dict()
    )
    customer["invoice_settings"] = {"default_payment_method": new_card(stripe_base)}
    secret = str(stack_runtime.settings.stripe_webhook_secret)
    event_id = f"evt_outage_{purchase}"
    outage = Worker(worker_env, tmp_path / "outage.log")
    outage.start(STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}", SEATS_CHARGE_RETRIES="1")
    try:
        body = event_around(customer, "customer.updated", event_id)
        assert post_event(stack_web, body, sign(body, secret)).status_code == 200
        deadline = time.monotonic() + 30
        while True:
            event = wait_processed(stack_runtime, event_id)
            # the drain's try, then the event's own task and its one retry: seen after
            # the second (the retry waiting) or the third, it is `failed` either way
            if event.outcome == "failed" and event.attempts >= 2:
                break
            assert time.monotonic() < deadline, (event.outcome, event.attempts)
            time.sleep(0.2)
        assert "Unavailable" in str(event.error)
    finally:
        outage.stop()
    # (other tests of this process may have left failed events of their own: replay ours)
    replayed = seats_json(worker_env, "webhooks", "replay", event_id)["events"]
    assert replayed[event_id] == "processed"  # type: ignore[index]
    assert wait_processed(stack_runtime, event_id).outcome == "processed"
    failed = seats_json(worker_env, "webhooks", "list", "--outcome", "failed")["events"]
    assert event_id not in [e["id"] for e in failed]  # type: ignore[union-attr]


def test_a_parked_purchase_does_not_hold_up_other_buyers(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
) -> None:
    """Issue 7, item 4: parked before any intent, it lets go of the plan."""
    outage = Worker(worker_env, tmp_path / "outage.log")
    outage.start(STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}", SEATS_CHARGE_RETRIES="1")
    shop = Tenant(stack_runtime, stack_web.url)
    try:
        first = buy(shop.buyer, shop.sub, 5, "parked-first", new_card(stripe_base))
        deadline = time.monotonic() + 60
        while True:
            with stack_runtime.uow() as uow:
                parked = uow.session.get_one(Purchase, first)
                attention, status = parked.attention, parked.status
            if attention:
                break
            assert time.monotonic() < deadline, "the purchase was never parked"
            time.sleep(0.2)
        assert status == "pending"
    finally:
        outage.stop()
    second = buy(shop.owner, shop.sub, 6, "parked-second", new_card(stripe_base))
    healthy = Worker(worker_env, tmp_path / "healthy.log")
    healthy.start()
    try:
        done = wait_for(shop.owner, second)
    finally:
        healthy.stop()
    assert done["status"] == "succeeded", done
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)
    waiting = shop.buyer.get(f"/api/purchases/{first}").json()
    assert waiting["status"] == "pending" and waiting["waiting"]["code"] == "parked"
    assert seats_json(worker_env, "purchases", "retry", str(first)) == {
        "id": first,
        "status": "failed",
    }
    assert shop.buyer.get(f"/api/purchases/{first}").json()["failure_code"] == "already_paid"
    charged = succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))
    assert [c.amount for c in charged] == [done["amount_due"]]
