"""systemd glue for the node service, with no hard dependency on systemd or systemd-python.

- `Notifier` speaks the sd_notify protocol: one AF_UNIX datagram per message to `$NOTIFY_SOCKET`
  (a filesystem path, or `@name` for the abstract namespace), newline-separated `KEY=value` assignments.
  It is the same wire format `systemd.daemon.notify()` sends, so the optional systemd-python package is not
  needed for it. Without `$NOTIFY_SOCKET` (not started by systemd, or not `Type=notify`) it does nothing and
  says so: `enabled` is False and `reason` tells why.
- `watchdog_interval()` reads `$WATCHDOG_USEC` / `$WATCHDOG_PID` and returns the ping period (half the
  timeout), or None when systemd does not watch this process.
- `Heartbeat` is a progress marker that the capture, inference and MQTT threads beat; `WatchdogFeeder` sends
  WATCHDOG=1 only while every probe built from them reports progress, and otherwise withholds the ping, names
  the stalled stage in STATUS and in the log, so systemd restarts a node that is alive but stuck.
- `journal_logging()` sends log records to journald with structured fields when it can, else to stderr.
- `disable_core_dumps()` makes sure a crash cannot write frames to disk.

The wire format and the environment variables are those of sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import re
import socket
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "edge-node"
STATUS_MAX_CHARS = 200
SEND_TIMEOUT_S = 2.0

# prctl(2) options (linux/prctl.h)
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

_HANDLER_NAME = "edge.systemd"
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class SystemdEnvironmentError(ValueError):
    """A variable systemd sets ($WATCHDOG_USEC, $WATCHDOG_PID) has a value that is not what systemd sends."""


def sanitize_status(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """One printable line for STATUS=: control characters (newlines included) become spaces, runs of white
    space collapse, and the result is cut to `limit` characters (ending in an ellipsis when cut)."""
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    line = " ".join(cleaned.split())
    if len(line) > limit:
        line = line[: max(limit - 1, 0)].rstrip() + "\u2026"
    return line


def _socket_address(value: str) -> str | bytes | None:
    """The sendto() address for a $NOTIFY_SOCKET value, or None if it is not an AF_UNIX socket we support
    (systemd >= 254 may also hand out `vsock:` addresses, to virtual machines only)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])  # abstract namespace (Linux)
    return None


class Notifier:
    """Sends sd_notify messages to the service manager.

    `Notifier()` reads `$NOTIFY_SOCKET` from the environment (or from `environ`); `Notifier("/run/x.sock")`
    or `Notifier("@name")` targets a socket directly. Every method returns True if the datagram was sent and
    False if the notifier is disabled or the send failed (a failure is logged once, not per call, and kept in
    `last_error`): the service manager, not the node, decides what a missing message means.

    Thread-safe: each message is one datagram on a fresh socket, and the remembered state is locked.
    STATUS texts are reduced to one line (`sanitize_status`). While an alert is set (`set_alert`, used by
    `WatchdogFeeder` when a stage stalls) every STATUS line starts with it, so that a stall stays visible in
    `systemctl status` even while the node keeps updating its status.
    """

    def __init__(self, address: str | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = address if address is not None else env.get("NOTIFY_SOCKET", "")
        self._raw = raw
        self._address = _socket_address(raw) if raw else None
        if not raw:
            self._reason = "NOTIFY_SOCKET is not set (not started by systemd as Type=notify)"
        elif self._address is None:
            self._reason = f"NOTIFY_SOCKET={raw!r} is not an AF_UNIX socket path or @abstract name"
            log.warning("sd_notify disabled: %s", self._reason)
        else:
            self._reason = ""
        self._lock = threading.Lock()
        self._status = ""
        self._alert = ""
        self._ready = False
        self._failing = False
        self._last_error: str | None = None

    @property
    def enabled(self) -> bool:
        """True if messages are sent; False when there is no usable $NOTIFY_SOCKET."""
        return self._address is not None

    @property
    def reason(self) -> str:
        """Why the notifier is disabled ("" when it is enabled)."""
        return self._reason

    @property
    def address(self) -> str:
        """The socket as given ($NOTIFY_SOCKET's value, "" if none)."""
        return self._raw

    @property
    def last_status(self) -> str:
        """The last status text given to `ready`/`status`/`stopping`/`reloading`, without the alert."""
        with self._lock:
            return self._status

    @property
    def alert(self) -> str:
        with self._lock:
            return self._alert

    @property
    def is_ready(self) -> bool:
        """True once READY=1 has been sent."""
        with self._lock:
            return self._ready

    @property
    def last_error(self) -> str | None:
        """The last send error ("OSError: ..."), None if the last send succeeded or none was tried."""
        with self._lock:
            return self._last_error

    # -- messages -------------------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is complete (the node sends it once models and a shard are loaded)."""
        with self._lock:
            self._ready = True
        return self._send(["READY=1"], status)

    def status(self, text: str) -> bool:
        """STATUS=<one line>: what `systemctl status` shows."""
        return self._send([], text)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping (send it only when the service makes progress)."""
        return self._send(["WATCHDOG=1"], None)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the service is shutting down."""
        return self._send(["STOPPING=1"], status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (required by Type=notify-reload, harmless otherwise); send
        `ready()` when the reload is done."""
        usec = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC on Linux, as systemd expects
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"], status)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for `seconds` more before the start (or stop) timeout fires."""
        if not seconds > 0:
            raise ValueError(f"extend_timeout: seconds must be > 0, got {seconds!r}")
        return self._send([f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}"], None)

    def set_alert(self, text: str | None) -> bool:
        """Prefix every STATUS line with `text` until cleared with None; re-sends the status at once."""
        with self._lock:
            self._alert = sanitize_status(text) if text else ""
            status = self._status
        return self._send([], status)

    # -- sending --------------------------------------------------------------------------------------

    def _status_line(self, text: str) -> str:
        with self._lock:
            self._status = sanitize_status(text)
            alert, status = self._alert, self._status
        if alert and status:
            return sanitize_status(f"{alert} | {status}")
        return alert or status

    def _send(self, assignments: list[str], status: str | None) -> bool:
        if status is not None:
            assignments = [*assignments, f"STATUS={self._status_line(status)}"]
        address = self._address
        if address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, address)
        except OSError as exc:
            with self._lock:
                first = not self._failing
                self._failing = True
                self._last_error = f"{type(exc).__name__}: {exc}"
            if first:
                log.warning("sd_notify to %s failed: %s", self._raw, self._last_error)
            return False
        with self._lock:
            recovered, self._failing, self._last_error = self._failing, False, None
        if recovered:
            log.info("sd_notify to %s works again", self._raw)
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.

    None if systemd does not watch this process: `$WATCHDOG_USEC` unset or empty, or `$WATCHDOG_PID` set to
    another process (the variables were inherited). A value systemd would never send (not a positive integer)
    raises SystemdEnvironmentError rather than silently running without pings and being killed.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC", "").strip()
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID", "").strip()
    if raw_pid:
        if not raw_pid.isdigit() or int(raw_pid) <= 0:
            raise SystemdEnvironmentError(f"WATCHDOG_PID={raw_pid!r} is not a process id")
        if int(raw_pid) != (os.getpid() if pid is None else pid):
            return None
    if not raw_usec.isdigit() or int(raw_usec) <= 0:
        raise SystemdEnvironmentError(f"WATCHDOG_USEC={raw_usec!r} is not a positive number of microseconds")
    return int(raw_usec) / 2_000_000


class Heartbeat:
    """A thread-safe progress marker: a stage calls `beat()` each time it gets something done (a frame read,
    a frame analysed, a network loop turn); the watchdog asks `progressed_within(seconds)`.

    A new heartbeat counts as having just beaten, so a stage gets one full window from its creation to
    produce its first beat. Uses time.monotonic (immune to clock steps from NTP or a missing RTC).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._count = 0

    def beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._last = now
            self._count += 1

    @property
    def count(self) -> int:
        """Beats so far."""
        with self._lock:
            return self._count

    def age(self) -> float:
        """Seconds since the last beat (or since creation, before the first)."""
        with self._lock:
            last = self._last
        return time.monotonic() - last

    def progressed_within(self, seconds: float) -> bool:
        """True if the last beat (or the creation) is less than `seconds` ago."""
        return self.age() < seconds

    def probe(self, within: float) -> Callable[[], bool]:
        """A probe for `WatchdogFeeder`: progress within the last `within` seconds."""
        return lambda: self.progressed_within(within)


class WatchdogFeeder:
    """Sends WATCHDOG=1 only while every named probe reports progress.

    `probes` maps a stage name ("capture", "inference", "mqtt", ...) to a callable returning True while
    that stage makes progress. `tick()` asks every probe; if all say yes it pings, otherwise it withholds the
    ping and remembers which stages stalled (`stalled`), logs the change once, and sets the notifier's alert
    so STATUS shows it. When the stalls last past WatchdogSec, systemd kills and restarts the service; if
    they clear first, pinging resumes and the alert is cleared. `run(stop)` ticks every `period` seconds
    until `stop` is set, for a thread.

    Probes must be quick and must not raise: an exception propagates out of `tick()` and ends `run()`, so
    the pings stop and systemd restarts the service (fail safe, with the traceback in the log).
    """

    def __init__(self, probes: Mapping[str, Callable[[], bool]], notifier: Notifier, period: float) -> None:
        if not probes:
            raise ValueError("WatchdogFeeder needs at least one probe")
        if not period > 0:
            raise ValueError(f"WatchdogFeeder period must be > 0 seconds, got {period!r}")
        self._probes = dict(probes)
        self.notifier = notifier
        self.period = float(period)
        self._lock = threading.Lock()
        self._stalled: tuple[str, ...] = ()
        self._pings = 0
        self._withheld = 0

    @classmethod
    def from_heartbeats(cls, heartbeats: Mapping[str, Heartbeat] | Iterable[Heartbeat], notifier: Notifier,
                        period: float, within: float) -> WatchdogFeeder:
        """Probes from heartbeats (by the mapping's keys, or each heartbeat's name): progress within `within`."""
        items = heartbeats.items() if isinstance(heartbeats, Mapping) else ((h.name, h) for h in heartbeats)
        return cls({name: hb.probe(within) for name, hb in items}, notifier, period)

    @property
    def probe_names(self) -> tuple[str, ...]:
        return tuple(self._probes)

    @property
    def stalled(self) -> tuple[str, ...]:
        """The stages that reported no progress at the last tick (empty when all progressed)."""
        with self._lock:
            return self._stalled

    @property
    def pings(self) -> int:
        """WATCHDOG=1 messages sent."""
        with self._lock:
            return self._pings

    @property
    def withheld(self) -> int:
        """Ticks at which the ping was withheld because a stage stalled."""
        with self._lock:
            return self._withheld

    def tick(self) -> bool:
        """Check every probe; ping if all progressed. Returns True if all progressed (whether or not a ping
        could be sent: with no NOTIFY_SOCKET the feeder still tracks stalls)."""
        stalled = tuple(name for name, probe in self._probes.items() if not probe())
        with self._lock:
            previous, self._stalled = self._stalled, stalled
            if stalled:
                self._withheld += 1
        if stalled != previous:
            self._report(stalled, previous)
        if stalled:
            return False
        if self.notifier.watchdog():
            with self._lock:
                self._pings += 1
        return True

    def _report(self, stalled: tuple[str, ...], previous: tuple[str, ...]) -> None:
        if stalled:
            names = ", ".join(stalled)
            log.warning("watchdog ping withheld: no progress from %s", names,
                        extra={"WATCHDOG_STALLED": names, "WATCHDOG_PERIOD_S": self.period})
            self.notifier.set_alert(f"STALLED: {names} (watchdog withheld)")
        else:
            log.info("watchdog pings resume: %s progressing again", ", ".join(previous),
                     extra={"WATCHDOG_RECOVERED": ", ".join(previous)})
            self.notifier.set_alert(None)

    def run(self, stop: threading.Event) -> None:
        """Tick now and then every `period` seconds until `stop` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.period)

    def start(self, stop: threading.Event) -> threading.Thread:
        """`run(stop)` in a daemon thread named edge-watchdog, started."""
        thread = threading.Thread(target=self.run, args=(stop,), name="edge-watchdog", daemon=True)
        thread.start()
        return thread


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when started by systemd as a service ($INVOCATION_ID or $JOURNAL_STREAM set)."""
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"))


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True if stderr is the journal stream systemd connected ($JOURNAL_STREAM names its device:inode)."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


def structured_fields(record: logging.LogRecord) -> dict[str, object]:
    """The journal fields a log call passed with extra={...}: the record attributes named like journal
    fields (uppercase letters, digits, underscores)."""
    return {k: v for k, v in vars(record).items() if _FIELD_NAME.match(k)}


class StderrFormatter(logging.Formatter):
    """Plain-text records for stderr. With `journal=True` (stderr is systemd's journal stream) every line
    carries a `<N>` syslog priority prefix that journald turns into the entry's PRIORITY, and no timestamp
    (journald adds one). Structured fields (extra={...} with uppercase keys) are appended as KEY=value."""

    def __init__(self, journal: bool) -> None:
        fmt = "%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = structured_fields(record)
        if fields:
            extra = " ".join(f"{k}={sanitize_status(str(v), 120)}" for k, v in sorted(fields.items()))
            first, sep, rest = text.partition("\n")
            text = f"{first} [{extra}]{sep}{rest}"
        if self.journal:
            prefix = f"<{syslog_priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def _journal_handler(identifier: str) -> logging.Handler | None:
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler_class = getattr(journal, "JournalHandler", None)
    if handler_class is None:
        return None
    handler = handler_class(SYSLOG_IDENTIFIER=identifier)
    return handler if isinstance(handler, logging.Handler) else None


def journal_logging(level: int | str = logging.INFO, *, identifier: str = SYSLOG_IDENTIFIER,
                    environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Configure the root logger once for the service, and return the handler installed.

    Under systemd ($JOURNAL_STREAM or $INVOCATION_ID set) with systemd-python installed, records go to
    journald through `systemd.journal.JournalHandler` with SYSLOG_IDENTIFIER=`identifier`; fields passed as
    `log.info("...", extra={"SHARD_VERSION": 7})` (uppercase keys) become journal fields, searchable with
    `journalctl -u edge-node SHARD_VERSION=7`. Otherwise records go to stderr: with a `<N>` priority prefix
    when stderr is the journal stream, with timestamps when it is not; structured fields are appended to the
    line as KEY=value so nothing is lost. Calling it again replaces the handler it installed before.

    Privacy: never log frames, crops, embeddings, or the scores of faces that did not match; no handler here
    filters them. What a log call passes is the caller's responsibility.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler | None = None
    if under_systemd(environ):
        handler = _journal_handler(identifier)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter(journal=stderr_is_journal(environ)))
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


@dataclass(frozen=True)
class CoreDumpSettings:
    """What `disable_core_dumps()` found and did."""

    rlimit_core: tuple[int, int] | None  # (soft, hard) afterwards; None where the resource module is absent
    dumpable: bool | None  # the process's dumpable flag afterwards; None where it cannot be read (not Linux)
    actions: tuple[str, ...]  # what was changed
    notes: tuple[str, ...]  # what could not be done, and why

    @property
    def core_dumps_off(self) -> bool:
        return self.rlimit_core == (0, 0) and self.dumpable is not True


def disable_core_dumps() -> CoreDumpSettings:
    """No core dumps for this process: RLIMIT_CORE (soft and hard) to 0, and on Linux PR_SET_DUMPABLE 0,
    which also stops systemd-coredump and a pipe in core_pattern, and ptrace by other processes of the same
    user. Frames live only in memory; a crash must not copy them to disk.

    Harmless where a part is unavailable (each gap is in `notes`). The unit's LimitCORE=0 sets the limit too;
    this covers starts outside systemd. The dumpable flag is reset by execve(), so child processes do not
    inherit it. Side effect: /proc/self/* files become root-owned, so e.g. /proc/self/fd cannot be listed.
    """
    actions: list[str] = []
    notes: list[str] = []
    # the dumpable flag first: whoever sees the core limit at 0 also finds the process undumpable
    dumpable: bool | None = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            prctl = libc.prctl
        except (OSError, AttributeError) as exc:
            notes.append(f"prctl unavailable: {type(exc).__name__}: {exc}")
        else:
            zero = ctypes.c_ulong(0)
            if prctl(ctypes.c_int(PR_SET_DUMPABLE), zero, zero, zero, zero) != 0:
                err = ctypes.get_errno()
                notes.append(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")
            else:
                actions.append("PR_SET_DUMPABLE 0")
            state = prctl(ctypes.c_int(PR_GET_DUMPABLE), zero, zero, zero, zero)
            dumpable = None if state < 0 else state != 0
    else:
        notes.append(f"not Linux ({sys.platform}): dumpable flag unchanged")
    rlimit: tuple[int, int] | None = None
    try:
        import resource
    except ImportError:
        notes.append("no resource module on this platform: RLIMIT_CORE unchanged")
    else:
        before = resource.getrlimit(resource.RLIMIT_CORE)
        if before != (0, 0):
            try:
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                actions.append(f"RLIMIT_CORE {before} -> (0, 0)")
            except (ValueError, OSError) as exc:
                notes.append(f"setrlimit(RLIMIT_CORE, (0, 0)) failed: {type(exc).__name__}: {exc}")
        rlimit = resource.getrlimit(resource.RLIMIT_CORE)

    return CoreDumpSettings(rlimit, dumpable, tuple(actions), tuple(notes))
