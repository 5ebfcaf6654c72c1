"""Corpus generator configs (`valle-jax make-corpus --config=configs/corpus/x.py`)."""
