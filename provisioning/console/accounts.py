"""The console's accounts: who may log in, in which role, and the lockout that slows password guessing.

One SQLite file (<console-dir>/accounts.db, 0600). Passwords are stored only as argon2id hashes
(argon2-cffi's PasswordHasher, RFC 9106 parameters), rehashed at login when those parameters change. An
account name is what the node records as the reviewer id of a review command, so it has that form
(edge.events.commands.REVIEWER_ID) and names are unique whatever their case. After LOCKOUT_FAILURES
failed logins in a row an account is locked for LOCKOUT_SECONDS, even to the right password; the count
is kept in the file, so a restart does not reset it. A login with an unknown name is refused with the
same error as a wrong password and after the same hashing work, so neither message nor time tells which.
Each account has a password epoch, counted up by every new password: a session remembers the epoch it logged
in under, and the console refuses it once the epoch has moved on (a password changed in another process ends
the account's sessions at their next request).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge.events.commands import REVIEWER_ID
from edge.sqlitedb import immediate, open_durable

ROLES = ("reviewer", "supervisor", "admin")
ACCOUNTS_FILE = "accounts.db"  # in the console dir
LOCKOUT_FAILURES = 5
LOCKOUT_SECONDS = 900
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # a bound on the work one login asks of the hasher
SCHEMA_VERSION = 2  # 2: password_epoch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    created TEXT NOT NULL,
    changed TEXT NOT NULL,
    password_epoch INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "name, role, hash, disabled, failures, locked_until, password_epoch"


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    disabled: bool
    password_epoch: int = 0  # counts the account's new passwords; a session from an earlier epoch is refused


class AccountError(Exception):
    """An account operation was refused; the message names the account (or the file)."""


class UnknownAccountError(AccountError):
    """No account has this name."""


class AccountExistsError(AccountError):
    """An account of this name (in any case) exists already."""


class AccountFormatError(AccountError):
    """A name, role or password does not meet the rules; the message says which rule."""


class BadCredentialsError(AccountError):
    """Wrong password, or no such account: one message for both, so a login does not tell which names exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"account {name!r}: wrong name or password")


class AccountLockedError(AccountError):
    """Too many failed logins in a row: refused, even with the right password, until the lock ends."""

    def __init__(self, name: str, until: datetime) -> None:
        super().__init__(f"account {name!r}: locked after {LOCKOUT_FAILURES} failed logins, until "
                         f"{until.isoformat(timespec='seconds')}")
        self.until = until


class AccountDisabledError(AccountError):
    """The account was disabled by an administrator."""

    def __init__(self, name: str) -> None:
        super().__init__(f"account {name!r}: disabled")


class AccountStoreError(AccountError):
    """The accounts file cannot be read or written, or holds a damaged record (names the file)."""


@dataclass(frozen=True)
class _Row:
    account: Account
    hash: str
    failures: int
    locked_until: datetime | None


def check_name(name: str) -> str:
    """The name, if it can be an account (and so a reviewer id in a review command)."""
    if not isinstance(name, str) or not REVIEWER_ID.fullmatch(name):
        raise AccountFormatError(f"account name {name!r}: expected 1-64 of A-Z a-z 0-9 . _ @ - (it is the "
                                 "reviewer id the node records; an id, not a person's full name)")
    return name


def check_role(name: str, role: str) -> str:
    if role not in ROLES:
        raise AccountFormatError(f"account {name!r}: role {role!r} is not one of {', '.join(ROLES)}")
    return role


def check_password(name: str, password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountFormatError(f"account {name!r}: password: at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountFormatError(f"account {name!r}: password: at most {MAX_PASSWORD_CHARS} characters")
    if not password.strip():
        raise AccountFormatError(f"account {name!r}: password: not only spaces")
    return password


class AccountStore:
    """The accounts file. Threads share one instance (hashing runs outside the lock, so logins overlap);
    processes (the console and `edge-fleet console user`) share the file through SQLite's own locking."""

    def __init__(self, path: Path, clock: Callable[[], datetime], hasher: PasswordHasher | None = None):
        self.path = path
        self.clock = clock
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._dummy: str | None = None  # a hash to verify against for unknown names (same work as a known one)
        try:
            self._db = open_durable(path)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AccountStoreError(f"{path}: accounts schema {version} is newer than this console's "
                                        f"({SCHEMA_VERSION})")
            with immediate(self._db, self._fail):
                version = self._db.execute("PRAGMA user_version").fetchone()[0]  # again, inside the lock
                self._db.execute(_SCHEMA)
                if version == 1:  # a file from before the password epoch: every account at epoch 0
                    self._db.execute("ALTER TABLE accounts ADD COLUMN password_epoch INTEGER NOT NULL DEFAULT 0")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def _fail(self, exc: sqlite3.Error) -> AccountStoreError:
        return AccountStoreError(f"{self.path}: {exc}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # reads

    def _row(self, name: str) -> _Row | None:
        if not isinstance(name, str) or not REVIEWER_ID.fullmatch(name):
            return None
        with self._lock:
            try:
                r = self._db.execute(f"SELECT {_COLUMNS} FROM accounts WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return None if r is None else self._parse(r)

    def _parse(self, r: tuple[object, ...]) -> _Row:
        name, role, hash_, disabled, failures, locked, epoch = r
        if role not in ROLES or not isinstance(hash_, str) or not isinstance(failures, int) \
                or not isinstance(epoch, int):
            raise AccountStoreError(f"{self.path}: account {name!r}: damaged record")
        try:
            until = None if locked is None else datetime.fromisoformat(str(locked))
        except ValueError:
            raise AccountStoreError(f"{self.path}: account {name!r}: locked_until {locked!r} is not a time") from None
        return _Row(Account(str(name), str(role), bool(disabled), epoch), hash_, failures, until)

    def get(self, name: str) -> Account:
        row = self._row(name)
        if row is None:
            raise UnknownAccountError(f"no account {name!r} in {self.path}")
        return row.account

    def all(self) -> list[Account]:
        """Every account, by name."""
        with self._lock:
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM accounts ORDER BY name").fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return [self._parse(r).account for r in rows]

    def locked_until(self, name: str) -> datetime | None:
        """When the account's lockout ends, if it is locked now."""
        row = self._row(name)
        if row is None:
            raise UnknownAccountError(f"no account {name!r} in {self.path}")
        return row.locked_until if row.locked_until is not None and self.clock() < row.locked_until else None

    # changes

    def _update(self, name: str, sql: str, params: tuple[object, ...]) -> Account:
        """One UPDATE of the named account (its name is the last parameter); the account as it is after."""
        with self._lock, immediate(self._db, self._fail):
            if self._db.execute(sql, params).rowcount != 1:
                raise UnknownAccountError(f"no account {name!r} in {self.path}")
        return self.get(name)

    def add(self, name: str, role: str, password: str) -> Account:
        check_role(check_name(name), role)
        hashed = self._hasher.hash(check_password(name, password))
        stamp = self.clock().isoformat()
        with self._lock, immediate(self._db, self._fail):
            taken = self._db.execute("SELECT name FROM accounts WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                raise AccountExistsError(f"account {name!r}: exists already (as {taken[0]!r}) in {self.path}")
            self._db.execute("INSERT INTO accounts (name, role, hash, created, changed) VALUES (?, ?, ?, ?, ?)",
                             (name, role, hashed, stamp, stamp))
        return Account(name, role, False)

    def disable(self, name: str) -> Account:
        """Refuse every later login of the account (its decisions so far stand)."""
        return self._update(name, "UPDATE accounts SET disabled = 1, changed = ? WHERE name = ?",
                            (self.clock().isoformat(), name))

    def enable(self, name: str) -> Account:
        return self._update(name, "UPDATE accounts SET disabled = 0, changed = ? WHERE name = ?",
                            (self.clock().isoformat(), name))

    def set_password(self, name: str, password: str) -> Account:
        """A new password; also ends a lockout (the administrator vouches for the account) and, by moving the
        password epoch on, every session the account has open."""
        self.get(name)
        hashed = self._hasher.hash(check_password(name, password))
        return self._update(name, "UPDATE accounts SET hash = ?, failures = 0, locked_until = NULL, changed = ?, "
                            "password_epoch = password_epoch + 1 WHERE name = ?",
                            (hashed, self.clock().isoformat(), name))

    # login

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(24))
        return self._dummy

    def authenticate(self, name: str, password: str) -> Account:
        """The account, if the password is right and it is neither locked nor disabled; else one of
        BadCredentialsError (also for an unknown name), AccountLockedError, AccountDisabledError."""
        row = self._row(name)
        if row is None:
            with contextlib.suppress(VerificationError):  # it fails: it only spends the time a known name would
                self._hasher.verify(self._dummy_hash(), password)
            raise BadCredentialsError(name)
        if row.locked_until is not None and self.clock() < row.locked_until:
            raise AccountLockedError(row.account.name, row.locked_until)
        try:
            self._hasher.verify(row.hash, password)
        except VerifyMismatchError:
            self._failed(row.account.name)
            raise BadCredentialsError(name) from None
        except (InvalidHashError, VerificationError):
            raise AccountStoreError(f"{self.path}: account {row.account.name!r}: the stored hash is damaged "
                                    "(set a new password)") from None
        if row.account.disabled:
            raise AccountDisabledError(row.account.name)
        rehash = self._hasher.hash(password) if self._hasher.check_needs_rehash(row.hash) else None
        with self._lock, immediate(self._db, self._fail):
            self._db.execute("UPDATE accounts SET failures = 0, locked_until = NULL WHERE name = ?",
                             (row.account.name,))
            if rehash is not None:
                self._db.execute("UPDATE accounts SET hash = ? WHERE name = ?", (rehash, row.account.name))
        return row.account

    def _failed(self, name: str) -> None:
        """Count a failed login; the LOCKOUT_FAILURES-th in a row locks the account. A lock that has ended
        starts the count afresh."""
        now = self.clock()
        with self._lock, immediate(self._db, self._fail):
            r = self._db.execute("SELECT failures, locked_until FROM accounts WHERE name = ?", (name,)).fetchone()
            if r is None:
                return  # removed meanwhile: nothing to count
            failures = int(r[0])
            if r[1] is not None and datetime.fromisoformat(str(r[1])) <= now:
                failures = 0
            failures += 1
            until = (now + timedelta(seconds=LOCKOUT_SECONDS)).isoformat() if failures >= LOCKOUT_FAILURES else None
            self._db.execute("UPDATE accounts SET failures = ?, locked_until = ? WHERE name = ?",
                             (0 if until else failures, until, name))
