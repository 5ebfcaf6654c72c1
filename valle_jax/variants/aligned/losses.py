"""The aligned variant's losses: VALL-E's (models/losses.py) on its models' extra inputs.

AR batch:  VALL-E's, with phoneme_of_frame [B, T] (the alignment) and target_start [B].
NAR batch: VALL-E's (stage in [0, Q)), with frame_phonemes [B, T] (each target frame's
           phoneme).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from valle_jax import models
from valle_jax.variants.aligned.models import (PointerARModel, TimedNARModel,
                                               pointer_inputs_and_targets)

Array = jax.Array


def pointer_ar_loss(model: PointerARModel, batch: dict[str, Array],
                    dropout_rng: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """VALL-E's AR loss with the pointer's inputs, and the move-on head's cross-entropy on
  the target's frames as the auxiliary objective `advance` (reported as ar/advance_loss)."""
  if "phoneme_of_frame" not in batch:
    raise ValueError("the aligned variant's AR needs alignments: batch['phoneme_of_frame'] "
                     "(`valle-jax align`).")
  inputs, targets, group_lens = models.ar_inputs_and_targets(
      batch["codes"][..., 0], batch["code_lens"], model.codebook_size, model.group_size,
      model.bos)
  pointers, advance, advance_mask = pointer_inputs_and_targets(
      batch["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"],
      batch["target_start"])
  logits, advance_logits = model(batch["phonemes"], batch["phoneme_lens"], inputs, group_lens,
                                 phoneme_pointers=pointers, dropout_rng=dropout_rng,
                                 return_advance=True)
  loss, metrics = models.ar_metrics(logits, targets, group_lens, batch["phoneme_lens"])
  bce = jax.nn.softplus(advance_logits) - advance_logits * advance            # [B, Ta]
  metrics["aux"] = {"advance": {
      "loss_sum": jnp.sum(bce * advance_mask),
      "count": jnp.sum(advance_mask.astype(jnp.float32))}}
  return loss, metrics


def timed_nar_loss(model: TimedNARModel, batch: dict[str, Array],
                   dropout_rng: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """VALL-E's NAR loss, the NAR told each target frame's phoneme."""
  logits = model(batch["phonemes"], batch["phoneme_lens"], batch["prompt_codes"],
                 batch["prompt_lens"], batch["codes"], batch["code_lens"], batch["stage"],
                 frame_phonemes=batch["frame_phonemes"], dropout_rng=dropout_rng)
  return models.nar_metrics(logits, batch["codes"], batch["code_lens"], batch["stage"],
                            batch.get("loss_mask"))

