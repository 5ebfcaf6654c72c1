"""Data preparation: corpus builders (Beam/TFDS) and the built-in synthetic corpus."""
