"""Losses and metrics: masked cross-entropy and top-k accuracy (the paper reports top-10).

Model-level loss functions take a model and a batch dict and return `(loss, metrics)`,
where `loss` is the mean cross-entropy over valid positions and `metrics` holds sums and
counts (so they can be summed across steps and devices before dividing).

AR batch:  phonemes [B, L], phoneme_lens [B], codes [B, T, Q] (codebook 0 is used),
           code_lens [B]. A row without phonemes is padding (data.py) and is not scored.
NAR batch: phonemes, phoneme_lens, prompt_codes [B, P, Q], prompt_lens [B],
           codes [B, T, Q], code_lens [B], stage [B] (0-based codebook in [1, Q), or
           [0, Q) with `nar_codebook1`, which also reads frame_phonemes [B, T]), and
           optionally loss_mask [B, T] (0: that target frame is not scored; data.py's
           "segment" prompts).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from valle_jax.models.ar import (ARModel, ar_inputs_and_targets, feed_back_samples,
                                 pointer_inputs_and_targets, prompt_pointers)
from valle_jax.models.nar import NARModel

Array = jax.Array


def token_nll_and_topk(logits: Array, targets: Array, k: int = 10) -> tuple[Array, Array]:
  """Per-token negative log-likelihood and whether the target is in the top k.

  logits [..., V] (any float dtype; computed in float32), targets [...] int.
  Returns nll [...] float32 and in_topk [...] bool.
  """
  logits = logits.astype(jnp.float32)
  targets = targets[..., None].astype(jnp.int32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets, axis=-1)[..., 0]
  target_logit = jnp.take_along_axis(logits, targets, axis=-1)
  in_topk = jnp.sum(logits > target_logit, axis=-1) < k       # fewer than k beat it
  return nll, in_topk


def reverse_valid(phonemes: Array, phoneme_lens: Array) -> Array:
  """phonemes [B, L] with each example's first `phoneme_lens` entries in reverse order
  (padding stays): the same symbols in the wrong order, for measuring text use."""
  slots = jnp.arange(phonemes.shape[1])[None, :]
  source = jnp.where(slots < phoneme_lens[:, None], phoneme_lens[:, None] - 1 - slots, slots)
  return jnp.take_along_axis(phonemes, source, axis=1)


def ar_loss(model: ARModel, batch: dict[str, Array], dropout_rng: Array | None = None
            ) -> tuple[Array, dict[str, Array]]:
  """Causal LM loss on codebook 1 (all audio positions, EOS included). In training
  (`dropout_rng` given), the model applies its text and audio token dropout, and with
  `ar_scheduled_sampling` a first, gradient-free pass draws the frames that
  `feed_back_samples` mixes into the inputs of the second."""
  inputs, targets, group_lens = ar_inputs_and_targets(
      batch["codes"][..., 0], batch["code_lens"], model.codebook_size, model.group_size)
  pointers = None
  if model.phoneme_pointer:
    if "phoneme_of_frame" not in batch:
      raise ValueError("ar_phoneme_pointer needs alignments: batch['phoneme_of_frame'] "
                       "(`valle-jax align`, data.alignments).")
    pointers, advance, advance_mask = pointer_inputs_and_targets(
        batch["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"],
        batch["target_start"])
  if model.scheduled_sampling and dropout_rng is not None:
    dropout_rng, feedback_rng = jax.random.split(dropout_rng)
    first = model(batch["phonemes"], batch["phoneme_lens"], inputs, group_lens,
                  phoneme_pointers=pointers)
    start = batch.get("target_start", jnp.zeros_like(batch["code_lens"]))
    inputs = feed_back_samples(inputs, jax.lax.stop_gradient(first), group_lens, start,
                               model.scheduled_sampling, feedback_rng)
  out = model(batch["phonemes"], batch["phoneme_lens"], inputs, group_lens,
              phoneme_pointers=pointers, dropout_rng=dropout_rng,
              return_advance=model.phoneme_pointer)
  logits = out[0] if model.phoneme_pointer else out            # [B, Ta, G, V + 1]
  mask = jnp.arange(inputs.shape[1])[None, :, None] < group_lens[:, None, None]
  mask &= (batch["phoneme_lens"] > 0)[:, None, None]       # padding rows: not scored
  mask = jnp.broadcast_to(mask, targets.shape).astype(jnp.float32)
  nll, in_topk = token_nll_and_topk(logits, targets)
  metrics = {"loss_sum": jnp.sum(nll * mask), "count": jnp.sum(mask),
             "top10_correct": jnp.sum(in_topk * mask)}
  if model.phoneme_pointer:  # the move-on head's cross-entropy, on the target's frames
    bce = jax.nn.softplus(out[1]) - out[1] * advance                 # [B, Ta]
    metrics["advance_loss_sum"] = jnp.sum(bce * advance_mask)
    metrics["advance_count"] = jnp.sum(advance_mask.astype(jnp.float32))
  return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def nar_loss(model: NARModel, batch: dict[str, Array], dropout_rng: Array | None = None
             ) -> tuple[Array, dict[str, Array]]:
  """Cross-entropy on codebook `stage` of the target frames (those `loss_mask` keeps).

  Metrics also carry per-codebook sums (`loss_sum_per_codebook`, `count_per_codebook`,
  `top10_correct_per_codebook`, each [Q]) so training can report every stage.
  """
  codes, stage = batch["codes"], batch["stage"]
  logits = model(batch["phonemes"], batch["phoneme_lens"], batch["prompt_codes"],
                 batch["prompt_lens"], codes, batch["code_lens"], stage,
                 frame_phonemes=batch.get("frame_phonemes"),
                 dropout_rng=dropout_rng)                     # [B, T, V]
  targets = jnp.take_along_axis(codes, stage[:, None, None], axis=-1)[..., 0]  # [B, T]
  maskf = (jnp.arange(codes.shape[1])[None, :] < batch["code_lens"][:, None]).astype(jnp.float32)
  if "loss_mask" in batch:                   # target frames copied into the prompt
    maskf = maskf * batch["loss_mask"]
  nll, in_topk = token_nll_and_topk(logits, targets)
  correct = in_topk.astype(jnp.float32)
  onehot = jax.nn.one_hot(stage, codes.shape[-1])             # [B, Q]
  per_codebook = lambda v: jnp.einsum("bt,bq->q", v * maskf, onehot)
  metrics = {
      "loss_sum": jnp.sum(nll * maskf), "count": jnp.sum(maskf),
      "top10_correct": jnp.sum(correct * maskf),
      "loss_sum_per_codebook": per_codebook(nll),
      "count_per_codebook": per_codebook(jnp.ones_like(nll)),
      "top10_correct_per_codebook": per_codebook(correct),
  }
  return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def example_batch(model_cfg, batch_size: int, num_phonemes: int, num_frames: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
  """A random AR/NAR batch with the layout `models.ar_loss` / `models.nar_loss` read (with
  the phoneme pointer's alignment: each example's frames split evenly over its phonemes)."""
  rng = np.random.default_rng(seed)
  q, v = model_cfg.num_codebooks, model_cfg.codebook_size
  prompt_frames = max(1, num_frames // 3)
  even = prompt_pointers(jnp.full((batch_size,), num_phonemes), jnp.full((batch_size,), num_frames),
                         num_frames)                                     # [B, T]
  return {
      "phoneme_of_frame": np.asarray(even),
      "frame_phonemes": np.asarray(even),
      "target_start": np.zeros((batch_size,), np.int32),
      "phonemes": rng.integers(1, model_cfg.phoneme_vocab_size, (batch_size, num_phonemes)),
      "phoneme_lens": np.full((batch_size,), num_phonemes),
      "codes": rng.integers(0, v, (batch_size, num_frames, q)),
      "code_lens": np.full((batch_size,), num_frames),
      "prompt_codes": rng.integers(0, v, (batch_size, prompt_frames, q)),
      "prompt_lens": np.full((batch_size,), prompt_frames),
      "stage": rng.integers(1, q, (batch_size,)),
  }
