"""The node's configuration: one TOML file (`edge-node run --config node.toml`), optionally on top of a
hardware profile from `hw/`. Every key is known and typed; an error names the file and the key.

    [node]      state_dir, run_dir, profile
    [camera]    id, source (replay | v4l2 | picamera2 | gstreamer), device, pipeline, paths, realtime,
                loop, hold_frames, width, height, fps, lores_width, lores_height
    [vision]    delegate, delegate_library, delegate_fallback, threads, tiles, models_dir, embedder
    [tracking]  agree_k, window_n, iou, min_similarity, max_age_s
    [mqtt]      broker, operator_key, event_ttl_hours, session_expiry_days, state_every_s
    [watchdog]  stall_s
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.audit import AUDIT_RETENTION_DAYS, MIN_AUDIT_RETENTION_DAYS
from edge.vision.analyzer import VisionConfig
from edge.vision.detect import CROWD_PLAN, DetectorConfig, TileLevel, TilePlan
from edge.vision.runtime import Delegate, RuntimeConfig

DEFAULT_CONFIG = Path("/etc/edge-node/node.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-node")
DEFAULT_RUN_DIR = Path("/run/edge-node")
SOURCES = ("replay", "v4l2", "picamera2", "gstreamer")
HW_DIRS = (Path(__file__).resolve().parents[1] / "hw", Path("/usr/share/edge-node/hw"))


class ConfigError(Exception):
    """A configuration file is unreadable or has a bad key or value (the message names file and key)."""


@dataclass(frozen=True)
class CameraConfig:
    id: str = "cam"
    source: str = "v4l2"
    device: str = "/dev/video0"
    pipeline: str | None = None  # gstreamer: the full pipeline ending in appsink
    paths: tuple[Path, ...] = ()  # replay: image files, image folders, video files, in order
    realtime: bool = True  # replay: at the clip's frame rate (True) or as fast as possible
    loop: bool = False  # replay: start again at the end
    hold_frames: int = 1  # replay: how many frames a still image is shown for
    width: int = 1280
    height: int = 720
    fps: float = 15.0
    lores_width: int | None = None  # picamera2: a second, small stream for detection
    lores_height: int | None = None


@dataclass(frozen=True)
class TrackingConfig:
    """Alert once per track and entry, after `agree_k` of the last `window_n` frames agree."""

    agree_k: int = 4  # measured: bench/tracking_agreement.py, docs/tracking.md
    window_n: int = 7
    iou: float = 0.3  # box overlap that continues a track
    min_similarity: float = 0.96  # embedding cosine that continues a nearby track when boxes do not overlap:
    # the same face frame to frame measured >= 0.975, two different people up to 0.944 (docs/tracking.md)
    max_age_s: float = 2.0  # a track not seen for this long ends


@dataclass(frozen=True)
class MqttConfig:
    broker: str
    operator_key: Path  # JSON with the operator's X25519 public key (from `edge-fleet operator add`)
    event_ttl_hours: float = 6.0
    session_expiry_days: float = 7.0
    state_every_s: float = 30.0


@dataclass(frozen=True)
class NodeConfig:
    source_file: Path | None
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    profile: str | None = None
    camera: CameraConfig = field(default_factory=CameraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mqtt: MqttConfig | None = None
    watchdog_stall_s: float = 30.0
    audit_retention_days: int = AUDIT_RETENTION_DAYS


def parse_tiles(spec: str) -> TilePlan:
    """crowd | off | TILE:OVERLAP[,TILE:OVERLAP...]"""
    if spec == "crowd":
        return CROWD_PLAN
    if spec == "off":
        return TilePlan()
    try:
        levels = tuple(TileLevel(int(a), int(b)) for a, b in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise ValueError(f"{spec!r} is not crowd, off or TILE:OVERLAP[,...]") from None
    if any(lv.overlap < 0 or lv.tile <= lv.overlap for lv in levels):
        raise ValueError(f"{spec!r}: each tile must be larger than its overlap")
    return TilePlan(levels)


class _Section:
    """Typed access to one TOML table; unknown keys and bad types are errors naming file and key."""

    def __init__(self, source: str, name: str, table: object, known: set[str]):
        self.source, self.name = source, name
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        self.table: dict[str, Any] = table
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{source}: [{name}] unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

    def where(self, key: str) -> str:
        return f"{self.source}: [{self.name}] {key}"

    def get(self, key: str, kind: type | tuple[type, ...], default: Any,
            check: Callable[[Any], bool] | None = None, expect: str = "") -> Any:
        if key not in self.table:
            return default
        v = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            raise ConfigError(f"{self.where(key)}: expected {expect or kinds[0].__name__}, got {v!r}")
        if not isinstance(v, kinds) or (check is not None and not check(v)):
            raise ConfigError(f"{self.where(key)}: expected {expect or kinds[0].__name__}, got {v!r}")
        return v

    def number(self, key: str, default: float, minimum: float, maximum: float = float("inf")) -> float:
        v = self.get(key, (int, float), default, lambda x: minimum <= x <= maximum,
                     f"a number in [{minimum}, {maximum}]")
        return float(v)

    def integer(self, key: str, default: int, minimum: int, maximum: int = 1 << 31) -> int:
        v: int = self.get(key, int, default, lambda x: minimum <= x <= maximum,
                          f"an integer in [{minimum}, {maximum}]")
        return v

    def path(self, key: str, default: Path | None, base: Path) -> Path | None:
        v = self.get(key, str, None, lambda x: bool(x), "a path")
        if v is None:
            return default
        p = Path(v)
        return p if p.is_absolute() else base / p


def find_profile(name: str) -> Path:
    """A hardware profile by name (hw/NAME.toml) or by path."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    for d in HW_DIRS:
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"profile {name!r}: no hw/{name}.toml (looked in {', '.join(str(d) for d in HW_DIRS)})")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


PROFILE_SECTIONS = {"profile", "camera", "vision"}
NODE_SECTIONS = {"node", "camera", "vision", "tracking", "mqtt", "watchdog", "audit"}


def load_profile(path: Path) -> dict[str, Any]:
    doc = _read_toml(path)
    unknown = sorted(set(doc) - PROFILE_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}] "
                          f"(a profile has {', '.join(sorted(PROFILE_SECTIONS))})")
    meta = _Section(str(path), "profile", doc.get("profile", {}), {"name", "board", "camera", "accelerator",
                                                                    "description", "udev"})
    for key in ("name", "board", "description"):
        if not isinstance(meta.table.get(key), str):
            raise ConfigError(f"{meta.where(key)}: required (a string)")
    udev = meta.table.get("udev")
    if udev is not None and not (path.parent / str(udev)).is_file():
        raise ConfigError(f"{meta.where('udev')}: {path.parent / str(udev)} does not exist")
    # the camera and vision tables must be valid on their own, as a node config would read them
    parse_config_dict({"camera": doc.get("camera", {}), "vision": doc.get("vision", {})}, path, None)
    return doc


def load_config(path: Path) -> NodeConfig:
    doc = _read_toml(path)
    profile_name = doc.get("node", {}).get("profile") if isinstance(doc.get("node"), dict) else None
    base: dict[str, Any] = {}
    if profile_name is not None:
        if not isinstance(profile_name, str):
            raise ConfigError(f"{path}: [node] profile: expected a profile name")
        base = load_profile(find_profile(profile_name))
    merged: dict[str, Any] = dict(doc)
    for section in ("camera", "vision"):
        if section in base:
            own = doc.get(section, {})
            if not isinstance(own, dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            merged[section] = {**base[section], **own}
    return parse_config_dict(merged, path, profile_name)


def parse_config_dict(doc: Mapping[str, Any], path: Path, profile: str | None) -> NodeConfig:
    src = str(path)
    unknown = sorted(set(doc) - NODE_SECTIONS)
    if unknown:
        raise ConfigError(f"{src}: unknown section [{unknown[0]}] (known: {', '.join(sorted(NODE_SECTIONS))})")
    base = path.parent
    node = _Section(src, "node", doc.get("node", {}), {"state_dir", "run_dir", "profile"})
    cam = _Section(src, "camera", doc.get("camera", {}), {
        "id", "source", "device", "pipeline", "paths", "realtime", "loop", "hold_frames", "width", "height",
        "fps", "lores_width", "lores_height"})
    vis = _Section(src, "vision", doc.get("vision", {}), {
        "delegate", "delegate_library", "delegate_fallback", "threads", "tiles", "models_dir", "embedder"})
    trk = _Section(src, "tracking", doc.get("tracking", {}), {"agree_k", "window_n", "iou", "min_similarity",
                                                              "max_age_s"})
    wd = _Section(src, "watchdog", doc.get("watchdog", {}), {"stall_s"})
    aud = _Section(src, "audit", doc.get("audit", {}), {"retention_days"})

    source = cam.get("source", str, "v4l2", lambda v: v in SOURCES, " | ".join(SOURCES))
    raw_paths = cam.get("paths", list, [], lambda v: all(isinstance(p, str) and p for p in v), "a list of paths")
    paths = tuple(Path(p) if Path(p).is_absolute() else base / p for p in raw_paths)
    if source == "replay" and not paths:
        raise ConfigError(f"{cam.where('paths')}: a replay camera needs at least one path")
    pipeline = cam.get("pipeline", str, None, lambda v: "appsink" in v, "a GStreamer pipeline ending in appsink")
    if source == "gstreamer" and pipeline is None:
        raise ConfigError(f"{cam.where('pipeline')}: a gstreamer camera needs a pipeline")
    lw = cam.get("lores_width", int, None, lambda v: 64 <= v <= 4096, "an integer in [64, 4096]")
    lh = cam.get("lores_height", int, None, lambda v: 64 <= v <= 4096, "an integer in [64, 4096]")
    if (lw is None) != (lh is None):
        raise ConfigError(f"{cam.where('lores_width')}: set both lores_width and lores_height, or neither")
    camera = CameraConfig(
        id=cam.get("id", str, "cam", lambda v: 0 < len(v) <= 64, "a camera id of 1-64 characters"),
        source=source, device=cam.get("device", str, "/dev/video0"), pipeline=pipeline, paths=paths,
        realtime=cam.get("realtime", bool, True), loop=cam.get("loop", bool, False),
        hold_frames=cam.integer("hold_frames", 1, 1, 10_000), width=cam.integer("width", 1280, 64, 8192),
        height=cam.integer("height", 720, 64, 8192), fps=cam.number("fps", 15.0, 0.1, 240),
        lores_width=lw, lores_height=lh)

    delegate = vis.get("delegate", str, "xnnpack", lambda v: v in [d.value for d in Delegate],
                       " | ".join(d.value for d in Delegate))
    tiles_spec = vis.get("tiles", str, "crowd")
    try:
        tiles = parse_tiles(tiles_spec)
    except ValueError as exc:
        raise ConfigError(f"{vis.where('tiles')}: {exc}") from None
    runtime = RuntimeConfig(num_threads=vis.integer("threads", 2, 1, 64), delegate=Delegate(delegate),
                            delegate_library=vis.get("delegate_library", str, None),
                            fallback_to_cpu=vis.get("delegate_fallback", bool, False))
    vision = VisionConfig(runtime=runtime, detector=DetectorConfig(tiles=tiles),
                          embedder_id=vis.get("embedder", str, None), models_dir=vis.path("models_dir", None, base))

    k, n = trk.integer("agree_k", 4, 1, 100), trk.integer("window_n", 7, 1, 100)
    if k > n:
        raise ConfigError(f"{trk.where('agree_k')}: {k} agreeing frames cannot exceed window_n = {n}")
    tracking = TrackingConfig(agree_k=k, window_n=n, iou=trk.number("iou", 0.3, 0.0, 1.0),
                              min_similarity=trk.number("min_similarity", 0.96, -1.0, 1.0),
                              max_age_s=trk.number("max_age_s", 2.0, 0.1, 600))

    mqtt = None
    if "mqtt" in doc:
        mq = _Section(src, "mqtt", doc["mqtt"], {"broker", "operator_key", "event_ttl_hours",
                                                 "session_expiry_days", "state_every_s"})
        broker = mq.get("broker", str, None, lambda v: v.startswith("mqtts://"), "mqtts://host[:port]")
        if broker is None:
            raise ConfigError(f"{mq.where('broker')}: required when [mqtt] is present")
        op = mq.path("operator_key", None, base)
        if op is None:
            raise ConfigError(f"{mq.where('operator_key')}: required when [mqtt] is present (the operator's "
                              "public key file from `edge-fleet operator add`)")
        mqtt = MqttConfig(broker, op, mq.number("event_ttl_hours", 6.0, 0.01, 24 * 30),
                          mq.number("session_expiry_days", 7.0, 0.01, 365), mq.number("state_every_s", 30.0, 1, 3600))
    return NodeConfig(
        source_file=path, state_dir=node.path("state_dir", DEFAULT_STATE_DIR, base) or DEFAULT_STATE_DIR,
        run_dir=node.path("run_dir", DEFAULT_RUN_DIR, base) or DEFAULT_RUN_DIR, profile=profile,
        camera=camera, vision=vision, tracking=tracking, mqtt=mqtt,
        watchdog_stall_s=wd.number("stall_s", 30.0, 1.0, 3600),
        audit_retention_days=aud.integer("retention_days", AUDIT_RETENTION_DAYS, MIN_AUDIT_RETENTION_DAYS, 3660))
