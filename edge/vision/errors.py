"""Failures of the vision core, one type per cause, each naming the file or setting at fault."""

from __future__ import annotations

from pathlib import Path


class VisionError(Exception):
    """Base class for every vision-core failure."""


class ModelManifestError(VisionError):
    """MANIFEST.json is missing, unreadable, or lacks a field the runtime needs."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


class ModelIntegrityError(VisionError):
    """A model file's sha256 differs from the one recorded in MANIFEST.json (or the file is missing)."""

    def __init__(self, path: Path, expected: str, actual: str | None) -> None:
        got = "file missing" if actual is None else f"sha256 {actual}"
        super().__init__(f"{path}: integrity check failed: expected sha256 {expected}, got {got}")
        self.path = path
        self.expected = expected
        self.actual = actual


class ModelLoadError(VisionError):
    """The runtime could not build an interpreter from a verified model file."""


class DelegateUnavailableError(VisionError):
    """A configured accelerator delegate library could not be loaded."""

    def __init__(self, delegate: str, library: str, cause: str) -> None:
        super().__init__(f"delegate {delegate!r}: cannot load {library}: {cause}")
        self.delegate = delegate
        self.library = library


class ImageDecodeError(VisionError):
    """A file is unreadable or is not an image the decoder understands."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
