"""The console's web application: Starlette pages over the Console facade, served by uvicorn over TLS.

Pages: login, the queue of open alerts (live over server-sent events: each new alert's row, rendered once, and the
ids of alerts decided; with a visible and an audible cue), the
alert view (camera crops beside the watch-list photo, the decision form), the fleet view, the deployment
report (supervisors, admins) and the account list (admins). Every route but /login and /static needs a
session: pages send the anonymous to the login page, images and the event stream answer 401. Every POST
carries the session's CSRF token (403 without it). Faces leave only as image responses marked no-store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
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
    UnknownAccountError,
)
from provisioning.console.security import CsrfError, SecurityHeaders, check_csrf
from provisioning.console.service import (
    Alert,
    AlreadyDecidedError,
    Console,
    ConsoleError,
    DuplicateReviewerError,
    EvidenceGoneError,
    ReviewerRoleError,
    UnknownAlertError,
)
from provisioning.console.sessions import COOKIE, LOGIN_COOKIE, Session, SessionError, SessionLimits, SessionStore

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
DECIDERS = frozenset({"reviewer", "supervisor"})
REPORT_ROLES = frozenset({"supervisor", "admin"})
HEARTBEAT_S = 15.0  # an event-stream comment this often: proxies keep the stream, the session is re-checked
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


class AlertFeed:
    """Fans live queue updates out to the open event streams (one asyncio queue each): a new alert's rendered
    row (rendered once, in a worker thread, for every viewer) and the id of an alert whose outcome now stands."""

    def __init__(self, render_row: Callable[[str], str]):
        self._render_row = render_row
        self._queues: set[asyncio.Queue[tuple[str, str]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def from_thread(self, event_id: str) -> None:
        """The Console's listener callback (its MQTT thread): hands the id to the event loop at once."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._new_alert, event_id)

    def _new_alert(self, event_id: str) -> None:
        task = asyncio.create_task(self._render_and_publish(event_id))
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def _render_and_publish(self, event_id: str) -> None:
        try:
            row = await run_in_threadpool(self._render_row, event_id)
        except ConsoleError as exc:  # gone again before it was shown (dismissed, purged)
            log.info("live queue: alert %s not shown: %s", event_id, exc)
            return
        self.publish("alert", json.dumps({"id": event_id, "html": row}))

    def publish(self, kind: str, data: str) -> None:
        """From the event loop: one server-sent event to every open stream (`data` holds no newline)."""
        for q in self._queues:
            q.put_nowait((kind, data))

    @contextlib.contextmanager
    def subscription(self) -> Iterator[asyncio.Queue[tuple[str, str]]]:
        q: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queues.add(q)
        try:
            yield q
        finally:
            self._queues.discard(q)


class ConsoleWeb:
    """The pages and their guard; one instance per console process."""

    def __init__(self, console: Console, clock: Callable[[], datetime], settings: WebSettings):
        self.console = console
        self.clock = clock
        self.settings = settings
        self.sessions = SessionStore(clock, settings.limits)
        self.feed = AlertFeed(self.render_row)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.globals["csrf_token"] = _csrf_token
        env.filters["age"] = age
        env.filters["utc"] = lambda t: "" if t is None else format_time(t)
        env.filters["status"] = status
        env.filters["q"] = lambda s: quote(str(s), safe="")

    # -- who is asking --
    def session(self, request: Request) -> Session:
        """The request's live session, its account still enabled; raises Anonymous."""
        token = request.cookies.get(COOKIE)
        try:
            session = self.sessions.use(token)
        except SessionError as exc:
            raise Anonymous(str(exc)) from None
        try:
            account = self.console.accounts.get(session.account)
        except UnknownAccountError:
            account = None
        if account is None or account.disabled or account.role != session.role:
            self.sessions.end(token)
            raise Anonymous(f"account {session.account} is disabled or changed")
        request.state.session = session
        return session

    def account(self, session: Session) -> Account:
        return Account(session.account, session.role, False)

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
        try:
            account = await run_in_threadpool(self.console.accounts.authenticate, name, password)
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
        token, _session = self.sessions.create(account.name, account.role)
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
        self.session(request)
        return self.page(request, "queue.html", {"alerts": self.console.queue(), "recent": self.console.recent(20)})

    def render_row(self, event_id: str) -> str:
        """One alert's queue row as HTML on one line (what the event stream carries to every open queue)."""
        html = self.templates.get_template("_queue_rows.html").render(alerts=[self.console.alert(event_id)],
                                                                       now=self.clock())
        return " ".join(line.strip() for line in html.splitlines() if line.strip())

    def alert(self, request: Request) -> Response:
        session = self.session(request)
        event_id = request.path_params["event_id"]
        try:
            alert = self.console.alert(event_id)
            self.console.viewed(event_id, self.account(session))
        except UnknownAlertError:
            raise HTTPException(404, f"no alert {event_id}") from None
        return self.page(request, "alert.html", {"alert": alert, "may_decide": session.role in DECIDERS,
                                                 "message": request.query_params.get("said")})

    async def decide(self, request: Request) -> Response:
        session = self.session(request)
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
        except (DuplicateReviewerError, AlreadyDecidedError) as exc:
            return await self._refused(request, event_id, str(exc), 409)
        if alert.outcome is not None:  # it leaves every open queue
            self.feed.publish("decided", json.dumps({"id": event_id, "outcome": alert.outcome}))
        return RedirectResponse(f"/alert/{quote(event_id, safe='')}", status_code=303)

    async def _refused(self, request: Request, event_id: str, why: str, code: int) -> Response:
        alert = await run_in_threadpool(self.console.alert, event_id)
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
        return self.page(request, "report.html", {"report": self.console.deployment_report()})

    def admin(self, request: Request) -> Response:
        session = self.session(request)
        if session.role != "admin":
            raise Forbidden(f"{session.account} ({session.role}) may not see the accounts")
        return self.page(request, "admin.html", {"accounts": self.console.accounts.all()})

    # -- images (faces: no-store, by URL only) --
    def evidence(self, request: Request) -> Response:
        self.session(request)
        event_id, part = request.path_params["event_id"], request.path_params["part"]
        if part not in PARTS:
            raise HTTPException(404, f"no evidence part {part!r}")
        try:
            data, media = self.console.evidence(event_id, part)
        except (UnknownAlertError, EvidenceGoneError) as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type=media)

    def reference(self, request: Request) -> Response:
        self.session(request)
        try:
            data, media = self.console.reference_photo(request.path_params["reference"],
                                                       int(request.path_params["index"]))
        except ConsoleError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type=media)

    # -- the live queue --
    async def events(self, request: Request) -> Response:
        self.session(request)
        token = request.cookies.get(COOKIE)
        return StreamingResponse(self._stream(token), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def _stream(self, token: str | None) -> AsyncIterator[str]:
        with self.feed.subscription() as q:
            yield "retry: 3000\n\n"
            while True:
                try:
                    kind, data = await asyncio.wait_for(q.get(), self.settings.heartbeat_s)
                except TimeoutError:
                    try:
                        self.sessions.use(token)  # an open live queue is in use; logout or expiry ends it
                    except SessionError:
                        yield "event: ended\ndata: session\n\n"
                        return
                    yield ": alive\n\n"
                    continue
                yield f"event: {kind}\ndata: {data}\n\n"


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
    app.add_middleware(SecurityHeaders)
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
