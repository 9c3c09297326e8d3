"""Signed documents the node trusts: canonical JSON, Ed25519 keys, the fleet root and its rotation."""
