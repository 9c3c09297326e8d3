"""node.toml: every key known and typed; an error names the file and the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import (
    DEFAULT_STATE_DIR,
    REFERENCE_BEGIN,
    REFERENCE_END,
    SCHEMA,
    ConfigError,
    NodeConfig,
    StaleReferenceError,
    load_config,
    parse_config_dict,
    reference_markdown,
    replace_reference,
)
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
    ("[watchdog]\nstall_s = 0\n", "[watchdog] stall_s: expected a number in [1, 3600], got 0"),
    ("[camera]\nrealtime = 1\n", "[camera] realtime: expected true or false, got 1"),
    ("[camera]\npaths = \"a.mp4\"\n", "[camera] paths: expected a list of paths"),
    ("[camera]\nid = \"\"\n", "[camera] id: expected a camera id of 1-64 characters"),
    ("[vision]\ntiles = \"100:200\"\n", "[vision] tiles: '100:200': each tile must be larger than its overlap"),
    ("[audit]\nretention_days = 30\n", "[audit] retention_days: expected an integer in [183, 3660]"),
    ("[mqtt]\nbroker = \"mqtts://x\"\noperator_key = \"op.json\"\nstate_every_s = 0.5\n",
     "[mqtt] state_every_s: expected a number in [1, 3600]"),
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
    path = write(tmp_path, "[camera]\nsorce = 1\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert f"{path}: [camera] unknown key 'sorce'" in proc.stderr and "Traceback" not in proc.stderr


def test_run_without_mqtt_needs_print_events_and_its_help_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "[camera]\nsource = \"v4l2\"\n")
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "[mqtt] is required" in proc.stderr and "--print-events" in proc.stderr
    usage = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--help"], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    flat = " ".join(usage.split())
    assert "needs an [mqtt] table" in flat and "unless --print-events" in flat


def test_the_schema_defaults_are_the_dataclass_defaults(tmp_path: Path) -> None:
    """An empty file gives exactly the defaults the code uses elsewhere (NodeConfig() and friends)."""
    path = tmp_path / "empty.toml"
    assert parse_config_dict({}, path, None) == NodeConfig(source_file=path)


REPO = Path(__file__).resolve().parents[1]
NODE_DOC = REPO / "docs" / "node.md"


def test_the_key_reference_in_docs_node_md_is_generated_from_the_schema() -> None:
    text = NODE_DOC.read_text()
    assert replace_reference(text, str(NODE_DOC)) == text, (
        "docs/node.md's configuration reference is stale: run `edge-node config reference --write docs/node.md`")
    section = text[text.index(REFERENCE_BEGIN):text.index(REFERENCE_END)]
    for table in SCHEMA:  # the reference names every table and key, with its default
        assert f"### `[{table.name}]`" in section
        for key in table.keys:
            assert f"| `{key.name}` | {key.kind.value} |" in section, (table.name, key.name)
    assert "| `state_every_s` | number | `30.0` |" in section and "| `hold_frames` | integer | `1` |" in section


def test_config_reference_check_and_write_on_a_stale_copy(tmp_path: Path) -> None:
    """The generator as a user runs it: --check fails on a stale section and names the fix; --write fixes it."""
    stale = tmp_path / "node.md"
    stale.write_text(NODE_DOC.read_text().replace("| `loop` | boolean | `false` |", "| `loop` | boolean | `true` |"))
    node = [sys.executable, "-m", "edge.cli", "config", "reference"]
    check = subprocess.run([*node, "--check", str(stale)], capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 1 and f"config reference --write {stale}" in check.stderr
    subprocess.run([*node, "--write", str(stale)], capture_output=True, text=True, timeout=120, check=True)
    assert stale.read_text() == NODE_DOC.read_text()
    printed = subprocess.run(node, capture_output=True, text=True, timeout=120, check=True).stdout
    assert printed == reference_markdown()
    with pytest.raises(StaleReferenceError, match="no generated configuration reference"):
        replace_reference("# a page without the markers\n", "page.md")


def _example() -> str:
    text = NODE_DOC.read_text()
    start = text.index("```toml\n", text.index("<!-- example node.toml -->")) + len("```toml\n")
    return text[start:text.index("```\n", start)]


COMMENTED_KEY = re.compile(r"^# (\w+) = ", re.MULTILINE)


def test_the_complete_example_in_docs_node_md_loads_and_names_every_key(tmp_path: Path) -> None:
    example = _example()
    path = write(tmp_path, example)
    cfg = load_config(path)
    assert cfg.camera.source == "replay" and cfg.camera.paths == (Path("/srv/footage/gate-a.mp4"),
                                                                   tmp_path / "stills")
    assert cfg.mqtt is not None and cfg.mqtt.state_every_s == 30.0 and cfg.audit_retention_days == 400
    # every key of every table is in the example, set or as a commented alternative
    for table in SCHEMA:
        body = example.split(f"[{table.name}]\n", 1)[1].split("\n[", 1)[0]
        for key in table.keys:
            assert re.search(rf"^(# )?{key.name} = ", body, re.MULTILINE), f"[{table.name}] {key.name} missing"
    # and the commented ones are valid too (the profile among them: hw/pi5-cam3.toml under this file)
    switched_on = COMMENTED_KEY.sub(r"\1 = ", example)
    assert COMMENTED_KEY.findall(example) and not COMMENTED_KEY.findall(switched_on)
    cfg = load_config(write(tmp_path, switched_on))
    assert cfg.profile == "pi5-cam3" and cfg.camera.lores_width == 640 and cfg.camera.source == "replay"
    assert cfg.vision.embedder_id == "dlib-resnet-v1-int8" and cfg.camera.pipeline is not None
