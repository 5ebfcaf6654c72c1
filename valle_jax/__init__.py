"""valle-jax: VALL-E (neural-codec language-model zero-shot TTS) in JAX / Flax NNX.

`valle_jax.load(run_dir)` gives a run's `TTS` (valle_jax/api.py), imported on first use so
that `import valle_jax` stays light.
"""

__version__ = "0.1.0"

_API = ("load", "TTS")


def __getattr__(name: str):
  if name in _API:
    from valle_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'valle_jax' has no attribute {name!r}")
