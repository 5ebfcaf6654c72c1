"""VALL-E's two transformers and their losses.

    from valle_jax import models
    ar = models.ARModel(config.model, rngs=nnx.Rngs(0))
    nar = models.NARModel(config.model, rngs=nnx.Rngs(1))

`models` depends on jax and flax only (never on data, codec, text, train or checkpoint).
"""
from valle_jax.models.ar import (NO_TEXT, ARModel, ar_inputs_and_targets, bos_id, drop_text,
                                 dwell_of, eos_id, feed_back_samples, keep_audio_tokens,
                                 pointer_inputs_and_targets, prompt_pointers)
from valle_jax.models.losses import (ar_loss, example_batch, nar_loss, reverse_valid,
                                     token_nll_and_topk)
from valle_jax.models.nar import NARModel, nar_first_stage

__all__ = ["NO_TEXT", "ARModel", "NARModel", "ar_inputs_and_targets", "ar_loss", "bos_id",
           "drop_text", "dwell_of", "eos_id", "example_batch", "feed_back_samples",
           "keep_audio_tokens", "nar_first_stage", "nar_loss", "pointer_inputs_and_targets",
           "prompt_pointers", "reverse_valid", "token_nll_and_topk"]
