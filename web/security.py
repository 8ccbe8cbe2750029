"""Cookies and headers for the pages (README "Security"): CSRF on every form (Flask-WTF),
session cookies HttpOnly, SameSite=Lax, and Secure whenever the request came over HTTPS
or the service's public address is https."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, Request, Response, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

SESSION_LIFETIME = timedelta(hours=12)

csrf = CSRFProtect()

MACHINE_FACING = ("/webhooks/", "/api/", "/metrics", "/healthz", "/readyz")
"""Paths only programs call, with a signature or a bearer token: they never use a session."""


class SessionCookies(SecureCookieSessionInterface):
    """Secure follows the request: a page served over HTTPS never gets a cookie that could
    travel back over plain HTTP, and local development over http still signs in."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """None (Flask's null session) for machine-facing paths: opening one costs a signing
        serializer and a cookie parse, a tenth of a webhook's time, for nothing."""
        if request.path.startswith(MACHINE_FACING):
            return None
        return super().open_session(app, request)


def cookie_secure(app: Flask) -> bool:
    return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_policy(stripe_js_url: str) -> str:
    """Scripts only from us and Stripe.js; Stripe.js talks to its own origin (the stand-in
    serves both) and, for real Stripe, to api.stripe.com and its frames."""
    stripe = _origin(stripe_js_url) or "https://js.stripe.com"
    real = stripe == "https://js.stripe.com"
    connect = f"'self' {stripe}" + (" https://api.stripe.com" if real else "")
    frames = stripe + (" https://hooks.stripe.com" if real else "")
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {stripe}",
            f"connect-src {connect}",
            f"frame-src {frames}",
            "img-src 'self' data:",
            "style-src 'self' 'unsafe-inline'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ]
    )


def install(app: Flask, stripe_js_url: str, https_address: bool) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="seats_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https_address,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session (12 hours at most)
    )
    app.session_interface = SessionCookies()
    csrf.init_app(app)
    policy = content_policy(stripe_js_url)

    def page_headers(response: Response) -> Response:
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", policy)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.after_request(page_headers)
