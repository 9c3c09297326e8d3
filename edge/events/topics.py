"""The MQTT topic layout (edge/v1/<device>/...): the one definition the node, the fleet tools and the
broker's ACL are all generated from."""

from __future__ import annotations

from dataclasses import dataclass

from edge.identity import check_device_id

PREFIX = "edge/v1"
EVENTS = "event"  # devices may publish any event kind under it
MATCH = f"{EVENTS}/match"
STATE = "state"
AUDIT = "audit"
COMMAND = "cmd"
COMMAND_RESULT = "cmd-result"
VERBS = ("shard-push", "deployment", "purge", "config", "review")


class TopicError(Exception):
    """A topic is not one of the layout's (names the topic)."""


@dataclass(frozen=True)
class DeviceTopics:
    """The topics of one device."""

    device_id: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)

    @property
    def base(self) -> str:
        return f"{PREFIX}/{self.device_id}"

    @property
    def match(self) -> str:
        return f"{self.base}/{MATCH}"

    @property
    def state(self) -> str:
        return f"{self.base}/{STATE}"

    @property
    def audit(self) -> str:
        return f"{self.base}/{AUDIT}"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/{COMMAND}/#"

    def command(self, verb: str) -> str:
        if verb not in VERBS:
            raise TopicError(f"command verb {verb!r}: expected one of {', '.join(VERBS)}")
        return f"{self.base}/{COMMAND}/{verb}"

    def all(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    @property
    def command_result(self) -> str:
        return f"{self.base}/{COMMAND_RESULT}"


def all_devices(suffix: str) -> str:
    """A subscription filter for one kind of topic across the fleet, e.g. all_devices(MATCH)."""
    return f"{PREFIX}/+/{suffix}"


def split_topic(topic: str) -> tuple[str, str]:
    """(device_id, suffix) of a topic in the layout; the device id is what the broker's ACL bound to the
    publisher's certificate, so consumers check messages against it."""
    parts = topic.split("/", 3)
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"topic {topic!r} is not under {PREFIX}/<device>/")
    return parts[2], parts[3]
