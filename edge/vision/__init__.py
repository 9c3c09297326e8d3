"""Face detection, quality gate, alignment and embedding on LiteRT (TFLite) models."""
