"""Hardware profiles in hw/: each validates, each can be selected by a node.toml, typos are caught, and the
udev rules they point to are well-formed and cover the Coral stick's two USB ids."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge.capture import GStreamerSource, Picamera2Source, V4L2Source, open_source
from edge.config import ConfigError, NodeConfig, find_profile, load_config, load_profile
from edge.vision.runtime import Delegate

HW = Path(__file__).resolve().parents[1] / "hw"
PROFILES = sorted(HW.glob("*.toml"))
RULES = HW / "udev" / "99-edge-node.rules"

# one udev assignment or match: KEY or KEY{attr}, an operator, a double-quoted value
_UDEV_PAIR = re.compile(r'(?P<key>[A-Z_]+(?:\{[A-Za-z0-9_]+\})?)(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"')
_UDEV_KEYS = {"SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "ACTION", "ATTR", "ATTRS", "ENV", "GROUP", "MODE",
              "OWNER", "TAG", "SYMLINK", "DRIVER", "DRIVERS", "RUN"}


def test_the_expected_profiles_exist() -> None:
    assert {p.stem for p in PROFILES} >= {"pi5-cam3", "pi4-coral", "jetson-orin-nano"}


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_validates(path: Path) -> None:
    doc = load_profile(path)
    meta = doc["profile"]
    assert meta["name"] == path.stem  # the name a node.toml uses is the file's name
    assert meta["board"] and meta["camera"] and meta["accelerator"] and len(meta["description"]) > 80
    assert (path.parent / meta["udev"]).resolve() == RULES
    assert find_profile(path.stem) == path


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_a_node_toml_selects_the_profile_by_name(path: Path, tmp_path: Path) -> None:
    profile: dict[str, Any] = load_profile(path)
    node = tmp_path / "node.toml"
    node.write_text(f'[node]\nprofile = "{path.stem}"\nstate_dir = "state"\n\n[camera]\nid = "gate-north"\n')
    cfg = load_config(node)
    assert cfg.profile == path.stem
    assert cfg.camera.id == "gate-north"  # the node's own key wins
    assert cfg.camera.source == profile["camera"]["source"]
    assert cfg.camera.width == profile["camera"]["width"] and cfg.camera.height == profile["camera"]["height"]
    assert cfg.vision.runtime.delegate == Delegate(profile["vision"]["delegate"])
    assert cfg.vision.runtime.num_threads == profile["vision"]["threads"]
    # and the capture factory builds the right kind of source from it (not opened: no camera here)
    source = open_source(cfg.camera)
    kind = {"picamera2": Picamera2Source, "v4l2": V4L2Source, "gstreamer": GStreamerSource}
    assert isinstance(source, kind[cfg.camera.source])


def node_with(profile: str, tmp_path: Path) -> NodeConfig:
    node = tmp_path / f"{profile}.node.toml"
    node.write_text(f'[node]\nprofile = "{profile}"\n')
    return load_config(node)


def test_profile_specifics(tmp_path: Path) -> None:
    pi5 = node_with("pi5-cam3", tmp_path)
    assert pi5.camera.source == "picamera2" and (pi5.camera.lores_width, pi5.camera.lores_height) == (640, 360)
    assert (pi5.camera.width, pi5.camera.height) in {(1536, 864), (1280, 720)}
    assert pi5.vision.runtime.delegate is Delegate.XNNPACK and pi5.vision.runtime.num_threads == 4

    coral = node_with("pi4-coral", tmp_path)
    assert coral.camera.source == "v4l2" and coral.camera.device == "/dev/video0"
    assert (coral.camera.width, coral.camera.height) == (1280, 720)
    rt = coral.vision.runtime
    assert rt.delegate is Delegate.EDGETPU and rt.library() == "libedgetpu.so.1" and rt.fallback_to_cpu is False
    assert rt.num_threads == 3

    jetson = node_with("jetson-orin-nano", tmp_path)
    assert jetson.camera.source == "gstreamer" and jetson.camera.pipeline is not None
    for part in ("nvarguscamerasrc", "width=1280", "height=720", "framerate=30/1", "format=BGR ", "appsink"):
        assert part in jetson.camera.pipeline
    assert jetson.vision.runtime.delegate in {Delegate.GPU, Delegate.XNNPACK}
    assert jetson.vision.runtime.num_threads == 6


@pytest.mark.parametrize(("section", "line", "key"), [
    ("vision", "thread = 4", "thread"),
    ("camera", "lores_widht = 640", "lores_widht"),
    ("profile", "acelerator = \"none\"", "acelerator"),
])
def test_a_typo_in_a_profile_names_file_and_key(tmp_path: Path, section: str, line: str, key: str) -> None:
    text = (HW / "pi5-cam3.toml").read_text().replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace('udev = "udev/', f'udev = "{HW}/udev/'))
    with pytest.raises(ConfigError) as err:
        load_profile(typo)
    assert str(typo) in str(err.value) and repr(key) in str(err.value)
    node = tmp_path / "node.toml"  # the same through a node.toml naming the profile by path
    node.write_text(f'[node]\nprofile = "{typo}"\n')
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(node)


def test_udev_rules_parse_line_by_line() -> None:
    rules = 0
    for number, raw in enumerate(RULES.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        pairs = [_UDEV_PAIR.fullmatch(p) for p in parts]
        assert all(pairs), f"{RULES}:{number}: not KEY==\"value\" / KEY=\"value\" / KEY+=\"value\": {raw!r}"
        keys = [m.group("key").split("{")[0] for m in pairs if m]
        assert set(keys) <= _UDEV_KEYS, f"{RULES}:{number}: unknown key in {raw!r}"
        ops = [m.group("op") for m in pairs if m]
        assert any(op == "==" for op in ops) and any(op in {"=", "+=", ":="} for op in ops), \
            f"{RULES}:{number}: a rule needs a match and an assignment"
        rules += 1
    assert rules >= 4


def test_udev_rules_cover_cameras_coral_and_the_gadget_serial() -> None:
    text = RULES.read_text()
    for vendor, product in (("1a6e", "089a"), ("18d1", "9302")):
        assert re.search(rf'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}", GROUP="plugdev"', text)
    assert re.search(r'SUBSYSTEM=="video4linux", GROUP="video"', text)
    assert re.search(r'KERNEL=="ttyGS\[0-9\]\*", GROUP="dialout"', text)
