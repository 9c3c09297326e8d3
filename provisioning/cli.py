"""`edge-fleet`: the fleet admin's and technician's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.trust.root import TrustError
from edge.trust.times import format_time
from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.vision.errors import VisionError
from edge.vision.manifest import load_manifest
from edge.vision.runtime import limit_blas_threads
from provisioning.fleet import Fleet, FleetError
from provisioning.shards import issue_shard
from provisioning.watchlist import build_watchlist


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
    """Create a fleet: offline root keys (one file per custodian), online shard and command keys, root v1."""
    root = Fleet(args.fleet_dir).init(args.fleet, args.root_keys, args.root_threshold)
    print(f"fleet {root.fleet!r}: root v1 ({args.root_threshold} of {args.root_keys} root keys), "
          f"in {args.fleet_dir}; give each keys/root-N.pem to its custodian and keep it offline")
    print(f"devices trust it with: edge-node trust init {Fleet(args.fleet_dir).root_path(1)}")
    return 0


def _root_files(args: argparse.Namespace) -> list[Path] | None:
    return [Path(p) for p in args.root_keys.split(",")] if args.root_keys else None


def cmd_key(args: argparse.Namespace) -> int:
    """Add an online key to a role, or revoke one; either publishes the next root version."""
    fleet = Fleet(args.fleet_dir)
    if args.key_command == "add":
        path, root = fleet.add_key(args.role, _root_files(args))
        print(f"new {args.role} key {path}; published root v{root.version} ({fleet.root_path(root.version)})")
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
    analyzer = FaceAnalyzer(VisionConfig(models_dir=args.models_dir))
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
    model = manifest_models.spec(manifest_models.default_embedder)
    devices = [d for d in args.devices.split(",") if d]
    m = issue_shard(fleet, Path(args.deployment), devices, Path(args.out), model)
    print(f"issued shard {m.shard_id} v{m.version} -> {args.out}: {m.entries} entries for "
          f"{', '.join(m.recipients)}; deployment {m.deployment.id}, threshold {m.deployment.threshold}, "
          f"expires {format_time(m.expires)}")
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
    add = key_sub.add_parser("add", help="add a shard or command key", description=cmd_key.__doc__)
    add.add_argument("role", choices=["shard", "command"])
    revoke = key_sub.add_parser("revoke", help="revoke a shard or command key", description=cmd_key.__doc__)
    revoke.add_argument("keyid", help="key id (or a unique prefix)")
    for p in (add, revoke):
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
    fleet_arg(build)
    build.set_defaults(func=cmd_watchlist_build)

    shard = sub.add_parser("shard", help="issue watch-list shards", description="Shards.")
    shard_sub = shard.add_subparsers(dest="shard_command", required=True)
    issue = shard_sub.add_parser("issue", help="issue a shard", description=cmd_shard_issue.__doc__)
    issue.add_argument("--deployment", required=True, metavar="DEPLOY.toml")
    issue.add_argument("--devices", required=True, help="comma-separated device ids")
    issue.add_argument("--out", required=True, metavar="FILE")
    issue.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    fleet_arg(issue)
    issue.set_defaults(func=cmd_shard_issue)

    models = sub.add_parser("models", help="the model files a fleet ships", description="Model files.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    verify = models_sub.add_parser("verify", help="check model files against MANIFEST.json",
                                   description=cmd_models_verify.__doc__)
    verify.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    verify.set_defaults(func=cmd_models_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit_blas_threads()
    try:
        code: int = args.func(args)
    except (VisionError, FleetError, TrustError) as exc:
        print(f"edge-fleet {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
