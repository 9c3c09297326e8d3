"""Everything a node sends and receives over MQTT: topics, signed messages, the outbox, the link, commands."""
