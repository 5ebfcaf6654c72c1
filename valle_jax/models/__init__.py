"""VALL-E's two transformers and their losses.

    from valle_jax import models
    ar = models.ARModel(config.model, rngs=nnx.Rngs(0))
    nar = models.NARModel(config.model, rngs=nnx.Rngs(1))

`models` depends on jax and flax only (never on data, codec, text, train or checkpoint).
"""
from valle_jax.models.ar import ARModel, ar_inputs_and_targets, bos_id, eos_id
from valle_jax.models.losses import (ar_loss, ar_metrics, example_batch, nar_loss, nar_metrics,
                                     reverse_valid, token_nll_and_rank)
from valle_jax.models.nar import NARModel

__all__ = ["ARModel", "NARModel", "ar_inputs_and_targets", "ar_loss", "ar_metrics", "bos_id",
           "eos_id", "example_batch", "nar_loss", "nar_metrics", "reverse_valid",
           "token_nll_and_rank"]
