"""The one canonical JSON encoding every signed document uses, and its strict parser.

Canonical: keys sorted, no whitespace, UTF-8, no NaN/Infinity. The parser rejects duplicate keys and
any input that does not re-encode to exactly the same bytes, so a signed document has one encoding only
(no malleability: a changed byte can never leave the meaning intact).
"""

from __future__ import annotations

import json
from typing import Any


class CanonicalFormError(Exception):
    """Input is not canonical JSON (or not JSON at all)."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CanonicalFormError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise CanonicalFormError(f"{name} is not allowed")


def parse_canonical(data: bytes) -> Any:
    """Parse bytes that must be the canonical encoding of their own value."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CanonicalFormError(f"not JSON: {exc}") from None
    try:
        again = canonical(value)
    except ValueError as exc:
        raise CanonicalFormError(str(exc)) from None
    if again != data:
        raise CanonicalFormError("not in canonical form (sorted keys, no whitespace, shortest numbers)")
    return value
