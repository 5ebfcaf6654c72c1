"""Variants of VALL-E, each in its own package (big_vision's `proj/` pattern).

A variant keeps its own models, losses, batch loader, decoding, config, tests and doc, and
registers its `recipe.Recipe` when imported. The core (valle_jax/*) never imports one;
`valle-jax` (cli.py) imports them all (`load_all`) before running a command, so a run's
config can name its variant.

    aligned   a phoneme pointer in the AR and codebook 1 by the NAR (docs/variants/aligned.md)
"""
import importlib

VARIANTS = ("aligned",)


def load_all() -> None:
  """Imports every variant, registering its recipe."""
  for name in VARIANTS:
    importlib.import_module(f"valle_jax.variants.{name}")
