"""`edge-fleet console`: serve the officer's console, and manage its accounts from the console host.

Passwords come from a prompt (typed twice) or, for scripts, from standard input with --password-stdin;
never from the command line, where other users see it in the process list and the shell keeps it in its
history. Every account change is recorded in the console's audit log.

The web stack and the password hasher are the `console` extra: this module imports them only inside the
commands, so `edge-fleet` works without them (and says what to install when a console command needs them).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

from edge.audit import AuditTamperError
from edge.trust.times import now
from provisioning.console.journal import ConsoleJournal, verify_journal
from provisioning.fleet import Fleet, passphrase
from provisioning.operators import fleet_settings, people
from provisioning.reports import AuditSource

if TYPE_CHECKING:
    from provisioning.console.accounts import AccountStore

EXTRA = "edge-face-node[console]"


class ConsoleCommandError(Exception):
    """A console command cannot run as asked (a bad option value, no password given); the message says which."""


Command = Callable[[argparse.Namespace], int]


def _one_line_errors(func: Command) -> Command:
    """Account and console failures end as one line naming what is wrong, exit 2 (as edge-fleet's own); so
    does a missing `console` extra."""

    @wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            from provisioning.console.accounts import AccountError
        except ImportError as exc:
            print(f"edge-fleet console: {exc.name} is missing: install the console extra (pip install '{EXTRA}')",
                  file=sys.stderr)
            return 2
        try:
            return func(args)
        except (AccountError, ConsoleCommandError) as exc:
            print(f"edge-fleet console: {exc}", file=sys.stderr)
            return 2

    return run


def audit_sources(specs: Sequence[str]) -> list[AuditSource]:
    """`DEVICE=PATH` options to the audit logs they name."""
    sources = []
    for spec in specs:
        device, sep, path = spec.partition("=")
        if not sep or not device or not path:
            raise ConsoleCommandError(f"--audit {spec!r}: expected DEVICE=PATH")
        sources.append(AuditSource(device, Path(path)))
    return sources


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the officer's console over HTTPS: the queue of alerts (each checked as `events tail` checks it),
    the alert view with the crops beside the watch-list photo, decisions sent to the node as signed review
    commands, the fleet view. Runs until Ctrl-C or SIGTERM. Passphrases (operator key, review key) come from
    $EDGE_FLEET_PASSPHRASE or a prompt."""
    from provisioning.console.app import parse_listen, serve  # the web stack is the `console` extra
    from provisioning.console.service import ConsoleError, open_console

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise ConsoleCommandError(str(exc)) from None
    fleet = Fleet(args.fleet_dir)
    names = people(fleet, "operator")
    name = args.operator or (names[0] if len(names) == 1 else None)  # as events tail chooses
    settings = fleet_settings(fleet, args.broker, "operator", name, passphrase("the operator key"))
    operator_key = args.operator_key or fleet.dir / "operators" / f"{name}.pem"
    try:
        console = open_console(args.fleet_dir, args.console_dir, settings, operator_key, args.review_key or None,
                               now, audit_sources(args.audit or ()))
        console.start()
        try:
            serve(console, args.listen, args.tls_cert, args.tls_key)
        finally:
            console.stop()
    except ConsoleError as exc:
        raise ConsoleCommandError(str(exc)) from None
    return 0


def read_password(args: argparse.Namespace, name: str) -> str:
    """The new password: one line of standard input with --password-stdin, else typed twice at a prompt."""
    from provisioning.console.accounts import MIN_PASSWORD_CHARS

    if args.password_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            raise ConsoleCommandError(f"account {name!r}: --password-stdin: no password on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ConsoleCommandError(f"account {name!r}: no terminal to ask for the password on; pipe it in with "
                                  "--password-stdin")
    first = getpass.getpass(f"New password for {name} (at least {MIN_PASSWORD_CHARS} characters): ")
    if getpass.getpass("The same again: ") != first:
        raise ConsoleCommandError(f"account {name!r}: the two passwords differ; nothing changed")
    return first


def _open(args: argparse.Namespace) -> tuple[AccountStore, ConsoleJournal]:
    from provisioning.console.accounts import ACCOUNTS_FILE, AccountStore

    console_dir = Path(args.console_dir)
    return AccountStore(console_dir / ACCOUNTS_FILE, now), ConsoleJournal(console_dir, now)


def cmd_user_add(args: argparse.Namespace) -> int:
    """Create a console account. Its name is the reviewer id the node records for its decisions."""
    from provisioning.console.accounts import AccountExistsError, check_name, check_role

    accounts, journal = _open(args)
    check_role(check_name(args.name), args.role)  # refused before the password is asked for
    if any(a.name.lower() == args.name.lower() for a in accounts.all()):
        raise AccountExistsError(f"account {args.name!r}: exists already in {accounts.path}")
    account = accounts.add(args.name, args.role, read_password(args, args.name))
    journal.record("account", action="add", account=account.name, role=account.role, by="command line",
                   uid=os.getuid())
    print(f"account {account.name} ({account.role}) added in {accounts.path}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    """Refuse every later login of an account (at its next page it is logged out); its decisions stand."""
    accounts, journal = _open(args)
    account = accounts.disable(args.name)
    journal.record("account", action="disable", account=account.name, by="command line", uid=os.getuid())
    print(f"account {account.name} disabled")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    """Let a disabled account log in again."""
    accounts, journal = _open(args)
    account = accounts.enable(args.name)
    journal.record("account", action="enable", account=account.name, by="command line", uid=os.getuid())
    print(f"account {account.name} enabled")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    """Set an account's password; this also ends a lockout."""
    accounts, journal = _open(args)
    accounts.get(args.name)  # an unknown name is refused before the password is asked for
    account = accounts.set_password(args.name, read_password(args, args.name))
    journal.record("account", action="passwd", account=account.name, by="command line", uid=os.getuid())
    print(f"account {account.name}: password set")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """Every account: name, role, and whether it is disabled or locked (until when)."""
    from provisioning.console.accounts import ACCOUNTS_FILE, AccountStore

    accounts = AccountStore(Path(args.console_dir) / ACCOUNTS_FILE, now)
    for a in accounts.all():
        until = accounts.locked_until(a.name)
        status = "disabled" if a.disabled else (f"locked until {until.isoformat(timespec='seconds')}" if until
                                                else "active")
        print(f"{a.name:<24} {a.role:<11} {status}")
    return 0


def verify_console_log(console_dir: Path, public_key: str | None) -> int:
    """`edge-fleet audit verify --console DIR`: the console's audit log, chain and signed checkpoints."""
    try:
        check = verify_journal(console_dir, public_key)
    except AuditTamperError as exc:
        print(f"edge-fleet audit verify: TAMPERED: {exc}", file=sys.stderr)
        return 1
    v = check.verified
    vouched = (f"; checkpoint vouches for the first {v.checkpoint_seq}" if v.checkpoint_seq is not None else
               "; no checkpoint yet: truncation cannot be ruled out")
    key = (f"journal key {check.key_id[:16]}... as given" if check.key_pinned else
           f"journal key {check.key_id[:16]}... from the console dir itself (give --console-key, noted at setup, "
           "to rule out a replaced key)")
    print(f"{console_dir}: {v.records} records, chain intact, head {v.head[:16]}...{vouched}; "
          f"{check.checkpoints} checkpoints, {key}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `edge-fleet console` (serve, user add|disable|enable|passwd|list)."""
    console = subparsers.add_parser("console", help="the officer's console (web) and its accounts",
                                    description="The officer's console: a web application where each alert is "
                                    "judged by a person. See docs/console.md.")
    sub = console.add_subparsers(dest="console_command", required=True)

    def console_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--console-dir", type=Path, required=True,
                       help="the console's own directory (accounts, evidence, audit log, journal key)")

    serve = sub.add_parser("serve", help="serve the console over HTTPS", description=cmd_serve.__doc__)
    serve.add_argument("--fleet-dir", type=Path, required=True, help="the fleet directory")
    serve.add_argument("--broker", required=True, metavar="mqtts://HOST[:PORT]",
                       help="the fleet's broker (as for events tail)")
    serve.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT",
                       help="where the page is served (default 127.0.0.1:8443; IPv6 in brackets)")
    serve.add_argument("--tls-cert", type=Path, required=True, help="the page's TLS certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, required=True, help="its private key (PEM)")
    serve.add_argument("--operator", help="which operator's broker certificate (default: the only one)")
    serve.add_argument("--operator-key", type=Path, metavar="K",
                       help="the operator's evidence key that opens the crops (default: F/operators/NAME.pem)")
    serve.add_argument("--review-key", type=Path, metavar="K", action="append",
                       help="a key that signs review commands (the fleet root's review role: it can sign nothing "
                       "else); repeat it when the role's threshold needs more than one. A key outside the role, or "
                       "too few for its threshold, stops the console at start")
    serve.add_argument("--audit", action="append", metavar="DEVICE=PATH",
                       help="a device's audit.jsonl for the deployment report (repeat per device)")
    console_dir(serve)
    serve.set_defaults(func=_one_line_errors(cmd_serve))

    user = sub.add_parser("user", help="console accounts", description="Console accounts (roles: reviewer, "
                          "supervisor, admin; docs/console.md). Passwords are asked for twice, or read from "
                          "standard input with --password-stdin; never given as an argument.")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    for name, func, helptext in (("add", cmd_user_add, "create an account"),
                                 ("disable", cmd_user_disable, "refuse an account's logins"),
                                 ("enable", cmd_user_enable, "let a disabled account log in again"),
                                 ("passwd", cmd_user_passwd, "set an account's password (ends a lockout)"),
                                 ("list", cmd_user_list, "list the accounts")):
        p = user_sub.add_parser(name, help=helptext, description=func.__doc__)
        if name != "list":
            p.add_argument("name", metavar="NAME", help="the account name (the reviewer id the node records)")
        if name == "add":
            p.add_argument("--role", required=True, metavar="ROLE",
                           help="reviewer: decides alerts; supervisor: also decides disputed alerts and sees the "
                           "reports; admin: manages accounts, decides nothing")
        if name in ("add", "passwd"):
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of standard input (for scripts)")
        console_dir(p)
        p.set_defaults(func=_one_line_errors(func))
