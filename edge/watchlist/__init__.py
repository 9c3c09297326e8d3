"""The watch list: shards, the in-memory gallery, and matching."""
