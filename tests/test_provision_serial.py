"""Serial provisioning end to end: the device agent (`edge-node provision-agent`) and the technician tool
(`edge-fleet provision`) as separate processes, talking pyserial over real pseudo-terminals joined by a
relay that can damage, cut or tap frames (tests/provision_cable.py). The happy path ends with the device
connecting to a real mosquitto with its new certificate and accepting a shard; every fault ends in a clear
message with the device either fully provisioned or exactly as before."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import tty
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import cbor2
import numpy as np
import pytest
from cobs import cobs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from mqttworld import Broker, free_port, wait_for
from provision_cable import TO_DEVICE, TO_TOOL, Cable, Fault
from provision_world import PASS, AgentProc, Device, ToolProc, cli, make_fleet, ok

from edge import cli as edge_cli
from edge.audit import AUDIT_FILE, verify_log
from edge.config import load_config
from edge.events.link import BrokerSettings
from edge.events.service import EventService, shard_push_handler
from edge.identity import load_identity
from edge.provision.agent import Paths
from edge.provision.bundle import new_bundle, sign_bundle, token_body
from edge.provision.errors import (
    DeviceRefusedError,
    FrameCOBSError,
    FrameCRCError,
    FrameError,
    FrameLengthError,
    FrameTooLargeError,
    MessageFieldError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)
from edge.provision.link import SerialLink
from edge.provision.protocol import (
    MAX_ENCODED,
    REPLY_TO,
    SPECS,
    Frame,
    FrameReader,
    MsgType,
    confirmation_code,
    decode_body,
    decode_frame,
    decode_message,
    encode_body,
    encode_frame,
    transcript_hash,
)
from edge.tls import DeviceTLS
from edge.trust.keys import ed25519_public, read_ed25519, x25519_public
from edge.trust.root import sign_document
from edge.trust.times import now
from edge.vision.manifest import load_manifest
from edge.watchlist.loader import AcceptedShard
from edge.watchlist.store import ShardStore
from provisioning.ca import FleetCA
from provisioning.fleet import Fleet, FleetError
from provisioning.serial_tool import Hello, ToolSession, confirmed, node_config, operator_key
from provisioning.watchlist import save_watchlist

REPO = Path(__file__).resolve().parents[1]
BROKER = "mqtts://127.0.0.1:8883"
TEMPLATE = '[camera]\nid = "gate-a"\nsource = "v4l2"\n'
DEPLOY = """[deployment]
id = "dep-serial"
authorisation = "TEST-AUTH-7"
start = 2026-01-01T00:00:00Z
end = 2099-01-01T00:00:00Z
cameras = ["gate-a"]
threshold = 0.95
retention_days = 30
watchlist = "wl"
"""


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This fleet, and a rogue one with the same name but its own keys (a tool of another fleet)."""
    base = tmp_path_factory.mktemp("fleets")
    return make_fleet(base / "acme"), make_fleet(base / "rogue")


@dataclass
class Site:
    fleet: Path
    rogue: Path
    device: Device
    cable: Cable
    agents: list[AgentProc] = field(default_factory=list)

    def agent(self, *extra: str, env: dict[str, str] | None = None, port: str | None = None,
              cwd: Path | None = None) -> AgentProc:
        a = AgentProc(self.device, port or self.cable.device_path, *extra, env=env, cwd=cwd)
        self.agents.append(a)
        return a

    def tool(self, *extra: str, port: str | None = None, fleet: Path | None = None) -> ToolProc:
        return ToolProc(port or self.cable.tool_path, fleet or self.fleet, *extra)

    def provision(self, *extra: str, port: str | None = None, fleet: Path | None = None) -> ToolProc:
        return self.tool("--device-id", "cam-01", "--broker", BROKER, *extra, port=port, fleet=fleet)

    def check(self) -> dict[str, object]:
        r = cli("edge-fleet", "provision", "--check", "--json", "--port", self.cable.tool_path, "--fleet-dir",
                str(self.fleet), "--timeout", "1")
        assert r.returncode in (0, 1), r.stderr
        doc: dict[str, object] = json.loads(r.stdout)
        return doc


@pytest.fixture()
def site(fleets: tuple[Path, Path], tmp_path: Path) -> Iterator[Site]:
    fleet = tmp_path / "fleet"
    shutil.copytree(fleets[0], fleet)
    s = Site(fleet, fleets[1], Device.flash(tmp_path / "dev", fleet), Cable())
    yield s
    for a in s.agents:
        a.stop()
    s.cable.close()


def confirm(site: Site, tool: ToolProc, agent: AgentProc, answer: str = "yes") -> str:
    """The technician reads the device's code, compares it with the tool's and says yes (or `answer`)."""
    code = tool.code()
    assert agent.out.wait_for(r"CONFIRMATION CODE (\d{3} \d{3})").group(1) == code
    tool.answer(answer)
    return code


def provision_once(site: Site) -> None:
    """A first, successful provisioning; the agent then leaves provisioning mode and, idle, exits."""
    first = site.agent("--linger", "1")
    tool = site.provision()
    confirm(site, tool, first)
    assert tool.wait() == 0
    assert first.proc.wait(15) == 0


def in_force(device: Device) -> dict[str, str]:
    """The snapshot without the agent's scratch (stage and staged files), which a crash may leave until the
    agent's next start throws it away."""
    return {k: v for k, v in device.snapshot().items()
            if "/provision/stage/" not in k and ".provision-staged" not in k}


# --- the happy path ------------------------------------------------------------------------------------

def test_provisioned_device_connects_with_its_new_certificate_and_accepts_a_shard(site: Site,
                                                                                  tmp_path: Path) -> None:
    agent = site.agent()
    keys_before = {k: v for k, v in site.device.snapshot().items() if k.endswith((".pem", "tls.key"))}
    assert len(keys_before) == 3  # born on the device at the agent's first start
    port = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    template = tmp_path / "template.toml"
    template.write_text(TEMPLATE)
    tool = site.tool("--device-id", "cam-01", "--broker", url, "--node-config", str(template))
    code = confirm(site, tool, agent)
    assert tool.wait() == 0, tool.err.text
    assert f"CONFIRMATION CODE  {code}" in tool.out.text and "PROVISIONED cam-01" in tool.out.text
    agent.out.wait_for("COMMITTED: device cam-01")

    # the keys never changed (nor left: the bundle carries only certificates, roots and config)
    assert {k: v for k, v in site.device.snapshot().items() if k.endswith((".pem", "tls.key"))} == keys_before
    state = site.device.state_dir
    assert load_identity(state).device_id == "cam-01"  # the technician named the board
    record = json.loads((site.fleet / "provisioning" / "cam-01" / "provisioned.json").read_text())
    status = site.check()
    assert status["state"] == "provisioned" and status["findings"] == [] and status["registered"] is True
    assert status["cert_serial"] == record["cert_serial"] and status["transcript"] == record["transcript"]
    assert status["broker"] == url and status["fleet"] == "acme" and status["root_version"] == 1
    cert = x509.load_pem_x509_certificate(DeviceTLS(state).cert.read_bytes())
    assert f"{cert.serial_number:x}" == record["cert_serial"]

    # the audit log records it, and the fleet's verifier accepts the log
    audit = state / AUDIT_FILE
    out = ok("edge-fleet", "audit", "verify", str(audit), "--device", "cam-01", "--fleet-dir", str(site.fleet))
    assert "1 records, chain intact" in out
    line = json.loads(audit.read_text().splitlines()[0])
    assert line["kind"] == "provisioning" and line["data"]["event"] == "provisioned"
    assert line["data"]["transcript"] == record["transcript"] and line["data"]["cert_serial"] == record["cert_serial"]

    # the broker the fleet runs, the device's configuration as installed, a shard pushed over MQTT
    bdir = tmp_path / "broker"
    ok("edge-fleet", "broker", "config", "--out-dir", str(bdir), "--hostname", "localhost", "--alt-name",
       "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1", "--fleet-dir", str(site.fleet))
    conf = bdir / "mosquitto.conf"
    text = conf.read_text().replace("log_dest syslog", "log_dest stdout")
    if os.geteuid() == 0:
        text += f"user {pwd.getpwuid(0).pw_name}\n"
    conf.write_text(text)
    broker = Broker(bdir, port, FleetCA(site.fleet, PASS.encode()))
    broker.start()
    try:
        cfg = load_config(site.device.config)
        assert cfg.mqtt is not None and cfg.camera.id == "gate-a" and cfg.state_dir == state
        tls = DeviceTLS(cfg.state_dir)
        host, bport = BrokerSettings.parse_url(cfg.mqtt.broker)
        operator = x25519_public(json.loads(cfg.mqtt.operator_key.read_text())["x25519"])
        store = ShardStore(cfg.state_dir)
        manifest = load_manifest()
        model = manifest.spec(manifest.default_embedder)
        rng = np.random.default_rng(7)
        m = rng.normal(size=(3, model.embedding_size or 128)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        entries = [{"id": f"wl-{i:06d}", "reference": f"R{i}", "name": f"p{i}", "photos": [], "provenance": {}}
                   for i in range(3)]
        save_watchlist(Fleet(site.fleet), "wl", entries, m, model.id, model.sha256)
        (tmp_path / "deploy.toml").write_text(DEPLOY)
        shard = tmp_path / "s.shard"
        ok("edge-fleet", "shard", "issue", "--deployment", str(tmp_path / "deploy.toml"), "--devices", "cam-01",
           "--out", str(shard), "--fleet-dir", str(site.fleet))
        accepted: list[AcceptedShard] = []
        svc = EventService(cfg.state_dir, load_identity(cfg.state_dir),
                           BrokerSettings(host, bport, tls.ca, tls.cert, tls.key), operator, store.trusted_root,
                           {"shard-push": shard_push_handler(store, model, accepted.append)})
        svc.start()
        try:
            assert wait_for(lambda: svc.link.health().connected, 15), "the device did not connect with its certificate"
            pushed = ok("edge-fleet", "shard", "push", str(shard), "--devices", "cam-01", "--broker", url,
                        "--wait", "30", "--fleet-dir", str(site.fleet))
        finally:
            svc.stop()
    finally:
        broker.stop()
    answer = json.loads(pushed)
    assert answer["ok"] and answer["detail"]["version"] == 1
    assert len(accepted) == 1 and accepted[0].manifest.entries == 3
    accepted[0].gallery.wipe()


def test_an_agent_given_relative_paths_and_a_template_with_a_node_profile_is_provisioned(site: Site) -> None:
    """The agent runs with --state-dir and --config relative to its working directory (HELLO and node.toml get
    them absolute), and the technician's template picks a hardware profile in [node]: the device's state
    directory is merged into that [node], the profile kept."""
    agent = site.agent(cwd=site.device.state_dir.parent)
    assert "--state-dir state " in " ".join(map(str, agent.proc.args))
    template = site.device.state_dir.parent / "template.toml"
    template.write_text('# a site template\n[node]  # the board\nprofile = "pi5-cam3"\n\n[camera]\nid = "gate-a"\n')
    tool = site.provision("--node-config", str(template))
    confirm(site, tool, agent, answer="YES")
    assert tool.wait() == 0, tool.err.text
    [hello] = [f for f in site.cable.frames(TO_TOOL) if f.type == MsgType.HELLO]
    assert decode_message(hello)["state_dir"] == str(site.device.state_dir)
    cfg = load_config(site.device.config)
    assert cfg.state_dir == site.device.state_dir and cfg.profile == "pi5-cam3" and cfg.camera.id == "gate-a"
    assert f'state_dir = "{site.device.state_dir}"' in site.device.config.read_text()
    journal_free = site.check()
    assert journal_free["state"] == "provisioned" and journal_free["findings"] == []


def test_the_node_configuration_merges_the_device_state_dir_into_any_template() -> None:
    state = "/var/lib/edge-node"
    dotted = node_config('node.profile = "pi4-coral"\n[camera]\nid = "a"\n', "t.toml", state, BROKER)
    assert tomllib.loads(dotted)["node"] == {"profile": "pi4-coral", "state_dir": state}
    assert tomllib.loads(node_config(None, "-", state, BROKER))["node"] == {"state_dir": state}
    same = node_config(f'[node]\nstate_dir = "{state}"\n', "t.toml", state, BROKER)
    assert tomllib.loads(same)["node"] == {"state_dir": state}
    assert tomllib.loads(same)["mqtt"] == {"broker": BROKER, "operator_key": "operator.json"}
    with pytest.raises(FleetError, match=r"t.toml: \[node\] state_dir '/srv/x' is not the device's state directory"):
        node_config('[node]\nstate_dir = "/srv/x"\n', "t.toml", state, BROKER)
    with pytest.raises(FleetError, match=r"t.toml: cannot add the device's state_dir to its \[node\]"):
        node_config('node = { profile = "pi5-cam3" }\n', "t.toml", state, BROKER)
    with pytest.raises(FleetError, match=r"t.toml: leave out \[mqtt\]"):
        node_config('[mqtt]\nbroker = "x"\n', "t.toml", state, BROKER)


def test_an_answer_commits_only_as_yes_or_the_code() -> None:
    for answer in ("yes", "YES", "Yes", " yes ", "123456", "123 456"):
        assert confirmed(answer, "123 456"), answer
    for answer in ("y", "Y", "ye", "yes please", "no", "", "123457", "12345"):
        assert not confirmed(answer, "123 456"), answer


def test_without_an_operator_the_tool_says_how_to_add_one(site: Site) -> None:
    for p in (site.fleet / "operators").iterdir():
        p.unlink()
    tool = site.provision()
    assert tool.wait() == 2
    assert f"no operator in {site.fleet / 'operators'}" in tool.err.text
    assert f"add one first: edge-fleet operator add NAME --fleet-dir {site.fleet}" in tool.err.text
    assert "nothing was sent to the device" in tool.err.text


def test_the_confirmation_code_is_recomputed_from_the_documented_derivation(site: Site) -> None:
    """docs/serial-protocol.md, "The confirmation code", followed here with hashlib alone (not the
    implementation's functions) on the bytes that crossed the line; both ends showed that code."""
    agent = site.agent()
    tool = site.provision()
    code = confirm(site, tool, agent)
    assert tool.wait() == 0, tool.err.text
    [hello] = [f for f in site.cable.frames(TO_TOOL) if f.type == MsgType.HELLO]
    [provision] = [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.PROVISION]
    [pending] = [f for f in site.cable.frames(TO_TOOL) if f.type == MsgType.PENDING]
    h, b = hello.body, cbor2.loads(provision.body)["bundle"]
    transcript = hashlib.sha256(b"edge-provision/v1\x00" + len(h).to_bytes(4, "big") + h
                                + len(b).to_bytes(4, "big") + b).digest()
    assert cbor2.loads(pending.body)["transcript"] == transcript
    n = int.from_bytes(hashlib.sha256(b"edge-provision-code/v1\x00" + transcript).digest()[:8], "big") % 1_000_000
    assert f"{n:06d}"[:3] + " " + f"{n:06d}"[3:] == code
    assert agent.codes() == [code]


def test_the_documented_message_fields_are_the_wire_format_s() -> None:
    """Every `NAME` {fields} in docs/serial-protocol.md names exactly that message's fields, a `?` exactly on
    those that are always present but may be null; every message with fields is documented."""
    doc = (REPO / "docs" / "serial-protocol.md").read_text()
    documented: dict[str, set[str]] = {}
    for name, fields in re.findall(r"`([A-Z]+)` \{([^}]*)\}", doc):
        documented.setdefault(name, set()).add(",".join(f.strip() for f in fields.split(",")))
    for mtype, spec in SPECS.items():
        want = ",".join(f"{k}?" if kind.endswith("?") else k for k, (kind, _) in spec.items())
        if spec:
            assert documented.get(mtype.name) == {want}, mtype.name
        else:
            assert mtype.name not in documented, mtype.name


def test_the_agent_leaves_with_3_at_once_when_its_port_disappears(site: Site, tmp_path: Path) -> None:
    """A USB gadget unbound or a UART gone: the agent ends the session (its stage thrown away) and exits 3,
    for systemd to restart it, without waiting for the session's silence timeout."""
    master, slave = os.openpty()
    tty.setraw(slave)
    agent = site.agent("--session-timeout", "600", port=os.ttyname(slave))
    os.close(slave)
    before = site.device.snapshot()
    reader = FrameReader()

    def request(mtype: MsgType, seq: int, body: dict[str, object]) -> tuple[dict[str, object], bytes]:
        os.write(master, encode_frame(Frame(mtype, 7, seq, encode_body(mtype, body))))
        while True:
            select.select([master], [], [], 5)
            for item, _ in reader.feed(os.read(master, 65536)):
                assert isinstance(item, Frame) and item.type == REPLY_TO[mtype], item
                return decode_message(item), item.body

    hello = Hello.from_reply(*request(MsgType.OPEN, 1, {"tool": "t", "device_id": "cam-01"}))
    roots = [(site.fleet / "root" / "root.1.json").read_bytes()]
    request(MsgType.PROVISION, 2, {"bundle": bundle_for(hello, site.fleet, key(site.fleet, "command"), roots)})
    assert (site.device.state_dir / "provision" / "stage").exists()
    os.close(master)  # the port is gone
    assert agent.proc.wait(30) == 3
    agent.out.join()
    assert "ended: the serial line is gone" in agent.out.text and "nothing was changed on the device" in agent.out.text
    assert site.device.snapshot() == before


# --- bad input and faults ------------------------------------------------------------------------------

class RawTool:
    """A technician tool that skips the real tool's own checks (to show the device makes them too)."""

    def __init__(self, port: str) -> None:
        self.link = SerialLink.open(port)
        self.log: list[str] = []
        self.session = ToolSession(self.link, 1.0, 2, self.log.append)

    def hello(self) -> Hello:
        reply, body = self.session.request(MsgType.OPEN, {"tool": "raw test tool", "device_id": "cam-01"})
        return Hello.from_reply(reply, body)

    def provision(self, bundle: bytes) -> str:
        """The device's error code (these tests expect a refusal)."""
        with pytest.raises(DeviceRefusedError) as info:
            self.session.request(MsgType.PROVISION, {"bundle": bundle})
        return info.value.code

    def pending(self, bundle: bytes) -> bytes:
        reply, _ = self.session.request(MsgType.PROVISION, {"bundle": bundle})
        transcript: bytes = reply["transcript"]
        return transcript

    def confirm(self, transcript: bytes, certificate: bytes) -> str:
        """The device's error code (these tests expect a refusal)."""
        with pytest.raises(DeviceRefusedError) as info:
            self.session.request(MsgType.CONFIRM, {"transcript": transcript, "certificate": certificate})
        return info.value.code

    def close(self) -> None:
        self.link.close()


def bundle_for(hello: Hello, fleet_dir: Path, signer: Ed25519PrivateKey, roots: list[bytes]) -> bytes:
    fleet = Fleet(fleet_dir)
    bundle = new_bundle(fleet.name, hello.device_id, hello.nonce, hello.body, now(), roots,
                        (fleet_dir / "ca" / "ca.crt").read_bytes(), BROKER,
                        operator_key(fleet, None), node_config(None, "-", hello.state_dir, BROKER))
    return sign_bundle(bundle, [signer])


def certificate_for(hello: Hello, fleet_dir: Path, tmp: Path) -> bytes:
    (tmp / "c.csr").write_bytes(hello.csr)
    FleetCA(fleet_dir, PASS.encode()).sign_csr("device", hello.device_id, tmp / "c.csr", tmp / "c.crt")
    return (tmp / "c.crt").read_bytes()


def key(fleet_dir: Path, role: str) -> Ed25519PrivateKey:
    return read_ed25519(fleet_dir / "keys" / f"{role}-1.pem", PASS.encode())


def test_wrong_fleet_root_is_refused_by_the_tool_and_by_the_device(site: Site, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_FLEET_PASSPHRASE", PASS)
    agent = site.agent()
    before = site.device.snapshot()
    tool = site.provision(fleet=site.rogue)
    assert tool.wait() == 2
    assert "WrongFleetRootError" in tool.err.text and "not fleet 'acme'" in tool.err.text
    assert "nothing was committed: the device is as it was before" in tool.err.text
    assert not (site.rogue / "devices" / "cam-01.json").exists()  # refused before registering anything

    raw = RawTool(site.cable.tool_path)
    try:
        acme_roots = [(site.fleet / "root" / "root.1.json").read_bytes()]
        rogue_roots = [(site.rogue / "root" / "root.1.json").read_bytes()]
        cases = [(rogue_roots, key(site.rogue, "command"), "WrongFleetRootError"),  # another fleet's root
                 (acme_roots, key(site.rogue, "command"), "WrongFleetRootError"),  # signed by another fleet
                 (acme_roots, key(site.fleet, "shard"), "BundleSignatureError")]  # this fleet, not a command key
        for roots, signer, expected in cases:
            hello = raw.hello()
            assert raw.provision(bundle_for(hello, site.rogue, signer, roots)) == expected
        hello = raw.hello()  # one changed byte under a good signature
        good = bundle_for(hello, site.fleet, key(site.fleet, "command"), acme_roots)
        assert raw.provision(good.replace(b"operator_key", b"operator_kez")) == "BundleSignatureError"
    finally:
        raw.close()
    agent.out.wait_for("bundle: signature by command key .* does not verify")
    assert site.device.snapshot() == before


def test_a_certificate_the_device_cannot_use_is_refused_at_confirm(site: Site, tmp_path: Path) -> None:
    """The certificate comes with CONFIRM; one from another CA (same fleet name: only its signature
    differs) or for another key is refused, and the device stays as it was."""
    agent = site.agent()
    before = site.device.snapshot()
    raw = RawTool(site.cable.tool_path)
    try:
        acme_roots = [(site.fleet / "root" / "root.1.json").read_bytes()]
        hello = raw.hello()
        transcript = raw.pending(bundle_for(hello, site.fleet, key(site.fleet, "command"), acme_roots))
        assert raw.confirm(transcript, certificate_for(hello, site.rogue, tmp_path)) == "BundleContentError"
        agent.out.wait_for(r"CONFIRM refused: BundleContentError: CONFIRM.certificate: the certificate was not "
                           r"issued by that CA \(its signature does not verify")
        hello = raw.hello()
        transcript = raw.pending(bundle_for(hello, site.fleet, key(site.fleet, "command"), acme_roots))
        other = tmp_path / "other"
        ok("edge-node", "keygen", "--state-dir", str(other), "--device-id", "cam-01")
        ok("edge-node", "cert", "request", "--state-dir", str(other))
        (tmp_path / "o.csr").write_bytes(DeviceTLS(other).csr.read_bytes())
        FleetCA(site.fleet, PASS.encode()).sign_csr("device", "cam-01", tmp_path / "o.csr", tmp_path / "o.crt")
        assert raw.confirm(transcript, (tmp_path / "o.crt").read_bytes()) == "BundleContentError"
        agent.out.wait_for("CONFIRM.certificate: the certificate is not for the key")
    finally:
        raw.close()
    agent.out.wait_for(r"ended: refused; nothing was changed[\s\S]*ended: refused; nothing was changed")
    assert site.device.snapshot() == before


def fleet_files(fleet_dir: Path) -> dict[str, str]:
    """The fleet directory's whole tree: every directory and every file, with its bytes' hash."""
    return {str(p.relative_to(fleet_dir)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(fleet_dir.rglob("*"))}


def test_declined_code_changes_nothing_and_a_replayed_bundle_is_refused(site: Site) -> None:
    agent = site.agent()
    before = site.device.snapshot()
    fleet_before = fleet_files(site.fleet)
    tool = site.provision()
    tool.code()
    tool.answer("y")  # only `yes` (any case) or the code typed back commits
    assert tool.wait() == 1
    assert "TechnicianAbortError: not confirmed (y)" in tool.err.text and "is as it was" in tool.err.text
    agent.out.wait_for("ended: closed; nothing was changed on the device")
    assert site.device.snapshot() == before
    assert not DeviceTLS(site.device.state_dir).cert.exists()
    # a fake board on the cable got no fleet certificate and no registration: the fleet is as it was
    assert fleet_files(site.fleet) == fleet_before
    assert not (site.fleet / "devices" / "cam-01.json").exists()
    assert not (site.fleet / "clients" / "cam-01.json").exists()
    assert "issued certificate" not in tool.out.text
    # nothing sent to the device before the answer carries a device certificate (only the broker CA)
    sent = [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.PROVISION]
    assert len(sent) == 1 and decode_message(sent[0])["bundle"].count(b"BEGIN CERTIFICATE") == 1

    [captured] = [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.PROVISION]
    bundle = decode_message(captured)["bundle"]
    raw = RawTool(site.cable.tool_path)
    try:
        raw.hello()
        assert raw.provision(bundle) == "NonceMismatchError"
    finally:
        raw.close()
    agent.out.wait_for("NonceMismatchError: bundle .* a replayed or stale bundle")
    assert site.device.snapshot() == before


def test_damaged_frames_are_resent_and_answered_once(site: Site) -> None:
    site.cable.faults += [Fault(TO_DEVICE, lambda f: f.type == MsgType.PROVISION, "corrupt"),
                          Fault(TO_TOOL, lambda f: f.type == MsgType.PENDING, "corrupt")]
    agent = site.agent()
    tool = site.provision()
    confirm(site, tool, agent)
    assert tool.wait() == 0, tool.err.text
    assert "the device dropped a damaged frame (FrameCRCError" in tool.out.text  # the device's NAK
    assert "dropped a damaged frame from the device (FrameCRCError" in tool.out.text
    assert "resending PROVISION (try 3 of 4)" in tool.out.text
    assert agent.out.count("dropped a frame: FrameCRCError") == 1
    assert agent.out.count("PENDING: bundle") == 1  # the retry got the first answer: verified and staged once
    assert site.check()["state"] == "provisioned"


def test_a_line_that_damages_every_frame_ends_clearly(site: Site) -> None:
    site.cable.faults.append(Fault(TO_DEVICE, lambda f: f.type == MsgType.PROVISION, "corrupt", times=99))
    agent = site.agent()
    before = site.device.snapshot()
    tool = site.provision()
    assert tool.wait() == 2
    assert "LineNoiseError: PROVISION arrived damaged at the device on each of 4 tries" in tool.err.text
    assert "the device is as it was before" in tool.err.text
    agent.out.wait_for("ended: closed; nothing was changed")
    assert site.device.snapshot() == before


def test_cable_pulled_mid_transfer_then_a_new_cable_works(site: Site) -> None:
    site.cable.faults.append(Fault(TO_DEVICE, lambda f: f.type == MsgType.PROVISION, "cut"))
    agent = site.agent()
    before = site.device.snapshot()
    tool = site.provision()
    assert tool.wait() == 2
    assert "LinkLostError" in tool.err.text and "the device is as it was before" in tool.err.text
    agent.out.wait_for(r"ended: no frame for 3 s \(cable pulled, or the tool stopped\); nothing was changed")
    assert site.device.snapshot() == before
    assert not (site.fleet / "devices" / "cam-01.json").exists()  # never confirmed: nothing registered

    port = site.cable.plug()
    again = site.provision(port=port)
    confirm(site, again, agent)
    assert again.wait() == 0, again.err.text
    assert "registered device cam-01" in again.out.text


class FakeBoard:
    """A board on the cable that answers OPEN with a HELLO of its choosing (a fake or misnamed device)."""

    def __init__(self, port: str, fleet_dir: Path, device_id: str, state: str) -> None:
        self.link = SerialLink.open(port)
        root = (fleet_dir / "root" / "root.1.json").read_bytes()
        self.hello = {"device_id": device_id, "nonce": os.urandom(32), "ed25519": os.urandom(32),
                      "x25519": os.urandom(32), "csr": b"-----BEGIN CERTIFICATE REQUEST-----", "state": state,
                      "fleet": "acme", "root_version": 1, "root_sha256": hashlib.sha256(root).digest(),
                      "state_dir": "/var/lib/edge-node", "config": "/etc/edge-node/node.toml", "agent": "fake"}
        self.requests: list[MsgType] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for item, _ in self.link.poll(0.1):
                if isinstance(item, Frame):
                    self.requests.append(item.type)
                    answer = {MsgType.OPEN: (MsgType.HELLO, self.hello), MsgType.CLOSE: (MsgType.CLOSED, {}),
                              MsgType.PING: (MsgType.PONG, {})}
                    if item.type == MsgType.PROVISION:  # a board that plays along up to the code
                        bundle = decode_message(item)["bundle"]
                        transcript = transcript_hash(encode_body(MsgType.HELLO, self.hello), bundle)
                        answer[item.type] = (MsgType.PENDING, {"transcript": transcript, "confirm_within": 600})
                    if item.type in answer:
                        mtype, body = answer[item.type]
                        self.link.write(Frame(mtype, item.session, item.seq, encode_body(mtype, body)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.close()


@pytest.mark.parametrize(("reported", "state", "expected"), [
    ("cam-99", "provisioned", "DeviceIdMismatchError: the device reports id 'cam-99', not --device-id 'cam-01'"),
    ("cam-99", "unprovisioned", "DeviceIdMismatchError: the device reports id 'cam-99'"),
    ("Cam_01!", "unprovisioned", "MessageFieldError: HELLO.device_id:"),
])
def test_the_tool_refuses_a_hello_for_another_or_a_bad_device_id(site: Site, reported: str, state: str,
                                                                  expected: str) -> None:
    fleet_before = fleet_files(site.fleet)
    board = FakeBoard(site.cable.device_path, site.fleet, reported, state)
    try:
        tool = site.provision()
        assert tool.wait() == 2, tool.err.text
    finally:
        board.stop()
    assert expected in tool.err.text and "Traceback" not in tool.err.text
    assert "nothing was committed: the device is as it was before" in tool.err.text
    assert board.requests == [MsgType.OPEN, MsgType.CLOSE]  # no bundle was sent
    assert fleet_files(site.fleet) == fleet_before


def test_a_certificate_the_fleet_cannot_issue_ends_with_close_and_the_device_state(site: Site) -> None:
    fleet_before = fleet_files(site.fleet)
    board = FakeBoard(site.cable.device_path, site.fleet, "cam-01", "unprovisioned")  # its CSR is garbage
    try:
        tool = site.provision()
        tool.code()
        tool.answer("yes")
        assert tool.wait() == 2, tool.err.text
    finally:
        board.stop()
    assert "CertificateError" in tool.err.text and "Traceback" not in tool.err.text
    assert "nothing was committed: the device is as it was before" in tool.err.text
    assert board.requests[-1] == MsgType.CLOSE and MsgType.CONFIRM not in board.requests
    assert "registered device cam-01" in tool.out.text  # after the yes, before the certificate failed
    assert "undid this run's fleet records (devices/cam-01.json" in tool.out.text
    assert fleet_files(site.fleet) == fleet_before


def test_open_on_session_zero_is_refused(site: Site) -> None:
    agent = site.agent()
    link = SerialLink.open(site.cable.tool_path)
    try:
        link.write(Frame(MsgType.OPEN, 0, 1, encode_body(MsgType.OPEN, {"tool": "t", "device_id": None})))
        replies = [item for _ in range(20) for item, _ in link.poll(0.2) if isinstance(item, Frame)][:1]
    finally:
        link.close()
    [reply] = replies
    err = decode_message(reply)
    assert reply.type == MsgType.ERROR and err["code"] == "SessionStateError" and "session 0" in err["message"]
    assert "session 00000000 opened" not in agent.out.text


def test_no_answer_times_out(site: Site) -> None:
    t = time.monotonic()
    tool = site.provision("--retries", "2")  # nothing on the device end
    assert tool.wait() == 2
    assert time.monotonic() - t < 20
    assert "ProvisionTimeoutError: no answer from the device to OPEN after 2 tries" in tool.err.text
    assert "is the agent running" in tool.err.text


def test_a_yes_after_the_confirm_window_sends_nothing_and_leaves_the_fleet_as_it_was(site: Site) -> None:
    """The technician is too slow: the tool knows the device's window from PENDING and gives up with it, so no
    CONFIRM is sent and nothing is registered or certified; a late yes changes nothing."""
    agent = site.agent("--confirm-timeout", "2")
    before = site.device.snapshot()
    fleet_before = fleet_files(site.fleet)
    tool = site.provision()
    tool.code()
    agent.out.wait_for("ended: not confirmed within 2 s; nothing was changed")
    with contextlib.suppress(BrokenPipeError):  # the tool may have left already
        tool.answer("yes")
    assert tool.wait() == 2
    assert "ConfirmTimeoutError: the device's confirm window of 2 s (PENDING.confirm_within) closed" in tool.err.text
    assert "CONFIRM was not sent" in tool.err.text and "the device is as it was before" in tool.err.text
    assert "issued certificate" not in tool.out.text
    assert not [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.CONFIRM]
    assert fleet_files(site.fleet) == fleet_before
    assert site.device.snapshot() == before


def test_a_confirm_the_device_refuses_undoes_the_fleet_records(site: Site) -> None:
    """The yes came in time, the fleet registered and certified the device, but CONFIRM reached the device
    only after its window closed (the line lost the first tries): the device answers NoSessionError, the tool
    reads back that the device committed nothing and puts the fleet directory back as it was."""
    agent = site.agent("--confirm-timeout", "4", "--session-timeout", "8")
    site.cable.faults.append(Fault(TO_DEVICE, lambda f: f.type == MsgType.CONFIRM
                                   and "not confirmed within" not in agent.out.text, "drop", times=99))
    before = site.device.snapshot()
    fleet_before = fleet_files(site.fleet)
    tool = site.provision("--retries", "12")
    confirm(site, tool, agent)
    assert tool.wait(90) == 2
    assert "issued certificate cam-01" in tool.out.text and "registered device cam-01" in tool.out.text
    assert "DeviceRefusedError: NoSessionError" in tool.err.text
    assert "undid this run's fleet records (" in tool.out.text
    assert "nothing was committed: the device is as it was before" in tool.err.text
    assert [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.CONFIRM]  # CONFIRM was sent
    assert [f for f in site.cable.frames(TO_DEVICE) if f.type == MsgType.QUERY]  # and the device read back
    assert fleet_files(site.fleet) == fleet_before
    assert site.device.snapshot() == before


def test_a_second_tool_on_the_same_line_is_refused(site: Site) -> None:
    agent = site.agent()
    first = site.provision()
    code = first.code()
    same_port = site.provision()
    assert same_port.wait() == 2
    assert "LineBusyError" in same_port.err.text and "in use by another program" in same_port.err.text
    second_end = site.provision(port=site.cable.add_tool_end())  # a Y-cable: another laptop on the line
    assert second_end.wait() == 2
    assert "LineBusyError: the device is in a provisioning session with another tool" in second_end.err.text
    agent.out.wait_for("refused session .* with another tool")
    assert agent.codes() == [code]
    first.answer("yes")
    assert first.wait() == 0, first.err.text


def test_agent_killed_while_pending_leaves_the_device_as_before(site: Site) -> None:
    agent = site.agent()
    before = site.device.snapshot()
    tool = site.provision("--retries", "2", "--timeout", "0.5")
    tool.code()
    assert (site.device.state_dir / "provision" / "stage" / "trust" / "root.json").exists()
    agent.kill()
    assert in_force(site.device) == before  # nothing in force changed, only the agent's scratch is there
    assert tool.wait() == 2 and "the device is as it was before" in tool.err.text
    again = site.agent()
    again.out.wait_for("threw away a provisioning stage that was never confirmed")
    assert site.device.snapshot() == before


def test_power_cut_mid_commit_is_finished_at_the_next_start(site: Site) -> None:
    agent = site.agent(env={**os.environ, "EDGE_FLEET_PASSPHRASE": PASS, "EDGE_PROVISION_FAILPOINT": "mid-commit"})
    tool = site.provision("--retries", "2", "--timeout", "0.5")
    confirm(site, tool, agent)
    assert agent.proc.wait(10) == 70  # died after the journal and the first rename
    assert tool.wait() == 2
    assert "CONFIRM was sent but its answer did not arrive: the device may have committed" in tool.err.text
    assert "--check" in tool.err.text
    assert (site.device.state_dir / "provision" / "commit.json").exists()
    assert not (site.device.state_dir / "provision" / "state.json").exists()
    again = site.agent()
    again.out.wait_for("finished a commit that was interrupted")
    status = site.check()
    assert status["state"] == "provisioned" and status["findings"] == []
    assert not (site.device.state_dir / "provision" / "commit.json").exists()
    assert load_config(site.device.config).mqtt is not None
    lines = (site.device.state_dir / AUDIT_FILE).read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["provisioning"]


def test_a_failed_commit_ends_the_agent_and_its_next_start_finishes_it(site: Site) -> None:
    site.device.config.mkdir()  # node.toml cannot be renamed into place: the commit fails half-way
    agent = site.agent()
    tool = site.provision()
    confirm(site, tool, agent)
    assert tool.wait() == 2
    assert "DeviceRefusedError: CommitError" in tool.err.text and "its agent restarts and finishes it" in tool.err.text
    assert agent.proc.wait(15) == 4  # not serving on: systemd restarts it (Restart=on-failure)
    agent.out.join()
    assert "leaving after a failed commit" in agent.out.text
    assert (site.device.state_dir / "provision" / "commit.json").exists()
    site.device.config.rmdir()
    again = site.agent()
    again.out.wait_for("finished a commit that was interrupted")
    status = site.check()
    assert status["state"] == "provisioned" and status["findings"] == []
    assert load_config(site.device.config).mqtt is not None


def test_provisioned_device_needs_a_valid_token_to_be_provisioned_again(site: Site, tmp_path: Path) -> None:
    provision_once(site)

    status_only = site.agent()
    serial = site.check()["cert_serial"]
    refused = site.provision()
    assert refused.wait() == 2 and "NotInProvisioningModeError" in refused.err.text
    status_only.stop()

    token_path = site.device.state_dir / "provision" / "reprovision.token"
    forged = token_body("acme", "cam-01", now(), timedelta(hours=1))
    token_path.write_bytes(sign_document(forged, [Ed25519PrivateKey.generate()]))
    site.agent().out.wait_for("re-provisioning token .* refused: ReprovisionTokenError: UnknownSignerError")
    site.agents[-1].stop()

    ok("edge-fleet", "provision", "--issue-token", str(tmp_path / "t.token"), "--device-id", "cam-01",
       "--fleet-dir", str(site.fleet))
    shutil.copy(tmp_path / "t.token", token_path)
    agent = site.agent()
    agent.out.wait_for(r"listening on .* \(device cam-01, reprovision\)")
    again = site.provision()
    confirm(site, again, agent)
    assert again.wait() == 0, again.err.text
    assert not token_path.exists()  # used up
    assert site.check()["cert_serial"] != serial
    audit = site.device.state_dir / AUDIT_FILE
    events = [json.loads(x)["data"]["event"] for x in audit.read_text().splitlines()]
    assert events == ["provisioned", "reprovisioned"]
    assert verify_log(audit.read_bytes(), str(audit), ed25519_public(Fleet(site.fleet).device("cam-01").ed25519),
                      ).records == 2


def test_the_token_is_checked_again_at_provision_and_at_confirm(site: Site, tmp_path: Path) -> None:
    provision_once(site)
    token_path = site.device.state_dir / "provision" / "reprovision.token"

    def issue(name: str) -> Path:
        ok("edge-fleet", "provision", "--issue-token", str(tmp_path / name), "--device-id", "cam-01",
           "--fleet-dir", str(site.fleet))
        return tmp_path / name

    def without_token(snapshot: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in snapshot.items() if k != str(token_path)}

    # the token is taken away after the agent started in re-provisioning mode: PROVISION is refused
    shutil.copy(issue("a.token"), token_path)
    agent = site.agent()
    agent.out.wait_for(r"listening on .* \(device cam-01, reprovision\)")
    before = without_token(site.device.snapshot())
    token_path.unlink()
    refused = site.provision()
    assert refused.wait() == 2
    assert "DeviceRefusedError: ReprovisionTokenError" in refused.err.text and "no longer valid" in refused.err.text
    assert without_token(site.device.snapshot()) == before
    agent.stop()

    # the token is replaced by another while the technician reads the code: CONFIRM is refused
    shutil.copy(issue("b.token"), token_path)
    replacement = issue("c.token")  # issued beforehand: a process started inside the confirm window could outlast it
    agent = site.agent()
    agent.out.wait_for(r"listening on .* \(device cam-01, reprovision\)")
    fleet_before = fleet_files(site.fleet)  # the first provisioning's registration, certificate and records
    tool = site.provision()
    tool.code()
    shutil.copy(replacement, token_path)
    tool.answer("yes")
    assert tool.wait() == 2
    assert "DeviceRefusedError: ReprovisionTokenError" in tool.err.text
    assert "nothing was committed: the device is as it was before" in tool.err.text
    assert "issued certificate cam-01" in tool.out.text and "undid this run's fleet records" in tool.out.text
    assert fleet_files(site.fleet) == fleet_before  # the earlier certificate and its record are back
    agent.out.wait_for("CONFIRM refused: ReprovisionTokenError")
    agent.out.wait_for("ended: refused; nothing was changed")
    assert without_token(site.device.snapshot()) == before
    audit = site.device.state_dir / AUDIT_FILE
    assert [json.loads(x)["data"]["event"] for x in audit.read_text().splitlines()] == ["provisioned"]


def test_a_crash_before_the_marker_keeps_the_token_until_the_marker_records_it(site: Site, tmp_path: Path) -> None:
    provision_once(site)
    token_path = site.device.state_dir / "provision" / "reprovision.token"
    ok("edge-fleet", "provision", "--issue-token", str(tmp_path / "t.token"), "--device-id", "cam-01",
       "--fleet-dir", str(site.fleet))
    shutil.copy(tmp_path / "t.token", token_path)
    agent = site.agent(env={**os.environ, "EDGE_FLEET_PASSPHRASE": PASS, "EDGE_PROVISION_FAILPOINT": "before-marker"})
    agent.out.wait_for(r"\(device cam-01, reprovision\)")
    tool = site.provision("--retries", "2", "--timeout", "0.5")
    confirm(site, tool, agent)
    assert agent.proc.wait(10) == 70  # renamed and audited, but the marker that records the token is not in place
    assert tool.wait() == 2
    assert token_path.exists()  # so the token is still there: the start after the crash still runs the agent
    marker = json.loads((site.device.state_dir / "provision" / "state.json").read_text())
    token_id = json.loads(token_path.read_text())["signed"]["token_id"]
    assert token_id not in marker["used_tokens"]
    again = site.agent()
    again.out.wait_for("finished a commit that was interrupted")
    again.out.wait_for(r"\(device cam-01, provisioned\)")  # the token is spent now
    assert not token_path.exists()
    marker = json.loads((site.device.state_dir / "provision" / "state.json").read_text())
    assert token_id in marker["used_tokens"]


# --- the wire format on its own ------------------------------------------------------------------------

@given(st.sampled_from(list(MsgType)), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.binary(max_size=600),
       st.data())
@settings(max_examples=200, deadline=None)
def test_frames_round_trip_and_any_damaged_byte_is_caught(mtype: MsgType, session: int, seq: int, body: bytes,
                                                          data: st.DataObject) -> None:
    wire = encode_frame(Frame(mtype, session, seq, body))
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    [(frame, _)] = FrameReader().feed(wire)
    assert frame == Frame(mtype, session, seq, body)
    i = data.draw(st.integers(1, len(wire) - 2))
    flip = data.draw(st.integers(1, 255))
    if wire[i] ^ flip:  # a damaged byte that is not a delimiter: the frame is refused, never misread
        damaged = wire[:i] + bytes([wire[i] ^ flip]) + wire[i + 1:]
        [(item, _)] = FrameReader().feed(damaged)
        assert isinstance(item, FrameError)
    # whatever came before (a cut-off frame), the next frame comes through whole
    junk = data.draw(st.binary(max_size=50).filter(lambda b: 0 not in b))
    items = FrameReader().feed(junk + wire)
    assert items[-1][0] == Frame(mtype, session, seq, body)


def test_each_bad_frame_gets_its_own_error_naming_what_is_wrong() -> None:
    good = encode_frame(Frame(MsgType.PING, 1, 1, encode_body(MsgType.PING, {})))[1:-1]
    raw = bytes(cobs.decode(good))

    def wrap(r: bytes, fix_crc: bool = True) -> bytes:
        if fix_crc:
            r = r[:-4] + zlib.crc32(r[:-4]).to_bytes(4, "big")
        return bytes(cobs.encode(r))

    cases = [
        (b"\x05ab", FrameCOBSError, "not valid COBS"),
        (wrap(raw[:6], fix_crc=False), FrameLengthError, "shorter than header and CRC"),
        (wrap(raw[:-1] + bytes([raw[-1] ^ 1]), fix_crc=False), FrameCRCError, "CRC-32 mismatch"),
        (wrap(b"\x02" + raw[1:]), UnsupportedVersionError, "frame version 2: this side speaks version(s) 1"),
        (wrap(raw[:1] + b"\x42" + raw[2:]), UnknownMessageTypeError, "frame type 0x42"),
        (wrap(raw[:8] + b"\x00\x05" + raw[10:]), FrameLengthError, "length field 5 but 1 body bytes"),
        (b"\x01" * (MAX_ENCODED + 1), FrameTooLargeError, "exceeds the maximum"),
    ]
    for encoded, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            decode_frame(encoded)
    [(item, _)] = FrameReader().feed(b"\x01" * (MAX_ENCODED + 10) + b"\x00")
    assert isinstance(item, FrameTooLargeError)
    bad_bodies = [
        (MsgType.HELLO, cbor2.dumps({"device_id": "x"}), "HELLO: missing field"),
        (MsgType.PENDING, cbor2.dumps({"transcript": b"x" * 31, "confirm_within": 5}),
         "PENDING.transcript: expected 32"),
        (MsgType.PING, cbor2.dumps({}) + b"\x00", "1 bytes after the body"),
        (MsgType.PING, cbor2.dumps([]), "must be a CBOR map"),
        (MsgType.CONFIRM, b"\xbf\xff", "not valid CBOR"),  # indefinite-length map
        (MsgType.ERROR, cbor2.dumps({"code": "x", "message": "y", "extra": 1}), "unexpected field"),
    ]
    for mtype, body, words in bad_bodies:
        with pytest.raises(MessageFieldError, match=re.escape(words)):
            decode_body(mtype, body)


def test_the_code_depends_on_every_byte_of_the_transcript() -> None:
    t = transcript_hash(b"hello", b"bundle")
    assert re.fullmatch(r"\d{6}", confirmation_code(t))
    assert t != transcript_hash(b"hell", b"obundle")  # length-prefixed: no shifting bytes between parts
    codes = {confirmation_code(transcript_hash(b"hello", b"bundle%d" % i)) for i in range(200)}
    assert len(codes) > 190


def test_the_unit_runs_a_valid_agent_command_only_while_unprovisioned_or_with_a_token() -> None:
    unit = (REPO / "systemd" / "edge-node-provision.service").read_text()
    lines = [x.strip() for x in unit.splitlines()]
    assert "ConditionPathExists=|!/var/lib/edge-node/provision/state.json" in lines
    assert "ConditionPathExists=|/var/lib/edge-node/provision/reprovision.token" in lines
    assert "ConditionPathExists=|/var/lib/edge-node/provision/commit.json" in lines  # a half-finished commit
    [exec_start] = [x for x in lines if x.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0].endswith("/edge-node")
    args = edge_cli.build_parser().parse_args(argv[1:])
    assert args.command == "provision-agent" and args.port == "/dev/ttyGS0"
    paths = Paths(args.state_dir, args.config)
    assert str(paths.marker) == "/var/lib/edge-node/provision/state.json"
    assert str(paths.token) == "/var/lib/edge-node/provision/reprovision.token"
    assert str(paths.journal) == "/var/lib/edge-node/provision/commit.json"


# --- the frame decoder under fuzzing -------------------------------------------------------------------

def test_fuzz_the_frame_decoder() -> None:
    """250,000 coverage-guided executions of the frame decoder, 0 crashes (about 1 min on 2 cores; the
    decoder's coverage is reached long before). The 1,000,000-execution runs are bench commands
    (docs/serial-protocol.md). Without atheris (not an x86_64 Linux machine), 250,000 seeded random inputs."""
    harness = REPO / "bench" / "fuzz" / "fuzz_frame.py"
    try:
        import atheris  # noqa: F401
        args = ["-atheris_runs=250000", "-max_len=512", "-seed=1"]
    except ImportError:
        args = ["--random", "250000"]
    r = subprocess.run([sys.executable, str(harness), *args], capture_output=True, text=True, timeout=1200,
                       check=False, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Done 250000 in" in r.stderr or ("250000 random inputs, 0 crashes" in r.stdout)
