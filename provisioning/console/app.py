"""The console's web application: Starlette pages over the Console facade, served by uvicorn over TLS.

Pages: login, the queue of open alerts (live over server-sent events: each new alert's row, rendered once, a
row again when a decision changes it, and the ids of alerts decided; numbered, so a reconnecting page gets what
it missed; with a visible and an audible cue), the alert view (camera crops beside the watch-list photo, the
decision form), the fleet view, the deployment report (supervisors, admins) and the account list (admins).
Every route but /login and /static needs a session: pages send the anonymous to the login page, images and the
event stream answer 401. Faces (queue, alerts, images, the stream) are for reviewers and supervisors only. Every
POST carries the session's CSRF token (403 without it). Faces leave only as image responses marked no-store,
and every one served is on the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from jinja2 import pass_context
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edge.trust.times import format_time, now
from provisioning.console.accounts import (
    Account,
    AccountDisabledError,
    AccountError,
    AccountLockedError,
    AccountStoreError,
    UnknownAccountError,
)
from provisioning.console.fleetview import AuditReportError
from provisioning.console.security import (
    AddressThrottle,
    BodyLimit,
    CsrfError,
    LoginBusyError,
    LoginGate,
    LoginLimits,
    LoginThrottledError,
    NotAnImageError,
    SecurityHeaders,
    check_csrf,
    image_reply,
)
from provisioning.console.service import (
    Alert,
    AlreadyDecidedError,
    Console,
    ConsoleError,
    DuplicateReviewerError,
    EvidenceGoneError,
    NothingToCompareError,
    ReviewerRoleError,
    UnknownAlertError,
)
from provisioning.console.sessions import COOKIE, LOGIN_COOKIE, Session, SessionError, SessionLimits, SessionStore

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
DECIDERS = frozenset({"reviewer", "supervisor"})
FACE_ROLES = DECIDERS  # who sees faces and watch-list data (queue, alerts, images, the stream); not an admin
REPORT_ROLES = frozenset({"supervisor", "admin"})
HEARTBEAT_S = 5.0  # the event stream re-checks its session at least this often (and sends a comment)
STREAM_QUEUE = 500  # events waiting for one stream; a stream that falls further behind is reset
REPLAY = 500  # recent events kept for a reconnecting page (Last-Event-ID)
DECIDED_KEPT = 10_000  # ids of decided alerts remembered, so a late row render does not bring one back
OUTCOMES = ("confirmed", "dismissed")
PARTS = ("face", "context")


class Anonymous(Exception):
    """The request has no live session (pages redirect to login; images and the stream answer 401)."""


class Forbidden(Exception):
    """The account's role may not see this page."""


@dataclass(frozen=True)
class WebSettings:
    limits: SessionLimits = field(default_factory=SessionLimits)
    heartbeat_s: float = HEARTBEAT_S
    logins: LoginLimits = field(default_factory=LoginLimits)
    stream_queue: int = STREAM_QUEUE


def age(delta: timedelta) -> str:
    """A duration as an officer reads it: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    s = int(delta.total_seconds())
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 60:
        return f"{sign}{s} s"
    if s < 3600:
        return f"{sign}{s // 60} min"
    if s < 86400:
        return f"{sign}{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{sign}{s // 86400} d {s % 86400 // 3600} h"


def status(alert: Alert) -> str:
    """open, disputed (reviewers disagree: a supervisor decides), confirmed or dismissed."""
    if alert.outcome is not None:
        return alert.outcome
    return "disputed" if len({d.outcome for d in alert.decisions}) > 1 else "open"


@dataclass(frozen=True)
class FeedEvent:
    """One server-sent event of the live queue; `seq` None: not numbered (not replayed)."""

    kind: str
    data: str
    seq: int | None = None

    def text(self, epoch: str) -> str:
        ident = "" if self.seq is None else f"id: {epoch}.{self.seq}\n"
        return f"{ident}event: {self.kind}\ndata: {self.data}\n\n"


class Subscriber:
    """One open event stream's waiting events (bounded); once it overflows it gets only a reset."""

    def __init__(self, size: int):
        self.queue: asyncio.Queue[FeedEvent] = asyncio.Queue(size)
        self.overflowed = False

    def put(self, event: FeedEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # a stalled page: drop what waits, tell it to load the queue afresh
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(FeedEvent("reset", "behind"))


class AlertFeed:
    """Fans live queue updates out to the open event streams: a new alert's rendered row (rendered once, in a
    worker thread, for every viewer), a row changed by a decision, and the id of an alert whose outcome now
    stands. Events are numbered; the last REPLAY are kept so that a page that reconnects (or was loading)
    gets what it missed. Everything but `from_thread` runs on the event loop."""

    def __init__(self, render_row: Callable[[str], str | None], stream_queue: int = STREAM_QUEUE):
        self._render_row = render_row
        self._stream_queue = stream_queue
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.epoch = secrets.token_hex(4)  # a new one per process: a page's ids from before a restart are stale
        self._seq = 0
        self._recent: deque[FeedEvent] = deque(maxlen=REPLAY)
        self._decided: OrderedDict[str, int] = OrderedDict()  # event id -> seq of its "decided" event

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def position(self) -> str:
        """The id of the latest event (a page rendered now asks the stream for what comes after it)."""
        return f"{self.epoch}.{self._seq}"

    def from_thread(self, event_id: str) -> None:
        """The Console's listener callback (its MQTT thread): hands the id to the event loop at once."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._new_alert, event_id)

    def _new_alert(self, event_id: str) -> None:
        task = asyncio.create_task(self.render_and_publish("alert", event_id))
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def render_and_publish(self, kind: str, event_id: str) -> None:
        """The alert's row as an `alert` (new, or open again after the node refused its review) or `changed`
        event, unless its outcome stands by then. Pages replace a row they have."""
        started = self._seq
        try:
            row = await run_in_threadpool(self._render_row, event_id)
        except ConsoleError as exc:  # gone again before it was shown (dismissed, purged)
            log.info("live queue: alert %s not shown: %s", event_id, exc)
            return
        if row is None or self._decided.get(event_id, -1) > started:  # decided while rendered: it stays out
            return
        self.publish(kind, json.dumps({"id": event_id, "html": row}))

    def decided(self, event_id: str, outcome: str) -> None:
        """The alert's outcome stands: it leaves every open queue (and a row rendered meanwhile does not return;
        one rendered after this does: the alert is open again)."""
        self._decided.pop(event_id, None)
        self._decided[event_id] = self._seq + 1  # the seq `publish` gives it below
        while len(self._decided) > DECIDED_KEPT:
            self._decided.popitem(last=False)
        self.publish("decided", json.dumps({"id": event_id, "outcome": outcome}))

    def publish(self, kind: str, data: str) -> None:
        """One numbered server-sent event to every open stream (`data` holds no newline)."""
        self._seq += 1
        event = FeedEvent(kind, data, self._seq)
        self._recent.append(event)
        for sub in self._subscribers:
            sub.put(event)

    def missed(self, since: str | None) -> list[FeedEvent] | None:
        """The kept events after the id `since` (epoch.seq); None when they cannot be told (another process's
        id, or older than what is kept): the page must load the queue afresh. No `since`: nothing missed."""
        if not since:
            return []
        epoch, _, seq = since.partition(".")
        if epoch != self.epoch or not seq.isdigit() or int(seq) > self._seq:
            return None
        after = int(seq)
        oldest = self._recent[0].seq if self._recent else self._seq + 1
        if oldest is not None and after + 1 < oldest:
            return None
        return [e for e in self._recent if e.seq is not None and e.seq > after]

    @contextlib.contextmanager
    def subscription(self, since: str | None = None) -> Iterator[Subscriber]:
        """A subscriber for one stream, holding first what it missed after `since` (or a reset)."""
        sub = Subscriber(self._stream_queue)
        missed = self.missed(since)
        for event in missed if missed is not None else [FeedEvent("reset", "stale")]:
            sub.put(event)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)


class ConsoleWeb:
    """The pages and their guard; one instance per console process."""

    def __init__(self, console: Console, clock: Callable[[], datetime], settings: WebSettings):
        self.console = console
        self.clock = clock
        self.settings = settings
        self.sessions = SessionStore(clock, settings.limits)
        self.feed = AlertFeed(self.render_row, settings.stream_queue)
        self.throttle = AddressThrottle(settings.logins)
        self.gate = LoginGate(settings.logins)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.globals["csrf_token"] = _csrf_token
        env.filters["age"] = age
        env.filters["utc"] = lambda t: "" if t is None else format_time(t)
        env.filters["status"] = status
        env.filters["q"] = lambda s: quote(str(s), safe="")

    # -- who is asking --
    def session(self, request: Request) -> Session:
        """The request's live session (its idle timer restarted), its account still as it logged in; raises
        Anonymous."""
        session = self.live(request.cookies.get(COOKIE), touch=True)
        request.state.session = session
        return session

    def live(self, token: str | None, touch: bool) -> Session:
        """The session for `token` if it is live and its account still enabled, in the same role and under the
        same password (epoch); otherwise it ends and Anonymous is raised. `touch`: counts as the officer's use."""
        try:
            session = self.sessions.use(token, touch)
        except SessionError as exc:
            raise Anonymous(str(exc)) from None
        try:
            account = self.console.accounts.get(session.account)
        except UnknownAccountError:
            account = None
        except AccountStoreError as exc:  # cannot tell: refused, the session kept for when the file reads again
            log.error("session of %s: %s", session.account, exc)
            raise Anonymous(str(exc)) from None
        if account is None or account.disabled or account.role != session.role:
            self.sessions.end(token)
            raise Anonymous(f"account {session.account} is disabled or changed")
        if account.password_epoch != session.password_epoch:
            self.sessions.end(token)
            raise Anonymous(f"account {session.account} has a new password since this session began")
        return session

    def face_session(self, request: Request) -> Session:
        """The request's session, if its role sees faces and watch-list data; raises Anonymous or Forbidden."""
        session = self.session(request)
        if session.role not in FACE_ROLES:
            raise Forbidden(f"{session.account} ({session.role}) does not see alerts, faces or watch-list data")
        return session

    def account(self, session: Session) -> Account:
        return Account(session.account, session.role, False, session.password_epoch)

    def page(self, request: Request, name: str, context: Mapping[str, Any], code: int = 200) -> Response:
        ctx = {"session": getattr(request.state, "session", None), "now": self.clock(), **context}
        return self.templates.TemplateResponse(request, name, ctx, status_code=code)

    # -- login / logout --
    def login_form(self, request: Request, error: str | None = None, code: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.page(request, "login.html", {"login_csrf": token, "error": error}, code)
        response.set_cookie(LOGIN_COOKIE, token, max_age=900, path="/", secure=True, httponly=True,
                            samesite="strict")
        return response

    async def login_get(self, request: Request) -> Response:
        return self.login_form(request)

    async def login_post(self, request: Request) -> Response:
        form = await request.form()
        try:
            check_csrf(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf"))
        except CsrfError:
            return self.login_form(request, "The login form expired; try again.", 403)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        address = request.client.host if request.client is not None else "unknown"
        try:
            self.throttle.take(address)  # before any hashing: a flood from one address costs nothing
        except LoginThrottledError as exc:
            log.warning("%s", exc)
            response = self.login_form(request, f"Too many login attempts from this address; try again in "
                                       f"{exc.retry_after} s.", 429)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        try:
            async with self.gate.slot():
                account = await run_in_threadpool(self.console.accounts.authenticate, name, password)
        except LoginBusyError as exc:
            log.warning("login of %r: %s", name, exc)
            response = self.login_form(request, "The console is busy checking other logins; try again in a "
                                       "moment.", 503)
            response.headers["retry-after"] = "5"
            return response
        except AccountLockedError:
            await run_in_threadpool(self.console.journal.record, "login-failed", account=name, why="locked")
            return self.login_form(request, "This account is locked after repeated failures; try later or ask "
                                   "an admin to reset the password.", 403)
        except AccountDisabledError:
            await run_in_threadpool(self.console.journal.record, "login-failed", account=name, why="disabled")
            return self.login_form(request, "Wrong name or password.", 401)
        except AccountError:
            await run_in_threadpool(self.console.journal.record, "login-failed", account=name, why="credentials")
            return self.login_form(request, "Wrong name or password.", 401)
        self.sessions.end(request.cookies.get(COOKIE))  # a fresh token at every login (no fixation)
        token, _session = self.sessions.create(account.name, account.role, account.password_epoch)
        await run_in_threadpool(self.console.journal.record, "login", account=account.name, role=account.role)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, path="/", secure=True, httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        await _checked_form(request, session)
        self.sessions.end(request.cookies.get(COOKIE))
        await run_in_threadpool(self.console.journal.record, "logout", account=session.account)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- pages --
    def queue(self, request: Request) -> Response:
        session = self.session(request)
        if session.role not in FACE_ROLES:  # an admin's start page is the accounts
            return RedirectResponse("/admin", status_code=303)
        since = self.feed.position  # before the queue is read: the stream then brings anything after it
        return self.page(request, "queue.html", {"alerts": self.console.queue(), "recent": self.console.recent(20),
                                                 "since": since})

    def render_row(self, event_id: str) -> str | None:
        """One open alert's queue row as HTML on one line (what the event stream carries to every open queue);
        None once its outcome stands."""
        alert = self.console.alert(event_id)
        if alert.outcome is not None:
            return None
        html = self.templates.get_template("_queue_rows.html").render(alerts=[alert], now=self.clock())
        return " ".join(line.strip() for line in html.splitlines() if line.strip())

    def alert(self, request: Request) -> Response:
        session = self.face_session(request)
        event_id = request.path_params["event_id"]
        try:
            alert = self.console.alert(event_id)
            self.console.viewed(event_id, self.account(session))
        except UnknownAlertError:
            raise HTTPException(404, f"no alert {event_id}") from None
        return self.page(request, "alert.html", {"alert": alert, "may_decide": session.role in DECIDERS,
                                                 "message": request.query_params.get("said")})

    async def decide(self, request: Request) -> Response:
        session = self.face_session(request)
        form = await _checked_form(request, session)
        event_id = request.path_params["event_id"]
        outcome, note = str(form.get("outcome", "")), str(form.get("note", "")).strip()
        if outcome not in OUTCOMES:
            raise HTTPException(400, f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
        try:
            alert = await run_in_threadpool(self.console.decide, event_id, self.account(session), outcome, note)
        except UnknownAlertError:
            raise HTTPException(404, f"no alert {event_id}") from None
        except ReviewerRoleError as exc:
            return await self._refused(request, event_id, str(exc), 403)
        except (DuplicateReviewerError, AlreadyDecidedError, NothingToCompareError) as exc:
            return await self._refused(request, event_id, str(exc), 409)
        if alert.outcome is not None:  # it leaves every open queue
            self.feed.decided(event_id, alert.outcome)
        else:  # "1 of 2", or disputed: every open queue shows it
            await self.feed.render_and_publish("changed", event_id)
        return RedirectResponse(f"/alert/{quote(event_id, safe='')}", status_code=303)

    async def _refused(self, request: Request, event_id: str, why: str, code: int) -> Response:
        """The alert again with why the decision was refused (404 if the alert is gone meanwhile)."""
        try:
            alert = await run_in_threadpool(self.console.alert, event_id)
        except UnknownAlertError:
            raise HTTPException(404, f"no alert {event_id} (refused: {why})") from None
        session: Session = request.state.session
        return self.page(request, "alert.html", {"alert": alert, "may_decide": session.role in DECIDERS,
                                                 "refused": why}, code)

    def fleet(self, request: Request) -> Response:
        self.session(request)
        return self.page(request, "fleet.html", {"devices": self.console.devices()})

    def report(self, request: Request) -> Response:
        session = self.session(request)
        if session.role not in REPORT_ROLES:
            raise Forbidden(f"{session.account} ({session.role}) may not see the deployment report")
        try:
            report, refused = self.console.deployment_report(), None
        except AuditReportError as exc:  # the devices' figures are refused; the console's own still stand
            log.error("%s", exc)
            report = {d: dict(c) for d, c in sorted(self.console.store.counts().items())}
            refused = str(exc)
        return self.page(request, "report.html", {"report": report, "refused": refused})

    def admin(self, request: Request) -> Response:
        session = self.session(request)
        if session.role != "admin":
            raise Forbidden(f"{session.account} ({session.role}) may not see the accounts")
        return self.page(request, "admin.html", {"accounts": self.console.accounts.all()})

    # -- images (faces: no-store, sandboxed, by URL only, each one served on the record) --
    def _image(self, data: bytes, stem: str) -> Response:
        try:
            reply = image_reply(data, stem)
        except NotAnImageError as exc:
            log.error("%s", exc)
            raise HTTPException(415, str(exc)) from None
        return Response(data, media_type=reply.media_type, headers=dict(reply.headers))

    def evidence(self, request: Request) -> Response:
        session = self.face_session(request)
        event_id, part = request.path_params["event_id"], request.path_params["part"]
        if part not in PARTS:
            raise HTTPException(404, f"no evidence part {part!r}")
        try:
            data, _claimed = self.console.evidence(event_id, part)  # the camera's claim is not the type served
        except (UnknownAlertError, EvidenceGoneError) as exc:
            raise HTTPException(404, str(exc)) from None
        response = self._image(data, part)
        self.console.journal.record("view", event_id=event_id, account=session.account, part=part)
        return response

    def reference(self, request: Request) -> Response:
        session = self.face_session(request)
        reference, index = request.path_params["reference"], int(request.path_params["index"])
        try:
            data, _media = self.console.reference_photo(reference, index)
        except ConsoleError as exc:
            raise HTTPException(404, str(exc)) from None
        response = self._image(data, "reference")
        self.console.journal.record("view", entry_id=reference, photo=index, account=session.account,
                                    part="reference")
        return response

    # -- the live queue --
    async def events(self, request: Request) -> Response:
        self.face_session(request)
        token = request.cookies.get(COOKIE)
        since = request.headers.get("last-event-id") or request.query_params.get("since")  # reconnect, or load
        return StreamingResponse(self._stream(token, since), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    def _still_live(self, token: str | None) -> bool:
        """The full session check (account enabled, same role, same password, absolute age). An open live queue
        is the officer on watch, so it counts as use: an officer waiting for alerts is not logged out for being
        idle, and the session still ends at its absolute age (a shift) or when the account changes."""
        try:
            self.live(token, touch=True)
        except Anonymous:
            return False
        return True

    async def _stream(self, token: str | None, since: str | None) -> AsyncIterator[str]:
        with self.feed.subscription(since) as sub:
            yield "retry: 3000\n\n"
            while True:
                event: FeedEvent | None
                try:
                    event = await asyncio.wait_for(sub.queue.get(), self.settings.heartbeat_s)
                except TimeoutError:
                    event = None
                if not self._still_live(token):  # before every event and every heartbeat
                    yield "event: ended\ndata: session\n\n"
                    return
                if event is None:
                    yield ": alive\n\n"
                    continue
                yield event.text(self.feed.epoch)
                if event.kind == "reset":  # the page loads the queue afresh (and opens a new stream)
                    return


async def _checked_form(request: Request, session: Session) -> Any:
    form = await request.form()
    try:
        check_csrf(session.csrf, form.get("csrf"))
    except CsrfError:
        raise HTTPException(403, "refused: the form carries no valid CSRF token") from None
    return form


@pass_context
def _csrf_token(context: Mapping[str, Any]) -> str:
    session = context.get("session")
    return "" if session is None else str(session.csrf)


def build_app(console: Console, clock: Callable[[], datetime] = now,
              settings: WebSettings | None = None) -> Starlette:
    """The ASGI application; starting it subscribes the page's live feed to the console's new alerts."""
    web = ConsoleWeb(console, clock, settings or WebSettings())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        web.feed.attach(asyncio.get_running_loop())
        unsubscribe = console.listen(web.feed.from_thread)
        try:
            yield
        finally:
            unsubscribe()

    async def anonymous(request: Request, exc: Exception) -> Response:
        if request.method == "GET" and _is_page(request.url.path):
            return RedirectResponse("/login", status_code=303)
        return Response("login required\n", status_code=401, media_type="text/plain")

    async def forbidden(request: Request, exc: Exception) -> Response:
        if not _is_page(request.url.path):
            return Response(f"{exc}\n", status_code=403, media_type="text/plain")
        return web.page(request, "error.html", {"code": 403, "why": str(exc)}, 403)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not _is_page(request.url.path):
            return Response(f"{exc.detail}\n", status_code=exc.status_code, media_type="text/plain")
        return web.page(request, "error.html", {"code": exc.status_code, "why": exc.detail}, exc.status_code)

    routes = [
        Route("/login", web.login_get, methods=["GET"]),
        Route("/login", web.login_post, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/", web.queue, methods=["GET"]),
        Route("/events", web.events, methods=["GET"]),
        Route("/alert/{event_id}", web.alert, methods=["GET"]),
        Route("/alert/{event_id}/decide", web.decide, methods=["POST"]),
        Route("/alert/{event_id}/{part}.jpg", web.evidence, methods=["GET"]),
        Route("/reference/{reference}/{index:int}", web.reference, methods=["GET"]),
        Route("/fleet", web.fleet, methods=["GET"]),
        Route("/report", web.report, methods=["GET"]),
        Route("/admin", web.admin, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Anonymous: anonymous, Forbidden: forbidden, HTTPException: http_error})
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)  # outermost: the 413 gets the headers too
    app.state.web = web
    return app


def _is_page(path: str) -> bool:
    """Pages (HTML for a person) as opposed to images and the event stream (for the page itself)."""
    parts = path.strip("/").split("/")
    if parts[0] == "reference" or path == "/events":
        return False
    return not (parts[0] == "alert" and len(parts) > 2)


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) to host and port; raises ValueError naming the bad value."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


def serve(console: Console, listen: str, tls_cert: Path, tls_key: Path, clock: Callable[[], datetime] = now) -> None:
    """Serves the console over HTTPS until interrupted (the caller starts and stops the Console)."""
    host, port = parse_listen(listen)
    for path, what in ((tls_cert, "TLS certificate"), (tls_key, "TLS key")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} for the console's page not found")
    config = uvicorn.Config(build_app(console, clock), host=host, port=port, ssl_certfile=str(tls_cert),
                            ssl_keyfile=str(tls_key), log_level="warning", proxy_headers=False,
                            server_header=False, date_header=False)
    uvicorn.Server(config).run()
