"""The aligned variant's decoding: the AR's phoneme pointer, moved by a sampler controller,
and the NAR making codebook 1 on the pointer's timing.

`PointerController` plugs into VALL-E's `sampling.sample_ar` loop (its `Controller`
extension point): the pointer starts at the target text's first phoneme and each step moves
on with the model's probability; EOS is masked until the pointer is on the last phoneme.
`AlignedDecoding` runs it, then `sampling.decode_nar` with the NAR's stage 0 (codebook 1)
first, told each frame's phoneme, and the codec's once-per-utterance codebooks (the voice
code) copied from the prompt; like VALL-E's `Decoding`, the NAR runs over the AR's longest
output rounded up to a `sampling.NAR_FRAME_BUCKETS` size (`sampling.nar_frames`), not the
whole `max_steps` room.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from valle_jax import sampling
from valle_jax.errors import UserError
from valle_jax.variants.aligned.data import utterance_codebooks
from valle_jax.variants.aligned.models import prompt_pointers

Array = jax.Array

POINTER_ADVANCES = ("sample", "median", "mean")
# The pointer moves on once log prod (1 - p_advance) over the phoneme's frames falls to:
# log 1/2 (the median length), or -1 (the integrated hazard reaches 1: the mean length of
# a phoneme with a constant p).
_STAY_LOG_PROB_TO_MOVE_ON = {"median": -math.log(2.0), "mean": -1.0}


@dataclasses.dataclass(frozen=True)
class PointerController(sampling.Controller):
  """Moves the AR's phoneme pointer (`controller_inputs`: the prompt transcript's phoneme
  counts [B], `Batch.prompt_phoneme_lens`).

  max_dwell: the pointer moves on after this many x the prompt's frames per phoneme (its
    speaking rate); on the last phoneme, moving on is EOS, so it also ends an utterance the
    AR would not end. 0: no bound.
  advance: "sample" draws each move on from the model's probability p; "median" and
    "mean" move on once the chance that it would still have stayed, prod (1 - p) over the
    phoneme's frames so far, falls to 1/2 (the median length) or to 1/e (the integrated
    hazard reaches 1: the mean length for a constant p), and on the last phoneme that move
    is the end (EOS, unless the AR chose it before). The same text then gets the same
    timing, without draw-to-draw jitter in the durations.
  `ARSample.controlled` is the pointer's path: int32 [B, max_steps], the index into the
  phonemes of the phoneme each new frame is spoken in (0 past the sequence's length).
  """
  max_dwell: float = 0.0
  advance: str = "sample"

  def __post_init__(self):
    if self.max_dwell < 0:
      raise ValueError(f"max_dwell must be >= 0 (0: no bound), got {self.max_dwell}.")
    if self.advance not in POINTER_ADVANCES:
      raise ValueError(f"the pointer's advance must be one of {POINTER_ADVANCES}, got "
                       f"{self.advance!r}.")

  def prefill_kwargs(self, model, inputs, audio, prompt_lens):
    if not hasattr(model, "advance_logits"):
      raise ValueError("the pointer controller needs the aligned variant's AR "
                       "(PointerARModel).")
    if inputs is None:
      raise ValueError("the pointer controller needs the prompt transcripts' phoneme counts "
                       "(controller_inputs).")
    return {"phoneme_pointers": prompt_pointers(inputs, prompt_lens, audio.shape[1])}

  def init(self, inputs, prompt_lens, max_steps):
    b = prompt_lens.shape[0]
    rate = prompt_lens / jnp.maximum(inputs, 1)         # the prompt's frames per phoneme [B]
    return {"dwell": jnp.zeros((b,), jnp.int32),       # frames on the pointer's phoneme
            "stay_log_prob": jnp.zeros((b,), jnp.float32),   # log prod (1 - p) over them
            "max_dwell": self.max_dwell * rate,
            "path": jnp.zeros((b, max_steps), jnp.int32)}

  def _reading(self, cache) -> Array:
    """bool [B]: the pointer is not yet on the last phoneme."""
    return cache["pointer"] < cache["phoneme_lens"] - 1

  def adjust_logits(self, carry, logits, cache):
    eos = logits.shape[-1] - 1
    # The utterance ends with its text: EOS only once the pointer is on the last phoneme.
    reading = self._reading(cache)                                                # [B]
    logits = logits.at[..., eos].set(jnp.where(reading[:, None], -jnp.inf, logits[..., eos]))
    # Moving on from the last phoneme (at max_dwell, or a deterministic move) is the end.
    ends = jnp.zeros_like(reading)
    if self.max_dwell:
      ends |= carry["dwell"] >= carry["max_dwell"]
    if self.advance != "sample":
      ends |= carry["stay_log_prob"] <= _STAY_LOG_PROB_TO_MOVE_ON[self.advance]
    only_eos = jnp.where(jnp.arange(logits.shape[-1]) == eos, 0.0, -jnp.inf)     # [V + 1]
    return jnp.where((ends & ~reading)[:, None, None], only_eos, logits)

  def after_choice(self, carry, cache, step, active, rng):
    reading = self._reading(cache)
    path = carry["path"].at[:, step].set(jnp.where(active, cache["pointer"], 0))
    advance_logit = cache["advance_logit"]                                        # [B]
    stay_log_prob = carry["stay_log_prob"] - jax.nn.softplus(advance_logit)  # += log(1 - p)
    if self.advance == "sample":
      advance = jax.random.bernoulli(rng, jax.nn.sigmoid(advance_logit))
    else:
      advance = stay_log_prob <= _STAY_LOG_PROB_TO_MOVE_ON[self.advance]
    dwell = carry["dwell"] + 1                            # with the frame just chosen
    if self.max_dwell:
      advance |= dwell >= carry["max_dwell"]
    moved = advance & reading                             # the last phoneme's frames add up
    return ({**carry, "path": path, "dwell": jnp.where(moved, 0, dwell),
             "stay_log_prob": jnp.where(moved, 0.0, stay_log_prob)},
            {"advance": advance})

  def outputs(self, carry, made):
    return jnp.where(made, carry["path"], 0)


class AlignedDecoding(sampling.Decoding):
  """Synthesis with the aligned variant's models (see the module docstring)."""

  def __init__(self, controller: PointerController, copied_codebooks: tuple[int, ...] = ()):
    self.controller = controller
    self.copied_codebooks = copied_codebooks

  def check(self, continual: bool) -> None:
    if continual:
      raise UserError("the aligned variant's AR moves a phoneme pointer and needs to know "
                      "where the prompt's words end: use zero-shot mode (a prompt and its "
                      "transcript), not --continual.")

  def __call__(self, ar_def, ar_state, nar_def, nar_state, batch, rng, options,
               codebooks: int = 0, *, nar_text_only: bool = False):
    if batch.prompt_phoneme_lens is None:
      raise ValueError("the aligned variant samples with the prompts' phoneme counts "
                       "(prepare_batch's prompt_phoneme_lens).")
    out = sampling.sample_ar(ar_def, ar_state, batch.phonemes, batch.phoneme_lens,
                             batch.prompt[..., 0], batch.prompt_lens, rng, options=options,
                             max_steps=batch.max_steps, controller=self.controller,
                             controller_inputs=batch.prompt_phoneme_lens)
    made = out.controlled.shape[1]             # the NAR runs over the AR's output, bucketed
    frames = sampling.nar_frames(int(jnp.max(out.lengths)), made)
    phonemes, phoneme_lens = batch.phonemes, batch.phoneme_lens
    frame_phonemes = out.controlled[:, :frames]                       # [B, frames]
    if nar_text_only:    # the pointer's phonemes counted from the text's first
      phonemes, phoneme_lens = sampling.text_after_prompt(batch)
      frame_phonemes = jnp.maximum(
          frame_phonemes - jnp.asarray(batch.prompt_phoneme_lens)[:, None], 0)
    codes = decode_nar(nar_def, nar_state, phonemes, phoneme_lens, batch.prompt,
                       batch.prompt_lens, out.lengths, frame_phonemes, self.copied_codebooks,
                       codebooks)
    codes = jnp.pad(codes, ((0, 0), (0, made - frames), (0, 0)))     # [B, max_steps, K]
    return codes, out.lengths, out.hit_limit


def decode_nar(nar_def, nar_state, phonemes, phoneme_lens, prompt, prompt_lens, target_lens,
               frame_phonemes, copied_codebooks: tuple[int, ...] = (), codebooks: int = 0
               ) -> Array:
  """Every codebook by the NAR (`sampling.decode_nar`), codebook 1 first, on the timing
  `frame_phonemes` [B, T]; the codebooks in `copied_codebooks` (0-based, >= 1) are not
  predicted: every target frame takes the prompt's code (its first frame's)."""
  q = prompt.shape[-1]
  if any(not 1 <= j < q for j in copied_codebooks):
    raise ValueError(f"copied_codebooks {copied_codebooks} must lie in [1, {q})")
  b, t = frame_phonemes.shape
  given = jnp.zeros((b, t, q), jnp.int32)
  if copied_codebooks:   # set before the passes: stage j reads codebooks < j only
    voice = list(copied_codebooks)
    given = given.at[..., voice].set(jnp.broadcast_to(prompt[:, :1, voice],
                                                      (b, t, len(voice))).astype(jnp.int32))
  stages = tuple(j for j in range(q) if j not in copied_codebooks)
  first = jnp.zeros((b, t), jnp.int32)     # not read: stage 0 makes codebook 1
  return sampling.decode_nar(nar_def, nar_state, phonemes, phoneme_lens, prompt, prompt_lens,
                             first, target_lens, codebooks, stages=stages, given_codes=given,
                             model_inputs={"frame_phonemes": frame_phonemes})


def decoding(cfg, codec_description: dict[str, Any]) -> AlignedDecoding:
  """The recipe's decoding for a run config (its `pointer` section, configs: config.py)."""
  pointer = cfg.get("pointer")
  try:
    controller = PointerController(**(dict(pointer.items()) if pointer else {}))
  except (TypeError, ValueError) as e:
    raise UserError(f"config.pointer: {e}") from None
  return AlignedDecoding(controller, utterance_codebooks(codec_description))
