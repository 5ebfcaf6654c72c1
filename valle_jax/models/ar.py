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
    k, v       [num_layers, B, S, N, H]  keys/values by slot (S = cache slots)
    valid      [B, S] bool               slots that hold a real phoneme or audio token
    next_slot  [B] int32                 where the next audio token is written
    audio_pos  [B] int32                 its position within the audio segment
  and with `ar_phoneme_pointer`:
    phonemes   [B, L] int32, phoneme_lens [B] int32   the text the pointer moves along
    pointer    [B] int32                 the phoneme of the frame the next slot predicts
    dwell      [B] int32                 the frames that phoneme had before that frame
    advance_logit [B] float32            the last slot's "next frame moves on" logit
`prefill` runs the prompt (phonemes + BOS + prompt codes) through the model and fills
slots [0, L + Ta); `decode_step` appends one group per example at its own `next_slot`,
so a batch whose prompts differ in length decodes in lockstep.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from valle_jax.models import layers

Array = jax.Array
_ones = jax.nn.initializers.ones


# The phoneme id that stands for "no text" (text dropout and classifier-free guidance): the
# symbol table's <pad> (valle_jax.text: pad = 0), which no valid phoneme slot holds otherwise.
NO_TEXT = 0


def eos_id(codebook_size: int) -> int:
  return codebook_size


def bos_id(codebook_size: int) -> int:
  return codebook_size + 1


class ARModel(nnx.Module):
  """VALL-E's AR transformer (decoder-only, phoneme prefix, causal over audio)."""

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
    self.phoneme_pointer = bool(cfg.get("ar_phoneme_pointer", False))
    self.text_dropout = _rate(cfg, "ar_text_dropout")
    self.audio_token_dropout = _rate(cfg, "ar_audio_token_dropout")
    # Every target frame may be fed back (rate 1), but not every token dropped.
    self.scheduled_sampling = _rate(cfg, "ar_scheduled_sampling", one_allowed=True)
    if self.phoneme_pointer and self.group_size != 1:
      raise ValueError("ar_phoneme_pointer needs ar_group_size = 1.")
    self.num_dwell_embeddings = int(cfg.get("ar_dwell_embeddings", 0))
    if self.num_dwell_embeddings and not self.phoneme_pointer:
      raise ValueError("ar_dwell_embeddings needs ar_phoneme_pointer (the dwell is counted "
                       "on the pointer's phoneme).")
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
        dropout_rate=cfg.dropout, activation=cfg.get("mlp_activation", "gelu"), rngs=rngs)
    num_out = self.group_size * (cfg.codebook_size + 1)
    self.head_kernel = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                         (d, num_out), ("embed", "vocab"))
    if self.head_has_bias:
      self.head_bias = layers.make_param(rngs, jax.nn.initializers.zeros, (num_out,),
                                         ("vocab",))
    if self.phoneme_pointer:  # P(the next frame moves on to the next phoneme)
      self.advance_kernel = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                              (d, 1), ("embed", None))
      self.advance_bias = layers.make_param(rngs, jax.nn.initializers.zeros, (1,), (None,))
    if self.num_dwell_embeddings:  # where in its phoneme each slot's frame is
      self.dwell_embed = layers.make_param(rngs, embed, (self.num_dwell_embeddings, d),
                                           (None, "embed"))

  # -- embeddings and head -------------------------------------------------------------

  def _embed_phonemes(self, phonemes: Array) -> Array:
    """phonemes [B, L] -> [B, L, D] (compute dtype), positions 0..L-1."""
    d = self.phoneme_embed.shape[1]
    x = layers.embed(self.phoneme_embed[...], phonemes)
    positions = layers.sinusoidal_positions(jnp.arange(phonemes.shape[1])[None], d)
    if self.position_scale:
      positions = positions * self.phoneme_pos_scale[...]
    return (x + positions).astype(self.dtype)

  def _embed_audio(self, tokens: Array, positions: Array,
                   pointer_phonemes: Array | None = None,
                   keep_tokens: Array | None = None, dwell: Array | None = None) -> Array:
    """tokens [B, T, G], positions [B, T] -> [B, T, D] (compute dtype).

    With `ar_phoneme_pointer`, `pointer_phonemes` [B, T] (the phoneme id each slot's frame is
    spoken in) adds that phoneme's embedding, and with `ar_dwell_embeddings`, `dwell` [B, T]
    (the frames that phoneme had before) adds the dwell's embedding (clipped to the last).
    `keep_tokens` bool [B, T] (audio token dropout) zeroes the token embedding where False;
    the phoneme, dwell and position stay.
    """
    b, t, g = tokens.shape
    d = self.audio_embed.shape[1]
    x = layers.embed(self.audio_embed[...], tokens)           # [B, T, G, D]
    if g > 1:
      x = x.reshape(b, t, g * d) @ self.group_proj[...]
    else:
      x = x[:, :, 0]
    if keep_tokens is not None:
      x = jnp.where(keep_tokens[..., None], x, jnp.zeros_like(x))
    if self.phoneme_pointer:
      if pointer_phonemes is None:
        raise ValueError("ar_phoneme_pointer needs the phoneme of each audio slot.")
      x = x + layers.embed(self.phoneme_embed[...], pointer_phonemes)
    if self.num_dwell_embeddings:
      x = x + layers.embed(self.dwell_embed[...],
                           jnp.minimum(dwell, self.num_dwell_embeddings - 1))
    positions = layers.sinusoidal_positions(positions, d)
    if self.position_scale:
      positions = positions * self.audio_pos_scale[...]
    return (x + positions).astype(self.dtype)

  def _head(self, h: Array) -> Array:
    """h [B, T, D] -> logits [B, T, G, V + 1] float32."""
    logits = h @ self.head_kernel[...].astype(h.dtype)
    if self.head_has_bias:
      logits = logits + self.head_bias[...].astype(h.dtype)
    b, t, _ = logits.shape
    return logits.astype(jnp.float32).reshape(b, t, self.group_size, self.codebook_size + 1)

  def advance_logits(self, h: Array) -> Array:
    """h [B, T, D] -> [B, T] float32 logit that the frame after each slot's moves on."""
    out = h @ self.advance_kernel[...].astype(h.dtype) + self.advance_bias[...].astype(h.dtype)
    return out[..., 0].astype(jnp.float32)

  def _check_tokens(self, audio_tokens: Array):
    if audio_tokens.ndim != 3 or audio_tokens.shape[-1] != self.group_size:
      raise ValueError(f"audio_tokens must be [B, T, G={self.group_size}], "
                       f"got shape {audio_tokens.shape}.")

  # -- full forward ----------------------------------------------------------------------

  def __call__(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
               audio_lens: Array, *, phoneme_pointers: Array | None = None,
               dropout_rng: Array | None = None, return_advance: bool = False
               ) -> Array | tuple[Array, Array]:
    """Teacher-forced forward.

    Args:
      phonemes: int [B, L] phoneme ids (prompt transcript + target transcript).
      phoneme_lens: int [B] valid phonemes per example.
      audio_tokens: int [B, Ta, G] audio input groups, BOS first (`ar_inputs_and_targets`).
      audio_lens: int [B] valid audio groups per example (BOS included).
      phoneme_pointers: int [B, Ta], with `ar_phoneme_pointer`: the index into `phonemes`
        of the phoneme each slot's frame is spoken in (`pointer_inputs_and_targets`).
      dropout_rng: PRNG key for dropout (and `ar_text_dropout`, `ar_audio_token_dropout`),
        or None for deterministic evaluation.
    Returns:
      float32 logits [B, Ta, G, V + 1]; slot t predicts audio group t. With
      `return_advance` (`ar_phoneme_pointer`), also `advance_logits` [B, Ta].
    """
    self._check_tokens(audio_tokens)
    # Training-only input dropouts; each splits the key only when on, so that other runs
    # keep their dropout masks.
    if self.text_dropout and dropout_rng is not None:
      dropout_rng, text_rng = jax.random.split(dropout_rng)
      phonemes = drop_text(phonemes, self.text_dropout, text_rng)
    keep_tokens = None
    if self.audio_token_dropout and dropout_rng is not None:
      dropout_rng, token_rng = jax.random.split(dropout_rng)
      keep_tokens = keep_audio_tokens(token_rng, audio_tokens.shape[:2],
                                      self.audio_token_dropout)
    x, mask = self._inputs_and_mask(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                    phoneme_pointers, keep_tokens)
    embed_rng, layers_rng = _split_or_none(dropout_rng)
    x = layers.dropout(x, self.dropout_rate, embed_rng)
    h, _ = self.transformer(x, mask, dropout_rng=layers_rng)
    h = h[:, phonemes.shape[1]:]                                      # audio slots
    if return_advance:
      return self._head(h), self.advance_logits(h)
    return self._head(h)

  def _inputs_and_mask(self, phonemes, phoneme_lens, audio_tokens, audio_lens,
                       phoneme_pointers=None, keep_tokens=None):
    """Embedded sequence [B, L + Ta, D] and its attention mask [B, 1, L + Ta, L + Ta]."""
    num_phon, num_audio = phonemes.shape[1], audio_tokens.shape[1]
    audio_positions = jnp.broadcast_to(jnp.arange(num_audio), audio_tokens.shape[:2])
    pointer_phonemes = _pointed(phonemes, phoneme_pointers)
    dwell = dwell_of(phoneme_pointers) if self.num_dwell_embeddings else None
    x = jnp.concatenate([self._embed_phonemes(phonemes),
                         self._embed_audio(audio_tokens, audio_positions, pointer_phonemes,
                                           keep_tokens, dwell)],
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
    shape = (self.num_layers, batch_size, num_slots, self.num_heads,
             self.width // self.num_heads)
    dtype = self.dtype if dtype is None else dtype
    return {
        "k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
        "valid": jnp.zeros((batch_size, num_slots), bool),
        "next_slot": jnp.zeros((batch_size,), jnp.int32),
        "audio_pos": jnp.zeros((batch_size,), jnp.int32),
    }

  def prefill(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
              audio_lens: Array, cache: dict[str, Array], phoneme_pointers: Array | None = None
              ) -> tuple[Array, dict[str, Array]]:
    """Runs the prompt through the model, filling cache slots [0, L + Ta).

    Args: as `__call__` (audio_tokens = BOS, with `ar_bos`, + prompt groups); `cache` from
      `init_cache`.
      With `ar_phoneme_pointer`, `phoneme_pointers` [B, Ta] as in `__call__`; the last
      valid slot's pointer is where generation starts (the target text's first phoneme).
    Returns:
      logits [B, G, V + 1] float32 at each example's last valid audio slot (the prediction
      of its first new group), and the filled cache. With the pointer, the cache also
      holds the phonemes, the pointer [B] and `advance_logit` [B] of that slot.
    """
    self._check_tokens(audio_tokens)
    num_phon, num_audio = phonemes.shape[1], audio_tokens.shape[1]
    num_slots = cache["valid"].shape[1]
    if num_phon + num_audio > num_slots:
      raise ValueError(f"prompt needs {num_phon + num_audio} cache slots, cache has {num_slots}.")
    x, mask = self._inputs_and_mask(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                    phoneme_pointers=phoneme_pointers)
    pad = num_slots - (num_phon + num_audio)
    mask = jnp.pad(mask, [(0, 0), (0, 0), (0, 0), (0, pad)])    # [B, 1, T, S]
    write_slots = jnp.broadcast_to(jnp.arange(num_phon + num_audio), x.shape[:2])
    kv = {"k": cache["k"], "v": cache["v"]}
    h, kv = self.transformer(x, mask, cache=kv, write_slots=write_slots)
    rows = jnp.arange(h.shape[0])
    last = h[rows, num_phon + audio_lens - 1][:, None]           # [B, 1, D]
    valid = _segment_valid(phoneme_lens, num_phon, audio_lens, num_audio)
    cache = {
        **kv,
        "valid": jnp.pad(valid, [(0, 0), (0, pad)]),
        "next_slot": (num_phon + audio_lens).astype(jnp.int32),
        "audio_pos": audio_lens.astype(jnp.int32),
    }
    if self.phoneme_pointer:
      cache.update(phonemes=phonemes, phoneme_lens=phoneme_lens.astype(jnp.int32),
                   pointer=phoneme_pointers[rows, audio_lens - 1].astype(jnp.int32),
                   advance_logit=self.advance_logits(last)[:, 0])
      if self.num_dwell_embeddings:
        cache["dwell"] = dwell_of(phoneme_pointers)[rows, audio_lens - 1]
    return self._head(last)[:, 0], cache

  def decode_step(self, tokens: Array, cache: dict[str, Array], advance: Array | None = None
                  ) -> tuple[Array, dict[str, Array]]:
    """Appends one audio group per example and predicts the next.

    Args:
      tokens: int [B, G], the group just chosen for each example.
      cache: from `prefill` or a previous `decode_step`.
      advance: bool [B], with `ar_phoneme_pointer`: whether the new frame moves on to the
        next phoneme (drawn from the cache's `advance_logit`; the pointer stops at the last).
    Returns:
      logits [B, G, V + 1] float32 for the following group, and the updated cache.
    The caller must not step past the cache's slots (the sampler bounds its loop).
    """
    batch = tokens.shape[0]
    pointer_phonemes, pointer, dwell = None, None, None
    if self.phoneme_pointer:
      if advance is None:
        raise ValueError("ar_phoneme_pointer: decode_step needs `advance`.")
      pointer = jnp.minimum(cache["pointer"] + advance.astype(jnp.int32),
                            cache["phoneme_lens"] - 1)
      pointer_phonemes = _pointed(cache["phonemes"], pointer[:, None])         # [B, 1]
      if self.num_dwell_embeddings:
        dwell = jnp.where(pointer == cache["pointer"], cache["dwell"] + 1, 0)   # [B]
    x = self._embed_audio(tokens[:, None, :], cache["audio_pos"][:, None],
                          pointer_phonemes=pointer_phonemes,
                          dwell=None if dwell is None else dwell[:, None])     # [B, 1, D]
    write_slots = cache["next_slot"][:, None]                                  # [B, 1]
    valid = cache["valid"].at[jnp.arange(batch), cache["next_slot"]].set(True)
    mask = valid[:, None, None, :]                                            # [B, 1, 1, S]
    kv = {"k": cache["k"], "v": cache["v"]}
    h, kv = self.transformer(x, mask, cache=kv, write_slots=write_slots)
    cache = {**cache, **kv, "valid": valid, "next_slot": cache["next_slot"] + 1,
             "audio_pos": cache["audio_pos"] + 1}
    if self.phoneme_pointer:
      cache.update(pointer=pointer, advance_logit=self.advance_logits(h)[:, 0])
      if self.num_dwell_embeddings:
        cache["dwell"] = dwell
    return self._head(h)[:, 0], cache


def drop_text(phonemes: Array, rate: float, rng: Array) -> Array:
  """phonemes [B, L] with each example's every id replaced by NO_TEXT with probability
  `rate` (text dropout): the lengths stay, the symbols go."""
  dropped = jax.random.bernoulli(rng, rate, (phonemes.shape[0], 1))     # [B, 1]
  return jnp.where(dropped, NO_TEXT, phonemes)


def keep_audio_tokens(rng: Array, shape: tuple[int, int], rate: float) -> Array:
  """bool [B, T]: which audio input tokens keep their embedding under audio token dropout
  (each but BOS, slot 0, is dropped with probability `rate`)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
  return keep | (jnp.arange(shape[1]) == 0)[None]


def feed_back_samples(inputs: Array, logits: Array, group_lens: Array, start_frames: Array,
                      rate: float, rng: Array) -> Array:
  """Parallel scheduled sampling (Duckworth et al., 2019): the AR inputs [B, Ta, G] with
  some frames replaced by the model's own samples, as free-running synthesis feeds them.

  `logits` [B, Ta, G, V + 1] are a teacher-forced pass's (slot t predicts the group input
  slot t + 1 holds); a code (not EOS) is drawn from each. Each input group of the target
  (input slots 1 .. group_lens - 1 whose frames start at or after `start_frames` [B], the
  prompt utterance's frames staying true) is replaced with probability `rate`.
  """
  sample_rng, mix_rng = jax.random.split(rng)
  num_codes = logits.shape[-1] - 1
  own = jax.random.categorical(sample_rng, logits[..., :num_codes]).astype(inputs.dtype)
  own = jnp.concatenate([inputs[:, :1], own[:, :-1]], axis=1)          # [B, Ta, G]
  slot = jnp.arange(inputs.shape[1])[None, :]
  first_frame = (slot - 1) * inputs.shape[2]                           # of input slot s
  target = (slot >= 1) & (slot < group_lens[:, None]) & (first_frame >= start_frames[:, None])
  replace = target & jax.random.bernoulli(mix_rng, rate, target.shape)
  return jnp.where(replace[..., None], own, inputs)


def dwell_of(pointers: Array) -> Array:
  """int32 [B, T]: for each slot of phoneme pointers [B, T], how many slots before it in a
  row point at the same phoneme (0 where the pointer moves on)."""
  slot = jnp.arange(pointers.shape[1])
  moved = jnp.concatenate([jnp.ones_like(pointers[:, :1], bool),
                           pointers[:, 1:] != pointers[:, :-1]], axis=1)
  run_start = jax.lax.cummax(jnp.where(moved, slot[None], 0), axis=1)
  return (slot[None] - run_start).astype(jnp.int32)


def _rate(cfg, name: str, one_allowed: bool = False) -> float:
  """The probability `cfg.<name>` (default 0), checked to be in [0, 1) or [0, 1]."""
  rate = float(cfg.get(name, 0.0))
  if not (0 <= rate <= 1 if one_allowed else 0 <= rate < 1):
    raise ValueError(f"{name} must be in [0, 1{']' if one_allowed else ')'}, got {rate}.")
  return rate


def _pointed(phonemes: Array, pointers: Array | None) -> Array | None:
  """The phoneme ids [B, T] at `pointers` [B, T] (indices into phonemes [B, L]), or None."""
  if pointers is None:
    return None
  return jnp.take_along_axis(phonemes, jnp.clip(pointers, 0, phonemes.shape[1] - 1), axis=1)


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


def prompt_pointers(prompt_phoneme_lens: Array, prompt_lens: Array, num_slots: int) -> Array:
  """The pointer inputs [B, num_slots] for BOS + a prompt at inference (G = 1).

  The prompt's alignment is unknown, so its frames are split evenly over its transcript's
  P phonemes (as training does for a pair's first utterance, `data.even_split`); the slot
  after the prompt (the first new frame) points at phoneme P, the target text's first.
  prompt_phoneme_lens: int [B] P; prompt_lens: int [B] prompt frames.
  """
  slot = jnp.arange(num_slots)[None, :]
  p = prompt_phoneme_lens[:, None]
  even = ((slot + 0.5) * p / jnp.maximum(prompt_lens[:, None], 1)).astype(jnp.int32)
  return jnp.where(slot < prompt_lens[:, None], jnp.minimum(even, p - 1), p).astype(jnp.int32)


def pointer_inputs_and_targets(phoneme_of_frame: Array, code_lens: Array, phoneme_lens: Array,
                               target_start: Array) -> tuple[Array, Array, Array]:
  """The phoneme pointer's inputs and targets (`ar_phoneme_pointer`, G = 1).

  Args:
    phoneme_of_frame: int [B, T] the phoneme index each frame is spoken in (the alignment).
    code_lens: int [B] valid frames; phoneme_lens: int [B] valid phonemes.
    target_start: int [B] first frame whose advance is learnt (the prompt utterance's
      frames come first in a same-speaker pair, aligned evenly as at inference).
  Returns, for the T + 1 audio slots of `ar_inputs_and_targets`:
    pointers int32 [B, T + 1]: slot t's frame's phoneme (the last phoneme for the EOS slot);
    advance float32 [B, T + 1]: 1 where frame t + 1 is in the next phoneme (or after the
      last frame); mask bool [B, T + 1]: the slots whose advance is learnt.
  """
  slot = jnp.arange(phoneme_of_frame.shape[1] + 1)[None, :]
  last = (phoneme_lens - 1)[:, None]
  frames = jnp.pad(phoneme_of_frame, [(0, 0), (0, 1)])
  pointers = jnp.where(slot < code_lens[:, None], frames, last).astype(jnp.int32)
  following = jnp.where(slot + 1 < code_lens[:, None], jnp.roll(frames, -1, axis=1),
                        phoneme_lens[:, None])
  advance = jnp.clip(following - pointers, 0, 1).astype(jnp.float32)
  mask = (slot >= target_start[:, None]) & (slot < code_lens[:, None])
  return pointers, advance, mask
