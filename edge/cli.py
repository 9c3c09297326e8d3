"""`edge-node`: the device's command line (demo, faces)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.vision.analyzer import AnalysedFace, FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import CROWD_PLAN, DetectorConfig, TileLevel, TilePlan
from edge.vision.errors import ImageDecodeError, VisionError
from edge.vision.runtime import Delegate, RuntimeConfig, limit_blas_threads
from edge.vision.timing import StageClock


def _vision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vision")
    g.add_argument("--models-dir", type=Path, help="directory holding MANIFEST.json (default: bundled)")
    g.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    g.add_argument("--delegate", choices=[d.value for d in Delegate], default=Delegate.XNNPACK.value,
                   help="where models run (default xnnpack, LiteRT's CPU delegate)")
    g.add_argument("--delegate-library", help="path of the delegate's shared library")
    g.add_argument("--delegate-fallback", action="store_true",
                   help="fall back to the CPU when the delegate library is missing (default: refuse)")
    g.add_argument("--embedder", help="embedder model id from MANIFEST.json (default: the manifest's)")
    g.add_argument("--tiles", default="crowd", metavar="crowd|off|TILE:OVERLAP[,...]",
                   help="extra detector passes for small faces (default crowd: 384:96,768:200)")


def _tile_plan(spec: str) -> TilePlan:
    if spec == "crowd":
        return CROWD_PLAN
    if spec == "off":
        return TilePlan()
    try:
        levels = tuple(TileLevel(int(a), int(b)) for a, b in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tiles: {spec!r} is not crowd, off or TILE:OVERLAP[,...]") from None
    if any(lv.overlap < 0 or lv.tile <= lv.overlap for lv in levels):
        raise argparse.ArgumentTypeError(f"--tiles: {spec!r}: each tile must be larger than its overlap")
    return TilePlan(levels)


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
            doc = {"image": name, "width": w, "height": h, "faces": [_face_json(f) for f in faces],
                   "timings_ms": clock.rounded()}
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
    """Bundled real footage through the vision core against a demo watch list."""
    from edge.demo.run import run_demo

    return run_demo(_vision_config(args), out=sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-node", description="Edge face-match node.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run bundled real footage against a demo watch list",
                          description=cmd_demo.__doc__)
    _vision_args(demo)
    demo.set_defaults(func=cmd_demo)
    faces = sub.add_parser("faces", help="detect and embed the faces in images (diagnostics)",
                           description=cmd_faces.__doc__)
    faces.add_argument("images", nargs="+", metavar="IMAGE")
    faces.add_argument("--json", action="store_true", help="one JSON object per image, per line")
    _vision_args(faces)
    faces.set_defaults(func=cmd_faces)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _tile_plan(args.tiles)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    limit_blas_threads()
    try:
        code: int = args.func(args)
    except VisionError as exc:
        print(f"edge-node {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
