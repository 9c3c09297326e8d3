"""A device's MQTT 5 connection: TLS with its certificate, a persistent session, a last will on `state`,
and a publisher thread that drains the outbox in order.

paho's network loop runs in its own thread and only moves bytes; every callback is guarded (an exception
in a paho callback silently kills that thread) and does no more than hand acks and commands over. The
publisher thread owns the outbox cursor: it feeds at most `window` rows to paho, deletes a row when its
PUBACK arrives with a success code, and starts again from the oldest pending row after a restart. paho
itself re-sends its in-flight messages after a reconnect, so within one process nothing is sent twice on
purpose; across a crash the consumer de-duplicates by event id.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.events.ids import uuid7
from edge.events.messages import sign_message, state_body
from edge.events.outbox import Outbox, OutboxError
from edge.events.topics import DeviceTopics
from edge.identity import DeviceIdentity
from edge.trust.times import now

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])


class BrokerURLError(ValueError):
    """A broker URL is not mqtts://host[:port]."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and the files that prove who we are to it."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps our session (and queued commands)
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    window: int = 32  # rows handed to paho before their PUBACK comes back
    key_password: str | None = None  # fleet tools keep their TLS key encrypted; devices seal theirs

    @staticmethod
    def parse_url(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        if parts.scheme != "mqtts" or not parts.hostname:
            raise BrokerURLError(f"broker {url!r}: expected mqtts://host[:port] (TLS is required)")
        try:
            port = parts.port or 8883
        except ValueError:
            raise BrokerURLError(f"broker {url!r}: bad port") from None
        return parts.hostname, port


def tls_client(client_id: str, settings: BrokerSettings, manual_ack: bool = False) -> mqtt.Client:
    """A paho client speaking MQTT 5 over TLS with a client certificate (the CN is our identity).
    `manual_ack`: incoming QoS 1 messages are acknowledged only when the application says so."""
    for f in (settings.ca_file, settings.cert_file, settings.key_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (broker TLS credentials)")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    client.tls_set(ca_certs=str(settings.ca_file), certfile=str(settings.cert_file),
                   keyfile=str(settings.key_file), keyfile_password=settings.key_password,
                   cert_reqs=ssl.CERT_REQUIRED,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.max_inflight_messages_set(settings.window)
    client.reconnect_delay_set(min_delay=max(1, int(settings.reconnect_min)),
                               max_delay=max(1, int(settings.reconnect_max)))
    return client


def connect_properties(session_expiry: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    return props


def publish_properties(expiry_seconds: int | None) -> Properties | None:
    if expiry_seconds is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, expiry_seconds)
    return props


NO_MATCHING_SUBSCRIBERS = 0x10  # nobody would receive it: kept and retried, not counted as delivered
RETRY_KEPT_AFTER = 30.0  # seconds before a refused or unrouted row is offered again on the same connection


@dataclass(frozen=True)
class LinkHealth:
    """What the node's watchdog and state topic need to know about the link."""

    connected: bool
    loop_alive: bool
    publisher_alive: bool
    inflight: int
    seconds_waiting: float | None  # since the last ack, or since connecting if later; None: nothing yet
    callback_errors: int
    rejected: int  # PUBACKs with a failure reason (e.g. 0x87 not authorised), rows kept
    unrouted: int  # PUBACKs saying no subscriber exists (0x10), rows kept
    last_error: str | None

    def progressing(self, stall_after: float) -> bool:
        """Threads alive, and if anything is in flight on a live connection, acks still arriving. A broker
        that is down is not a stall: paho keeps reconnecting, and restarting the node would not help."""
        if not (self.loop_alive and self.publisher_alive):
            return False
        if self.connected and self.inflight and self.seconds_waiting is not None:
            return self.seconds_waiting < stall_after
        return True

    def to_json(self) -> dict[str, Any]:
        return {"connected": self.connected, "inflight": self.inflight, "callback_errors": self.callback_errors,
                "rejected": self.rejected, "unrouted": self.unrouted, "last_error": self.last_error}


@dataclass
class _Shared:
    """State the paho thread hands to the publisher thread (guarded by the lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: bool = False
    connected_at: float | None = None
    generation: int = 0
    callback_errors: int = 0
    last_error: str | None = None
    last_ack: float | None = None


# (topic, payload, ack, retained): `retained` is the broker's retain flag, set on the copy of a retained message
# (a desired state) that it delivers because we subscribed
CommandCallback = Callable[[str, bytes, Callable[[], None], bool], None]


class DeviceLink:
    """One device's connection: publishes the outbox and state, hands commands to `on_command` together with
    a function that acknowledges the command to the broker (called once the answer is committed).

    The command subscription is made on every connection, also when the broker kept the session: with the
    default retain handling the broker then delivers the retained desired state (the latest shard push) each
    time, so a device converges to it after its first connection, a lost session or a lost message."""

    def __init__(self, settings: BrokerSettings, identity: DeviceIdentity, outbox: Outbox,
                 on_command: CommandCallback | None = None,
                 state_detail: Callable[[], dict[str, Any]] | None = None, state_every: float = 30.0):
        self.settings = settings
        self.identity = identity
        self.topics = DeviceTopics(identity.device_id)
        self.outbox = outbox
        self.boot_id = uuid7()
        self._on_command = on_command
        self._state_detail = state_detail
        self._state_every = state_every
        self._shared = _Shared()
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq; publisher thread only
        self._must_route: set[int] = set()  # in-flight seqs that need a subscriber (match events)
        self._kept: dict[int, float] = {}  # refused/unrouted seq -> when to offer it again; publisher only
        self._rejected = 0
        self._unrouted = 0
        self._publisher: threading.Thread | None = None
        self.subscribed = threading.Event()  # the command subscription was granted (at least once)
        self.client = tls_client(identity.device_id, settings, manual_ack=True)
        self.client.will_set(self.topics.state, self._state_payload("offline"), qos=1, retain=True)
        self.client.on_connect = self._guard(self._handle_connect)
        self.client.on_connect_fail = self._guard(self._handle_connect_fail)
        self.client.on_disconnect = self._guard(self._handle_disconnect)
        self.client.on_publish = self._guard(self._handle_publish)
        self.client.on_message = self._guard(self._handle_message)
        self.client.on_subscribe = self._guard(self._handle_subscribe)

    # -- paho thread: guarded, short, no I/O of our own --
    def _guard(self, fn: F) -> F:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # an escaping exception would kill paho's loop thread
                with self._shared.lock:
                    self._shared.callback_errors += 1
                    self._shared.last_error = f"{fn.__name__}: {type(exc).__name__}: {exc}"
                log.exception("MQTT callback %s failed", fn.__name__)
        return guarded  # type: ignore[return-value]

    def _handle_connect(self, client: mqtt.Client, _ud: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                        _props: Properties | None) -> None:
        if rc.is_failure:
            with self._shared.lock:
                self._shared.last_error = f"broker refused the connection: {rc}"
            log.warning("broker refused the connection: %s", rc)
            return
        if self._on_command is not None:
            client.subscribe(self.topics.command_filter, qos=1)
        client.publish(self.topics.state, self._state_payload("online"), qos=1, retain=True)
        with self._shared.lock:  # last: the publisher must not start before paho's own re-sends are queued
            self._shared.connected = True
            self._shared.connected_at = time.monotonic()
            self._shared.generation += 1
            self._shared.last_error = None
        log.info("connected to %s:%d (session present: %s)", self.settings.host, self.settings.port,
                 flags.session_present)
        self._wake.set()

    def _handle_connect_fail(self, _c: mqtt.Client, _ud: object) -> None:
        with self._shared.lock:
            self._shared.last_error = (f"cannot connect to {self.settings.host}:{self.settings.port} "
                                       "(TLS, DNS or refused; check certificate, CA and host name)")

    def _handle_disconnect(self, _c: mqtt.Client, _ud: object, _flags: mqtt.DisconnectFlags, rc: ReasonCode,
                           _props: Properties | None) -> None:
        with self._shared.lock:
            self._shared.connected = False
            if rc.is_failure:
                self._shared.last_error = f"disconnected: {rc}"
        log.info("disconnected: %s", rc)

    def _handle_publish(self, _c: mqtt.Client, _ud: object, mid: int, rc: ReasonCode,
                        _props: Properties | None) -> None:
        self._acks.put((mid, rc.value))
        self._wake.set()

    def _handle_subscribe(self, _c: mqtt.Client, _ud: object, _mid: int, rcs: list[ReasonCode],
                          _props: Properties | None) -> None:
        for rc in rcs:
            if rc.is_failure:
                with self._shared.lock:
                    self._shared.last_error = f"command subscription refused: {rc}"
                log.warning("command subscription refused: %s", rc)
                return
        self.subscribed.set()

    def _handle_message(self, client: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            client.ack(mid, qos)

        if self._on_command is None:
            ack()
            return
        self._on_command(msg.topic, bytes(msg.payload), ack, bool(msg.retain))

    # -- our side --
    def _state_payload(self, status: str) -> bytes:
        detail: dict[str, Any] = {"outbox": self.outbox.stats().to_json()}
        if hasattr(self, "client"):
            detail["link"] = self.health().to_json()
        if self._state_detail is not None:
            detail.update(self._state_detail())
        return sign_message(state_body(self.identity.device_id, status, now(), self.boot_id, detail),
                            self.identity.signing_key)

    def start(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive,
                                  clean_start=False,
                                  properties=connect_properties(self.settings.session_expiry))
        self.client.loop_start()
        self._publisher = threading.Thread(target=self._publish_loop, name="edge-publisher", daemon=True)
        self._publisher.start()

    def wake(self) -> None:
        """Something new is in the outbox."""
        self._wake.set()

    def publish_state(self) -> None:
        self.client.publish(self.topics.state, self._state_payload("online"), qos=1, retain=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline (retained), give in-flight messages a moment, then disconnect cleanly."""
        self._stop.set()
        self._wake.set()
        if self._publisher is not None:
            self._publisher.join(timeout)
        if self.health().connected:
            info = self.client.publish(self.topics.state, self._state_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.health().connected:
                time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()

    def health(self) -> LinkHealth:
        with self._shared.lock:
            sh = self._shared
            marks = [t for t in (sh.last_ack, sh.connected_at) if t is not None]
            connected, errors, last_error = sh.connected, sh.callback_errors, sh.last_error
        loop = getattr(self.client, "_thread", None)  # paho keeps its loop thread here
        return LinkHealth(
            connected=connected, loop_alive=loop is not None and loop.is_alive(),
            publisher_alive=self._publisher is not None and self._publisher.is_alive(),
            inflight=len(self._inflight),
            seconds_waiting=time.monotonic() - max(marks) if marks else None,
            callback_errors=errors, rejected=self._rejected, unrouted=self._unrouted, last_error=last_error)

    def _publish_loop(self) -> None:
        """The publisher thread: survives outbox errors (reported, retried after a pause)."""
        cursor = 0  # highest outbox seq handed to paho
        generation = 0
        hold_until = 0.0  # after a reconnect: paho re-sends what was in flight before anything new goes out
        next_state = time.monotonic() + self._state_every
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._drain_acks()
                with self._shared.lock:
                    connected, gen = self._shared.connected, self._shared.generation
                if gen != generation:
                    generation = gen
                    hold_until = time.monotonic() + RETRY_KEPT_AFTER if self._inflight else 0.0
                if hold_until and (not self._inflight or time.monotonic() >= hold_until):
                    for seq in self._inflight.values():  # paho did not re-send these: offer them again
                        self._kept[seq] = 0.0
                    self._inflight.clear()
                    hold_until = 0.0
                if connected and not hold_until:
                    cursor = self._feed(cursor)
                    if time.monotonic() >= next_state:
                        self.publish_state()
                        next_state = time.monotonic() + self._state_every
            except OutboxError as exc:
                with self._shared.lock:
                    self._shared.last_error = str(exc)
                log.error("outbox: %s; retrying in 5 s", exc)
                self._stop.wait(5.0)

    def _feed(self, cursor: int) -> int:
        """Hand paho the rows due again, then new rows, up to the window; returns the new cursor."""
        room = self.settings.window - len(self._inflight)
        now_m = time.monotonic()
        due = [seq for seq, at in self._kept.items() if at <= now_m][:max(0, room)]
        batch = self.outbox.rows(due) if due else []
        for seq in due:
            del self._kept[seq]
        room -= len(batch)
        if room > 0 and self.outbox.last_seq > cursor:
            batch += self.outbox.next_batch(cursor, room)
        for item in batch:
            # audit checkpoints are retained: the broker keeps the latest as the off-device copy of the log's head
            info = self.client.publish(item.topic, item.payload, qos=1, retain=item.topic == self.topics.audit,
                                       properties=publish_properties(int(item.expires - time.time())))
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued, sent on reconnect
                self._kept[item.seq] = now_m + 1.0
                continue
            self._inflight[info.mid] = item.seq
            if item.topic == self.topics.match:
                self._must_route.add(item.seq)
            cursor = max(cursor, item.seq)
        return cursor

    def _drain_acks(self) -> None:
        acked: list[int] = []
        while True:
            try:
                mid, code = self._acks.get_nowait()
            except queue.Empty:
                break
            with self._shared.lock:
                self._shared.last_ack = time.monotonic()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # a state message, not an outbox row
            # 0x10 "no matching subscribers" drops a match event nobody would see: kept. For a command
            # result or audit checkpoint the broker's acceptance is what counts (a retained checkpoint stays).
            must_route = seq in self._must_route
            self._must_route.discard(seq)
            if code < 0x80 and (code != NO_MATCHING_SUBSCRIBERS or not must_route):
                acked.append(seq)
                continue
            if code == NO_MATCHING_SUBSCRIBERS:
                self._unrouted += 1
                log.warning("no subscriber for outbox row %d yet (is the operator console's session set up?); "
                            "kept, offered again in %.0f s", seq, RETRY_KEPT_AFTER)
            else:
                self._rejected += 1
                log.warning("broker refused outbox row %d (reason 0x%02x); kept, offered again in %.0f s", seq,
                            code, RETRY_KEPT_AFTER)
            self._kept[seq] = time.monotonic() + RETRY_KEPT_AFTER
        if acked:
            self.outbox.ack(acked)
