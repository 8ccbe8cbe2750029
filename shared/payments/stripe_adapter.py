"""The only module that talks to Stripe: SDK calls in, domain values out."""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, NoReturn

import stripe
import urllib3

from shared.domain.cards import Card
from shared.payments.gateway import (
    CardSetup,
    Payment,
    PaymentRefused,
    PaymentRequest,
    PaymentUnavailable,
    friendly_message,
)

TRANSIENT = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    # the same key still in flight, or reused with other parameters: never a card refusal
    stripe.IdempotencyError,
)


def _translate(error: stripe.StripeError) -> Exception:
    if isinstance(error, TRANSIENT):
        return PaymentUnavailable(f"{type(error).__name__}: {error.user_message or error}")
    code = error.code or "payment_refused"
    return PaymentRefused(code, friendly_message(code, error.user_message))


def _card(method: dict[str, Any]) -> Card:
    card = method.get("card") or {}
    return Card(method["id"], card.get("brand"), card.get("last4"))


def verify_signature(
    payload: bytes, header: str | None, secrets: list[str], tolerance: int
) -> bool:
    """Stripe's own check (any `v1` may match, stale timestamps refused), for each secret.

    Several secrets may be configured at once while an endpoint's secret is rolled.
    """
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError):
            continue
        return True
    return False


def _id_of(value: Any) -> str | None:
    """An expandable field: an id, an expanded object, or nothing."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


RAW_REQUEST_OWN = frozenset(
    {
        "api_key",
        "base",
        "content_type",
        "headers",
        "idempotency_key",
        "max_network_retries",
        "stripe_account",
        "stripe_context",
        "stripe_version",
        "usage",
    }
)
"""Names `StripeClient.raw_request` takes out of its parameters (options, its base address,
its telemetry) instead of sending them to Stripe."""


def _in_path(stripe_id: str) -> str:
    """An id inside a path, escaped as the SDK's own services do: an id from an event or a
    form can never reach another resource."""
    return urllib.parse.quote_plus(stripe_id)


def _payment(intent: dict[str, Any]) -> Payment:
    failure = intent.get("last_payment_error") or {}
    code = failure.get("code") or failure.get("decline_code")
    metadata = intent.get("metadata") or {}
    return Payment(
        id=intent["id"],
        status=intent["status"],
        amount=int(intent["amount"]),
        currency=intent["currency"],
        customer_id=_id_of(intent.get("customer")),
        payment_method_id=_id_of(intent.get("payment_method")),
        client_secret=intent.get("client_secret"),
        failure_code=code,
        failure_message=friendly_message(code, failure.get("message")) if code else None,
        metadata={str(key): str(value) for key, value in metadata.items()},
    )


class PooledTransport(stripe.HTTPClient):
    """The SDK's HTTP on urllib3's connection pools alone, one kept-alive pool per origin.

    The SDK's default, `requests`, spends a third of each call's CPU (merging session
    settings, hooks, cookies, parsing the URL again) above the same urllib3 pools: about a
    tenth of a worker's CPU in the purchase benchmark. One per thread, like the clients.
    Any failure becomes the SDK's `APIConnectionError` (so the adapter's `PaymentUnavailable`,
    never a decline and never a 500), retryable as the SDK's requests client says
    (timeouts and failed connections, not certificate errors); no streamed calls (the base
    class refuses them). As requests did: a proxy
    without a scheme is `http://`, its credentials go in `Proxy-Authorization`; an address
    that is not http(s) is refused before anything (the secret key) is sent.
    """

    name = "urllib3"

    def __init__(self, timeout: float, proxy: str | None) -> None:
        super().__init__(proxy=proxy)
        self._options: dict[str, Any] = {
            "maxsize": 1,
            "retries": False,
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        }
        self._tls: dict[str, Any] = {
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": stripe.ca_bundle_path,
        }
        self._through = self._proxy_manager(proxy) if proxy else None
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def _proxy_manager(self, proxy: str) -> urllib3.ProxyManager:
        address = urllib3.util.parse_url(proxy if "://" in proxy else f"http://{proxy}")
        headers = (
            urllib3.make_headers(proxy_basic_auth=urllib.parse.unquote(address.auth))
            if address.auth
            else None
        )
        return urllib3.ProxyManager(
            address._replace(auth=None).url, proxy_headers=headers, **self._options, **self._tls
        )

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        try:
            scheme, _, rest = url.partition("://")
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise urllib3.exceptions.LocationValueError(f"not an http(s) address: {url!r}")
            if self._through is not None:
                answer = self._through.request(
                    method.upper(), url, body=post_data, headers=headers, redirect=False
                )
            else:
                host, _, path = rest.partition("/")
                origin = f"{scheme}://{host}"
                pool = self._pools.get(origin)
                if pool is None:
                    tls = self._tls if scheme == "https" else {}
                    pool = self._pools[origin] = urllib3.connection_from_url(
                        origin, **self._options, **tls
                    )
                answer = pool.urlopen(
                    method.upper(), "/" + path, body=post_data, headers=headers, redirect=False
                )
            if answer.status < 200:
                # informational (103...): the final answer would come later on this connection
                # and be read as the next call's; drop every connection instead
                self.close()
                raise urllib3.exceptions.ProtocolError(f"informational answer {answer.status}")
            return answer.data.decode("utf-8"), answer.status, answer.headers
        except Exception as error:  # as the SDK's own clients: a bad header value, bad UTF-8...
            self._failed(error)

    @staticmethod
    def _failed(error: Exception) -> NoReturn:
        retry = not isinstance(error, urllib3.exceptions.SSLError) and isinstance(
            error, urllib3.exceptions.TimeoutError | urllib3.exceptions.ProtocolError | OSError
        )
        raise stripe.APIConnectionError(
            "Unexpected error communicating with Stripe "
            f"(network error: {type(error).__name__}: {error})",
            should_retry=retry,
        ) from error

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._through is not None:
            self._through.clear()


class StripeGateway:
    """Idempotency keys come from our own ids, so a retried call is the same call.

    Safe to share between threads (a worker's thread pool): each thread gets its own
    client and connection pool.
    """

    def __init__(self, api_key: str, api_base: str | None = None, timeout: float = 20) -> None:
        self._api_key = api_key
        self._addresses: Any = {"api": api_base} if api_base else {}
        self._timeout = timeout
        # Proxy settings are read from the environment once here, not on every call.
        self._proxy = urllib.request.getproxies().get("https")
        self._local = threading.local()

    @property
    def client(self) -> stripe.StripeClient:
        found: stripe.StripeClient | None = getattr(self._local, "client", None)
        if found is None:
            found = stripe.StripeClient(
                self._api_key,
                base_addresses=self._addresses,
                max_network_retries=0,
                http_client=PooledTransport(self._timeout, self._proxy),
            )
            self._local.client = found
        return found

    def _json(self, verb: str, path: str, key: str | None = None, /, **params: Any) -> Any:
        """One call through the SDK, its answer as Stripe's JSON. Everything here reads plain
        values: the SDK's typed objects, built for each answer and turned back into dicts,
        were a tenth of a worker's CPU. Errors are the SDK's own (`stripe.CardError`...).
        `raw_request` takes some names for itself and would never send them (`usage`, say):
        such a parameter is refused here, not silently dropped."""
        taken = RAW_REQUEST_OWN & params.keys()
        if taken:
            raise ValueError(f"raw_request would not send {sorted(taken)}: use the typed call")
        options = {"idempotency_key": key} if key else {}
        return self.client.raw_request(verb, path, **params, **options).data

    def create_customer(self, organization_id: int, name: str) -> str:
        try:
            customer = self._json(
                "post",
                "/v1/customers",
                f"org-{organization_id}-customer",
                name=name,
                metadata={"organization_id": str(organization_id)},
            )
        except stripe.StripeError as error:
            raise _translate(error) from error
        return str(customer["id"])

    def attach_card(self, payment_method_id: str, customer_id: str) -> Card:
        try:
            method = self._json(
                "post",
                f"/v1/payment_methods/{_in_path(payment_method_id)}/attach",
                customer=customer_id,
            )
        except stripe.InvalidRequestError as error:
            if error.http_status == 404 or error.code == "resource_missing":
                raise PaymentRefused(
                    "payment_method_unknown", friendly_message("payment_method_unknown")
                ) from error
            raise _translate(error) from error
        except stripe.StripeError as error:
            raise _translate(error) from error
        return _card(method)

    def create_card_setup(self, customer_id: str, metadata: dict[str, str]) -> CardSetup:
        """No idempotency key: each page that offers a new card gets its own SetupIntent, a
        repeated one moves no money and is simply never confirmed."""
        params: Any = {
            "customer": customer_id,
            "usage": "off_session",  # a name `raw_request` keeps for itself: the typed call
            "payment_method_types": ["card"],
            "metadata": metadata,
        }
        try:
            intent = self.client.v1.setup_intents.create(params=params)
        except stripe.StripeError as error:
            raise _translate(error) from error
        return CardSetup(str(intent.id), str(intent.client_secret))

    def create_payment(self, request: PaymentRequest) -> Payment:
        try:
            intent = self._json(
                "post",
                "/v1/payment_intents",
                request.idempotency_key,
                amount=request.amount,
                currency=request.currency,
                customer=request.customer_id,
                payment_method=request.payment_method_id,
                metadata=request.metadata,
            )
        except stripe.StripeError as error:
            raise _translate(error) from error
        return _payment(intent)

    def confirm_payment(
        self, payment_id: str, *, off_session: bool = False, attempt: int = 1
    ) -> Payment:
        """A decline is an outcome, not an error: the intent then says why. A refusal
        that left the intent unconfirmed (a card detached since checkout, say) is final."""
        key = f"{payment_id}-confirm" + (f"-{attempt}" if attempt > 1 else "")
        params: Any = {"off_session": True} if off_session else {}
        try:
            intent = self._json(
                "post", f"/v1/payment_intents/{_in_path(payment_id)}/confirm", key, **params
            )
        except (stripe.CardError, stripe.InvalidRequestError) as error:
            payment = self.get_payment(payment_id)
            if payment.status == "requires_confirmation":
                code = error.code or "payment_failed"
                raise PaymentRefused(code, friendly_message(code, error.user_message)) from error
            return payment
        except stripe.StripeError as error:
            raise _translate(error) from error
        return _payment(intent)

    def update_payment(
        self, payment_id: str, *, amount: int, payment_method_id: str, attempt: int
    ) -> Payment:
        try:
            intent = self._json(
                "post",
                f"/v1/payment_intents/{_in_path(payment_id)}",
                f"{payment_id}-update-{attempt}",
                amount=amount,
                payment_method=payment_method_id,
            )
        except stripe.StripeError as error:
            raise _translate(error) from error
        return _payment(intent)

    def get_payment(self, payment_id: str) -> Payment:
        try:
            return _payment(self._json("get", f"/v1/payment_intents/{_in_path(payment_id)}"))
        except stripe.StripeError as error:
            raise _translate(error) from error

    def cancel_payment(self, payment_id: str) -> Payment:
        try:
            return _payment(
                self._json("post", f"/v1/payment_intents/{_in_path(payment_id)}/cancel")
            )
        except stripe.InvalidRequestError:
            return self.get_payment(payment_id)
        except stripe.StripeError as error:
            raise _translate(error) from error

    def refund_payment(self, payment_id: str) -> str:
        """Stripe honours the key, but a stand-in may not: look at what was refunded first.

        Only a payment already refunded in full counts as done; after a partial
        refund (an operator's, say) Stripe refunds the rest.
        """
        try:
            amount = int(self._json("get", f"/v1/payment_intents/{_in_path(payment_id)}")["amount"])
            existing = [
                refund
                for refund in self._json(
                    "get", "/v1/refunds", payment_intent=payment_id, limit=100
                )["data"]
                if refund["status"] in ("succeeded", "pending")
            ]
            if existing and sum(int(refund["amount"]) for refund in existing) >= amount:
                return str(existing[0]["id"])
            refund = self._json(
                "post", "/v1/refunds", f"refund-{payment_id}", payment_intent=payment_id
            )
        except stripe.StripeError as error:
            raise _translate(error) from error
        return str(refund["id"])

    def set_default_card(self, customer_id: str, payment_method_id: str) -> None:
        try:
            self._json(
                "post",
                f"/v1/customers/{_in_path(customer_id)}",
                invoice_settings={"default_payment_method": payment_method_id},
            )
        except stripe.StripeError as error:
            raise _translate(error) from error

    def get_card(self, payment_method_id: str) -> Card:
        try:
            return _card(self._json("get", f"/v1/payment_methods/{_in_path(payment_method_id)}"))
        except stripe.StripeError as error:
            raise _translate(error) from error

    def default_card(self, customer_id: str) -> Card | None:
        """Stripe's current default for renewals, read fresh so event order does not matter:
        the card expanded in the same call (one round trip to Stripe, not two)."""
        try:
            customer = self._json(
                "get",
                f"/v1/customers/{_in_path(customer_id)}",
                expand=["invoice_settings.default_payment_method"],
            )
            method = (customer.get("invoice_settings") or {}).get("default_payment_method")
            if method and not isinstance(method, dict):
                method = self._json("get", f"/v1/payment_methods/{_in_path(str(method))}")
        except stripe.StripeError as error:
            raise _translate(error) from error
        # a detached card is no default (Stripe clears a detached default, but an answer read
        # as it was being detached may still name it)
        return _card(method) if method and method.get("customer") else None

    def list_events(self, created_after: int) -> list[dict[str, Any]]:
        """Every event after a moment, oldest first, following Stripe's pages."""
        events: list[dict[str, Any]] = []
        params: Any = {"created": {"gt": created_after}, "limit": 100}
        try:
            while True:
                page = self._json("get", "/v1/events", **params)
                events.extend(page["data"])
                if not page.get("has_more") or not page["data"]:
                    break
                params["starting_after"] = page["data"][-1]["id"]
        except stripe.StripeError as error:
            raise _translate(error) from error
        events.sort(key=lambda event: (event.get("created", 0), event["id"]))
        return events
