"""Edge face-match node: the device runtime."""

__version__ = "0.1.0"
