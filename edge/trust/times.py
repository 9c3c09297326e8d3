"""Timestamps in signed documents: RFC 3339 UTC with seconds and a 'Z', one spelling only."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_FORM = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")


class TimeFormatError(ValueError):
    """A timestamp is not of the form YYYY-MM-DDTHH:MM:SSZ."""


def format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise TimeFormatError("naive datetime: a time zone is needed")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime:
    if not isinstance(text, str) or not _FORM.match(text):
        raise TimeFormatError(f"{text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise TimeFormatError(f"{text!r} is not a real date and time") from None


def now() -> datetime:
    return datetime.now(UTC)
