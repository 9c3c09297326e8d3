"""`edge-node demo`: bundled real footage through the real vision core against a demo watch list."""
