"""`edge-fleet`: the fleet admin's and technician's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.vision.errors import VisionError
from edge.vision.manifest import load_manifest


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-fleet",
                                     description="Fleet administration for edge face-match nodes.")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="the model files a fleet ships", description="Model files.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    verify = models_sub.add_parser("verify", help="check model files against MANIFEST.json",
                                   description=cmd_models_verify.__doc__)
    verify.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    verify.set_defaults(func=cmd_models_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except VisionError as exc:
        print(f"edge-fleet: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
