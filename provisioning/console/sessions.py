"""Server-side sessions of the console: a random token in a cookie, everything else kept here.

The browser holds only an opaque token (`__Host-` cookie: Secure, HttpOnly, SameSite=Strict, path /). The
server keeps who is logged in, the session's CSRF token, the password epoch it logged in under, and when it
started and was last used; a session ends when idle too long, when it reaches its absolute age (a shift), at
logout, or when its account is disabled, changes role or gets a new password (the web layer checks those).
A request the officer made counts as use, and so does an open live queue (an officer on watch, waiting for
alerts); the absolute age ends every session however it is used.
Tokens are kept only as their SHA-256, so a dump of this table logs nobody in.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

COOKIE = "__Host-console-session"
LOGIN_COOKIE = "__Host-console-login"  # double-submit token of the login form (no session exists yet)
TOKEN_BYTES = 32
IDLE = timedelta(minutes=15)
ABSOLUTE = timedelta(hours=10)  # one shift; then the officer logs in again


class SessionError(Exception):
    """No usable session: the request is treated as anonymous."""


class NoSessionError(SessionError):
    """The request carries no session cookie, or one this server never issued (or has ended)."""


class SessionExpiredError(SessionError):
    """The session was idle too long or has reached its absolute age."""


@dataclass(frozen=True)
class SessionLimits:
    idle: timedelta = IDLE
    absolute: timedelta = ABSOLUTE


@dataclass(frozen=True)
class Session:
    """One logged-in account: the CSRF token its forms carry, and its times."""

    account: str
    role: str
    csrf: str
    created: datetime
    last_seen: datetime
    password_epoch: int = 0  # the account's password epoch at login

    def expired(self, at: datetime, limits: SessionLimits) -> bool:
        return at - self.last_seen > limits.idle or at - self.created > limits.absolute


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class SessionStore:
    """The sessions of one console process (in memory: a restart logs everyone out, which is safe)."""

    def __init__(self, clock: Callable[[], datetime], limits: SessionLimits = SessionLimits()):
        self._clock = clock
        self.limits = limits
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self, account: str, role: str, password_epoch: int = 0) -> tuple[str, Session]:
        """A new session for `account`; returns the cookie token (given to the browser once) and the session."""
        token = new_token()
        at = self._clock()
        session = Session(account, role, new_token(), at, at, password_epoch)
        with self._lock:
            self._drop_expired(at)
            self._sessions[_key(token)] = session
        return token, session

    def use(self, token: str | None, touch: bool = True) -> Session:
        """The live session for `token`, its idle timer restarted (unless `touch` is False: a check that is not
        the officer's doing, such as the event stream's); raises NoSessionError/SessionExpiredError."""
        if not token:
            raise NoSessionError("no session cookie")
        at = self._clock()
        key = _key(token)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                raise NoSessionError("unknown or ended session")
            if session.expired(at, self.limits):
                del self._sessions[key]
                raise SessionExpiredError(f"session of {session.account} expired")
            if touch:
                session = replace(session, last_seen=at)
                self._sessions[key] = session
        return session

    def end(self, token: str | None) -> Session | None:
        """Ends the session (logout); the ended session, or None when there was none."""
        if not token:
            return None
        with self._lock:
            return self._sessions.pop(_key(token), None)

    def end_account(self, account: str) -> int:
        """Ends every session of `account` (disabled, or its password changed); how many ended."""
        with self._lock:
            keys = [k for k, s in self._sessions.items() if s.account == account]
            for k in keys:
                del self._sessions[k]
        return len(keys)

    def _drop_expired(self, at: datetime) -> None:
        for k in [k for k, s in self._sessions.items() if s.expired(at, self.limits)]:
            del self._sessions[k]
