"""Decoding the AR and NAR models: pure functions under `jax.jit`.

    graphdef, state = nnx.split(ar_model)
    batch = sampling.prepare_batch(phoneme_ids, prompt_codes, ar_model.group_size, options)
    out = sampling.sample_ar(graphdef, state, batch.phonemes, batch.phoneme_lens,
                             batch.prompt[..., 0], batch.prompt_lens, rng,
                             options=options, max_steps=batch.max_steps)
    codes = sampling.decode_nar(*nnx.split(nar_model), batch.phonemes, batch.phoneme_lens,
                                batch.prompt, batch.prompt_lens, out.codes, out.lengths)

**AR** (`sample_ar`): prefill over phonemes + BOS (for an AR with `ar_bos`; without, the
prompt must hold at least one group) + the prompt's codebook-1 groups, then a
`lax.while_loop` whose carry holds the step, the next logits, the KV cache, which
sequences have finished, the last K chosen frames (for repetition-aware sampling) and the
rng. Each step picks one group of G frames per sequence (VALL-E 2 grouped code modeling;
G = 1 is plain VALL-E) and appends it to the cache with `ARModel.decode_step`. A sequence
stops at the first EOS (a group ends at its first EOS frame) or at its length limit,
`max_frames_per_phoneme` x its phoneme count (prompt transcript included), capped by the
`max_steps` groups the cache was sized for. The batch decodes in lockstep until every
sequence has stopped; each prompt may have its own length.

**Token choice** (`choose_tokens`): temperature, then top-k, then top-p (nucleus); with
repetition-aware sampling (VALL-E 2 §3.4.1) the nucleus sample is kept unless the fraction
r of the previous K frames (prompt included) equal to it exceeds t_r, in which case that
frame is drawn again from the full (temperature-scaled) distribution.

**Text guidance** (`text_guidance` w > 0, for an AR trained with `ar_text_dropout`):
classifier-free guidance. Each example is decoded twice in one batch of 2B, with its text
and with every phoneme <pad>, and tokens are drawn from l_text + w (l_text - l_none); the
phoneme pointer moves by the text's advance logits.

**Shapes and recompiles**: `prepare_batch` pads phonemes and prompts to a few bucket sizes
and derives `max_steps` from the phoneme bucket, so a new text rarely changes a shape
and `sample_ar` compiles once per (batch, bucket) pair.

**NAR** (`decode_nar`): Q - 1 greedy passes (codebooks 2..Q) over the whole target, one
`lax.fori_loop` over the stages inside one compiled function; a NAR trained on codebook 1
too (`nar_codebook1`) can make it first, on the timing the AR's phoneme pointer took. A codec's one-per-utterance
codebooks (`valle_jax.codec.utterance_codebooks`: the offline codec's voice code) are copied
from the prompt instead of predicted. `codebooks=K` makes only the first K (K - 1 passes), a
lower codec bandwidth.

With `use_cache=False` the AR re-runs the full forward over the whole (padded) sequence at
every step instead of using the cache, as the PyTorch implementations do; it exists as the
benchmark's baseline and gives the same logits.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from valle_jax import models

Array = jax.Array

# Phonemes per example (prompt transcript + target text) and prompt frames (75 = 1 s).
PHONEME_BUCKETS = (64, 128, 256, 512)
PROMPT_BUCKETS = (128, 256, 512, 1024)
POINTER_ADVANCES = ("sample", "median", "mean")
# The pointer moves on once log prod (1 - p_advance) over the phoneme's frames falls to:
# log 1/2 (the median length), or -1 (the integrated hazard reaches 1: the mean length of
# a phoneme with a constant p).
_STAY_LOG_PROB_TO_MOVE_ON = {"median": -math.log(2.0), "mean": -1.0}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """How the AR picks tokens and when it stops. Hashable: a static argument of the jit.

  Attributes:
    temperature: logits are divided by it (> 0).
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set of most likely tokens whose mass reaches p (1.0: all).
    ras: repetition-aware sampling (VALL-E 2 §3.4.1).
    ras_window: K, the previous frames (prompt included) r is measured over.
    ras_threshold: t_r; a nucleus sample with r > t_r is redrawn from the full distribution.
    max_frames_per_phoneme: a sequence stops after this many frames per phoneme (the
      prompt transcript's phonemes included) even without EOS.
    max_frames: cap on the frames one sequence may generate (sizes the KV cache).
    use_cache: False re-runs the full forward each step (the no-cache baseline).
    min_dwell, max_dwell: for an AR with `ar_phoneme_pointer`, bounds on the frames the
      pointer stays on one phoneme, as multiples of the prompt's frames per phoneme (its
      speaking rate): it does not move on before `min_dwell` x that many frames and moves
      on at `max_dwell` x (0: no bound); on the last phoneme, moving on is EOS, so
      `max_dwell` also ends an utterance the AR would not end. Between them it moves on
      with the model's probability.
    pointer_advance: how the phoneme pointer moves on (within `min_dwell` / `max_dwell`):
      "sample" draws each move from the model's probability p; "median" and "mean" move on
      once the chance that it would still have stayed, prod (1 - p) over the phoneme's
      frames so far, falls to 1/2 (the median length) or to 1/e (the integrated hazard
      reaches 1: the mean length for a constant p), and on the last phoneme that move is
      the end (EOS, unless the AR chose it before). The same text then gets the same
      timing, without draw-to-draw jitter in the durations.
    text_guidance: w, classifier-free guidance on the text, for an AR trained with
      `ar_text_dropout`: tokens are chosen from l_text + w (l_text - l_none), where l_none
      are the same AR's logits with every phoneme replaced by <pad> (no text; the prompt's
      audio kept). 0: off. It runs the AR on a batch twice the size.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  ras: bool = False
  ras_window: int = 10
  ras_threshold: float = 0.1
  max_frames_per_phoneme: float = 12.0
  max_frames: int = 3000
  use_cache: bool = True
  min_dwell: float = 0.0
  max_dwell: float = 0.0
  pointer_advance: str = "sample"
  text_guidance: float = 0.0

  def __post_init__(self):
    problems = []
    if not self.temperature > 0:
      problems.append(f"temperature must be > 0, got {self.temperature}")
    if self.top_k < 0:
      problems.append(f"top_k must be >= 0 (0: off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p must be in (0, 1], got {self.top_p}")
    if self.ras_window < 1:
      problems.append(f"ras_window must be >= 1, got {self.ras_window}")
    if not 0 <= self.ras_threshold < 1:
      problems.append(f"ras_threshold must be in [0, 1), got {self.ras_threshold}")
    if self.min_dwell < 0 or self.max_dwell < 0 or (
        self.max_dwell and self.max_dwell < self.min_dwell):
      problems.append(f"need 0 <= min_dwell <= max_dwell (0: no bound), got "
                      f"{self.min_dwell} and {self.max_dwell}")
    if self.pointer_advance not in POINTER_ADVANCES:
      problems.append(f"pointer_advance must be one of {POINTER_ADVANCES}, got "
                      f"{self.pointer_advance!r}")
    if self.text_guidance < 0:
      problems.append(f"text_guidance must be >= 0 (0: off), got {self.text_guidance}")
    if not self.max_frames_per_phoneme > 0 or self.max_frames < 1:
      problems.append("max_frames_per_phoneme and max_frames must be positive")
    if problems:
      raise ValueError("; ".join(problems) + ".")

  @property
  def steers_pointer(self) -> bool:
    """Whether these options act on the AR's phoneme pointer (`ar_phoneme_pointer`)."""
    return bool(self.min_dwell or self.max_dwell or self.pointer_advance != "sample")

  @classmethod
  def from_config(cls, cfg: Any | None, **overrides) -> "SampleOptions":
    """Options from a config's `sample` section (missing fields keep their defaults)."""
    values = {} if cfg is None else dict(cfg.items() if hasattr(cfg, "items") else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
      raise ValueError(f"unknown sample options {sorted(unknown)}; known: {sorted(names)}.")
    return cls(**{**values, **overrides})


# ------------------------------------------------------------------------- token choice


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Sets logits outside the top-k and then the top-p nucleus to -inf. logits [B, V]."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]                    # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]                    # [B, V] descending
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(ordered, num_kept - 1, axis=-1)  # [B, 1]
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def choose_tokens(logits: Array, recent: Array, rng: Array, options: SampleOptions
                  ) -> tuple[Array, Array]:
  """Picks one token per row.

  Args:
    logits: float [B, V] (model output for one frame).
    recent: int [B, K] the previous K frames, oldest first (-1 where there are none yet).
    rng: PRNG key.
  Returns:
    tokens int32 [B], and fell_back bool [B]: whether repetition-aware sampling replaced
    the nucleus sample with a draw from the full distribution.
  """
  scaled = logits.astype(jnp.float32) / options.temperature
  nucleus_rng, full_rng = jax.random.split(rng)
  tokens = jax.random.categorical(
      nucleus_rng, filter_logits(scaled, options.top_k, options.top_p)).astype(jnp.int32)
  if not options.ras:
    return tokens, jnp.zeros(tokens.shape, bool)
  repeat_ratio = jnp.mean(recent == tokens[:, None], axis=-1)       # r [B]
  fell_back = repeat_ratio > options.ras_threshold
  resampled = jax.random.categorical(full_rng, scaled).astype(jnp.int32)
  return jnp.where(fell_back, resampled, tokens), fell_back


def _choose_group(logits: Array, recent: Array, rng: Array, options: SampleOptions
                  ) -> tuple[Array, Array, Array]:
  """Picks a group frame by frame, each frame seeing the ones before it in `recent`.

  logits [B, G, V + 1], recent [B, K] -> tokens int32 [B, G], fell_back [B, G], recent.
  """
  tokens, fell_back = [], []
  for g, key in enumerate(jax.random.split(rng, logits.shape[1])):
    token, fell = choose_tokens(logits[:, g], recent, key, options)
    recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
    tokens.append(token)
    fell_back.append(fell)
  return jnp.stack(tokens, 1), jnp.stack(fell_back, 1), recent


# ----------------------------------------------------------------------------------- AR


class ARSample(NamedTuple):
  """What `sample_ar` returns.

  codes: int32 [B, max_steps * G] new codebook-1 frames; 0 past `lengths`.
  lengths: int32 [B] frames before the sequence's EOS (or all it made, at the limit).
  hit_limit: bool [B] the sequence stopped at its length limit without emitting EOS.
  ras_fallbacks: int32 [B] frames that repetition-aware sampling redrew.
  logits: float32 [B, max_steps, G, V + 1] the model's logits at each step (rows past a
    sequence's end are whatever the lockstep loop computed), or None unless asked for.
  phoneme_of_frame: int32 [B, max_steps] with `ar_phoneme_pointer`: the index into the
    phonemes of the phoneme each new frame is spoken in (the pointer's path; 0 past
    `lengths`), the timing `decode_nar` gives a `nar_codebook1` NAR; else None.
  """
  codes: Array
  lengths: Array
  hit_limit: Array
  ras_fallbacks: Array
  logits: Array | None
  phoneme_of_frame: Array | None = None


class _Loop(NamedTuple):
  """The while-loop carry."""
  step: Array            # int32 []: groups chosen so far
  logits: Array          # [B, G, V + 1] for the group chosen next
  decoder: Any           # the KV cache (or, without cache, the token buffer and lengths)
  finished: Array        # bool [B]
  recent: Array          # int32 [B, K] the last K frames, oldest first
  rng: Array
  codes: Array           # int32 [B, max_steps, G]
  lengths: Array         # int32 [B] frames so far
  hit_limit: Array       # bool [B]
  ras_fallbacks: Array   # int32 [B]
  dwell: Array           # int32 [B] frames chosen so far on the pointer's phoneme
  stay_log_prob: Array   # float32 [B] log prod (1 - p_advance) over those frames
  all_logits: Array | None  # [B, max_steps, G, V + 1] or None
  path: Array | None     # int32 [B, max_steps] the pointer at each frame, or None


def _cached_decoder(model, phonemes, phoneme_lens, audio, audio_lens, max_steps,
                    pointers=None):
  """(first logits [B, G, V + 1], cache) and the step function, with the KV cache."""
  num_slots = phonemes.shape[1] + audio.shape[1] + max_steps
  cache = model.init_cache(phonemes.shape[0], num_slots)
  return (model.prefill(phonemes, phoneme_lens, audio, audio_lens, cache, pointers),
          model.decode_step)


def _full_forward_decoder(model, phonemes, phoneme_lens, audio, audio_lens, max_steps,
                          pointers=None):
  """Like `_cached_decoder`, re-running the full forward over a fixed-size token buffer."""
  if pointers is not None:
    raise ValueError("ar_phoneme_pointer samples with the KV cache only (use_cache=True).")
  rows = jnp.arange(audio.shape[0])

  def forward(buffer, lens):                   # logits at each example's last valid group
    return model(phonemes, phoneme_lens, buffer, lens)[rows, lens - 1]

  def step(tokens, state):
    buffer, lens = state
    buffer = buffer.at[rows, lens].set(tokens)
    return forward(buffer, lens + 1), (buffer, lens + 1)

  buffer = jnp.pad(audio, [(0, 0), (0, max_steps), (0, 0)])          # [B, A + steps, G]
  return (forward(buffer, audio_lens), (buffer, audio_lens)), step


def _text_guided(start, weight: float):
  """`start` (a decoder maker above) made to decode each example twice, with its text and
  with none (every phoneme <pad>, the count kept: as `ar_text_dropout` trained it), and to
  return the guided logits l_text + w (l_text - l_none) [B, G, V + 1]. The decoder state
  holds both halves ([2B] rows, the texted first); the step takes [B] tokens and advances."""
  def guide(logits):                                                   # [2B, G, V + 1]
    with_text, without = jnp.split(logits, 2)
    return with_text + weight * (with_text - without)

  def twice(x):
    return None if x is None else jnp.concatenate([x, x])

  def guided_start(model, phonemes, phoneme_lens, audio, audio_lens, max_steps,
                   pointers=None):
    no_text = jnp.full_like(phonemes, models.NO_TEXT)
    (logits, decoder), step_fn = start(model, jnp.concatenate([phonemes, no_text]),
                                       twice(phoneme_lens), twice(audio), twice(audio_lens),
                                       max_steps, twice(pointers))

    def guided_step(tokens, decoder, *advance):
      logits, decoder = step_fn(twice(tokens), decoder, *map(twice, advance))
      return guide(logits), decoder
    return (guide(logits), decoder), guided_step
  return guided_start


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "max_steps",
                                             "return_logits"))
def sample_ar(graphdef: nnx.GraphDef, state: nnx.State, phonemes: Array, phoneme_lens: Array,
              prompt: Array, prompt_lens: Array, rng: Array, *, options: SampleOptions,
              max_steps: int, return_logits: bool = False,
              prompt_phoneme_lens: Array | None = None) -> ARSample:
  """Samples codebook-1 continuations of the prompts (see the module docstring).

  Args:
    graphdef, state: `nnx.split(ar_model)`.
    phonemes: int [B, L] prompt transcript + target text ids; phoneme_lens: int [B].
    prompt: int [B, P] codebook-1 frames of the acoustic prompts (P a multiple of G);
      prompt_lens: int [B] valid frames; frames past the last whole group are not used.
    rng: PRNG key; the same key gives the same output.
    options: `SampleOptions` (static).
    max_steps: groups to make room for (static; the cache has L + 1 + P/G + max_steps slots,
      without the 1 for an AR without BOS).
    return_logits: also return every step's logits (for tests and analysis).
    prompt_phoneme_lens: int [B], for an AR with `ar_phoneme_pointer`: phonemes of the
      prompt's transcript (the text to say starts after them). The pointer starts there
      and each step moves on with the probability the model gives, within the options'
      `min_dwell` and `max_dwell`.
  Returns:
    `ARSample`.
  """
  model = nnx.merge(graphdef, state)
  g, eos = model.group_size, models.eos_id(model.codebook_size)
  b, p = prompt.shape
  if p % g:
    raise ValueError(f"prompt frames ({p}) must be a multiple of the group size {g}.")
  groups = prompt_lens // g                                           # [B]
  used = groups * g
  prompt = jnp.where(jnp.arange(p)[None] < used[:, None], prompt, 0).astype(jnp.int32)
  audio = prompt.reshape(b, p // g, g)                                # [B, P/G, G]
  if model.bos:
    bos = jnp.full((b, 1, g), models.bos_id(model.codebook_size), jnp.int32)
    audio = jnp.concatenate([bos, audio], axis=1)                     # [B, 1 + P/G, G]
  pointers = None
  if model.phoneme_pointer:
    if prompt_phoneme_lens is None:
      raise ValueError("an AR with ar_phoneme_pointer needs prompt_phoneme_lens.")
    pointers = models.prompt_pointers(prompt_phoneme_lens, used, audio.shape[1])
  elif options.steers_pointer:
    raise ValueError("min_dwell, max_dwell and pointer_advance steer the phoneme pointer; "
                     "this AR has none (model.ar_phoneme_pointer).")
  start = _cached_decoder if options.use_cache else _full_forward_decoder
  if options.text_guidance:
    start = _text_guided(start, options.text_guidance)
  (logits, decoder), step_fn = start(model, phonemes, phoneme_lens, audio,
                                     groups + model.bos, max_steps, pointers)

  # The last K prompt frames, oldest first; -1 where the prompt is shorter than K.
  k = options.ras_window
  window = used[:, None] - k + jnp.arange(k)[None]                    # [B, K]
  recent = jnp.where(window >= 0, jnp.take_along_axis(prompt, jnp.maximum(window, 0), 1), -1)
  frame_limit = jnp.ceil(options.max_frames_per_phoneme * phoneme_lens).astype(jnp.int32)
  if pointers is not None:   # the prompt's frames per phoneme [B]
    rate = used / jnp.maximum(prompt_phoneme_lens, 1)
    min_dwell, max_dwell = options.min_dwell * rate, options.max_dwell * rate
  move_on_at = _STAY_LOG_PROB_TO_MOVE_ON.get(options.pointer_advance)   # None: drawn
  group_limit = jnp.minimum((frame_limit + g - 1) // g, max_steps)   # [B] groups

  def body(s: _Loop) -> _Loop:
    rng, step_rng = jax.random.split(s.rng)
    logits = s.logits
    if pointers is not None:
      rng, advance_rng = jax.random.split(rng)
      # The utterance ends with its text: EOS only once the pointer is on the last phoneme.
      # (Rows past B are text guidance's second half, which follows the first.)
      reading = s.decoder["pointer"][:b] < s.decoder["phoneme_lens"][:b] - 1     # [B]
      logits = logits.at[..., eos].set(jnp.where(reading[:, None], -jnp.inf,
                                                 logits[..., eos]))
      # Moving on from the last phoneme (at max_dwell, or a deterministic move) is the end.
      ends = jnp.zeros_like(reading)                                               # [B]
      if options.max_dwell:
        ends |= s.dwell >= max_dwell
      if move_on_at is not None:
        ends |= s.stay_log_prob <= move_on_at
      only_eos = jnp.where(jnp.arange(logits.shape[-1]) == eos, 0.0, -jnp.inf)    # [V + 1]
      logits = jnp.where((ends & ~reading)[:, None, None], only_eos, logits)
    tokens, fell_back, recent = _choose_group(logits, s.recent, step_rng, options)
    is_eos = tokens == eos                                            # [B, G]
    tokens = jnp.where(jnp.cumsum(is_eos, axis=1) > 0, eos, tokens)  # EOS ends the group
    ended = jnp.any(is_eos, axis=1)
    active = ~s.finished
    at_limit = s.step + 1 >= group_limit
    new_frames = jnp.where(ended, jnp.argmax(is_eos, axis=1), g)
    all_logits = (None if s.all_logits is None
                  else s.all_logits.at[:, s.step].set(s.logits))
    dwell, stay_log_prob, path = s.dwell, s.stay_log_prob, s.path
    if pointers is None:
      logits, decoder = step_fn(tokens, s.decoder)
    else:
      path = path.at[:, s.step].set(jnp.where(active, s.decoder["pointer"][:b], 0))
      advance_logit = s.decoder["advance_logit"][:b]                             # [B]
      stay_log_prob = s.stay_log_prob - jax.nn.softplus(advance_logit)  # += log(1 - p)
      if move_on_at is not None:
        advance = stay_log_prob <= move_on_at
      else:
        advance = jax.random.bernoulli(advance_rng, jax.nn.sigmoid(advance_logit))
      dwell = s.dwell + 1                                # with the frame just chosen
      if options.min_dwell:
        advance &= dwell >= min_dwell
      if options.max_dwell:
        advance |= dwell >= max_dwell
      dwell = jnp.where(advance & reading, 0, dwell)   # the last phoneme's frames add up
      stay_log_prob = jnp.where(advance & reading, 0.0, stay_log_prob)
      logits, decoder = step_fn(tokens, s.decoder, advance)
    return _Loop(
        step=s.step + 1, logits=logits, decoder=decoder,
        finished=s.finished | ended | at_limit, recent=recent, rng=rng,
        codes=s.codes.at[:, s.step].set(jnp.where(active[:, None], tokens, 0)),
        lengths=s.lengths + jnp.where(active, new_frames, 0),
        hit_limit=s.hit_limit | (active & ~ended & at_limit),
        ras_fallbacks=s.ras_fallbacks + jnp.where(active, jnp.sum(fell_back, axis=1), 0),
        dwell=dwell, stay_log_prob=stay_log_prob, all_logits=all_logits, path=path)

  def cond(s: _Loop) -> Array:
    return (s.step < max_steps) & ~jnp.all(s.finished)

  zeros = jnp.zeros((b,), jnp.int32)
  init = _Loop(
      step=jnp.zeros((), jnp.int32), logits=logits, decoder=decoder,
      finished=jnp.zeros((b,), bool), recent=recent.astype(jnp.int32), rng=rng,
      codes=jnp.zeros((b, max_steps, g), jnp.int32), lengths=zeros,
      hit_limit=jnp.zeros((b,), bool), ras_fallbacks=zeros, dwell=zeros,
      stay_log_prob=jnp.zeros((b,), jnp.float32),
      all_logits=jnp.zeros((b, max_steps) + logits.shape[1:], jnp.float32)
      if return_logits else None,
      path=None if pointers is None else jnp.zeros((b, max_steps), jnp.int32))
  s = jax.lax.while_loop(cond, body, init)
  made = jnp.arange(max_steps * g)[None] < s.lengths[:, None]          # [B, max_steps * G]
  codes = jnp.where(made, s.codes.reshape(b, max_steps * g), 0)
  path = None if s.path is None else jnp.where(made, s.path, 0)
  return ARSample(codes, s.lengths, s.hit_limit, s.ras_fallbacks, s.all_logits, path)


# ---------------------------------------------------------------------------------- NAR


@functools.partial(jax.jit, static_argnames=("graphdef", "copied_codebooks", "codebooks",
                                             "make_codebook1"))
def decode_nar(graphdef: nnx.GraphDef, state: nnx.State, phonemes: Array,
               phoneme_lens: Array, prompt: Array, prompt_lens: Array, first: Array,
               target_lens: Array, copied_codebooks: tuple[int, ...] = (),
               codebooks: int = 0, frame_phonemes: Array | None = None,
               make_codebook1: bool = False) -> Array:
  """Greedy NAR decoding of codebooks 2..K, one pass per codebook over the whole target.

  A NAR with `nar_codebook1` reads `frame_phonemes`, the phoneme of each target frame (the
  AR's `ARSample.phoneme_of_frame`), and with `make_codebook1` also makes codebook 1 in a
  first pass, in place of `first` (whose values are then not read): the AR sets the timing,
  the NAR every code.

  Codebooks in `copied_codebooks` (0-based, >= 1: the codec's `utterance_codebooks`, one code
  per utterance) are not predicted: every target frame takes the prompt's code (its first
  frame's), the voice being the prompt's. `codebooks` is K, how many codebooks to make (the
  first K: a lower codec bandwidth, and K - 1 NAR passes); 0 makes all Q.

  Args:
    graphdef, state: `nnx.split(nar_model)`.
    phonemes: int [B, L]; phoneme_lens: int [B].
    prompt: int [B, P, Q] acoustic prompt codes; prompt_lens: int [B].
    first: int [B, T] codebook-1 codes of the target (the AR's output).
    target_lens: int [B] valid target frames.
    frame_phonemes: int [B, T] indices into `phonemes`, for a `nar_codebook1` NAR.
  Returns:
    int32 codes [B, T, K]; 0 past `target_lens`.
  """
  model = nnx.merge(graphdef, state)
  b, t = first.shape
  if not 0 <= codebooks <= model.num_codebooks:
    raise ValueError(f"codebooks must be in [1, {model.num_codebooks}] (0: all), got "
                     f"{codebooks}")
  q, k = model.num_codebooks, codebooks or model.num_codebooks
  if model.first_stage == 0 and frame_phonemes is None:
    raise ValueError("this NAR (nar_codebook1) reads each target frame's phoneme: pass "
                     "frame_phonemes (an AR with ar_phoneme_pointer gives them).")
  if make_codebook1 and model.first_stage != 0:
    raise ValueError("make_codebook1 needs a NAR trained on codebook 1 (nar_codebook1).")
  first_pass = 0 if make_codebook1 else 1
  valid = jnp.arange(t)[None] < target_lens[:, None]                  # [B, T]
  if any(not 1 <= j < q for j in copied_codebooks):
    raise ValueError(f"copied_codebooks {copied_codebooks} must lie in [1, {q})")
  copied_codebooks = tuple(j for j in copied_codebooks if j < k)
  codes = jnp.zeros((b, t, q), jnp.int32).at[..., 0].set(jnp.where(valid, first, 0))
  if copied_codebooks:   # set before the loop: stage j reads codebooks < j only
    voice = list(copied_codebooks)
    codes = codes.at[..., voice].set(
        jnp.where(valid[..., None], prompt[:, :1, voice], 0).astype(jnp.int32))

  def predict(j, codes):
    logits = model(phonemes, phoneme_lens, prompt, prompt_lens, codes, target_lens,
                   jnp.full((b,), j, jnp.int32), frame_phonemes=frame_phonemes)  # [B, T, V]
    predicted = jnp.where(valid, jnp.argmax(logits, axis=-1), 0).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(codes, predicted[..., None], j, axis=2)

  if not copied_codebooks:
    return jax.lax.fori_loop(first_pass, k, predict, codes)[..., :k]
  copied = jnp.asarray(np.isin(np.arange(q), copied_codebooks))         # [Q]
  return jax.lax.fori_loop(first_pass, k, lambda j, c: jax.lax.cond(   # no pass for a copy
      copied[j], lambda c: c, functools.partial(predict, j), c), codes)[..., :k]


# ------------------------------------------------------------------------------ batching


class Batch(NamedTuple):
  """A padded synthesis batch (numpy), shapes fixed by the buckets.

  phonemes int32 [B, L]; phoneme_lens int32 [B]; prompt int32 [B, P, Q] (codes, 0-padded);
  prompt_lens int32 [B] frames (whole AR groups); max_steps: AR groups to allow;
  prompt_phoneme_lens int32 [B] (the prompt transcript's phonemes) or None.
  """
  phonemes: np.ndarray
  phoneme_lens: np.ndarray
  prompt: np.ndarray
  prompt_lens: np.ndarray
  max_steps: int
  prompt_phoneme_lens: np.ndarray | None = None


def bucket(size: int, buckets: Sequence[int], what: str) -> int:
  """The smallest bucket >= size; ValueError naming `what` when none is large enough."""
  for b in buckets:
    if size <= b:
      return b
  raise ValueError(f"{what} is {size}, more than the largest bucket ({max(buckets)}).")


def prepare_batch(phonemes: Sequence[np.ndarray], prompts: Sequence[np.ndarray],
                  group_size: int, options: SampleOptions, *, batch_size: int | None = None,
                  phoneme_buckets: Sequence[int] = PHONEME_BUCKETS,
                  prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
                  prompt_phoneme_lens: Sequence[int] | None = None) -> Batch:
  """Pads examples to bucket sizes so that `sample_ar` rarely recompiles.

  Args:
    phonemes: per example, int [L_i] ids (prompt transcript + target text).
    prompts: per example, int [P_i, Q] codes of the acoustic prompt; each is cut to a
      whole number of AR groups (at most G - 1 frames dropped from its end).
    batch_size: pad the batch to this many rows (copies of the last example) so that
      batches of different sizes share one compiled function.
    prompt_phoneme_lens: per example, how many of its phonemes are the prompt's transcript
      (for an AR with `ar_phoneme_pointer`).
  Raises:
    ValueError: a text or prompt longer than the largest bucket.
  """
  n = len(phonemes)
  if n == 0 or n != len(prompts):
    raise ValueError(f"need as many prompts as texts (>= 1), got {n} and {len(prompts)}.")
  rows = max(n, batch_size or n)
  phoneme_lens = np.array([len(p) for p in phonemes], np.int32)
  prompt_lens = np.array([len(p) // group_size * group_size for p in prompts], np.int32)
  num_phon = bucket(int(phoneme_lens.max()), phoneme_buckets, "the phoneme count")
  num_prompt = bucket(int(prompt_lens.max()), prompt_buckets, "the prompt length in frames")
  num_prompt = -(-num_prompt // group_size) * group_size
  q = prompts[0].shape[1]
  out_phon = np.zeros((rows, num_phon), np.int32)
  out_prompt = np.zeros((rows, num_prompt, q), np.int32)
  for i in range(rows):
    j = min(i, n - 1)
    out_phon[i, :phoneme_lens[j]] = phonemes[j]
    out_prompt[i, :prompt_lens[j]] = prompts[j][:prompt_lens[j]]
  lens = np.concatenate([phoneme_lens, np.repeat(phoneme_lens[-1:], rows - n)])
  plens = np.concatenate([prompt_lens, np.repeat(prompt_lens[-1:], rows - n)])
  max_frames = min(options.max_frames, math.ceil(options.max_frames_per_phoneme * num_phon))
  heard = None
  if prompt_phoneme_lens is not None:
    heard = np.asarray(list(prompt_phoneme_lens), np.int32)
    heard = np.concatenate([heard, np.repeat(heard[-1:], rows - n)])
  return Batch(out_phon, lens, out_prompt, plens, -(-max_frames // group_size), heard)
