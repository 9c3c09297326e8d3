"""`edge-node`: the device's command line (demo, run, faces, keygen, cert, trust, shard, config)."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from edge.audit import AuditError, AuditLog
from edge.capture.errors import CaptureError
from edge.config import (
    DEFAULT_CONFIG,
    DEFAULT_STATE_DIR,
    DEFAULT_TILES,
    DEMO_TILES,
    ConfigError,
    StaleReferenceError,
    parse_tiles,
    reference_markdown,
    replace_reference,
)
from edge.demo.run import DemoError
from edge.events.evidence import EvidenceError
from edge.events.link import BrokerURLError
from edge.events.messages import MessageError
from edge.events.outbox import OutboxError
from edge.events.topics import TopicError
from edge.identity import IdentityError, create_identity, load_identity
from edge.node import NodeError
from edge.provision.errors import ProvisionError
from edge.systemd import SystemdEnvironmentError
from edge.tls import DeviceTLS, TLSIdentityError
from edge.trust.canonical import CanonicalFormError
from edge.trust.keys import KeyFileError
from edge.trust.root import TrustError
from edge.trust.times import TimeFormatError, format_time, now, parse_time
from edge.vault import STORAGE_PURPOSE, EvidenceVault, VaultError, purge_and_record
from edge.vision.analyzer import AnalysedFace, FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import DetectorConfig, TilePlan
from edge.vision.errors import ImageDecodeError, VisionError
from edge.vision.manifest import ModelSpec, load_manifest
from edge.vision.runtime import Delegate, RuntimeConfig, limit_blas_threads
from edge.vision.timing import StageClock
from edge.watchlist.gallery import GalleryError
from edge.watchlist.loader import DEFAULT_MAX_SHARD_BYTES
from edge.watchlist.store import ShardStore, StoreError
from provisioning.ca import CertificateError
from provisioning.fleet import FleetError

# Every failure family a command can end in (shards and commands are TrustErrors, the demo runs the fleet's
# code): main prints each as its one line and exits 2, never a traceback. provisioning/cli.py adds the fleet's.
COMMAND_ERRORS: tuple[type[Exception], ...] = (
    VisionError, TrustError, StoreError, IdentityError, KeyFileError, TLSIdentityError, ConfigError, NodeError,
    BrokerURLError, VaultError, AuditError, StaleReferenceError, CaptureError, DemoError, EvidenceError,
    MessageError, OutboxError, TopicError, ProvisionError, CanonicalFormError, TimeFormatError, GalleryError,
    CertificateError, FleetError, SystemdEnvironmentError)


def _vision_args(p: argparse.ArgumentParser, tiles: str = DEFAULT_TILES) -> None:
    g = p.add_argument_group("vision")
    g.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    g.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    g.add_argument("--delegate", choices=[d.value for d in Delegate], default=Delegate.XNNPACK.value,
                   help="where models run (default xnnpack, LiteRT's CPU delegate)")
    g.add_argument("--delegate-library", help="path of the delegate's shared library")
    g.add_argument("--delegate-fallback", action="store_true",
                   help="fall back to the CPU when the delegate library is missing (default: refuse)")
    g.add_argument("--embedder", help="embedder model id from MANIFEST.json (default: the manifest's)")
    g.add_argument("--tiles", default=tiles, metavar="crowd|off|TILE:OVERLAP[,...]",
                   help=f"extra detector passes for small faces (default {tiles}; crowd = 384:96,768:200)")


def _tile_plan(spec: str) -> TilePlan:
    try:
        return parse_tiles(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--tiles: {exc}") from None


def _vision_config(args: argparse.Namespace) -> VisionConfig:
    runtime = RuntimeConfig(num_threads=args.threads, delegate=Delegate(args.delegate),
                            delegate_library=args.delegate_library, fallback_to_cpu=args.delegate_fallback)
    return VisionConfig(runtime=runtime, detector=DetectorConfig(tiles=_tile_plan(args.tiles)),
                        embedder_id=args.embedder, models_dir=args.models_dir)


def _face_json(face: AnalysedFace) -> dict[str, Any]:
    d = face.detection
    return {
        "box": [round(float(v), 1) for v in d.box],
        "score": round(d.score, 4),
        "keypoints": [[round(float(x), 1), round(float(y), 1)] for x, y in d.keypoints],
        "quality": face.quality.as_dict(),
        "embedding": None if face.embedding is None else [round(float(v), 6) for v in face.embedding],
    }


def cmd_faces(args: argparse.Namespace) -> int:
    """Detect, gate, align and embed the faces of each image: diagnostics for technicians."""
    analyzer = FaceAnalyzer(_vision_config(args))
    failures = 0
    for name in args.images:
        path = Path(name)
        clock = StageClock()
        try:
            rgb = read_rgb(path)
        except ImageDecodeError as exc:
            failures += 1
            print(f"edge-node faces: {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps({"image": name, "error": str(exc)}), flush=True)
            continue
        clock.lap("decode")
        faces = analyzer.analyse(rgb, embed_all=True, clock=clock)
        h, w = rgb.shape[:2]
        if args.json:
            spec = analyzer.embedder_spec  # which embedder made the vectors (as in a match event's `model`)
            doc = {"image": name, "width": w, "height": h, "model": {"id": spec.id, "sha256": spec.sha256},
                   "faces": [_face_json(f) for f in faces], "timings_ms": clock.rounded()}
            print(json.dumps(doc), flush=True)
        else:
            _print_table(name, w, h, faces, clock)
        analyzer.release()
    return 1 if failures else 0


def _print_table(name: str, w: int, h: int, faces: Sequence[AnalysedFace], clock: StageClock) -> None:
    total = sum(clock.ms.values())
    print(f"{name}: {w}x{h}, {len(faces)} face(s), {total:.1f} ms")
    print(f"  {'#':>2} {'box (x0,y0,x1,y1)':<26} {'score':>6} {'size':>6} {'sharp':>7} "
          f"{'yaw':>6} {'roll':>6} {'pitch':>6}  quality")
    for i, f in enumerate(faces):
        q = f.quality
        box = ",".join(f"{v:.0f}" for v in f.detection.box)
        verdict = "ok" if q.passed else "fails: " + " ".join(q.reasons)
        print(f"  {i:>2} {box:<26} {q.score:>6.3f} {q.face_px:>6.0f} {q.sharpness:>7.1f} "
              f"{q.yaw:>6.1f} {q.roll:>6.1f} {q.pitch:>6.1f}  {verdict}")


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on a built-in default: on first run a demo fleet, device, operator and watch list (enrolled
    from photos that are not in the footage); each run a fresh shard; then the real node pipeline over the
    bundled footage. Match events go to stdout as JSON lines, a summary to stderr."""
    from edge.demo.run import run_demo

    return run_demo(_vision_config(args), out=sys.stdout, broker=args.broker,
                    demo_dir=Path(args.demo_dir) if args.demo_dir else None)


def cmd_run(args: argparse.Namespace) -> int:
    """The node service: camera, vision, matching inside the signed deployment, match events over MQTT.
    Runs until SIGTERM (systemd) or Ctrl-C, or until a finite replay ends. The configuration needs an [mqtt]
    table (broker, operator_key): alerts reach the fleet only through the broker. Without one the node
    refuses to start, unless --print-events is given for a local trial (events printed, nothing sent).
    Every key: `edge-node config reference` or docs/node.md."""
    import signal
    import threading

    from edge.config import load_config
    from edge.node import Node
    from edge.systemd import journal_logging

    config = load_config(Path(args.config))
    if config.mqtt is None and not args.print_events:
        raise ConfigError(f"{args.config}: [mqtt] is required for the service (alerts must reach the broker "
                          "through the durable outbox); for a local trial, --print-events prints them instead")
    journal_logging(logging.DEBUG if args.verbose else logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return Node(config, print_events=args.print_events).run(stop)




def cmd_purge(args: argparse.Namespace) -> int:
    """Destroy the evidence whose retention has run out (the retention timer runs this; the node also purges
    every 10 minutes while it runs). Day keys go first, then their rows, then the space is reclaimed; the
    purge is written to the audit log. Audit records older than [audit] retention_days (default 400, at
    least 183) are pruned. Prints what was done as one JSON line."""
    from edge.config import load_config

    config = load_config(Path(args.config))
    identity = load_identity(config.state_dir)
    audit = AuditLog.in_state_dir(config.state_dir, now)
    vault = EvidenceVault.in_state_dir(config.state_dir, identity.storage_key(STORAGE_PURPOSE), now)
    try:
        report = purge_and_record(vault, audit, "retention (timer)")
        stats = vault.stats()
    finally:
        vault.close()
    pruned = audit.prune(now() - timedelta(days=config.audit_retention_days))
    print(json.dumps({"keys_destroyed": list(report.keys_destroyed), "rows_deleted": report.rows_deleted,
                      "left": {"keys": stats.keys, "rows": stats.rows, "oldest_day": stats.oldest_day},
                      "audit_records_pruned": pruned}))
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Every table and key of node.toml: type, default, allowed values, meaning, generated from the parser's
    own definitions (edge/config.py). Prints Markdown; --write FILE replaces the generated section of FILE
    (docs/node.md); --check FILE exits 1 if that section is out of date."""
    if args.write is None and args.check is None:
        sys.stdout.write(reference_markdown())
        return 0
    path = Path(args.write or args.check)
    text = path.read_text()
    updated = replace_reference(text, str(path))
    if args.check is not None:
        if updated != text:
            print(f"edge-node config reference: {path}: the configuration reference is out of date; run "
                  f"`edge-node config reference --write {path}`", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        path.write_text(updated)
    print(f"{path}: configuration reference {'updated' if updated != text else 'already up to date'}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create this device's X25519 and Ed25519 keys (never overwriting) and print its public identity."""
    device_id = args.device_id or socket.gethostname().split(".")[0].lower()
    ident = create_identity(args.state_dir, device_id)
    print(json.dumps(ident.public(), indent=1))
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    """The broker TLS identity. request: make the TLS key (once, on the device) and a CSR for the fleet to
    certify; install: store the certificate the fleet issued and its CA, after checking they belong."""
    ident = load_identity(args.state_dir)
    tls = DeviceTLS(args.state_dir)
    if args.cert_command == "request":
        csr = tls.request(ident.device_id).absolute()
        dev, state = ident.device_id, Path(args.state_dir).absolute()
        print(f"{csr}\n"
              f"next, where the fleet directory is (copy the CSR there if that is another machine):\n"
              f"  edge-fleet cert issue device {dev} --csr {csr} --out {dev}.crt --fleet-dir FLEET_DIR\n"
              f"then here, with the certificate and the fleet's FLEET_DIR/ca/ca.crt:\n"
              f"  edge-node cert install {dev}.crt --ca ca.crt --state-dir {state}")
    else:
        cert = tls.install(ident.device_id, Path(args.cert).read_bytes(), Path(args.ca).read_bytes())
        print(f"installed {tls.cert} (CN {ident.device_id}, until {format_time(cert.not_valid_after_utc)}) and "
              f"{tls.ca}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    """Trust a fleet root (init: first trust, given out of band) or move to its next version (update)."""
    store = ShardStore(args.state_dir)
    data = Path(args.root).read_bytes()
    trusted = store.trust_init(data) if args.trust_command == "init" else store.trust_update(data)
    r = trusted.root
    print(f"trusting fleet {r.fleet!r} root v{r.version} (expires {format_time(r.expires)})")
    return 0


def _node_model(args: argparse.Namespace) -> ModelSpec:
    manifest = load_manifest(args.models_dir)
    return manifest.spec(args.embedder or manifest.default_embedder)


def cmd_shard_load(args: argparse.Namespace) -> int:
    """Verify a shard file with every check, in order; only if all pass does it replace the one in force."""
    store = ShardStore(args.state_dir, max_bytes=args.max_bytes)
    before = store.state()["current"]
    try:
        accepted = store.load(Path(args.file), _node_model(args), now())
    except TrustError as exc:
        kept = f"shard {before['shard_id']} v{before['version']} stays in force" if before else "no shard in force"
        print(f"edge-node shard load: {args.file}: rejected: {type(exc).__name__}: {exc}; {kept}", file=sys.stderr)
        return 1
    m = accepted.manifest
    print(f"accepted shard {m.shard_id} v{m.version}: deployment {m.deployment.id}, {m.entries} entries, "
          f"threshold {m.deployment.threshold}, expires {format_time(m.expires)}")
    accepted.gallery.wipe()  # this command only installs the shard; the running node holds the gallery
    return 0


def cmd_shard_status(args: argparse.Namespace) -> int:
    """What is in force: shard, version, deployment, expiry (and whether it has expired)."""
    store = ShardStore(args.state_dir)
    state = store.state()
    cur = state["current"]
    if args.json:
        print(json.dumps(state))
        return 0
    if cur is None:
        print(f"no shard in force (version floor {state['version_floor']})")
        return 0
    expired = now() >= parse_time(cur["expires"])
    dep = cur["deployment"]
    print(f"shard {cur['shard_id']} v{cur['version']} ({cur['entries']} entries, model {cur['model']['id']})\n"
          f"  deployment {dep['id']} ({dep['authorisation']}), {dep['start']} .. {dep['end']}, "
          f"cameras {', '.join(dep['cameras'])}, threshold {dep['threshold']}, "
          f"retention {dep['retention_days']} days\n"
          f"  expires {cur['expires']}{' (EXPIRED: not matching)' if expired else ''}; accepted {cur['accepted']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-node", description="Edge face-match node.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run bundled real footage against a demo watch list",
                          description=cmd_demo.__doc__)
    _vision_args(demo, tiles=DEMO_TILES)
    demo.add_argument("--broker", metavar="mqtts://HOST[:PORT]",
                      help="also publish to this broker (configured from the demo fleet: docs/mqtt.md)")
    demo.add_argument("--demo-dir", help="where the demo keeps its fleet and node (default "
                      "$XDG_STATE_HOME/edge-node/demo or ~/.local/state/edge-node/demo)")
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser("run", help="run the node service", description=cmd_run.__doc__)
    run.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"node configuration (default {DEFAULT_CONFIG})")
    run.add_argument("--print-events", action="store_true",
                     help="also print each match event as a JSON line; the only way to run without [mqtt]")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)
    config = sub.add_parser("config", help="the node's configuration file", description="node.toml.")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    reference = config_sub.add_parser("reference", help="every configuration key, from the code's definitions",
                                      description=cmd_config_reference.__doc__)
    where = reference.add_mutually_exclusive_group()
    where.add_argument("--write", metavar="FILE", help="replace the generated section of FILE (docs/node.md)")
    where.add_argument("--check", metavar="FILE", help="exit 1 if FILE's generated section is out of date")
    reference.set_defaults(func=cmd_config_reference)
    purge = sub.add_parser("purge", help="destroy evidence past its retention (the retention timer)",
                           description=cmd_purge.__doc__)
    purge.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"node configuration (default {DEFAULT_CONFIG})")
    purge.set_defaults(func=cmd_purge)
    faces = sub.add_parser("faces", help="detect and embed the faces in images (diagnostics)",
                           description=cmd_faces.__doc__)
    faces.add_argument("images", nargs="+", metavar="IMAGE")
    faces.add_argument("--json", action="store_true", help="one JSON object per image, per line")
    _vision_args(faces)
    faces.set_defaults(func=cmd_faces)

    def state_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"the node's state directory (default {DEFAULT_STATE_DIR})")

    keygen = sub.add_parser("keygen", help="create this device's keys and print its public identity",
                            description=cmd_keygen.__doc__)
    keygen.add_argument("--device-id", help="device id (default: the host name)")
    state_arg(keygen)
    keygen.set_defaults(func=cmd_keygen)
    cert = sub.add_parser("cert", help="this device's broker TLS certificate", description=cmd_cert.__doc__)
    cert_sub = cert.add_subparsers(dest="cert_command", required=True)
    creq = cert_sub.add_parser("request", help="create the TLS key and a CSR", description=cmd_cert.__doc__)
    state_arg(creq)
    creq.set_defaults(func=cmd_cert)
    cinst = cert_sub.add_parser("install", help="install the issued certificate", description=cmd_cert.__doc__)
    cinst.add_argument("cert", metavar="CERT.crt")
    cinst.add_argument("--ca", required=True, help="the fleet CA certificate (ca.crt)")
    state_arg(cinst)
    cinst.set_defaults(func=cmd_cert)
    trust = sub.add_parser("trust", help="the fleet root this node trusts", description=cmd_trust.__doc__)
    trust_sub = trust.add_subparsers(dest="trust_command", required=True)
    for verb, what in (("init", "trust a fleet root for the first time"),
                       ("update", "accept the next version of the trusted root")):
        p = trust_sub.add_parser(verb, help=what, description=cmd_trust.__doc__)
        p.add_argument("root", metavar="ROOT.json")
        state_arg(p)
        p.set_defaults(func=cmd_trust)
    shard = sub.add_parser("shard", help="the signed, encrypted watch-list shard", description="Watch-list shards.")
    shard_sub = shard.add_subparsers(dest="shard_command", required=True)
    load = shard_sub.add_parser("load", help="verify a shard and put it in force", description=cmd_shard_load.__doc__)
    load.add_argument("file", metavar="FILE")
    load.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_SHARD_BYTES, help="size cap")
    load.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    load.add_argument("--embedder", help="the embedder this node runs (default: the manifest's)")
    state_arg(load)
    load.set_defaults(func=cmd_shard_load)
    status = shard_sub.add_parser("status", help="show the shard in force", description=cmd_shard_status.__doc__)
    status.add_argument("--json", action="store_true")
    state_arg(status)
    status.set_defaults(func=cmd_shard_status)
    from edge.provision.agent import add_parser as add_provision_agent

    add_provision_agent(sub, state_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "tiles"):
        try:
            _tile_plan(args.tiles)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    limit_blas_threads()
    try:
        code: int = args.func(args)
    except COMMAND_ERRORS as exc:
        print(f"edge-node {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-node {args.command}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
