"""A real mosquitto for the tests: fleet CA, broker/device/admin/operator certificates, the generated
config (TLS, require_certificate, identity = CN, %u ACLs, persistence) on a free loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.events.link import BrokerSettings, connect_properties
from edge.tls import key_pem, new_tls_key
from provisioning.broker import BrokerConfig
from provisioning.ca import FleetCA, client_cn

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSPHRASE = b"test-fleet-passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """mosquitto started on loopback with the project's generated configuration."""

    directory: Path
    port: int
    ca: FleetCA
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    def start(self, timeout: float = 10.0) -> None:
        logf = open(self.directory / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.directory / 'mosquitto.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # clean stop: persistence saved
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def creds(self, cn: str) -> tuple[Path, Path, Path]:
        return self.directory / "ca.crt", self.directory / f"{cn}.crt", self.directory / f"{cn}.key"

    def settings(self, cn: str, **kw: Any) -> BrokerSettings:
        ca, crt, key = self.creds(cn)
        return BrokerSettings("127.0.0.1", self.port, ca, crt, key, **kw)

    def add_client(self, kind: str, name: str) -> str:
        cn = client_cn(kind, name)
        key = new_tls_key()
        (self.directory / f"{cn}.key").write_bytes(key_pem(key))
        self.ca.issue_client(kind, name, key.public_key(), self.directory / f"{cn}.crt")
        return cn


def make_broker(directory: Path, devices: tuple[str, ...] = ("cam-01", "cam-02"),
                admins: tuple[str, ...] = ("ops",), operators: tuple[str, ...] = ("console",)) -> Broker:
    directory.mkdir(parents=True, exist_ok=True)
    ca = FleetCA(directory / "fleet", PASSPHRASE)
    ca.init("test")
    shutil.copy(ca.cert_path, directory / "ca.crt")
    ca.issue_broker(["localhost", "127.0.0.1"], directory)
    broker = Broker(directory, free_port(), ca)
    for d in devices:
        broker.add_client("device", d)
    for a in admins:
        broker.add_client("admin", a)
    for o in operators:
        broker.add_client("operator", o)
    run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    BrokerConfig(directory, broker.port, bind="127.0.0.1", log_dest="stdout", run_as=run_as).write(
        ca.clients("admin"), ca.clients("operator"))
    return broker


def fleet_broker(fleet: Path, directory: Path, passphrase: str) -> tuple[Broker, str]:
    """A mosquitto configured the way an admin would: `edge-fleet broker config` from an existing fleet
    (loopback, a free port, log to stdout), not yet started; and its mqtts:// URL."""
    port = free_port()
    conf = subprocess.run(
        [sys.executable, "-m", "provisioning.cli", "broker", "config", "--out-dir", str(directory), "--hostname",
         "localhost", "--alt-name", "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1", "--fleet-dir",
         str(fleet)], capture_output=True, text=True, env={**os.environ, "EDGE_FLEET_PASSPHRASE": passphrase},
        timeout=120, check=False)
    assert conf.returncode == 0, conf.stderr
    text = (directory / "mosquitto.conf").read_text().replace("log_dest syslog", "log_dest stdout")
    if os.geteuid() == 0:
        text += f"user {pwd.getpwuid(0).pw_name}\n"
    (directory / "mosquitto.conf").write_text(text)
    return Broker(directory, port, FleetCA(fleet, passphrase.encode())), f"mqtts://127.0.0.1:{port}"


class Peer:
    """A bare paho MQTT 5 client for observing the broker from outside the code under test."""

    def __init__(self, broker: Broker, cn: str, clean: bool = True, session_expiry: int = 0,
                 ca: Path | None = None, cert: tuple[Path, Path] | None = None):
        ca_file, crt, key = broker.creds(cn)
        if cert is not None:
            crt, key = cert
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca or ca_file), certfile=str(crt), keyfile=str(key),
                            cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.lock = threading.Lock()
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self.suback: dict[int, list[int]] = {}
        self.connack: Any = None
        self.disconnects: list[Any] = []
        self.connected = threading.Event()
        c = self.client
        c.on_connect = lambda _c, _u, flags, rc, _p: (setattr(self, "connack", rc), self.connected.set())
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc)
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.suback.__setitem__(mid, [r.value for r in rcs])
        c.on_message = lambda _c, _u, msg: self._got(msg)
        self.clean = clean
        self.session_expiry = session_expiry
        self.port = broker.port

    def _got(self, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def connect(self, wait: float = 5.0) -> Peer:
        self.client.connect("127.0.0.1", self.port, keepalive=10, clean_start=self.clean,
                            properties=connect_properties(self.session_expiry))
        self.client.loop_start()
        self.connected.wait(wait)
        return self

    def subscribe(self, topic: str, timeout: float = 5.0) -> Peer:
        """Subscribe and wait for the SUBACK (no sleeping and hoping)."""
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        if not wait_for(lambda: len(self.suback) > before, timeout):
            raise RuntimeError(f"no SUBACK for {topic}")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(pred: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
