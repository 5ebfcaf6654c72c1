"""valle-jax: VALL-E (neural-codec language-model zero-shot TTS) in JAX / Flax NNX."""

__version__ = "0.1.0"
