"""The console's browser-facing protections: response headers on everything, and the CSRF check.

Every response carries a strict Content-Security-Policy (only this origin's scripts, styles and images; no
inline script; no framing; forms post only here), nosniff and no-referrer. Everything but /static is
`Cache-Control: no-store`: pages and images that hold a face are never kept by the browser or a proxy, so a
face leaves the console only as pixels on a screen. An image goes out only as image/jpeg or image/png, as its
bytes say (never as the camera claimed), sandboxed by its own policy and with a fixed file name.

Logins are the one thing an anonymous client can make the console work hard for (an argon2id hash, 64 MiB):
a per-address limit on password checks and a cap on checks running at once bound that work, and a cap on the
size of every request body bounds what a form can make the server hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioning.console.references import media_type

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
IMAGE_TYPES: Mapping[str, str] = {"image/jpeg": ".jpg", "image/png": ".png"}  # what an image may go out as
IMAGE_CSP = "sandbox; default-src 'none'"  # an image opened on its own runs nothing, loads nothing
MAX_BODY = 64 * 1024  # bytes of a request body: the largest form (a 2,000-character note) fits many times over
DRAIN = 1024 * 1024  # bytes of a refused body read and dropped so that the client gets the 413 (then cut off)


class NotAnImageError(Exception):
    """Bytes to be served as an image are neither a JPEG nor a PNG (whatever the sender claimed)."""


@dataclass(frozen=True)
class ImageReply:
    """How an image goes out: its media type from its own bytes, and the headers that keep it an image."""

    media_type: str
    headers: Mapping[str, str]


def image_reply(data: bytes, stem: str) -> ImageReply:
    """The media type (image/jpeg or image/png, from the bytes' magic) and headers for serving `data` as
    `<stem>.jpg|.png`; raises NotAnImageError for anything else."""
    kind = media_type(data)
    ext = IMAGE_TYPES.get(kind)
    if ext is None:
        raise NotAnImageError(f"{stem}: not served: the bytes are not a JPEG or PNG image ({kind})")
    return ImageReply(kind, {"content-security-policy": IMAGE_CSP,
                             "content-disposition": f"inline; filename={stem}{ext}"})


class CsrfError(Exception):
    """A state-changing request without the session's CSRF token (or with a wrong one)."""


def check_csrf(expected: str, given: object) -> None:
    """Raises CsrfError unless `given` is the session's token (compared in constant time)."""
    if not isinstance(given, str) or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfError("missing or wrong CSRF token")


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP response (streams included). A response that
    sets its own Content-Security-Policy keeps it (the images' is stricter than the pages')."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = STATIC_CACHE if str(scope.get("path", "")).startswith(STATIC_PREFIX) else NO_STORE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = list(message.get("headers", []))
                own_csp = any(k.decode("latin-1").lower() == "content-security-policy" for k, _ in given)
                added = [(k, v) for k, v in COMMON_HEADERS + cache
                         if not (own_csp and k == "content-security-policy")]
                ours = {name for name, _ in added}
                headers = [(k, v) for k, v in given if k.decode("latin-1").lower() not in ours]
                headers += [(k.encode(), v.encode()) for k, v in added]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware refusing (413) a request whose body is larger than `limit` bytes, declared or sent
    (chunked): the body is read up to the limit before the application sees it, then handed over whole. A
    refused body is read on and dropped, up to DRAIN bytes, so the client is not cut off before the answer."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # no body is read (the event stream keeps its receive)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._too_large(receive, send, 0)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(receive, send, size if message.get("more_body", False) else None)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, receive: Receive, send: Send, read: int | None) -> None:
        """413; `read`: bytes of the body read so far (None: all of it)."""
        while read is not None and read <= DRAIN:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                read = None
        body = f"refused: a request body may hold at most {self.limit} bytes\n".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class LoginLimits:
    """How much password checking the anonymous can ask for."""

    burst: int = 10  # password checks one client address may start at once
    refill_s: float = 6.0  # then one more every refill_s (10 a minute)
    concurrent: int = 2  # password checks running at once, all addresses together (each hash takes 64 MiB)
    wait_s: float = 10.0  # how long a login waits for a free slot before it is refused
    addresses: int = 10_000  # client addresses remembered (the least recently seen are forgotten)


class LoginThrottledError(Exception):
    """This client address has started too many password checks lately."""

    def __init__(self, address: str, retry_after: int) -> None:
        super().__init__(f"login from {address}: too many attempts; try again in {retry_after} s")
        self.retry_after = retry_after


class LoginBusyError(Exception):
    """Every password-check slot stayed busy for the whole wait."""


class AddressThrottle:
    """A token bucket per client address: `burst` password checks, then one per `refill_s`. Thread-safe."""

    def __init__(self, limits: LoginLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, as of)

    def take(self, address: str) -> None:
        """Spends one of the address's checks; raises LoginThrottledError when it has none left."""
        at = self._clock()
        lim = self.limits
        with self._lock:
            tokens, then = self._buckets.pop(address, (float(lim.burst), at))
            tokens = min(float(lim.burst), tokens + (at - then) / lim.refill_s)
            if tokens < 1.0:
                self._buckets[address] = (tokens, at)
                raise LoginThrottledError(address, max(1, int((1.0 - tokens) * lim.refill_s + 0.999)))
            self._buckets[address] = (tokens - 1.0, at)
            while len(self._buckets) > lim.addresses:
                self._buckets.popitem(last=False)


class LoginGate:
    """At most `concurrent` password checks at once; a check waits up to `wait_s` for a slot (event loop only)."""

    def __init__(self, limits: LoginLimits):
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrent)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.limits.wait_s)
        except TimeoutError:
            raise LoginBusyError(f"{self.limits.concurrent} logins are being checked; none finished within "
                                 f"{self.limits.wait_s:g} s") from None
        try:
            yield
        finally:
            self._slots.release()
