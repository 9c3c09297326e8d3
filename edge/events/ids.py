"""Event and command identifiers: UUIDv7 (RFC 9562), time-ordered, so consumers can de-duplicate and sort."""

from __future__ import annotations

import os
import time
import uuid


def uuid7(unix_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return str(uuid.UUID(int=value))


def is_uuid7(text: object) -> bool:
    if not isinstance(text, str) or len(text) != 36:
        return False
    try:
        u = uuid.UUID(text)
    except ValueError:
        return False
    return str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122
