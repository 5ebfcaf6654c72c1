"""Losses and metrics: masked cross-entropy and top-1 / top-10 accuracy (the paper reports
top-10).

Model-level loss functions take a model and a batch dict and return `(loss, metrics)`,
where `loss` is the mean cross-entropy over valid positions and `metrics` holds sums and
counts (so they can be summed across steps and devices before dividing).

AR batch:  phonemes [B, L], phoneme_lens [B], codes [B, T, Q] (codebook 0 is used),
           code_lens [B]. A row without phonemes is padding (data.py) and is not scored.
NAR batch: phonemes, phoneme_lens, prompt_codes [B, P, Q], prompt_lens [B],
           codes [B, T, Q], code_lens [B], stage [B] (0-based codebook in [1, Q)), and
           optionally loss_mask [B, T] (0: that target frame is not scored; data.py's
           "segment" prompts).

A loss may add auxiliary objectives in `metrics["aux"]`: {name: {"loss_sum", "count"}};
training adds their sums to the model's objective and reports `<model>/<name>_loss`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from valle_jax.models.ar import ARModel, ar_inputs_and_targets
from valle_jax.models.nar import NARModel

Array = jax.Array


def token_nll_and_rank(logits: Array, targets: Array) -> tuple[Array, Array]:
  """Per-token negative log-likelihood and the target's rank (how many logits beat it).

  logits [..., V] (any float dtype; computed in float32), targets [...] int.
  Returns nll [...] float32 and rank [...] int32: the target is in the top k when rank < k
  (top-1: rank 0; a tie with the target does not beat it).
  """
  logits = logits.astype(jnp.float32)
  targets = targets[..., None].astype(jnp.int32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets, axis=-1)[..., 0]
  target_logit = jnp.take_along_axis(logits, targets, axis=-1)
  rank = jnp.sum(logits > target_logit, axis=-1, dtype=jnp.int32)
  return nll, rank


def reverse_valid(phonemes: Array, phoneme_lens: Array) -> Array:
  """phonemes [B, L] with each example's first `phoneme_lens` entries in reverse order
  (padding stays): the same symbols in the wrong order, for measuring text use."""
  slots = jnp.arange(phonemes.shape[1])[None, :]
  source = jnp.where(slots < phoneme_lens[:, None], phoneme_lens[:, None] - 1 - slots, slots)
  return jnp.take_along_axis(phonemes, source, axis=1)


def ar_loss(model: ARModel, batch: dict[str, Array], dropout_rng: Array | None = None
            ) -> tuple[Array, dict[str, Array]]:
  """Causal LM loss on codebook 1 (all audio positions, EOS included)."""
  inputs, targets, group_lens = ar_inputs_and_targets(
      batch["codes"][..., 0], batch["code_lens"], model.codebook_size, model.group_size,
      model.bos)
  logits = model(batch["phonemes"], batch["phoneme_lens"], inputs, group_lens,
                 dropout_rng=dropout_rng)                    # [B, Ta, G, V + 1]
  return ar_metrics(logits, targets, group_lens, batch["phoneme_lens"],
                    batch.get("ends_utterance"))


def ar_metrics(logits: Array, targets: Array, group_lens: Array, phoneme_lens: Array,
               ends_utterance: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The AR's mean loss and metric sums from its logits [B, Ta, G, V + 1] and targets
  [B, Ta, G] (`ar_inputs_and_targets`), over each example's `group_lens` [B] groups; a row
  without phonemes (`phoneme_lens` [B] 0) is padding (data.py) and not scored, nor the EOS
  of a row whose `ends_utterance` [B] is False (a window cropped out of a longer one)."""
  mask = jnp.arange(targets.shape[1])[None, :, None] < group_lens[:, None, None]
  mask &= (phoneme_lens > 0)[:, None, None]                  # padding rows: not scored
  if ends_utterance is not None:
    mask &= ends_utterance[:, None, None] | (targets != logits.shape[-1] - 1)
  mask = jnp.broadcast_to(mask, targets.shape).astype(jnp.float32)
  nll, rank = token_nll_and_rank(logits, targets)
  metrics = {"loss_sum": jnp.sum(nll * mask), "count": jnp.sum(mask),
             "top1_correct": jnp.sum((rank < 1) * mask),
             "top10_correct": jnp.sum((rank < 10) * mask)}
  return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def nar_loss(model: NARModel, batch: dict[str, Array], dropout_rng: Array | None = None
             ) -> tuple[Array, dict[str, Array]]:
  """Cross-entropy on codebook `stage` of the target frames (those `loss_mask` keeps).

  Metrics also carry per-codebook sums (`loss_sum_per_codebook`, `count_per_codebook`,
  `top1_correct_per_codebook`, `top10_correct_per_codebook`, each [Q]) so training can report every stage.
  """
  logits = model(batch["phonemes"], batch["phoneme_lens"], batch["prompt_codes"],
                 batch["prompt_lens"], batch["codes"], batch["code_lens"], batch["stage"],
                 dropout_rng=dropout_rng)                     # [B, T, V]
  return nar_metrics(logits, batch["codes"], batch["code_lens"], batch["stage"],
                     batch.get("loss_mask"))


def nar_metrics(logits: Array, codes: Array, code_lens: Array, stage: Array,
                loss_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The NAR's mean loss and metric sums from its logits [B, T, V] for codebook `stage` [B]
  of the target `codes` [B, T, Q] (`code_lens` [B] valid frames; of those, the ones
  `loss_mask` [B, T] keeps when given)."""
  targets = jnp.take_along_axis(codes, stage[:, None, None], axis=-1)[..., 0]  # [B, T]
  maskf = (jnp.arange(codes.shape[1])[None, :] < code_lens[:, None]).astype(jnp.float32)
  if loss_mask is not None:                  # target frames copied into the prompt
    maskf = maskf * loss_mask
  nll, rank = token_nll_and_rank(logits, targets)
  top1, top10 = (rank < 1).astype(jnp.float32), (rank < 10).astype(jnp.float32)
  onehot = jax.nn.one_hot(stage, codes.shape[-1])             # [B, Q]
  per_codebook = lambda v: jnp.einsum("bt,bq->q", v * maskf, onehot)
  metrics = {
      "loss_sum": jnp.sum(nll * maskf), "count": jnp.sum(maskf),
      "top1_correct": jnp.sum(top1 * maskf), "top10_correct": jnp.sum(top10 * maskf),
      "loss_sum_per_codebook": per_codebook(nll),
      "count_per_codebook": per_codebook(jnp.ones_like(nll)),
      "top1_correct_per_codebook": per_codebook(top1),
      "top10_correct_per_codebook": per_codebook(top10),
  }
  return metrics["loss_sum"] / jnp.maximum(metrics["count"], 1.0), metrics


def example_batch(model_cfg, batch_size: int, num_phonemes: int, num_frames: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
  """A random AR/NAR batch with the layout `models.ar_loss` / `models.nar_loss` read: what
  `valle-jax info` runs the models on and `valle_jax.bench` times the train step with."""
  rng = np.random.default_rng(seed)
  q, v = model_cfg.num_codebooks, model_cfg.codebook_size
  prompt_frames = max(1, num_frames // 3)
  return {
      "phonemes": rng.integers(1, model_cfg.phoneme_vocab_size, (batch_size, num_phonemes)),
      "phoneme_lens": np.full((batch_size,), num_phonemes),
      "codes": rng.integers(0, v, (batch_size, num_frames, q)),
      "code_lens": np.full((batch_size,), num_frames),
      "prompt_codes": rng.integers(0, v, (batch_size, prompt_frames, q)),
      "prompt_lens": np.full((batch_size,), prompt_frames),
      "stage": rng.integers(1, q, (batch_size,)),
  }
