"""`edge-fleet`: the fleet admin's and technician's command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from edge.audit import AuditTamperError, verify_log
from edge.cli import COMMAND_ERRORS
from edge.config import TrackingConfig
from edge.events.commands import REVIEW_OUTCOMES, check_args, shard_push_args
from edge.trust.keys import ed25519_public
from edge.trust.root import ROLES
from edge.trust.times import TimeFormatError, format_time, now, parse_time
from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.vision.errors import VisionError
from edge.vision.manifest import load_manifest
from edge.vision.runtime import limit_blas_threads
from edge.watchlist.gallery import Gallery
from provisioning.accuracy.calibration import POLICY_KEY, Rehearsal, calibrate, policy_limit, proposal_text, save_record
from provisioning.accuracy.dataset import DatasetError
from provisioning.accuracy.stats import TailFitError
from provisioning.broker import BrokerConfig
from provisioning.ca import FleetCA
from provisioning.commands import sign_command
from provisioning.console import cli as console_cli
from provisioning.deployments import record_path
from provisioning.fleet import Fleet, FleetError, passphrase
from provisioning.link import NOT_QUEUED, REFUSED_BY_BROKER, FleetClient, publish_commands
from provisioning.operators import add_operator, fleet_settings, issue_person, operator_key, people
from provisioning.reports import AuditSource, deployment_report
from provisioning.shards import issue_shard
from provisioning.tail import EventTail, run_tail
from provisioning.watchlist import build_watchlist, load_watchlist

# edge-node's failure families (the fleet runs the same code) and the fleet's own, each printed as its one line.
FLEET_ERRORS: tuple[type[Exception], ...] = (*COMMAND_ERRORS, DatasetError, TailFitError, OSError)


def cmd_models_verify(args: argparse.Namespace) -> int:
    """Check every model file against MANIFEST.json (sha256) and list what each one is."""
    manifest = load_manifest(args.models_dir)
    bad = 0
    for mid, spec in sorted(manifest.models.items()):
        try:
            manifest.verified_bytes(mid)
            status = "ok"
        except VisionError as exc:
            bad += 1
            status = f"FAILED: {exc}"
        src = ", ".join(f"{s.registry}:{s.name}@{s.version}" for s in spec.source)
        default = " (default)" if mid in (manifest.default_detector, manifest.default_embedder) else ""
        print(f"{mid}{default}: {spec.role} {spec.variant}, {spec.file}, licence {spec.licence}; "
              f"from {src}: {status}")
    return 1 if bad else 0


def cmd_init(args: argparse.Namespace) -> int:
    """Create a fleet: offline root keys (one file per custodian), online shard, command and review keys
    (keys/review-1.pem signs review commands and nothing else: the officer's console holds it), root v1."""
    root = Fleet(args.fleet_dir).init(args.fleet, args.root_keys, args.root_threshold)
    FleetCA(args.fleet_dir, passphrase("the fleet CA key")).init(args.fleet)
    print(f"fleet {root.fleet!r}: root v1 ({args.root_threshold} of {args.root_keys} root keys), "
          f"in {args.fleet_dir}; give each keys/root-N.pem to its custodian and keep it offline")
    print(f"devices trust it with: edge-node trust init {Fleet(args.fleet_dir).root_path(1)}")
    return 0


def _root_files(args: argparse.Namespace) -> list[Path] | None:
    return [Path(p) for p in args.root_keys.split(",")] if args.root_keys else None


def cmd_key(args: argparse.Namespace) -> int:
    """Add an online key to a role (shard, command or review), revoke one, or set how many of a role's keys
    must sign; each publishes the next root version. The first review key of a fleet made before the review
    role creates the role: from then on devices that trust the new root take reviews only from review keys."""
    fleet = Fleet(args.fleet_dir)
    if args.key_command == "add":
        created = args.role == "review" and not fleet.root().has_role("review")
        path, root = fleet.add_key(args.role, _root_files(args))
        print(f"new {args.role} key {path}; published root v{root.version} ({fleet.root_path(root.version)})")
        if created:
            print(f"root v{root.version} creates the review role: a device still on an older root refuses a review "
                  "signed by a review key, and once it trusts this root it refuses one signed by a command key. "
                  "Update every device's root before sending reviews; until then reviews are refused (or send "
                  f"them with `edge-fleet review --device-root N`, N the root version the device reports)")
    elif args.key_command == "threshold":
        root = fleet.set_threshold(args.role, args.threshold, _root_files(args))
        print(f"{args.role} threshold {args.threshold}; published root v{root.version} "
              f"({fleet.root_path(root.version)})")
    else:
        root = fleet.revoke_key(args.keyid, _root_files(args))
        print(f"revoked {args.keyid}; published root v{root.version} ({fleet.root_path(root.version)})")
    print("push the new root to every device: edge-node trust update ROOT.json")
    return 0


def cmd_root_rotate(args: argparse.Namespace) -> int:
    """Replace the root keys: the next root is signed by the old threshold and by the new keys."""
    fleet = Fleet(args.fleet_dir)
    root = fleet.rotate_root(args.new_keys, args.threshold, _root_files(args))
    print(f"published root v{root.version} with {args.new_keys} new root keys "
          f"(threshold {args.threshold}): {fleet.root_path(root.version)}")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    """Register a device's public identity (from `edge-node keygen`), or revoke a device."""
    fleet = Fleet(args.fleet_dir)
    if args.device_command == "add":
        source = Path(args.public)
        try:
            public = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise FleetError(f"{source}: not a public identity ({exc})") from None
        d = fleet.add_device(args.device_id, public, source)
    else:
        d = fleet.revoke_device(args.device_id)
    print(f"device {d.device_id}: {d.status}")
    return 0


def cmd_watchlist_build(args: argparse.Namespace) -> int:
    """Detect, check and embed each entry's reference photo(s); refuse entries lacking provenance."""
    fleet = Fleet(args.fleet_dir)
    analyzer = FaceAnalyzer(VisionConfig(models_dir=args.models_dir, embedder_id=args.embedder))
    report = build_watchlist(fleet, args.name, Path(args.photos_dir), Path(args.meta), analyzer, sys.stderr)
    for r in report.refused:
        print(f"refused: row {r.row} ({r.reference or 'no reference'}): {r.reason}", file=sys.stderr)
    per_photo = report.seconds / max(1, report.photos + len(report.refused))
    print(f"watch list {report.name!r}: {report.entries} entries built from {report.photos} photos, "
          f"{len(report.refused)} refused ({report.seconds:.1f} s, ~{per_photo * 1000:.0f} ms per photo)")
    return 0 if report.entries else 1


def cmd_shard_issue(args: argparse.Namespace) -> int:
    """Sign and encrypt a shard of a built watch list for a deployment and its devices."""
    fleet = Fleet(args.fleet_dir)
    manifest_models = load_manifest(args.models_dir)
    model = manifest_models.spec(args.embedder or manifest_models.default_embedder)
    devices = [d for d in args.devices.split(",") if d]
    m = issue_shard(fleet, Path(args.deployment), devices, Path(args.out), model)
    print(f"issued shard {m.shard_id} v{m.version} -> {args.out}: {m.entries} entries for "
          f"{', '.join(m.recipients)}; deployment {m.deployment.id}, threshold {m.deployment.threshold}, "
          f"reviewers required {m.deployment.reviewers_required}, expires {format_time(m.expires)}; "
          f"recorded in {record_path(fleet, m.deployment.id)}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Rehearsal at the venue: footage of people on no list, searched against the built watch list, gives the
    impostor tail at this site; proposes the lowest threshold (not below the model's floor) whose predicted
    false alerts per 1,000 passers-by at the list size meet the target, writes the report, and keeps the
    calibration in the fleet, where `shard issue` checks deployments against the fleet policy
    (fleet.json `max_false_alerts_per_1000`). docs/accuracy.md explains the method."""
    fleet = Fleet(args.fleet_dir)
    target = args.target if args.target is not None else policy_limit(fleet)
    if target is None:
        raise FleetError(f"no --target and no {POLICY_KEY} in {fleet.meta_path}: say how many false alerts per "
                         "1,000 passers-by are acceptable")
    wl = load_watchlist(fleet, args.watchlist)
    analyzer = FaceAnalyzer(VisionConfig(models_dir=args.models_dir, embedder_id=wl.model_id))
    model = analyzer.embedder_spec
    rehearsal: Rehearsal | None = None
    try:
        wl.check_model(model.id, model.sha256)
        rehearsal = Rehearsal(analyzer, [Path(p) for p in args.footage], args.every,
                              lambda msg: print(f"calibrate: {msg}", file=sys.stderr, flush=True))
        gallery = Gallery(wl.embeddings, [str(e["id"]) for e in wl.entries])
        proposal = calibrate(rehearsal, gallery, model, args.list_size or gallery.size, target, TrackingConfig())
    finally:
        if rehearsal is not None:
            rehearsal.wipe()
        analyzer.release()
    text = proposal_text(proposal)
    if args.report:
        Path(args.report).write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"calibration kept in {save_record(fleet, proposal.record)}", file=sys.stderr)
    return 0 if proposal.threshold is not None else 1


def at_least_one(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of entries or frames)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def _ca(args: argparse.Namespace) -> FleetCA:
    return FleetCA(args.fleet_dir, passphrase("the fleet CA key"))


def cmd_ca_init(args: argparse.Namespace) -> int:
    """Create the fleet's certificate authority for broker TLS (done by `init` for new fleets)."""
    cert = _ca(args).init(Fleet(args.fleet_dir).name)
    print(f"fleet CA {cert.subject.rfc4514_string()} -> {args.fleet_dir / 'ca' / 'ca.crt'}")
    return 0


def cmd_cert_issue(args: argparse.Namespace) -> int:
    """Issue a broker TLS certificate. A device's key is born on the device: certify its CSR
    (`edge-node cert request`); admins and operators get a new key (encrypted) and certificate."""
    ca = _ca(args)
    fleet = Fleet(args.fleet_dir)
    if args.kind == "device":
        if not args.csr:
            raise FleetError("a device certificate needs --csr (from `edge-node cert request` on the device)")
        device = fleet.device(args.name)
        if device.status != "active":
            raise FleetError(f"device {args.name!r} is {device.status}")
        out = Path(args.out or f"{args.name}.crt")
        issued = ca.sign_csr("device", args.name, Path(args.csr), out)
        print(f"issued {issued.common_name} (serial {issued.serial:x}, until {issued.not_after}) -> {out}; "
              f"install on the device with its CA: edge-node cert install {out} --ca {ca.cert_path}")
    elif args.kind == "broker":
        names = [args.name, *args.alt_name]
        out_dir = Path(args.out or ".")
        key, crt = ca.issue_broker(names, out_dir)
        print(f"broker certificate for {', '.join(names)}: {crt} (key {key})")
    else:
        crt = issue_person(fleet, ca, args.kind, args.name, passphrase("the fleet CA key"))
        print(f"issued {args.kind}.{args.name} -> {crt}; re-run `edge-fleet broker config` so the broker's ACL "
              "knows it")
    return 0


def cmd_operator_add(args: argparse.Namespace) -> int:
    """An operator (alert reviewer): an X25519 key that opens sealed evidence, and a broker certificate."""
    fleet = Fleet(args.fleet_dir)
    op = add_operator(fleet, _ca(args), args.name, passphrase("the operator key"))
    print(f"operator {op.name}: evidence key {op.key_id[:16]}... (public {op.x25519}); "
          f"nodes seal crops to {fleet.dir / 'operators' / (op.name + '.json')}")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write a production mosquitto configuration: TLS client certificates only, identity = CN, client id
    forced to it, per-device ACLs from the topic layout, persistence, logging to stderr (the journal under
    systemd); plus the broker's certificate and key. Every path in mosquitto.conf is absolute. It listens on
    every interface (IPv4 and IPv6) unless --bind names one address: devices reach it over the network,
    and only clients with a certificate of this fleet get past TLS. Prints how to give the key and data
    directory to the user mosquitto drops to when started as root."""
    fleet = Fleet(args.fleet_dir)
    ca = _ca(args)
    out = Path(args.out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    if not (out / "broker.crt").exists():
        ca.issue_broker([args.hostname, *args.alt_name], out)
    config = BrokerConfig(out, args.port, args.bind)
    conf = config.write([f"admin.{n}" for n in people(fleet, "admin")],
                        [f"operator.{n}" for n in people(fleet, "operator")])
    where = f"address {args.bind}" if args.bind else "every interface"
    print(f"wrote {conf} (port {args.port}, {where}), {out / 'acl'}, {out / 'ca.crt'}, {out / 'broker.crt'} and "
          f"{out / 'broker.key'} (0600)\n"
          f"mosquitto started as root (as mosquitto.service does) drops to the user mosquitto, which must read the "
          f"key and write the data directory; as root:\n"
          f"  chown mosquitto: {out / 'broker.key'} && chown -R mosquitto: {out / 'data'}\n"
          f"run: mosquitto -c {conf}   (it logs to stderr: the journal under systemd)")
    return 0


class TailStopped(Exception):
    """SIGTERM reached `events tail`: it stops as on Ctrl-C, and still prints its summary."""


def _stop_tail(signum: int, _frame: object) -> None:
    raise TailStopped(signal.Signals(signum).name)


def cmd_events_tail(args: argparse.Namespace) -> int:
    """Print match events as JSON lines: each verified against its registered device, evidence opened with
    the operator key, duplicates dropped by event id; anything forged, altered or expired is flagged. Runs
    until --count events, --idle-timeout seconds without a message, Ctrl-C or SIGTERM; then prints a summary
    to stderr and exits 0. Every field it prints: docs/mqtt.md."""
    fleet = Fleet(args.fleet_dir)
    secret = passphrase("the operator key")
    names = people(fleet, "operator")
    name = args.operator or (names[0] if len(names) == 1 else None)
    settings = fleet_settings(fleet, args.broker, "operator", name, secret)
    key_path = Path(args.operator_key) if args.operator_key else fleet.dir / "operators" / f"{name}.pem"
    tail = EventTail(fleet, operator_key(key_path, secret), now,
                     Path(args.evidence_dir) if args.evidence_dir else None)
    client = FleetClient(settings, settings.cert_file.stem)
    previous = signal.signal(signal.SIGTERM, _stop_tail)  # `kill`, systemd, a container stop: as Ctrl-C
    try:
        counts = run_tail(client, tail, sys.stdout, args.count, args.idle_timeout, args.device or ())
    except (KeyboardInterrupt, TailStopped):
        counts = tail.counts
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({"summary": counts.to_json()}), file=sys.stderr)
    return 0


def _send(args: argparse.Namespace, verb: str, verb_args: dict[str, Any], root_version: int | None = None) -> int:
    """Sign one command per device, publish, and print each device's signed answer as a JSON line.
    Exit 0: all done; 1: a device refused or failed it (the answer says why); 3: a device did not answer in
    time (the command waits in its session until it expires); 4: the broker refused to take the command;
    5: a command is not queued for a device (it has no session at the broker: it never connected, or its
    session expired), so nobody will get it: bring the device online once, then run the command again."""
    fleet = Fleet(args.fleet_dir)
    commands = {}
    lifetime = timedelta(hours=args.lifetime_hours)
    for dev in [d for d in args.devices.split(",") if d]:
        cid, envelope = sign_command(fleet, dev, verb, verb_args, lifetime, root_version=root_version)
        commands[dev] = (verb, cid, envelope)
    settings = fleet_settings(fleet, args.broker, "admin", args.admin, passphrase("the admin key"))
    results = publish_commands(FleetClient(settings, settings.cert_file.stem), fleet, commands, args.wait, lifetime,
                               sys.stderr)
    for r in results:
        print(json.dumps({"device_id": r.device_id, "command_id": r.command_id, "ok": r.ok, "code": r.code,
                          "reason": r.reason, "detail": r.detail}))
    if all(r.ok for r in results):
        return 0
    if any(r.code == REFUSED_BY_BROKER for r in results):
        return 4
    if any(r.code == NOT_QUEUED for r in results):
        return 5
    return 1 if all(r.answered for r in results) else 3


def cmd_shard_push(args: argparse.Namespace) -> int:
    """Send a shard to devices as a signed shard-push command and report each device's signed answer. The
    command is published retained: the broker keeps it as each device's desired shard until it expires, and a
    device gets it whenever it connects, also for the first time or after its session expired (a device that
    has the shard in force already answers done). Exit 0: all accepted; 1: a device refused it (the answer says
    why); 3: a device did not answer in time (the shard waits at the broker for it until the command expires);
    4: the broker refused to take the command; 5: not queued: the broker did not acknowledge it (purge and
    review also exit 5 when a device has no session at the broker, as nobody would get them: bring the device
    online once, then send them again)."""
    return _send(args, "shard-push", shard_push_args(Path(args.file).read_bytes()))


def cmd_purge(args: argparse.Namespace) -> int:
    """Order devices to destroy a deployment's evidence now (all of it, or that of days before --before):
    the day keys go first, then the rows; each device records the purge in its audit log and answers
    with what it destroyed. Exit codes as for `shard push`."""
    try:
        before = None if args.before is None else format_time(parse_time(args.before))
    except TimeFormatError as exc:
        raise FleetError(f"--before: {exc}") from None
    return _send(args, "purge", {"deployment_id": args.deployment, "before": before})


def cmd_review(args: argparse.Namespace) -> int:
    """Report the human decision on an alert to the device that raised it: the device records the outcome
    and the reviewer ids in its audit log, counts it in the deployment's figures, and deletes its own copy
    of the evidence. Signed by the fleet's review key(s) (keys/review-N.pem; the command keys under a root
    made before the review role; with --device-root, by the role of the root the device trusts). The device
    refuses a review naming fewer distinct reviewers (in any case) than the alert required when it was raised
    (TooFewReviewersError, evidence kept). Exit codes as for `shard push` (1 also when the device raised no
    such alert or refused the review)."""
    review = {"event_id": args.event, "outcome": args.outcome, "reviewers": args.reviewer}
    check_args("review", review)  # the device's own rules, before anything is signed or sent
    return _send(args, "review", review, args.device_root)


def cmd_deployment_report(args: argparse.Namespace) -> int:
    """Effectiveness per deployment (faces seen, alerts, confirmed, dismissed) from devices' audit logs,
    each verified first (hash chain, and the device-signed checkpoints beside it when present). Prints a
    table, or JSON with --json. Exit 1 if a log fails verification."""
    fleet = Fleet(args.fleet_dir)
    logs: list[AuditSource] = []
    for spec in args.audit:
        device, sep, path = spec.partition("=")
        if not sep:
            raise FleetError(f"--audit {spec!r}: expected DEVICE=PATH")
        logs.append(AuditSource(device, Path(path)))
    try:
        report = deployment_report(fleet, logs)
    except AuditTamperError as exc:
        print(f"edge-fleet deployment report: TAMPERED: {exc}", file=sys.stderr)
        return 1
    rows = {d: t for d, t in report.items() if args.deployment is None or d == args.deployment}
    if args.json:
        print(json.dumps({d: {**t.to_json(), "unreviewed": t.unreviewed} for d, t in rows.items()}, indent=2))
        return 0
    print(f"{'deployment':<24} {'faces seen':>11} {'alerts':>7} {'confirmed':>10} {'dismissed':>10} "
          f"{'unreviewed':>11}")
    for d, t in rows.items():
        print(f"{d:<24} {t.faces_seen:>11} {t.alerts:>7} {t.confirmed:>10} {t.dismissed:>10} {t.unreviewed:>11}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check a node's audit log: the hash chain (a changed, removed, inserted or reordered line) and, with
    --checkpoints, the device-signed checkpoints (truncation, a rewritten tail). With --console DIR instead: an
    officer's console's log, checked against the console's own journal key (docs/console.md)."""
    if args.console is not None:
        return console_cli.verify_console_log(args.console, args.console_key)
    if args.log is None or args.device is None or args.fleet_dir is None:
        raise FleetError("audit verify: a node's log needs LOG, --device and --fleet-dir (a console's: --console DIR)")
    fleet = Fleet(args.fleet_dir)
    key = ed25519_public(fleet.device(args.device).ed25519)
    log = Path(args.log)
    checkpoints = [c for c in Path(args.checkpoints).read_bytes().split(b"\n") if c] if args.checkpoints else []
    try:
        v = verify_log(log.read_bytes(), str(log), key, checkpoints)
    except AuditTamperError as exc:
        print(f"edge-fleet audit verify: TAMPERED: {exc}", file=sys.stderr)
        return 1
    vouched = f"; checkpoint vouches for the first {v.checkpoint_seq}" if v.checkpoint_seq is not None else \
        "; no checkpoint given: truncation cannot be ruled out"
    print(f"{log}: {v.records} records, chain intact, head {v.head[:16]}...{vouched}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-fleet", description="Fleet administration for edge face-match nodes.")
    sub = parser.add_subparsers(dest="command", required=True)

    def fleet_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--fleet-dir", type=Path, required=True, help="the fleet directory")

    def root_keys_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root-keys", help="comma-separated root key files to sign with (default: keys/root-*.pem)")

    init = sub.add_parser("init", help="create a fleet and its keys", description=cmd_init.__doc__)
    fleet_arg(init)
    init.add_argument("--fleet", required=True, help="fleet name")
    init.add_argument("--root-keys", type=int, default=3, help="number of offline root keys (default 3)")
    init.add_argument("--root-threshold", type=int, default=2, help="root signatures required (default 2)")
    init.set_defaults(func=cmd_init)

    key = sub.add_parser("key", help="online signing keys (add, revoke)", description=cmd_key.__doc__)
    key_sub = key.add_subparsers(dest="key_command", required=True)
    online_roles = [r for r in ROLES if r != "root"]
    add = key_sub.add_parser("add", help="add a shard, command or review key", description=cmd_key.__doc__)
    add.add_argument("role", choices=online_roles)
    revoke = key_sub.add_parser("revoke", help="revoke a shard, command or review key", description=cmd_key.__doc__)
    revoke.add_argument("keyid", help="key id (or a unique prefix)")
    threshold = key_sub.add_parser("threshold", help="how many of a role's keys must sign",
                                   description=cmd_key.__doc__)
    threshold.add_argument("role", choices=online_roles)
    threshold.add_argument("threshold", type=at_least_one, help="signatures required (at most the role's keys)")
    for p in (add, revoke, threshold):
        fleet_arg(p)
        root_keys_arg(p)
        p.set_defaults(func=cmd_key)

    root = sub.add_parser("root", help="the fleet root", description="The fleet root.")
    root_sub = root.add_subparsers(dest="root_command", required=True)
    rotate = root_sub.add_parser("rotate", help="replace the root keys", description=cmd_root_rotate.__doc__)
    rotate.add_argument("--new-keys", type=int, default=3)
    rotate.add_argument("--threshold", type=int, default=2)
    fleet_arg(rotate)
    root_keys_arg(rotate)
    rotate.set_defaults(func=cmd_root_rotate)

    device = sub.add_parser("device", help="register or revoke devices", description=cmd_device.__doc__)
    device_sub = device.add_subparsers(dest="device_command", required=True)
    dadd = device_sub.add_parser("add", help="register a device", description=cmd_device.__doc__)
    dadd.add_argument("device_id", metavar="DEVICE_ID")
    dadd.add_argument("--public", required=True, help="the JSON printed by `edge-node keygen` on the device")
    drev = device_sub.add_parser("revoke", help="revoke a device (no more shards for it)",
                                 description=cmd_device.__doc__)
    drev.add_argument("device_id", metavar="DEVICE_ID")
    for p in (dadd, drev):
        fleet_arg(p)
        p.set_defaults(func=cmd_device)

    wl = sub.add_parser("watchlist", help="build watch lists from reference photos", description="Watch lists.")
    wl_sub = wl.add_subparsers(dest="watchlist_command", required=True)
    build = wl_sub.add_parser("build", help="build a watch list", description=cmd_watchlist_build.__doc__)
    build.add_argument("photos_dir", metavar="PHOTOS_DIR")
    build.add_argument("--meta", required=True, metavar="META.csv", help="one row per entry: see docs/examples")
    build.add_argument("--name", default="default", help="watch-list name (default: default)")
    build.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    build.add_argument("--embedder", help="embedder id from MANIFEST.json the devices run (default: the "
                       "manifest's; docs/embedders.md)")
    fleet_arg(build)
    build.set_defaults(func=cmd_watchlist_build)

    shard = sub.add_parser("shard", help="issue watch-list shards", description="Shards.")
    shard_sub = shard.add_subparsers(dest="shard_command", required=True)
    issue = shard_sub.add_parser("issue", help="issue a shard", description=cmd_shard_issue.__doc__)
    issue.add_argument("--deployment", required=True, metavar="DEPLOY.toml")
    issue.add_argument("--devices", required=True, help="comma-separated device ids")
    issue.add_argument("--out", required=True, metavar="FILE")
    issue.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    issue.add_argument("--embedder", help="embedder id from MANIFEST.json the devices run; the watch list must "
                       "have been built with it (default: the manifest's)")
    fleet_arg(issue)
    issue.set_defaults(func=cmd_shard_issue)

    cal = sub.add_parser("calibrate", help="propose a threshold from rehearsal footage at the venue",
                         description=cmd_calibrate.__doc__)
    cal.add_argument("--watchlist", required=True, help="the built watch list (edge-fleet watchlist build)")
    cal.add_argument("--footage", required=True, nargs="+", metavar="FILE",
                     help="clips or photos of people who are on no list, from the deployment's cameras")
    cal.add_argument("--list-size", type=at_least_one,
                     help="entries the deployment will hold (default: the watch list's)")
    cal.add_argument("--target", type=float,
                     help=f"false alerts per 1,000 passers-by (default: fleet.json {POLICY_KEY})")
    cal.add_argument("--every", type=at_least_one, default=1, help="analyse every k-th frame (default 1)")
    cal.add_argument("--report", metavar="FILE.md", help="also write the report here")
    cal.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    fleet_arg(cal)
    cal.set_defaults(func=cmd_calibrate)

    def command_args(p: argparse.ArgumentParser) -> None:
        """What every signed command to devices takes: who, through which broker, as which admin, how long."""
        p.add_argument("--devices", required=True, help="comma-separated device ids")
        p.add_argument("--broker", required=True, metavar="mqtts://HOST[:PORT]")
        p.add_argument("--admin", help="which admin certificate to use (default: the only one)")
        p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the devices' answers")
        p.add_argument("--lifetime-hours", type=float, default=24.0,
                       help="how long the command stays valid and queued for an offline device (default 24, "
                       "at most 168); for shard push also how long the broker keeps it as the desired shard")
        fleet_arg(p)

    push = shard_sub.add_parser("push", help="send a shard to devices over MQTT (signed command)",
                                description=cmd_shard_push.__doc__)
    push.add_argument("file", metavar="FILE", help="the shard file (from `shard issue`)")
    command_args(push)
    push.set_defaults(func=cmd_shard_push)

    purge = sub.add_parser("purge", help="order devices to destroy a deployment's evidence (signed command)",
                           description=cmd_purge.__doc__)
    purge.add_argument("--deployment", required=True, help="the deployment id")
    purge.add_argument("--before", metavar="YYYY-MM-DDTHH:MM:SSZ",
                       help="only evidence of days before this time (default: all of the deployment's evidence)")
    command_args(purge)
    purge.set_defaults(func=cmd_purge)
    review = sub.add_parser("review", help="report the human decision on an alert to its device (signed command)",
                            description=cmd_review.__doc__)
    review.add_argument("--event", required=True, help="the alert's event id")
    review.add_argument("--outcome", required=True, choices=REVIEW_OUTCOMES)
    review.add_argument("--reviewer", required=True, action="append",
                        help="a reviewer's id (badge or account id, never a name); repeat for each reviewer")
    review.add_argument("--device-root", type=at_least_one, default=None, metavar="N",
                        help="the fleet root version the device(s) trust (their state: detail.root.version), when "
                             "behind the fleet's: the review is signed with the role that root gives reviews")
    command_args(review)
    review.set_defaults(func=cmd_review)

    deployment = sub.add_parser("deployment", help="deployments", description="Deployments.")
    dep_sub = deployment.add_subparsers(dest="deployment_command", required=True)
    report = dep_sub.add_parser("report", help="effectiveness per deployment from devices' audit logs",
                                description=cmd_deployment_report.__doc__)
    report.add_argument("--audit", required=True, action="append", metavar="DEVICE=PATH",
                        help="a device's audit.jsonl (checkpoints.jsonl beside it is checked too); repeat per device")
    report.add_argument("--deployment", help="only this deployment")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    fleet_arg(report)
    report.set_defaults(func=cmd_deployment_report)

    ca = sub.add_parser("ca", help="the fleet's certificate authority", description="Certificate authority.")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser("init", help="create the CA (existing fleets)", description=cmd_ca_init.__doc__)
    fleet_arg(ca_init)
    ca_init.set_defaults(func=cmd_ca_init)

    cert = sub.add_parser("cert", help="broker TLS certificates", description="Certificates.")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True)
    cissue = cert_sub.add_parser("issue", help="issue a device, admin, operator or broker certificate",
                                 description=cmd_cert_issue.__doc__)
    cissue.add_argument("kind", choices=["device", "admin", "operator", "broker"])
    cissue.add_argument("name", help="device id, person's name, or the broker's host name")
    cissue.add_argument("--csr", help="device: the CSR file from the device")
    cissue.add_argument("--alt-name", action="append", default=[], help="broker: more host names / IPs")
    cissue.add_argument("--out", help="device: certificate file; broker: output directory")
    fleet_arg(cissue)
    cissue.set_defaults(func=cmd_cert_issue)

    operator = sub.add_parser("operator", help="alert reviewers and their evidence keys", description="Operators.")
    op_sub = operator.add_subparsers(dest="operator_command", required=True)
    op_add = op_sub.add_parser("add", help="add an operator", description=cmd_operator_add.__doc__)
    op_add.add_argument("name")
    fleet_arg(op_add)
    op_add.set_defaults(func=cmd_operator_add)

    broker = sub.add_parser("broker", help="the MQTT broker's configuration", description="Broker.")
    b_sub = broker.add_subparsers(dest="broker_command", required=True)
    bconf = b_sub.add_parser("config", help="write mosquitto.conf, ACL and certificates",
                             description=cmd_broker_config.__doc__)
    bconf.add_argument("--out-dir", required=True, help="where the files go (e.g. /etc/mosquitto/edge); a "
                       "relative path is made absolute in mosquitto.conf")
    bconf.add_argument("--hostname", required=True, help="the name devices use to reach the broker")
    bconf.add_argument("--alt-name", action="append", default=[], help="more host names / IPs")
    bconf.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    bconf.add_argument("--bind", metavar="ADDRESS", help="listen on this local address only, e.g. the camera "
                       "network's (default: every interface, IPv4 and IPv6)")
    fleet_arg(bconf)
    bconf.set_defaults(func=cmd_broker_config)

    events = sub.add_parser("events", help="match events from the fleet's devices", description="Events.")
    ev_sub = events.add_subparsers(dest="events_command", required=True)
    tail = ev_sub.add_parser("tail", help="print verified match events as JSON lines",
                             description=cmd_events_tail.__doc__)
    tail.add_argument("--broker", required=True, metavar="mqtts://HOST[:PORT]")
    tail.add_argument("--operator", help="which operator's certificate (default: the only one)")
    tail.add_argument("--operator-key", metavar="K", help="the operator's evidence key (default: "
                      "F/operators/NAME.pem)")
    tail.add_argument("--evidence-dir", help="write opened crops here (0600), named by event id")
    tail.add_argument("--device", action="append", help="only these devices (repeatable)")
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without messages")
    fleet_arg(tail)
    tail.set_defaults(func=cmd_events_tail)

    audit = sub.add_parser("audit", help="a node's audit log", description="Audit logs.")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    averify = audit_sub.add_parser("verify", help="verify a node's audit log", description=cmd_audit_verify.__doc__)
    averify.add_argument("log", metavar="LOG", nargs="?", help="a node's audit.jsonl")
    averify.add_argument("--device", help="the device whose log it is (its key checks checkpoints)")
    averify.add_argument("--checkpoints", help="the device's signed checkpoints, one per line")
    averify.add_argument("--fleet-dir", type=Path, help="the fleet directory (for a node's log)")
    averify.add_argument("--console", type=Path, metavar="DIR", help="verify this console dir's audit log instead")
    averify.add_argument("--console-key", metavar="HEX", help="the console's journal public key, noted at its setup "
                         "(default: the one in DIR/audit)")
    averify.set_defaults(func=cmd_audit_verify)

    models = sub.add_parser("models", help="the model files a fleet ships", description="Model files.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    verify = models_sub.add_parser("verify", help="check model files against MANIFEST.json",
                                   description=cmd_models_verify.__doc__)
    verify.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    verify.set_defaults(func=cmd_models_verify)
    from provisioning.serial_tool import add_parser as add_provision

    add_provision(sub)
    console_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit_blas_threads()
    try:
        code: int = args.func(args)
    except FLEET_ERRORS as exc:
        print(f"edge-fleet {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
