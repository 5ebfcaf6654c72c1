"""The non-autoregressive (NAR) model: codebook j (j = 2..Q, 1-based) given codebooks < j.

Sequence layout for a batch (padding at the end of each segment):

    [ (stage token) | phonemes (L) | acoustic prompt (P) | target (T) ]

- phonemes: phoneme embeddings, positions 0..L-1.
- prompt: sum over all Q codebooks of per-codebook embeddings of the prompt codes.
- target: sum over codebooks 0..stage-1 (0-based) of the target's codes.
Prompt and target share one acoustic position axis (target continues after the prompt).
Attention is full (no causal mask) over valid slots.

`stage` is the 0-based index of the codebook to predict, in [1, Q). It enters through AdaLN (`a_stage * LayerNorm(h) + b_stage` in every
norm; VALL-E) or, with `nar_stage_conditioning = "token"`, as a learned token at the front
(VALL-E 2).
With `nar_tie_output`, the prediction layer for codebook `stage` is the transpose of the
acoustic embedding of codebook `stage` — the paper's "j-th prediction layer tied to the
(j+1)-th acoustic embedding" in its 1-based stage numbering. With `nar_tie_offset = 1`
(lifeiteng/vall-e's reading of that sentence) it is the embedding of codebook `stage + 1`,
and the last codebook has a prediction layer of its own (`last_head`, [V, D] like a table).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from valle_jax.models import layers, splash

Array = jax.Array


class NARModel(nnx.Module):
  """VALL-E's NAR transformer over codebooks 2..Q.

  `first_stage` is the first codebook (0-based) it predicts. Extension point: `target_extra`
  [B, T, D] (float), where `__call__` takes it, is added to the target frames' input
  embeddings; VALL-E passes none. A variant's subclass adds its own per-frame conditioning
  through it (valle_jax/variants).
  """
  first_stage = 1

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    d, q = cfg.width, cfg.num_codebooks
    if cfg.nar_stage_conditioning not in ("adaln", "token"):
      raise ValueError("nar_stage_conditioning must be 'adaln' or 'token', "
                       f"got {cfg.nar_stage_conditioning!r}.")
    self.num_codebooks, self.codebook_size = q, cfg.codebook_size
    self.stage_as_token = cfg.nar_stage_conditioning == "token"
    self.tie_output = cfg.nar_tie_output
    self.tie_offset = int(cfg.get("nar_tie_offset", 0))
    if self.tie_offset not in (0, 1) or (self.tie_offset and not self.tie_output):
      raise ValueError("nar_tie_offset must be 0 or 1 (1 needs nar_tie_output), got "
                       f"{self.tie_offset}.")
    self.dtype = layers.compute_dtype(cfg.compute_dtype)
    self.dropout_rate = cfg.dropout
    self.attention = cfg.get("attention", "xla")
    embed = layers.embed_init(d)
    self.phoneme_embed = layers.make_param(rngs, embed, (cfg.phoneme_vocab_size, d),
                                           ("vocab", "embed"))
    self.audio_embed = layers.make_param(rngs, embed, (q, cfg.codebook_size, d),
                                         ("codebooks", "vocab", "embed"))
    if self.stage_as_token:
      self.stage_embed = layers.make_param(rngs, embed, (q, d), (None, "embed"))
    self.transformer = layers.Transformer(
        num_layers=cfg.num_layers, width=d, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
        dropout_rate=cfg.dropout, num_conditions=0 if self.stage_as_token else q,
        activation=cfg.get("mlp_activation", "gelu"),
        attention=cfg.get("attention", "xla"), remat=cfg.get("remat", "none"), rngs=rngs)
    if self.tie_offset:
      self.last_head = layers.make_param(rngs, embed, (cfg.codebook_size, d),
                                         ("vocab", "embed"))
    if not self.tie_output:
      self.head_kernel = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                           (q, d, cfg.codebook_size),
                                           ("codebooks", "embed", "vocab"))

  def __call__(self, phonemes: Array, phoneme_lens: Array, prompt_codes: Array,
               prompt_lens: Array, target_codes: Array, target_lens: Array, stage: Array,
               *, dropout_rng: Array | None = None, target_extra: Array | None = None
               ) -> Array:
    """Predicts codebook `stage` of the target.

    Args:
      phonemes: int [B, L]; phoneme_lens: int [B].
      prompt_codes: int [B, P, Q] acoustic prompt (all Q codebooks); prompt_lens: int [B].
      target_codes: int [B, T, Q] target codes; only codebooks < stage are read.
      target_lens: int [B].
      stage: int [B], 0-based codebook index to predict, in [first_stage, Q).
      dropout_rng: PRNG key for dropout, or None for deterministic evaluation.
      target_extra: float [B, T, D] added to the target's embeddings (see the class).
    Returns:
      float32 logits [B, T, V] for codebook `stage` at each target frame (the output matmul
      accumulates and returns float32 whatever the compute dtype).
    """
    q = self.num_codebooks
    if prompt_codes.shape[-1] != q or target_codes.shape[-1] != q:
      raise ValueError(f"prompt_codes and target_codes must have Q={q} codebooks, got "
                       f"{prompt_codes.shape} and {target_codes.shape}.")
    d = self.phoneme_embed.shape[1]
    b, num_phon = phonemes.shape
    num_prompt, num_target = prompt_codes.shape[1], target_codes.shape[1]
    table = self.audio_embed[...]                                      # [Q, V, D]

    def embed_codes(codes, codebook_mask):                             # codes [B, T, Q]
      per_codebook = layers.embed(table, (jnp.arange(q), codes))      # [B, T, Q, D]
      return jnp.einsum("btqd,bq->btd", per_codebook, codebook_mask)

    x_phon = layers.embed(self.phoneme_embed[...], phonemes)
    x_phon += layers.sinusoidal_positions(jnp.arange(num_phon)[None], d)
    all_codebooks = jnp.ones((b, q), jnp.float32)
    below_stage = (jnp.arange(q)[None, :] < stage[:, None]).astype(jnp.float32)
    prompt_pos = jnp.broadcast_to(jnp.arange(num_prompt), (b, num_prompt))
    target_pos = prompt_lens[:, None] + jnp.arange(num_target)[None, :]
    x_prompt = embed_codes(prompt_codes, all_codebooks)
    x_prompt += layers.sinusoidal_positions(prompt_pos, d)
    x_target = embed_codes(target_codes, below_stage)
    x_target += layers.sinusoidal_positions(target_pos, d)
    if target_extra is not None:
      x_target += target_extra
    segments = [x_phon, x_prompt, x_target]
    valid = [jnp.arange(n)[None, :] < lens[:, None] for n, lens in
             ((num_phon, phoneme_lens), (num_prompt, prompt_lens), (num_target, target_lens))]
    if self.stage_as_token:
      segments.insert(0, layers.embed(self.stage_embed[...], stage)[:, None, :])
      valid.insert(0, jnp.ones((b, 1), bool))
    x = jnp.concatenate(segments, axis=1).astype(self.dtype)            # [B, S, D]
    valid = jnp.concatenate(valid, axis=1)                              # [B, S]
    mask = valid[:, None, None, :]                                      # [B, 1, 1, S]
    if self.attention == "splash":  # the same mask in the kernel's form (models/splash.py)
      mask = splash.Mask(valid, prefix=valid.shape[1])

    embed_rng, layers_rng = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x = layers.dropout(x, self.dropout_rate, embed_rng)
    condition = None if self.stage_as_token else stage
    h, _ = self.transformer(x, mask, condition=condition, dropout_rng=layers_rng)
    h = h[:, -num_target:]                                              # [B, T, D]
    if self.tie_offset:
      out = jnp.where((stage == q - 1)[:, None, None], self.last_head[...][None],
                      table[jnp.minimum(stage + 1, q - 1)])             # [B, V, D]
      logits = jnp.einsum("btd,bvd->btv", h, out.astype(h.dtype),
                          preferred_element_type=jnp.float32)
    elif self.tie_output:
      out = table[stage]                                                # [B, V, D]
      logits = jnp.einsum("btd,bvd->btv", h, out.astype(h.dtype),
                          preferred_element_type=jnp.float32)
    else:
      out = self.head_kernel[...][stage]                                # [B, D, V]
      logits = jnp.einsum("btd,bdv->btv", h, out.astype(h.dtype),
                          preferred_element_type=jnp.float32)
    return logits                                                       # float32
