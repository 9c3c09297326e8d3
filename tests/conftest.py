"""Shared fixtures: the development set of real faces and one analyser over the real models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devset import DevsetMissingError, locate_devset
from mqttworld import Broker, make_broker

from edge.vision.analyzer import FaceAnalyzer, VisionConfig

REPO = Path(__file__).resolve().parents[1]


def devset_dir() -> Path:
    """The development set (tests/data/devset, or $EDGE_DEVSET); if missing, fail with the command that restores it."""
    try:
        return locate_devset()
    except DevsetMissingError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def devset() -> Path:
    return devset_dir()


@pytest.fixture(scope="session")
def annotations(devset: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((devset / "annotations.json").read_text())
    return doc


@pytest.fixture(scope="session")
def analyzer() -> Iterator[FaceAnalyzer]:
    yield FaceAnalyzer(VisionConfig())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto with TLS client certificates and per-device ACLs, on a free loopback port."""
    b = make_broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()
