"""The console's browser-facing protections: response headers on everything, and the CSRF check.

Every response carries a strict Content-Security-Policy (only this origin's scripts, styles and images; no
inline script; no framing; forms post only here), nosniff and no-referrer. Everything but /static is
`Cache-Control: no-store`: pages and images that hold a face are never kept by the browser or a proxy, so a
face leaves the console only as pixels on a screen.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; media-src 'none'; object-src 'none'; worker-src 'none'; manifest-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC_PREFIX = "/static/"
COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    ("strict-transport-security", "max-age=31536000"),
)
NO_STORE: tuple[tuple[str, str], ...] = (("cache-control", "no-store"), ("pragma", "no-cache"))
STATIC_CACHE: tuple[tuple[str, str], ...] = (("cache-control", "private, max-age=3600"),)


class CsrfError(Exception):
    """A state-changing request without the session's CSRF token (or with a wrong one)."""


def check_csrf(expected: str, given: object) -> None:
    """Raises CsrfError unless `given` is the session's token (compared in constant time)."""
    if not isinstance(given, str) or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfError("missing or wrong CSRF token")


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP response (streams included)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = STATIC_CACHE if str(scope.get("path", "")).startswith(STATIC_PREFIX) else NO_STORE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                ours = {name for name, _ in COMMON_HEADERS + cache}
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in ours]
                headers += [(k.encode(), v.encode()) for k, v in COMMON_HEADERS + cache]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
