"""The watch-list side of an alert: the entry's name, reason and provenance, and its reference photo(s).

An event carries only the opaque entry id; the fleet's built watch lists (F/watchlists/<name>/entries.json,
written by `edge-fleet watchlist build`) hold the rest, and the build keeps a copy of each reference photo
beside it (provisioning.watchlist.photo_path). Lists are re-read when their file changes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.fleet import Fleet
from provisioning.watchlist import PROVENANCE, photo_path

ENTRIES_FILE = "entries.json"
MAX_PHOTO_BYTES = 20 << 20
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


class WatchListReadError(Exception):
    """A built watch list cannot be read (names the file and what is wrong)."""


class ReferencePhotoError(WatchListReadError):
    """No such reference photo (names the entry, the index and the file)."""


@dataclass(frozen=True)
class WatchEntry:
    """A watch-list entry as the officer sees it beside the camera's crop."""

    reference: str
    name: str
    reason: str
    legal_basis: str
    image_date: str
    approving_officer: str
    image_source: str
    photos: int  # number of reference photos


@dataclass(frozen=True)
class _Listed:
    watchlist: str
    directory: Path
    entry: dict[str, Any]


def media_type(data: bytes) -> str:
    """An image's media type from its first bytes (what the browser is told it is)."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class WatchReferences:
    """Looks entries up by id across the fleet's built watch lists; safe to share between threads."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[int, list[dict[str, Any]]]] = {}

    def _entries(self, path: Path) -> list[dict[str, Any]]:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError as exc:
            raise WatchListReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise WatchListReadError(f"{path}: not a built watch list ({exc})") from None
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise WatchListReadError(f"{path}: entries: expected a list of objects")
        with self._lock:
            self._cache[path] = (stamp, entries)
        return entries

    def _find(self, entry_id: str, watchlist: str | None) -> _Listed | None:
        """The entry with this id (or, failing that, this reference), the named list searched first."""
        lists = sorted(p for p in (self.fleet.dir / "watchlists").glob(f"*/{ENTRIES_FILE}"))
        lists.sort(key=lambda p: p.parent.name != watchlist)
        for key in ("id", "reference"):
            for path in lists:
                for e in self._entries(path):
                    if e.get(key) == entry_id:
                        return _Listed(path.parent.name, path.parent, e)
        return None

    def entry(self, entry_id: str, watchlist: str | None = None) -> WatchEntry | None:
        """The entry an event's entry id names (None: in none of this fleet's built lists)."""
        found = self._find(entry_id, watchlist)
        if found is None:
            return None
        e = found.entry
        prov = e.get("provenance")
        if not isinstance(prov, dict) or not all(isinstance(prov.get(k), str) for k in PROVENANCE):
            raise WatchListReadError(f"{found.directory / ENTRIES_FILE}: entry {entry_id}: provenance must hold "
                                     f"{', '.join(PROVENANCE)}")
        photos = e.get("photos")
        if not isinstance(photos, list):
            raise WatchListReadError(f"{found.directory / ENTRIES_FILE}: entry {entry_id}: photos: expected a list")
        return WatchEntry(str(e.get("reference", "")), str(e.get("name", "")), prov["reason"], prov["legal_basis"],
                          prov["image_date"], prov["approving_officer"], prov["image_source"], len(photos))

    def photo(self, entry_id: str, index: int, watchlist: str | None = None) -> tuple[bytes, str]:
        """(bytes, media type) of the entry's reference photo number `index` (from 0)."""
        found = self._find(entry_id, watchlist)
        if found is None:
            raise ReferencePhotoError(f"entry {entry_id!r} is in none of the fleet's built watch lists")
        photos = found.entry.get("photos")
        if not isinstance(photos, list) or not 0 <= index < len(photos) or not isinstance(photos[index], str):
            count = len(photos) if isinstance(photos, list) else 0
            raise ReferencePhotoError(f"entry {entry_id!r} of watch list {found.watchlist!r} has {count} reference "
                                      f"photo(s); there is no number {index}")
        path = photo_path(found.directory, str(found.entry["id"]), index, photos[index])
        try:
            if path.stat().st_size > MAX_PHOTO_BYTES:
                raise ReferencePhotoError(f"{path}: larger than {MAX_PHOTO_BYTES} bytes")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ReferencePhotoError(f"{path}: missing: watch list {found.watchlist!r} was built before the build "
                                      "kept its photos; rebuild it (edge-fleet watchlist build)") from None
        except OSError as exc:
            raise ReferencePhotoError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return data, media_type(data)
