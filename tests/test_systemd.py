"""systemd glue and units, against real things: a real AF_UNIX datagram socket as $NOTIFY_SOCKET, real
threads beating heartbeats, a real child process for core-dump settings, and the real `systemd-analyze`,
`systemd-sysusers` on the unit files in systemd/."""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import (
    Heartbeat,
    Notifier,
    SystemdEnvironmentError,
    WatchdogFeeder,
    journal_logging,
    sanitize_status,
    watchdog_interval,
)

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
NODE_UNIT = UNITS / "edge-node.service"
RETENTION_UNIT = UNITS / "edge-node-retention.service"
RETENTION_TIMER = UNITS / "edge-node-retention.timer"
PROVISION_UNIT = UNITS / "edge-node-provision.service"
DROPINS = sorted((UNITS / "edge-node.service.d").glob("*.conf.example"))
MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NO_ANALYZE = "systemd-analyze not installed (Debian package `systemd`; scripts/bootstrap --dev installs it)"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd glue is Linux-only")


# --- a real notify socket ----------------------------------------------------------------------------------

class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket that also receives the sender's
    credentials (SO_PASSCRED), as systemd does to enforce NotifyAccess=main."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.senders: list[int] = []

    def recv(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except TimeoutError:
            return None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.senders.append(struct.unpack("3i", payload[: struct.calcsize("3i")])[0])
        return data

    def drain(self) -> list[bytes]:
        out = []
        while (d := self.recv(0.05)) is not None:
            out.append(d)
        return out

    def collect(self, seconds: float) -> list[bytes]:
        out, end = [], time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            d = self.recv(left)
            if d is not None:
                out.append(d)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    assert len(os.fsencode(path)) < 108, f"tmp_path too long for an AF_UNIX socket: {path}"
    ns = NotifySocket(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield ns
    ns.close()


def test_messages_arrive_exactly(notify_socket: NotifySocket) -> None:
    n = Notifier()
    assert n.enabled and n.reason == ""
    assert n.ready("models loaded; shard stadium v3")
    assert notify_socket.recv() == b"READY=1\nSTATUS=models loaded; shard stadium v3"
    assert n.is_ready
    assert n.status("12.0 fps\n3 faces\t0 alerts")
    assert notify_socket.recv() == b"STATUS=12.0 fps 3 faces 0 alerts"
    assert n.watchdog()
    assert notify_socket.recv() == b"WATCHDOG=1"
    assert n.extend_timeout(90)
    assert notify_socket.recv() == b"EXTEND_TIMEOUT_USEC=90000000"
    assert n.reloading()
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", notify_socket.recv() or b"")
    assert n.stopping()
    assert notify_socket.recv() == b"STOPPING=1"
    assert notify_socket.drain() == []
    # systemd checks the sender for NotifyAccess=main: every datagram came from this process's PID
    assert notify_socket.senders == [os.getpid()] * 6


def test_messages_from_another_thread_carry_the_main_pid(notify_socket: NotifySocket) -> None:
    """The watchdog thread's pings are accepted under NotifyAccess=main: the credentials are the process's."""
    n = Notifier()
    t = threading.Thread(target=n.watchdog)
    t.start()
    t.join()
    assert notify_socket.recv() == b"WATCHDOG=1"
    assert notify_socket.senders == [os.getpid()]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-node-test-{uuid.uuid4().hex}"
    ns = NotifySocket(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        assert n.enabled and n.address == "@" + name
        assert n.ready()
        assert ns.recv() == b"READY=1"
        assert n.watchdog()
        assert ns.recv() == b"WATCHDOG=1"
        assert n.stopping("bye")
        assert ns.recv() == b"STOPPING=1\nSTATUS=bye"
    finally:
        ns.close()


def test_without_notify_socket_everything_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert "NOTIFY_SOCKET" in n.reason
    assert not n.ready("x") and not n.status("x") and not n.watchdog() and not n.stopping()
    assert not n.reloading() and not n.extend_timeout(5)
    assert n.last_error is None
    assert n.last_status == "x"  # still remembered, for STATUS once a socket exists


def test_unsupported_notify_socket_is_disabled_with_a_reason() -> None:
    n = Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert "vsock:2:1234" in n.reason
    assert not n.watchdog()


def test_send_failure_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "later.sock"
    n = Notifier(str(path))
    assert n.enabled
    assert not n.watchdog()  # nobody listening yet
    assert n.last_error is not None and "FileNotFoundError" in n.last_error
    ns = NotifySocket(str(path))
    try:
        assert n.watchdog()
        assert n.last_error is None
        assert ns.recv() == b"WATCHDOG=1"
    finally:
        ns.close()


def test_status_is_one_bounded_line() -> None:
    assert sanitize_status("a\r\nb\x00c\x1b[31md  \u00e9\u4e2d") == "a b c [31md \u00e9\u4e2d"
    long = sanitize_status("x" * 500)
    assert len(long) == 200 and long.endswith("\u2026")
    assert sanitize_status("\n\n") == ""


def test_alert_prefixes_every_status_until_cleared(notify_socket: NotifySocket) -> None:
    n = Notifier()
    n.status("5.0 fps")
    n.set_alert("STALLED: inference\n(watchdog withheld)")
    n.status("4.0 fps")
    n.set_alert(None)
    assert notify_socket.drain() == [
        b"STATUS=5.0 fps",
        b"STATUS=STALLED: inference (watchdog withheld) | 5.0 fps",
        b"STATUS=STALLED: inference (watchdog withheld) | 4.0 fps",
        b"STATUS=4.0 fps",
    ]
    assert n.last_status == "4.0 fps"


# --- WATCHDOG_USEC ---------------------------------------------------------------------------------------

def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent: not for us
    assert watchdog_interval() is None


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({"WATCHDOG_USEC": "1"}, 0.0000005),
    ({"WATCHDOG_USEC": " 200000 "}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""}, 0.1),
])
def test_watchdog_interval_values(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


@pytest.mark.parametrize("env", [
    {"WATCHDOG_USEC": "30s"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "1e6"},
    {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "self"},
])
def test_watchdog_interval_rejects_what_systemd_never_sends(env: dict[str, str]) -> None:
    with pytest.raises(SystemdEnvironmentError, match="WATCHDOG_"):
        watchdog_interval(env, pid=4242)


# --- heartbeats and the feeder ------------------------------------------------------------------------------

def test_heartbeat_counts_and_ages() -> None:
    hb = Heartbeat("capture")
    assert hb.count == 0 and hb.progressed_within(5.0)  # a new stage gets one window for its first beat
    time.sleep(0.06)
    assert not hb.progressed_within(0.05)
    hb.beat()
    assert hb.count == 1 and hb.progressed_within(0.05) and hb.age() < 0.05
    probe = hb.probe(0.05)
    assert probe()
    time.sleep(0.06)
    assert not probe()


def test_heartbeat_is_thread_safe() -> None:
    hb = Heartbeat()
    threads = [threading.Thread(target=lambda: [hb.beat() for _ in range(2000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hb.count == 16000


class Beater:
    """A stage's thread: beats its heartbeat every `every` seconds until paused or stopped."""

    def __init__(self, hb: Heartbeat, every: float = 0.01) -> None:
        self.hb, self.every = hb, every
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            if not self.paused.is_set():
                self.hb.beat()


def wait_for(cond: object, timeout: float = 5.0) -> bool:
    assert callable(cond)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_feeder_pings_while_all_progress_and_stops_when_one_stalls(notify_socket: NotifySocket) -> None:
    beats = {name: Heartbeat(name) for name in ("capture", "inference", "mqtt")}
    beaters = {name: Beater(hb) for name, hb in beats.items()}
    notifier = Notifier()
    notifier.status("15.0 fps")
    assert notify_socket.recv() == b"STATUS=15.0 fps"
    feeder = WatchdogFeeder.from_heartbeats(beats, notifier, period=0.05, within=0.3)
    assert feeder.probe_names == ("capture", "inference", "mqtt")
    stop = threading.Event()
    thread = feeder.start(stop)
    try:
        # all three progress: pings arrive
        healthy = notify_socket.collect(0.5)
        assert healthy.count(b"WATCHDOG=1") >= 4
        assert set(healthy) == {b"WATCHDOG=1"}
        assert feeder.stalled == ()

        # inference stops beating: the feeder notices, names it, and no ping arrives any more
        beaters["inference"].paused.set()
        assert wait_for(lambda: feeder.stalled == ("inference",))
        pings = feeder.pings
        notify_socket.drain()
        quiet = notify_socket.collect(0.6)
        assert b"WATCHDOG=1" not in quiet
        assert feeder.pings == pings and feeder.withheld > 0
        assert notifier.alert == "STALLED: inference (watchdog withheld)"
        notifier.status("0.0 fps")  # the node keeps reporting; the stall stays visible
        assert notify_socket.recv() == b"STATUS=STALLED: inference (watchdog withheld) | 0.0 fps"

        # it recovers: the alert clears and pings resume
        beaters["inference"].paused.clear()
        assert wait_for(lambda: feeder.stalled == ())
        resumed = notify_socket.collect(0.5)
        assert b"STATUS=0.0 fps" in resumed
        assert resumed.count(b"WATCHDOG=1") >= 4
    finally:
        stop.set()
        thread.join(2)
        for b in beaters.values():
            b.stop.set()
    assert not thread.is_alive()
    assert set(notify_socket.senders) == {os.getpid()}


def test_feeder_tick_names_every_stalled_probe(notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture) -> None:
    capture, inference = Heartbeat("capture"), Heartbeat("inference")
    feeder = WatchdogFeeder({"capture": capture.probe(0.05), "inference": inference.probe(0.05)},
                            Notifier(), period=1.0)
    assert feeder.tick()
    assert notify_socket.recv() == b"WATCHDOG=1"
    time.sleep(0.07)
    with caplog.at_level(logging.WARNING, logger="edge.systemd"):
        assert not feeder.tick()
    assert feeder.stalled == ("capture", "inference")
    assert notify_socket.drain() == [b"STATUS=STALLED: capture, inference (watchdog withheld)"]
    [record] = [r for r in caplog.records if r.name == "edge.systemd"]
    assert "capture, inference" in record.getMessage()
    assert getattr(record, "WATCHDOG_STALLED", None) == "capture, inference"
    assert not feeder.tick()
    assert notify_socket.drain() == []  # still stalled: no ping, no repeated status or log line
    capture.beat()
    inference.beat()
    assert feeder.tick()
    assert notify_socket.drain() == [b"STATUS=", b"WATCHDOG=1"]


def test_feeder_without_notify_socket_still_tracks_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    hb = Heartbeat("mqtt")
    feeder = WatchdogFeeder({"mqtt": hb.probe(0.05)}, Notifier(), period=0.5)
    assert feeder.tick() and feeder.pings == 0
    time.sleep(0.07)
    assert not feeder.tick() and feeder.stalled == ("mqtt",)


def test_feeder_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="probe"):
        WatchdogFeeder({}, Notifier(environ={}), 1.0)
    with pytest.raises(ValueError, match="period"):
        WatchdogFeeder({"x": lambda: True}, Notifier(environ={}), 0)


# --- logging -----------------------------------------------------------------------------------------------

@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _journal_module_present() -> bool:
    try:
        __import__("systemd.journal")
    except ImportError:
        return False
    return True


def test_plain_stderr_logging_outside_systemd(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("JOURNAL_STREAM", "INVOCATION_ID"):
        monkeypatch.delenv(var, raising=False)
    h1 = journal_logging(logging.INFO)
    h2 = journal_logging("DEBUG")
    assert [h for h in root_logger.handlers if h.get_name() == "edge.systemd"] == [h2]
    assert h1 not in root_logger.handlers
    assert root_logger.level == logging.DEBUG
    logging.getLogger("edge.test").info("shard in force", extra={"SHARD_VERSION": 7, "lower": "not a field"})
    err = capsys.readouterr().err
    assert re.search(r"^\S+ \S+ INFO edge\.test: shard in force \[SHARD_VERSION=7\]$", err, re.M), err
    assert "lower" not in err and not err.startswith("<")


def test_stderr_logging_into_the_journal_stream_carries_priorities(tmp_path: Path) -> None:
    """Under systemd without systemd-python: stderr is the journal stream ($JOURNAL_STREAM = its dev:inode),
    so every line gets a <N> syslog priority prefix for journald. Run in a child with a real file as stderr."""
    if _journal_module_present():
        pytest.skip("systemd-python is installed: the JournalHandler path is taken instead")
    err_path = tmp_path / "stderr"
    code = ("import logging; from edge.systemd import journal_logging; h = journal_logging();"
            "print(type(h).__name__);"
            "log = logging.getLogger('edge.node');"
            "log.warning('camera lost\\nretrying', extra={'CAMERA_ID': 'gate-north'}); log.info('ready')")
    with err_path.open("wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": uuid.uuid4().hex}
        out = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE, env=env,
                             cwd=REPO, check=True, text=True).stdout
    assert out.strip() == "StreamHandler"
    assert err_path.read_text().splitlines() == [
        "<4>edge.node: camera lost [CAMERA_ID=gate-north]",
        "<4>retrying",
        "<6>edge.node: ready",
    ]


def test_journal_handler_when_systemd_python_is_installed(root_logger: logging.Logger,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not _journal_module_present():
        pytest.skip("systemd-python not installed (optional extra `systemd`); stderr fallback tested instead")
    from systemd import journal  # type: ignore[import-not-found,unused-ignore]

    monkeypatch.setenv("INVOCATION_ID", uuid.uuid4().hex)
    h = journal_logging()
    assert isinstance(h, journal.JournalHandler)
    assert h._extra["SYSLOG_IDENTIFIER"] == "edge-node"


# --- core dumps --------------------------------------------------------------------------------------------

CORE_CHILD = """
import ctypes, json, os, resource, sys
from edge.systemd import disable_core_dumps
r = disable_core_dumps()
libc = ctypes.CDLL(None, use_errno=True)
limits = [l for l in open('/proc/self/limits') if l.startswith('Max core file size')][0].split()
print(json.dumps({'rlimit': resource.getrlimit(resource.RLIMIT_CORE),
                  'proc_limits': limits[4:6],
                  'get_dumpable': libc.prctl(3, 0, 0, 0, 0),
                  'report': {'rlimit_core': r.rlimit_core, 'dumpable': r.dumpable, 'actions': r.actions,
                             'notes': r.notes, 'off': r.core_dumps_off}}))
"""


def test_disable_core_dumps_in_a_child_process() -> None:
    """PR_SET_DUMPABLE 0 would change /proc/self for the rest of this test run: do it in a child."""
    import json

    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else min(1 << 20, hard)
    out = subprocess.run([sys.executable, "-c", CORE_CHILD], cwd=REPO, check=True, capture_output=True,
                         text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (limit, limit)))
    doc = json.loads(out.stdout)
    assert doc["rlimit"] == [0, 0]
    assert doc["proc_limits"] == ["0", "0"]  # the kernel's view, /proc/self/limits
    assert doc["get_dumpable"] == 0  # prctl(PR_GET_DUMPABLE)
    rep = doc["report"]
    assert rep["rlimit_core"] == [0, 0] and rep["dumpable"] is False and rep["off"] is True
    # the flag first (a process seen with its core limit at 0 is already undumpable), then the limit
    expected = ["PR_SET_DUMPABLE 0"] if limit == 0 else ["PR_SET_DUMPABLE 0",
                                                          f"RLIMIT_CORE ({limit}, {limit}) -> (0, 0)"]
    assert rep["actions"] == expected
    assert rep["notes"] == []


def test_disable_core_dumps_is_idempotent_and_harmless_here() -> None:
    """A limit of 0 already set (LimitCORE=0) is left alone: no setrlimit call (which the unit's seccomp filter
    may refuse), only the dumpable flag. In a child, like every PR_SET_DUMPABLE here."""
    before = resource.getrlimit(resource.RLIMIT_CORE)
    code = ("import resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0));"
            "from edge.systemd import disable_core_dumps; r = disable_core_dumps(); print(list(r.actions))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "['PR_SET_DUMPABLE 0']"
    assert resource.getrlimit(resource.RLIMIT_CORE) == before


ABORT_CHILD = """
import os, resource, sys
if sys.argv[1] == "guarded":
    from edge.systemd import disable_core_dumps
    disable_core_dumps()
try:  # with CAP_SYS_RESOURCE the limit can be raised again, leaving only the dumpable flag in the way
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("raised", flush=True)
except ValueError:
    print("limited", flush=True)
os.abort()
"""


def test_a_crash_after_disable_core_dumps_writes_no_core(tmp_path: Path) -> None:
    """End to end: an aborting child leaves a core file in its directory, unless it ran disable_core_dumps().
    Where the child may raise RLIMIT_CORE again (CAP_SYS_RESOURCE), it does, so that only PR_SET_DUMPABLE
    stands in the way."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} does not write into the crashing process's directory")
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this pytest process already has a hard RLIMIT_CORE of 0, inherited by every child: an "
                    "earlier test ran disable_core_dumps() in-process (Node.run); run this file alone")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    said = {}
    for mode in ("control", "guarded"):
        d = tmp_path / mode
        d.mkdir()
        r = subprocess.run([sys.executable, "-c", ABORT_CHILD, mode], cwd=d, env=env,
                           capture_output=True, text=True, check=False)
        assert r.returncode == -6, r.stderr  # SIGABRT
        said[mode] = r.stdout.strip()
    control = list((tmp_path / "control").iterdir())
    if said["control"] != "raised" or not control:
        pytest.skip("the control child could not dump core here (hard RLIMIT_CORE of 0, or dumps disabled)")
    for f in control:
        f.unlink()
    assert list((tmp_path / "guarded").iterdir()) == []
    # said["guarded"] == "raised": the dumpable flag alone stopped the dump; "limited": both did


# --- the unit files ----------------------------------------------------------------------------------------

def unit_settings(*paths: Path) -> dict[str, list[str]]:
    """KEY -> values across the files (a unit plus its drop-ins), comments and sections ignored."""
    out: dict[str, list[str]] = {}
    for path in paths:
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;[":
                continue
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_node_unit_contract() -> None:
    s = unit_settings(NODE_UNIT)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/opt/edge-node/.venv/bin/edge-node run --config /etc/edge-node/node.toml"
    assert one["WatchdogSec"] == "30s" and one["Restart"] == "on-failure"
    assert {"RestartSec", "TimeoutStartSec", "StartLimitIntervalSec", "StartLimitBurst"} <= set(one)
    assert one["User"] == one["Group"] == "edge-node"
    assert one["SupplementaryGroups"].split() == ["video", "plugdev"]
    assert one["StateDirectory"] == one["RuntimeDirectory"] == one["ConfigurationDirectory"] == "edge-node"
    assert one["StateDirectoryMode"] == "0700" and one["RuntimeDirectoryMode"] == "0700"
    assert one["LimitCORE"] == "0" and one["UMask"] == "0077"
    assert {"char-video4linux rw", "char-media rw", "char-dma_heap rw", "char-usb_device rw"} <= set(
        s["DeviceAllow"])
    assert one["DevicePolicy"] == "closed" and one["ProtectSystem"] == "strict"
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]  # no AF_NETLINK by default
    assert "MemoryDenyWriteExecute" not in s  # untested with inference running: drop-in example only
    assert "ProcSubset" not in s  # hides /proc/cpuinfo: XNNPACK's CPU detection fails (docs/operations.md)
    assert "ReadWritePaths" not in s  # writable: the state and runtime directories only


def test_retention_units_contract() -> None:
    s = {k: v[-1] for k, v in unit_settings(RETENTION_UNIT).items()}
    assert s["Type"] == "oneshot"
    assert s["ExecStart"] == "/opt/edge-node/.venv/bin/edge-node purge --config /etc/edge-node/node.toml"
    assert s["User"] == "edge-node" and s["StateDirectory"] == "edge-node"
    assert s["RuntimeDirectory"] != "edge-node"  # would be removed under the running node when the job ends
    assert s["PrivateNetwork"] == "yes" and s["PrivateDevices"] == "yes" and s["LimitCORE"] == "0"
    t = {k: v[-1] for k, v in unit_settings(RETENTION_TIMER).items()}
    assert t["OnCalendar"] == "hourly" and t["Persistent"] == "true" and t["WantedBy"] == "timers.target"


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C.UTF-8"}
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)


def exposure(unit: Path) -> tuple[float, str, str]:
    """`systemd-analyze security --offline=true`: (overall exposure, rating, parse warnings)."""
    r = analyze("security", "--offline=true", "--no-pager", str(unit))
    m = re.search(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)", r.stdout)
    assert m, f"no overall exposure in the output of systemd-analyze security:\n{r.stdout}\n{r.stderr}"
    assert m.group(1) == unit.name
    return float(m.group(2)), m.group(3), r.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
@pytest.mark.parametrize("unit", [NODE_UNIT, RETENTION_UNIT, PROVISION_UNIT], ids=lambda p: p.name)
def test_security_exposure_is_ok(unit: Path) -> None:
    score, rating, warnings = exposure(unit)
    assert score <= MAX_EXPOSURE, f"{unit.name}: exposure {score} {rating} > {MAX_EXPOSURE}"
    assert rating in ("OK", "SAFE")
    # systemd only warns about a misspelt key or a bad value, and ignores the line: fail on any warning
    assert warnings.strip() == "", warnings
    # the same gate as a one-liner for scripts: --threshold is the exposure x 10
    r = analyze("security", "--offline=true", f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit))
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
@pytest.mark.parametrize("dropin", DROPINS, ids=lambda p: p.name)
def test_security_exposure_with_each_dropin(dropin: Path, tmp_path: Path) -> None:
    unit = tmp_path / NODE_UNIT.name
    shutil.copy(NODE_UNIT, unit)
    d = tmp_path / f"{NODE_UNIT.name}.d"
    d.mkdir()
    shutil.copy(dropin, d / dropin.name.removesuffix(".example"))
    score, rating, warnings = exposure(unit)
    assert score <= MAX_EXPOSURE, f"with {dropin.name}: exposure {score} {rating}"
    assert warnings.strip() == "", warnings


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
def test_the_warning_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    unit = tmp_path / NODE_UNIT.name
    unit.write_text(NODE_UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    score, _, warnings = exposure(unit)
    assert "Unknown key" in warnings and "ProtectSytem" in warnings
    assert score <= MAX_EXPOSURE  # the score alone would not have noticed


def scratch_root(tmp_path: Path) -> Path:
    """A root holding the distribution's unit tree, our units and a stand-in for the edge-node executable,
    so that `systemd-analyze verify --root` checks dependencies and ExecStart= as on a device."""
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "sysinit.target").is_file():
        pytest.skip(f"no systemd unit tree at {system_units}")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/edge-node/.venv/bin/edge-node"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in (NODE_UNIT, RETENTION_UNIT, RETENTION_TIMER, PROVISION_UNIT):
        shutil.copy(unit, etc / unit.name)
    return root


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
def test_units_verify_against_a_scratch_root(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    r = analyze("verify", "--man=no", f"--root={root}", NODE_UNIT.name, RETENTION_UNIT.name, RETENTION_TIMER.name,
                PROVISION_UNIT.name)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # and it does notice a missing executable
    (root / "opt/edge-node/.venv/bin/edge-node").unlink()
    r = analyze("verify", "--man=no", f"--root={root}", NODE_UNIT.name)
    assert r.returncode != 0 and "/opt/edge-node/.venv/bin/edge-node" in r.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed (Debian: systemd)")
def test_sysusers_creates_a_locked_system_user(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        src = Path("/etc") / name
        if src.exists():
            shutil.copy(src, etc / name)
    conf = UNITS / "sysusers.d-edge-node.conf"
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"], input=conf.read_text(),
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    [user] = [line.split(":") for line in (etc / "passwd").read_text().splitlines() if line.startswith("edge-node:")]
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert 0 < uid < 1000 and home == "/" and shell.endswith("nologin")
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    assert int(groups["edge-node"][2]) == gid
    assert {"video", "plugdev"} <= set(groups)
    assert "edge-node" not in groups["video"][3].split(",")  # camera groups come from the unit, not the user
