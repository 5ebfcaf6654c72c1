"""The aligned variant's two models: VALL-E's, told when each frame is spoken.

`PointerARModel` (like VALL-E R's monotonic alignment): each audio input also embeds the
phoneme its frame is spoken in (the phoneme pointer), and a second head predicts whether
the next frame moves on to the next phoneme. Trained on the dataset's forced alignments
(align.py); the sampler moves the pointer itself (sampling.py). Needs ar_group_size = 1.

KV cache: VALL-E's (models/ar.py) and
    phonemes   [B, L] int32, phoneme_lens [B] int32   the text the pointer moves along
    pointer    [B] int32                 the phoneme of the frame the next slot predicts
    advance_logit [B] float32            the last slot's "next frame moves on" logit

`TimedNARModel` also predicts codebook 1 (stage 0), given when each target frame is spoken:
every target frame carries `frame_phonemes` (the index of the phoneme it is spoken in: the
forced alignment in training, the AR's pointer at inference), embedded as that phoneme's
embedding plus how many frames of it come before and after the frame (clipped at
`TIMING_EMBEDDINGS` - 1). Codebook 1 is then made for every frame at once, on the AR's
timing, and never read back frame by frame (docs/variants/aligned.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from valle_jax.models import ARModel, NARModel, layers

Array = jax.Array

TIMING_EMBEDDINGS = 32   # frames since / until a phoneme's boundary, clipped at 31 (0.41 s)


class PointerARModel(ARModel):
  """VALL-E's AR with a phoneme pointer (see the module docstring)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    if self.group_size != 1:
      raise ValueError("the aligned variant's AR (a phoneme pointer) needs ar_group_size = 1.")
    if not self.bos:   # its pointer slots are BOS + the prompt's frames
      raise ValueError("the aligned variant's AR (a phoneme pointer) needs ar_bos = True.")
    # P(the next frame moves on to the next phoneme)
    self.advance_kernel = layers.make_param(rngs, jax.nn.initializers.lecun_normal(),
                                            (cfg.width, 1), ("embed", None))
    self.advance_bias = layers.make_param(rngs, jax.nn.initializers.zeros, (1,), (None,))

  def _pointed_embedding(self, phonemes: Array, pointers: Array) -> Array:
    """[B, T, D] the embeddings of the phonemes at `pointers` [B, T] (indices into
    phonemes [B, L])."""
    ids = jnp.take_along_axis(phonemes, jnp.clip(pointers, 0, phonemes.shape[1] - 1), axis=1)
    return layers.embed(self.phoneme_embed[...], ids)

  def advance_logits(self, h: Array) -> Array:
    """h [B, T, D] -> [B, T] float32 logit that the frame after each slot's moves on."""
    out = h @ self.advance_kernel[...].astype(h.dtype) + self.advance_bias[...].astype(h.dtype)
    return out[..., 0].astype(jnp.float32)

  def __call__(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
               audio_lens: Array, *, phoneme_pointers: Array | None = None,
               dropout_rng: Array | None = None, return_advance: bool = False
               ) -> Array | tuple[Array, Array]:
    """As `ARModel.__call__`, with `phoneme_pointers` int [B, Ta]: the index into `phonemes`
    of the phoneme each slot's frame is spoken in (`pointer_inputs_and_targets`). With
    `return_advance`, also the `advance_logits` [B, Ta]."""
    if phoneme_pointers is None:
      raise ValueError("the aligned variant's AR needs the phoneme of each audio slot "
                       "(phoneme_pointers).")
    h = self._hidden(phonemes, phoneme_lens, audio_tokens, audio_lens,
                     self._pointed_embedding(phonemes, phoneme_pointers), dropout_rng)
    if return_advance:
      return self._head(h), self.advance_logits(h)
    return self._head(h)

  def prefill(self, phonemes: Array, phoneme_lens: Array, audio_tokens: Array,
              audio_lens: Array, cache: dict[str, Array], phoneme_pointers: Array | None = None
              ) -> tuple[Array, dict[str, Array]]:
    """As `ARModel.prefill`, with `phoneme_pointers` [B, Ta] as in `__call__`; the last valid
    slot's pointer is where generation starts (the target text's first phoneme). The cache
    also holds the phonemes, the pointer [B] and `advance_logit` [B] of that slot."""
    if phoneme_pointers is None:
      raise ValueError("the aligned variant's AR needs phoneme_pointers to prefill.")
    last, cache = self._prefill_hidden(phonemes, phoneme_lens, audio_tokens, audio_lens,
                                       cache,
                                       self._pointed_embedding(phonemes, phoneme_pointers))
    rows = jnp.arange(phonemes.shape[0])
    cache.update(phonemes=phonemes, phoneme_lens=phoneme_lens.astype(jnp.int32),
                 pointer=phoneme_pointers[rows, audio_lens - 1].astype(jnp.int32),
                 advance_logit=self.advance_logits(last)[:, 0])
    return self._head(last)[:, 0], cache

  def decode_step(self, tokens: Array, cache: dict[str, Array], advance: Array | None = None
                  ) -> tuple[Array, dict[str, Array]]:
    """As `ARModel.decode_step`, with `advance` bool [B]: whether the new frame moves on to
    the next phoneme (the pointer stops at the last)."""
    if advance is None:
      raise ValueError("the aligned variant's AR: decode_step needs `advance`.")
    pointer = jnp.minimum(cache["pointer"] + advance.astype(jnp.int32),
                          cache["phoneme_lens"] - 1)
    h, cache = self._decode_hidden(
        tokens, cache, self._pointed_embedding(cache["phonemes"], pointer[:, None]))
    cache.update(pointer=pointer, advance_logit=self.advance_logits(h)[:, 0])
    return self._head(h)[:, 0], cache


class TimedNARModel(NARModel):
  """VALL-E's NAR over codebooks 1..Q, told each target frame's phoneme (module docstring)."""
  first_stage = 0

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    # frames since / until their phoneme's boundary
    self.timing_embed = layers.make_param(rngs, layers.embed_init(cfg.width),
                                          (2, TIMING_EMBEDDINGS, cfg.width),
                                          (None, None, "embed"))

  def __call__(self, phonemes: Array, phoneme_lens: Array, prompt_codes: Array,
               prompt_lens: Array, target_codes: Array, target_lens: Array, stage: Array,
               *, frame_phonemes: Array | None = None,
               dropout_rng: Array | None = None) -> Array:
    """As `NARModel.__call__` (stage in [0, Q)), with `frame_phonemes` int [B, T]: the index
    into `phonemes` of the phoneme each target frame is spoken in."""
    if frame_phonemes is None:
      raise ValueError("the aligned variant's NAR needs frame_phonemes, the phoneme each "
                       "target frame is spoken in.")
    return super().__call__(phonemes, phoneme_lens, prompt_codes, prompt_lens, target_codes,
                            target_lens, stage, dropout_rng=dropout_rng,
                            target_extra=self._embed_timing(phonemes, frame_phonemes,
                                                            target_lens))

  def _embed_timing(self, phonemes: Array, frame_phonemes: Array, target_lens: Array
                    ) -> Array:
    """[B, T, D]: each frame's phoneme embedding and where in that phoneme it is."""
    frame_phonemes = jnp.clip(frame_phonemes, 0, phonemes.shape[1] - 1)
    ids = jnp.take_along_axis(phonemes, frame_phonemes, axis=1)              # [B, T]
    since, until = frames_since_and_until(frame_phonemes, target_lens)
    table = self.timing_embed[...]
    clip = lambda n: jnp.clip(n, 0, TIMING_EMBEDDINGS - 1)   # noqa: E731
    return (layers.embed(self.phoneme_embed[...], ids) + layers.embed(table[0], clip(since))
            + layers.embed(table[1], clip(until)))


def frames_since_and_until(frame_phonemes: Array, lens: Array) -> tuple[Array, Array]:
  """For each frame of phoneme indices [B, T] (`lens` [B] valid), how many frames of the
  same phoneme come before it and after it (int32 [B, T] each; a frame's phoneme ends at
  the last valid frame)."""
  t = frame_phonemes.shape[1]
  slot = jnp.arange(t)[None, :]
  moved = jnp.concatenate([jnp.ones_like(frame_phonemes[:, :1], bool),
                           frame_phonemes[:, 1:] != frame_phonemes[:, :-1]], axis=1)
  run_start = jax.lax.cummax(jnp.where(moved, slot, 0), axis=1)
  ends = (slot + 1 >= lens[:, None]) | jnp.concatenate(
      [frame_phonemes[:, 1:] != frame_phonemes[:, :-1],
       jnp.ones_like(frame_phonemes[:, :1], bool)], axis=1)                # [B, T]
  run_end = jax.lax.cummin(jnp.where(ends, slot, t - 1), axis=1, reverse=True)
  return (slot - run_start).astype(jnp.int32), (run_end - slot).astype(jnp.int32)


def prompt_pointers(prompt_phoneme_lens: Array, prompt_lens: Array, num_slots: int) -> Array:
  """The pointer inputs [B, num_slots] for BOS + a prompt at inference.

  The prompt's alignment is unknown, so its frames are split evenly over its transcript's
  P phonemes (as training does for a pair's first utterance, `data.even_split` of this package); the slot
  after the prompt (the first new frame) points at phoneme P, the target text's first.
  prompt_phoneme_lens: int [B] P; prompt_lens: int [B] prompt frames.
  """
  slot = jnp.arange(num_slots)[None, :]
  p = prompt_phoneme_lens[:, None]
  even = ((slot + 0.5) * p / jnp.maximum(prompt_lens[:, None], 1)).astype(jnp.int32)
  return jnp.where(slot < prompt_lens[:, None], jnp.minimum(even, p - 1), p).astype(jnp.int32)


def pointer_inputs_and_targets(phoneme_of_frame: Array, code_lens: Array, phoneme_lens: Array,
                               target_start: Array) -> tuple[Array, Array, Array]:
  """The phoneme pointer's inputs and targets.

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
