"""The autoregressive (AR) model: codebook 1 given phonemes, as a causal codec LM.

Sequence layout for a batch (padding at the end of each segment):

    [ phonemes (L slots, `phoneme_lens` valid) | audio (Ta slots, `audio_lens` valid) ]

Audio tokens come in groups of G = `ar_group_size` frames (VALL-E 2 grouped code
modeling; G = 1 is plain VALL-E). Audio input group 0 is BOS; group t+1 holds frames of
group t, so the output at audio slot t predicts group t (see `ar_inputs_and_targets`).
Without BOS (`ar_bos = False`, lifeiteng/vall-e's layout) the inputs are the groups
themselves and slot t predicts group t + 1: the first group is never predicted, so a
prompt must hold at least one group.
Attention: phonemes see all valid phonemes and no audio; audio sees all valid phonemes and
audio causally. Positions are sinusoidal, counted separately within each segment; with
`ar_position_scale` each segment multiplies them by its own learned scalar (alpha).

Token ids: codes are 0..V-1 (V = codebook_size), EOS = V, BOS = V + 1 (input only, with
`ar_bos`). The output is over V + 1 classes (codes and EOS) for each of the G frames of a
group, with a bias unless `ar_head_bias = False`.

KV cache (for the sampler): a dict of arrays
    k, v       [num_layers, B, N, S, H]  keys/values by head and slot (S = cache slots)
    valid      [B, S] bool               slots that hold a real phoneme or audio token
    next_slot  [] int32                  where the next audio group is written (every example)
    audio_pos  [B] int32                 its position within each example's audio segment
`prefill` runs the prompt (phonemes + BOS + prompt codes) through the model and fills
slots [0, L + Ta) with each example's audio prompt right-aligned, ending at slot L + Ta
(the slots between its phonemes and its audio are not `valid`); `decode_step` appends one
group per example at the shared `next_slot` (one `dynamic_update_slice` per layer), so a
batch whose prompts differ in length decodes in lockstep.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from valle_jax.models import layers, splash

Array = jax.Array
_ones = jax.nn.initializers.ones


def eos_id(codebook_size: int) -> int:
  return codebook_size


def bos_id(codebook_size: int) -> int:
  return codebook_size + 1


class ARModel(nnx.Module):
  """VALL-E's AR transformer (decoder-only, phoneme prefix, causal over audio).

  Extension point: `audio_extra` [B, Ta, D] (float), where the forward passes take it, is
  added to the audio slots' input embeddings; VALL-E passes none. A variant's subclass adds
  its own per-frame conditioning through it (valle_jax/variants).
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    d = cfg.width
    self.num_layers, self.num_heads, self.width = cfg.num_layers, cfg.num_heads, d
    self.codebook_size = cfg.codebook_size
    self.group_size = cfg.ar_group_size
    self.dtype = layers.compute_dtype(cfg.compute_dtype)
    self.dropout_rate = cfg.dropout
    self.bos = bool(cfg.get("ar_bos", True))
    self.head_has_bias = bool(cfg.get("ar_head_bias", True))
    self.position_scale = bool(cfg.get("ar_position_scale", False))
    self.attention = cfg.get("attention", "xla")
    embed = layers.embed_init(d)
    self.phoneme_embed = layers.make_param(rngs, embed, (cfg.phoneme_vocab_size, d),
                                           ("vocab", "embed"))
    # Codes, EOS and (with `ar_bos`) BOS.
    self.audio_embed = layers.make_param(rngs, embed, (cfg.codebook_size + 1 + self.bos, d),
                                         ("vocab", "embed"))
    if self.position_scale:  # alpha: each segment's learned position scale
      self.phoneme_pos_scale = layers.make_param(rngs, _ones, (), ())
      self.audio_pos_scale = layers.make_param(rngs, _ones, (), ())
    if self.group_size > 1:  # a group's G frame embeddings, concatenated, projected to D
      self.group_proj = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                          (self.group_size * d, d), (None, "embed"))
    self.transformer = layers.Transformer(
        num_layers=cfg.num_layers, width=d, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
        dropout_rate=cfg.dropout, activation=cfg.get("mlp_activation", "gelu"),
        attention=cfg.get("attention", "xla"), remat=cfg.get("remat", "none"), rngs=rngs)
    num_out = self.group_size * (cfg.codebook_size + 1)
    self.head_kernel = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                         (d, num_out), ("embed", "vocab"))
    if self.head_has_bias:
      self.head_bias = layers.make_param(rngs, jax.nn.initializers.zeros, (num_out,),
                                         ("vocab",))

  # -- embeddings and head -------------------------------------------------------------

  def _embed_phonemes(self, phonemes: Array) -> Array:
    """phonemes [B, L] -> [B, L, D] (compute dtype), positions 0..L-1."""
    d = self.phoneme_embed.shape[1]
    x = layers.embed(self.phoneme_embed[...], phonemes)
    positions = layers.sinusoidal_positions(jnp.arange(phonemes.shape[1])[None], d)
    if self.position_scale:
      positions = positions * self.phoneme_pos_scale[...]
    return (x + positions).astype(self.dtype)

  def _embed_audio(self, tokens: Array, positions: Array, audio_extra: Array | None = None
                   ) -> Array:
    """tokens [B, T, G], positions [B, T] (+ `audio_extra` [B, T, D]) -> [B, T, D] (compute
    dtype)."""
    b, t, g = tokens.shape
    d = self.audio_embed.shape[1]
    x = layers.embed(self.audio_embed[...], tokens)           # [B, T, G, D]
    if g > 1:
      x = x.reshape(b, t, g * d) @ self.group_proj[...]
    else:
      x = x[:, :, 0]
    if audio_extra is not None:
      x = x + audio_extra
    positions = layers.sinusoidal_positions(positions, d)
    if self.position_scale:
      positions = positions * self.audio_pos_scale[...]
    return (x + positions).astype(self.dtype)

  def _head(self, h: Array) -> Array:
    """h [B, T, D] -> logits [B, T, G, V + 1] float32 (the matmul accumulates and returns
    float32 whatever the compute dtype)."""
    logits = jnp.dot(h, self.head_kernel[...].astype(h.dtype),
                     preferred_element_type=jnp.float32)
    if self.head_has_bias:
      logits = logits + self.head_bias[...]
    b, t, _ = logits.shape
    return logits.reshape(b, t, self.group_size, self.codebook_size + 1)

  def _check_tokens(self, audio_tokens: Array):
    if audio_tokens.ndim != 3 or audio_tokens.shape[-1] != self.group_size:
      raise ValueError(f"audio_tokens must be [B, T, G={self.group_size}], "
                       f"got shape {audio_tokens.shape}.")

  # -- full forward ----------------------------------------------------------------------

  def __call__(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
               audio_lens: Array, *, dropout_rng: Array | None = None) -> Array:
    """Teacher-forced forward.

    Args:
      phonemes: int [B, L] phoneme ids (prompt transcript + target transcript).
      phoneme_lens: int [B] valid phonemes per example.
      audio_tokens: int [B, Ta, G] audio input groups, BOS first (`ar_inputs_and_targets`).
      audio_lens: int [B] valid audio groups per example (BOS included).
      dropout_rng: PRNG key for dropout, or None for deterministic evaluation.
    Returns:
      float32 logits [B, Ta, G, V + 1]; slot t predicts audio group t.
    """
    return self._head(self._hidden(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                   dropout_rng=dropout_rng))

  def _hidden(self, phonemes, phoneme_lens, audio_tokens, audio_lens, audio_extra=None,
              dropout_rng=None) -> Array:
    """The final hidden states [B, Ta, D] of the audio slots (the teacher-forced forward)."""
    self._check_tokens(audio_tokens)
    x, mask = self._inputs_and_mask(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                    audio_extra)
    if self.attention == "splash":  # the same mask in the kernel's form (models/splash.py)
      num_phon, num_audio = phonemes.shape[1], audio_tokens.shape[1]
      mask = splash.Mask(_segment_valid(phoneme_lens, num_phon, audio_lens, num_audio),
                         prefix=num_phon)
    embed_rng, layers_rng = _split_or_none(dropout_rng)
    x = layers.dropout(x, self.dropout_rate, embed_rng)
    h, _ = self.transformer(x, mask, dropout_rng=layers_rng)
    return h[:, phonemes.shape[1]:]

  def _inputs_and_mask(self, phonemes, phoneme_lens, audio_tokens, audio_lens,
                       audio_extra=None):
    """Embedded sequence [B, L + Ta, D] and its attention mask [B, 1, L + Ta, L + Ta]."""
    num_phon, num_audio = phonemes.shape[1], audio_tokens.shape[1]
    audio_positions = jnp.broadcast_to(jnp.arange(num_audio), audio_tokens.shape[:2])
    x = jnp.concatenate([self._embed_phonemes(phonemes),
                         self._embed_audio(audio_tokens, audio_positions, audio_extra)],
                        axis=1)
    valid = _segment_valid(phoneme_lens, num_phon, audio_lens, num_audio)  # [B, L + Ta]
    slot = jnp.arange(num_phon + num_audio)
    is_audio = slot >= num_phon
    # Query i may see key j: j valid, and j a phoneme, or both audio with j <= i.
    allowed = (~is_audio[None, :]) | (is_audio[:, None] & (slot[None, :] <= slot[:, None]))
    mask = allowed[None, None] & valid[:, None, None, :]
    return x, mask

  # -- KV-cache path ---------------------------------------------------------------------

  def init_cache(self, batch_size: int, num_slots: int, dtype=None) -> dict[str, Array]:
    """An empty cache with `num_slots` slots (>= phoneme slots + all audio groups)."""
    shape = (self.num_layers, batch_size, self.num_heads, num_slots,
             self.width // self.num_heads)
    dtype = self.dtype if dtype is None else dtype
    return {
        "k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
        "valid": jnp.zeros((batch_size, num_slots), bool),
        "next_slot": jnp.zeros((), jnp.int32),
        "audio_pos": jnp.zeros((batch_size,), jnp.int32),
    }

  def grow_cache(self, cache: dict[str, Array], num_slots: int) -> dict[str, Array]:
    """`cache` with `num_slots` slots (>= its own): k, v and valid padded with empty slots;
    its other entries (next_slot, audio_pos, a variant's) as they are."""
    pad = num_slots - cache["valid"].shape[1]
    grow = lambda x, axis: jnp.pad(x, [(0, pad if i == axis else 0) for i in range(x.ndim)])  # noqa: E731
    return {**cache, "k": grow(cache["k"], 3), "v": grow(cache["v"], 3),
            "valid": grow(cache["valid"], 1)}

  def prefill(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
              audio_lens: Array, cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Runs the prompt through the model, filling cache slots [0, L + Ta) (each example's
    audio right-aligned: see the module docstring).

    Args: as `__call__` (audio_tokens = BOS, with `ar_bos`, + prompt groups); `cache` from
      `init_cache`.
    Returns:
      logits [B, G, V + 1] float32 at each example's last valid audio slot (the prediction
      of its first new group), and the filled cache.
    """
    last, cache = self._prefill_hidden(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                       cache)
    return self._head(last)[:, 0], cache

  def _prefill_hidden(self, phonemes, phoneme_lens, audio_tokens, audio_lens, cache,
                      audio_extra=None) -> tuple[Array, dict[str, Array]]:
    """`prefill`'s hidden state [B, 1, D] at each example's last valid slot, and the cache."""
    self._check_tokens(audio_tokens)
    num_phon, num_audio = phonemes.shape[1], audio_tokens.shape[1]
    num_slots = cache["valid"].shape[1]
    if num_phon + num_audio > num_slots:
      raise ValueError(f"prompt needs {num_phon + num_audio} cache slots, cache has {num_slots}.")
    x, mask = self._inputs_and_mask(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                    audio_extra)
    # Right-align each example's audio: slot j >= L holds its audio group j - shift.
    total = num_phon + num_audio
    slot = jnp.arange(total)[None, :]                                # [1, T]
    shift = (num_audio - audio_lens)[:, None]                        # [B, 1]
    is_audio = slot >= num_phon
    source = jnp.where(is_audio, jnp.maximum(slot - shift, num_phon), slot)     # [B, T]
    valid = jnp.where(is_audio, slot - shift >= num_phon,
                      slot < phoneme_lens[:, None])                  # [B, T]
    x = jnp.take_along_axis(x, source[..., None], axis=1)            # [B, T, D]
    mask = jnp.take_along_axis(mask, source[:, None, :, None], axis=2)
    mask = jnp.take_along_axis(mask, source[:, None, None, :], axis=3) & valid[:, None, None]
    pad = num_slots - total
    mask = jnp.pad(mask, [(0, 0), (0, 0), (0, 0), (0, pad)])        # [B, 1, T, S]
    kv = {"k": cache["k"], "v": cache["v"]}
    h, kv = self.transformer(x, mask, cache=kv, write_slot=0)
    cache = {
        **cache, **kv,
        "valid": jnp.pad(valid, [(0, 0), (0, pad)]),
        "next_slot": jnp.asarray(total, jnp.int32),
        "audio_pos": audio_lens.astype(jnp.int32),
    }
    return h[:, -1:], cache                                          # [B, 1, D]

  def decode_step(self, tokens: Array, cache: dict[str, Array]
                  ) -> tuple[Array, dict[str, Array]]:
    """Appends one audio group per example and predicts the next.

    Args:
      tokens: int [B, G], the group just chosen for each example.
      cache: from `prefill` or a previous `decode_step`.
    Returns:
      logits [B, G, V + 1] float32 for the following group, and the updated cache.
    The caller must not step past the cache's slots (the sampler bounds its loop).
    """
    h, cache = self._decode_hidden(tokens, cache)
    return self._head(h)[:, 0], cache

  def _decode_hidden(self, tokens, cache, audio_extra=None
                     ) -> tuple[Array, dict[str, Array]]:
    """`decode_step`'s hidden state [B, 1, D] of the new slot, and the updated cache."""
    x = self._embed_audio(tokens[:, None, :], cache["audio_pos"][:, None],
                          audio_extra)                                         # [B, 1, D]
    valid = cache["valid"].at[:, cache["next_slot"]].set(True)
    mask = valid[:, None, None, :]                                            # [B, 1, 1, S]
    kv = {"k": cache["k"], "v": cache["v"]}
    h, kv = self.transformer(x, mask, cache=kv, write_slot=cache["next_slot"])
    cache = {**cache, **kv, "valid": valid, "next_slot": cache["next_slot"] + 1,
             "audio_pos": cache["audio_pos"] + 1}
    return h, cache


def _split_or_none(rng: Array | None) -> tuple[Array | None, Array | None]:
  return (None, None) if rng is None else tuple(jax.random.split(rng))


def _segment_valid(phoneme_lens, num_phon, audio_lens, num_audio) -> Array:
  """[B, L + Ta] bool: which slots of the padded two-segment layout hold real tokens."""
  phon_valid = jnp.arange(num_phon)[None, :] < phoneme_lens[:, None]
  audio_valid = jnp.arange(num_audio)[None, :] < audio_lens[:, None]
  return jnp.concatenate([phon_valid, audio_valid], axis=1)


def ar_inputs_and_targets(codes: Array, code_lens: Array, codebook_size: int,
                          group_size: int = 1, bos: bool = True
                          ) -> tuple[Array, Array, Array]:
  """Teacher-forcing inputs and targets for the AR model from codebook-1 codes.

  The stream is the codes followed by EOS, padded with EOS to a multiple of G and split
  into groups. With `bos` the targets are all groups and the inputs BOS followed by all
  groups but the last; without (`ar_bos = False`) the inputs are all groups but the last
  and the targets all but the first (the first group is not predicted).

  Args:
    codes: int [B, T] codebook-1 codes (padding arbitrary past `code_lens`).
    code_lens: int [B] valid frames.
  Returns:
    inputs int32 [B, Ta, G], targets int32 [B, Ta, G], group_lens int32 [B] (valid groups,
    = ceil((code_len + 1) / G), one less without BOS); Ta = ceil((T + 1) / G) (one less
    without BOS).
  """
  eos, bos_token = eos_id(codebook_size), bos_id(codebook_size)
  b, t = codes.shape
  num_groups = -(-(t + 1) // group_size)
  stream = jnp.full((b, num_groups * group_size), eos, jnp.int32)
  frame = jnp.arange(t)[None, :]
  stream = stream.at[:, :t].set(jnp.where(frame < code_lens[:, None], codes, eos))
  groups = stream.reshape(b, num_groups, group_size)
  group_lens = (code_lens + 1 + group_size - 1) // group_size
  if not bos:
    return groups[:, :-1], groups[:, 1:], (group_lens - 1).astype(jnp.int32)
  inputs = jnp.concatenate([jnp.full((b, 1, group_size), bos_token, jnp.int32),
                            groups[:, :-1]], axis=1)
  return inputs, groups, group_lens.astype(jnp.int32)


