"""Building a watch list from reference photos, with provenance for every entry (GOVERNANCE G4).

The fleet keeps names, photos and provenance (entries.json, and a copy of each reference photo in
photos/<entry id>-<n><ext> for the officer's console); devices only ever receive embeddings and opaque entry
ids. Photos are detected, quality-checked and embedded with the node's own models, so the embeddings match
what the node computes at the event.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge.fsutil import write_atomic
from edge.trust.times import format_time, now
from edge.vision.analyzer import FaceAnalyzer, read_rgb
from edge.vision.errors import ImageDecodeError
from provisioning.fleet import Fleet, FleetError

# The CSV's header is the contract (docs/examples/watchlist.csv).
CSV_COLUMNS = ("reference", "name", "photos", "image_source", "legal_basis", "image_date",
               "approving_officer", "reason")
PROVENANCE = ("image_source", "legal_basis", "image_date", "approving_officer", "reason")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Refusal:
    row: int
    reference: str
    reason: str


@dataclass
class BuildReport:
    name: str
    entries: int = 0
    photos: int = 0
    refused: list[Refusal] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class WatchList:
    """A built watch list as the fleet stores it."""

    name: str
    model_id: str
    model_sha256: str
    entries: list[dict[str, Any]]
    embeddings: np.ndarray

    def check_model(self, model_id: str, model_sha256: str) -> None:
        """FleetError unless this list was built with exactly that model (id and file)."""
        if (self.model_id, self.model_sha256) != (model_id, model_sha256):
            build = (f" (another build of it: sha256 {self.model_sha256[:16]}, not {model_sha256[:16]})"
                     if self.model_id == model_id else "")
            raise FleetError(f"watch list {self.name!r} was built with {self.model_id}; the fleet's model is "
                             f"{model_id}{build}: rebuild it (edge-fleet watchlist build --embedder {model_id})")


def photo_path(list_dir: Path, entry_id: str, index: int, original: str) -> Path:
    """Where a built list keeps its copy of an entry's reference photo (`index` counts from 0)."""
    return list_dir / "photos" / f"{entry_id}-{index}{Path(original).suffix.lower()}"


def watchlist_dir(fleet: Fleet, name: str) -> Path:
    if not NAME.match(name):
        raise FleetError(f"watch-list name {name!r}: 1-64 of letters, digits, '.', '_', '-'")
    return fleet.dir / "watchlists" / name


def load_watchlist(fleet: Fleet, name: str) -> WatchList:
    d = watchlist_dir(fleet, name)
    try:
        doc = json.loads((d / "entries.json").read_text())
        emb = np.load(d / "embeddings.npy", allow_pickle=False)
    except FileNotFoundError as exc:
        raise FleetError(f"watch list {name!r} is not built ({exc.filename} missing)") from None
    if emb.shape[0] != len(doc["entries"]):
        raise FleetError(f"{d}: entries.json and embeddings.npy disagree")
    return WatchList(name, doc["model"]["id"], doc["model"]["sha256"], doc["entries"], emb)


def save_watchlist(fleet: Fleet, name: str, entries: list[dict[str, Any]], matrix: np.ndarray, model_id: str,
                   model_sha256: str) -> None:
    """Write a watch list: entries.json (names, provenance: stays with the fleet) + embeddings.npy."""
    out_dir = watchlist_dir(fleet, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "built": format_time(now()), "model": {"id": model_id, "sha256": model_sha256},
           "entries": entries}
    tmp = out_dir / ".embeddings.npy"
    np.save(tmp, np.ascontiguousarray(matrix, np.float32), allow_pickle=False)
    tmp.replace(out_dir / "embeddings.npy")
    write_atomic(out_dir / "entries.json", json.dumps(doc, indent=1).encode() + b"\n", 0o600)


def build_watchlist(fleet: Fleet, name: str, photos_dir: Path, meta_csv: Path, analyzer: FaceAnalyzer,
                    progress: TextIO) -> BuildReport:
    """Build (or rebuild) a watch list; refused rows are reported with their reason, the rest built."""
    t0 = time.perf_counter()
    fleet.meta()  # must be a fleet
    out_dir = watchlist_dir(fleet, name)
    rows = _read_csv(meta_csv)
    previous = {}
    if (out_dir / "entries.json").exists():  # keep entry ids stable across rebuilds
        previous = {e["reference"]: e["id"] for e in json.loads((out_dir / "entries.json").read_text())["entries"]}
    report = BuildReport(name)
    entries, vectors = [], []
    for i, (line, row) in enumerate(rows):
        progress.write(f"\r[{i + 1}/{len(rows)}] {row.get('reference', '')[:40]:<40}")
        progress.flush()
        problem, vector, photos = _entry(row, photos_dir, analyzer)
        analyzer.release()
        if problem:
            report.refused.append(Refusal(line, row.get("reference", ""), problem))
            continue
        assert vector is not None
        report.photos += len(photos)
        entry_id = previous.get(row["reference"]) or f"wl-{secrets.token_hex(6)}"
        for n, photo in enumerate(photos):  # the console shows them beside the camera's crop
            write_atomic(photo_path(out_dir, entry_id, n, photo), (photos_dir / photo).read_bytes(), 0o600)
        entries.append({"id": entry_id, "reference": row["reference"], "name": row["name"], "photos": photos,
                        "provenance": {k: row[k] for k in PROVENANCE}})
        vectors.append(vector)
    progress.write("\n")
    spec = analyzer.embedder_spec
    matrix = np.stack(vectors) if vectors else np.zeros((0, analyzer.embedder.dim), np.float32)
    save_watchlist(fleet, name, entries, matrix, spec.id, spec.sha256)
    kept = {photo_path(out_dir, str(e["id"]), n, p) for e in entries for n, p in enumerate(e["photos"])}
    for stale in set((out_dir / "photos").glob("*")) - kept:  # entries refused or removed on this rebuild
        stale.unlink()
    report.entries = len(entries)
    report.seconds = time.perf_counter() - t0
    return report


def _read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            if header != CSV_COLUMNS:
                raise FleetError(f"{path}: header must be {','.join(CSV_COLUMNS)}; got {','.join(header)}")
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except OSError as exc:
        raise FleetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FleetError(f"{path}: not a UTF-8 CSV file ({exc})") from None


def _entry(row: dict[str, str], photos_dir: Path,
           analyzer: FaceAnalyzer) -> tuple[str | None, np.ndarray | None, list[str]]:
    missing = [k for k in ("reference", "name", "photos", *PROVENANCE) if not row.get(k)]
    if missing:
        return f"missing {', '.join(missing)}", None, []
    try:
        if date.fromisoformat(row["image_date"]) > date.today():
            return "image_date is in the future", None, []
    except ValueError:
        return f"image_date {row['image_date']!r} is not YYYY-MM-DD", None, []
    photos = [p.strip() for p in row["photos"].split(";") if p.strip()]
    vectors = []
    for photo in photos:
        path = photos_dir / photo
        try:
            faces = analyzer.analyse(read_rgb(path))
        except ImageDecodeError as exc:
            return f"{photo}: {exc}", None, []
        sized = [f for f in faces if "too_small" not in f.quality.reasons]
        if not sized:
            return f"{photo}: no face found", None, []
        if len(sized) > 1:
            return f"{photo}: {len(sized)} faces; a reference photo must show one person", None, []
        face = sized[0]
        if face.embedding is None:
            return f"{photo}: face of poor quality ({', '.join(face.quality.reasons)})", None, []
        vectors.append(face.embedding.copy())
    mean = np.mean(vectors, axis=0)
    return None, (mean / np.linalg.norm(mean)).astype(np.float32), photos
