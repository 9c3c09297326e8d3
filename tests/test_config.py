"""node.toml: every key known and typed; an error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import DEFAULT_STATE_DIR, ConfigError, load_config
from edge.vision.detect import CROWD_PLAN, TilePlan
from edge.vision.runtime import Delegate

GOOD = """
[node]
state_dir = "state"

[camera]
id = "gate-a"
source = "replay"
paths = ["clips/a.mp4", "/abs/b.jpg"]
realtime = false
hold_frames = 5
fps = 24

[vision]
delegate = "cpu"
threads = 3
tiles = "off"

[tracking]
agree_k = 2
window_n = 4

[mqtt]
broker = "mqtts://broker.example:8883"
operator_key = "operator.json"

[watchdog]
stall_s = 20
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_a_good_file_loads_with_relative_paths_resolved(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.camera.paths == (tmp_path / "clips/a.mp4", Path("/abs/b.jpg"))
    assert cfg.camera.realtime is False and cfg.camera.hold_frames == 5 and cfg.camera.fps == 24.0
    assert cfg.vision.runtime.delegate == Delegate.CPU and cfg.vision.runtime.num_threads == 3
    assert cfg.vision.detector.tiles == TilePlan()
    assert (cfg.tracking.agree_k, cfg.tracking.window_n) == (2, 4)
    assert cfg.mqtt is not None and cfg.mqtt.operator_key == tmp_path / "operator.json"
    assert cfg.watchdog_stall_s == 20.0


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[camera]\nsource = \"v4l2\"\n"))
    assert cfg.state_dir == DEFAULT_STATE_DIR and cfg.camera.device == "/dev/video0"
    assert cfg.vision.detector.tiles == CROWD_PLAN and cfg.mqtt is None


@pytest.mark.parametrize(("text", "where"), [
    ("[camera]\nsorce = \"v4l2\"\n", "[camera] unknown key 'sorce'"),
    ("[camera]\nsource = \"usb\"\n", "[camera] source: expected replay | v4l2 | picamera2 | gstreamer"),
    ("[camera]\nfps = \"fast\"\n", "[camera] fps: expected a number"),
    ("[camera]\nwidth = true\n", "[camera] width: expected an integer"),
    ("[camera]\nsource = \"replay\"\n", "[camera] paths: a replay camera needs at least one path"),
    ("[camera]\nsource = \"gstreamer\"\n", "[camera] pipeline: a gstreamer camera needs a pipeline"),
    ("[camera]\nlores_width = 640\n", "[camera] lores_width: set both"),
    ("[vision]\ntiles = \"big\"\n", "[vision] tiles: 'big' is not crowd, off"),
    ("[vision]\ndelegate = \"tpu\"\n", "[vision] delegate: expected xnnpack | edgetpu | gpu | cpu"),
    ("[vision]\nthreads = 0\n", "[vision] threads: expected an integer in [1, 64]"),
    ("[tracking]\nagree_k = 6\nwindow_n = 5\n", "[tracking] agree_k: 6 agreeing frames cannot exceed window_n"),
    ("[mqtt]\noperator_key = \"op.json\"\n", "[mqtt] broker: required"),
    ("[mqtt]\nbroker = \"tcp://x\"\noperator_key = \"op.json\"\n", "[mqtt] broker: expected mqtts://"),
    ("[mqtt]\nbroker = \"mqtts://x\"\n", "[mqtt] operator_key: required"),
    ("[watchdog]\nstall_s = 0\n", "[watchdog] stall_s: expected a number in [1.0"),
    ("[cameras]\nid = \"x\"\n", "unknown section [cameras]"),
    ("[node]\nprofile = \"pi9-unknown\"\n", "profile 'pi9-unknown': no hw/pi9-unknown.toml"),
    ("camera = [", "not valid TOML"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert where in str(err.value)
    if "profile" not in where:
        assert str(path) in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_run_reports_a_config_error_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys
    path = write(tmp_path, "[camera]\nsorce = 1\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert f"{path}: [camera] unknown key 'sorce'" in proc.stderr and "Traceback" not in proc.stderr
