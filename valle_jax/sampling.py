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
`max_steps` groups of room. The batch decodes in lockstep until every sequence has
stopped; each prompt may have its own length.

**A cache that grows** (`cache_segments`): a decode step attends over every slot of its
cache, so its cost follows the cache's size, not the frames made, and `max_steps` leaves
room for far more frames than speech usually takes (12 a phoneme). So the loop runs in
segments: segment i is a `lax.while_loop` over a cache of S_i slots, sizes from
`CACHE_SLOT_BUCKETS` (one a doubling) between the prefill's slots and the whole room, that
exits when every sequence has finished or its slots are full; then, unless every sequence
has finished (a `lax.cond`), the cache's k, v and valid are padded with empty slots to
S_i+1 and the next segment goes on. A step thus attends over at most ~2.25x the slots in
use (2x between two buckets; a bucket within 1/8 of the one before or of the whole room is
skipped), and each segment is one more copy of the loop's body to compile (another shape
of the step), all inside the one compiled `sample_ar`. Empty slots are masked out, so the
output is that of one cache of the whole room (`cache_buckets=()`), up to float rounding
in the attention's sums. While the cache grows, the old and the new one are both in memory
(up to 1.9x the whole room's cache, at the last growth). At demo shapes (128 phonemes, a 3
s prompt, room for 1536 frames) the segments have 512, 1024 and 1921 slots.

**Token choice** (`choose_tokens`): temperature, then top-k, then top-p (nucleus); with
repetition-aware sampling (VALL-E 2 §3.4.1) the nucleus sample is kept unless the fraction
r of the previous K frames (prompt included) equal to it exceeds t_r, in which case that
frame is drawn again from the full (temperature-scaled) distribution.

**Controller** (`controller`, static): the loop's one extension point. VALL-E's is the
no-op `Controller`; a variant (valle_jax/variants) subclasses it to give the model's prefill
and decode step extra inputs, to change the logits before each choice and to carry its own
per-sequence state through the loop.

**Shapes and recompiles**: `prepare_batch` pads phonemes and prompts to a few bucket sizes
and derives `max_steps` from the phoneme bucket, so a new text rarely changes a shape
and `sample_ar` compiles once per (batch, bucket) pair.

**NAR** (`decode_nar`): Q - 1 greedy passes (codebooks 2..Q) over the whole target, one
`lax.fori_loop` over the stages inside one compiled function. `codebooks=K` makes only the
first K (K - 1 passes), a lower codec bandwidth.

`Decoding` is synthesis's use of the two (the AR's codebook 1, then the NAR's passes); a
variant's recipe (valle_jax/recipe.py) may give its own.

With `use_cache=False` the AR re-runs the full forward over the whole (padded) sequence at
every step instead of using the cache, as the PyTorch implementations do; it exists as the
benchmark's baseline and gives the same logits (in one segment: it has no cache to grow).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
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
# Frames the NAR runs over: the AR's longest output rounded up to one of these (two a
# doubling), not the `max_steps` it made room for. Each size is one NAR compilation.
NAR_FRAME_BUCKETS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144)
# KV-cache sizes (slots) the AR's decode loop grows through (`cache_segments`), one a
# doubling: a step attends over at most ~2.25x the slots in use. Each size it passes is
# one more compiled copy of the loop's body. Paper size on 2 CPU cores, 128 phonemes, 3 s
# prompt, room for 1536 frames, 400 frames made: one cache 160 ms a step, compile 3.5 s;
# one a doubling (3 segments) 70 ms, 7.8 s; two a doubling (5) 61 ms, 13.4 s.
CACHE_SLOT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


# SampleOptions' float fields: leaves of its pytree, traced by `sample_ar`'s jit (a new
# temperature reuses the compiled sampler); the others are static (they shape the program).
FLOAT_OPTIONS = ("temperature", "top_p", "ras_threshold", "max_frames_per_phoneme")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """How the AR picks tokens and when it stops.

  A pytree: the `FLOAT_OPTIONS` are its leaves, traced by `sample_ar`, the other fields its
  static structure, so a new temperature or top_p reuses the compiled sampler and a new
  top_k or `ras` compiles anew. Hashable too (a static argument where a function wants one).

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

  def __post_init__(self):
    if not all(isinstance(getattr(self, name), numbers.Real) for name in FLOAT_OPTIONS):
      return                  # traced (or a pytree placeholder): checked when made from numbers
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
    if not self.max_frames_per_phoneme > 0 or self.max_frames < 1:
      problems.append("max_frames_per_phoneme and max_frames must be positive")
    if problems:
      raise ValueError("; ".join(problems) + ".")
    for name in FLOAT_OPTIONS:      # Python floats: one jit cache key whatever number type
      object.__setattr__(self, name, float(getattr(self, name)))

  @classmethod
  def from_config(cls, cfg: Any | None, **overrides) -> "SampleOptions":
    """Options from a config's `sample` section (missing fields keep their defaults)."""
    values = {} if cfg is None else dict(cfg.items() if hasattr(cfg, "items") else cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
      raise ValueError(f"unknown sample options {sorted(unknown)}; known: {sorted(names)}.")
    return cls(**{**values, **overrides})


jax.tree_util.register_dataclass(
    SampleOptions, data_fields=list(FLOAT_OPTIONS),
    meta_fields=[f.name for f in dataclasses.fields(SampleOptions)
                 if f.name not in FLOAT_OPTIONS])


# ------------------------------------------------------------------------- token choice


def filter_logits(logits: Array, top_k: int, top_p: float | Array) -> Array:
  """Sets logits outside the top-k and then the top-p nucleus to -inf. logits [B, V].

  `top_k` is static; `top_p` may be traced: the nucleus is computed only when it is < 1
  (`lax.cond`, a branch taken at run time)."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]                    # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)

  def nucleus(logits):
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]                    # [B, V] descending
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(ordered, num_kept - 1, axis=-1)  # [B, 1]
    return jnp.where(logits < threshold, -jnp.inf, logits)

  return jax.lax.cond(top_p < 1.0, nucleus, lambda logits: logits, logits)


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
  controlled: what the controller returns (`Controller.outputs`); None for VALL-E's.
  """
  codes: Array
  lengths: Array
  hit_limit: Array
  ras_fallbacks: Array
  logits: Array | None
  controlled: Any = None


@dataclasses.dataclass(frozen=True)
class Controller:
  """`sample_ar`'s extension point; this base changes nothing (VALL-E's decoding).

  A variant subclasses it (a frozen dataclass: it is a static argument of the jit). Its
  methods run traced inside `sample_ar`; `inputs` is `sample_ar`'s `controller_inputs`,
  `carry` the controller's own per-sequence state (a pytree of arrays). The `cache` they
  read has the slots of the loop's current segment (see "A cache that grows").
  """

  def prefill_kwargs(self, model, inputs, audio: Array, prompt_lens: Array
                     ) -> dict[str, Any]:
    """Keyword arguments for `model.prefill` (audio [B, A, G] is BOS, with `ar_bos`, then
    the prompt's groups; `prompt_lens` [B] its frames used)."""
    del model, inputs, audio, prompt_lens
    return {}

  def init(self, inputs, prompt_lens: Array, max_steps: int) -> Any:
    """The carry before the first step."""
    del inputs, prompt_lens, max_steps
    return ()

  def adjust_logits(self, carry, logits: Array, cache) -> Array:
    """The logits [B, G, V + 1] (EOS last) the next group is chosen from."""
    del carry, cache
    return logits

  def after_choice(self, carry, cache, step: Array, active: Array, rng: Array
                   ) -> tuple[Any, dict[str, Any]]:
    """After a group is chosen at `step` (`active` [B]: the sequences still making frames):
    the new carry and keyword arguments for `model.decode_step`."""
    del cache, step, active, rng
    return carry, {}

  def outputs(self, carry, made: Array) -> Any:
    """`ARSample.controlled`, given `made` [B, max_steps * G] (the frames each made)."""
    del carry, made
    return None


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
  controller: Any        # the controller's carry
  all_logits: Array | None  # [B, max_steps, G, V + 1] or None


def cache_segments(prefix: int, room: int, buckets: Sequence[int] = CACHE_SLOT_BUCKETS
                   ) -> tuple[int, ...]:
  """The cache sizes (slots) of `sample_ar`'s decode segments, for a prefill of `prefix`
  slots and `room` steps: each of `buckets` at least 1/8 above the size before it (the
  first: `prefix`) and 1/8 below the whole room, then the whole room, `prefix + room`. A
  segment that would save less than 1/8 of its steps' attention is not worth a compilation."""
  sizes = [prefix]
  for size in buckets:
    if 8 * size >= 9 * sizes[-1] and 9 * size <= 8 * (prefix + room):
      sizes.append(size)
  return tuple(sizes[1:]) + (prefix + room,)


def _cached_decoder(model, phonemes, phoneme_lens, audio, audio_lens, room, prefill_kwargs):
  """(first logits [B, G, V + 1], cache) and the step function, with a KV cache of room
  for `room` steps after the prefill."""
  cache = model.init_cache(phonemes.shape[0], phonemes.shape[1] + audio.shape[1] + room)
  return (model.prefill(phonemes, phoneme_lens, audio, audio_lens, cache, **prefill_kwargs),
          model.decode_step)


def _full_forward_decoder(model, phonemes, phoneme_lens, audio, audio_lens, room,
                          prefill_kwargs):
  """Like `_cached_decoder`, re-running the full forward over a fixed-size token buffer."""
  if prefill_kwargs:
    raise ValueError("a controller that gives the model inputs samples with the KV cache "
                     "only (use_cache=True).")
  rows = jnp.arange(audio.shape[0])

  def forward(buffer, lens):                   # logits at each example's last valid group
    return model(phonemes, phoneme_lens, buffer, lens)[rows, lens - 1]

  def step(tokens, state):
    buffer, lens = state
    buffer = buffer.at[rows, lens].set(tokens)
    return forward(buffer, lens + 1), (buffer, lens + 1)

  buffer = jnp.pad(audio, [(0, 0), (0, room), (0, 0)])               # [B, A + room, G]
  return (forward(buffer, audio_lens), (buffer, audio_lens)), step


@functools.partial(jax.jit, static_argnames=("graphdef", "max_steps", "return_logits",
                                             "controller", "cache_buckets"))
def sample_ar(graphdef: nnx.GraphDef, state: nnx.State, phonemes: Array, phoneme_lens: Array,
              prompt: Array, prompt_lens: Array, rng: Array, *, options: SampleOptions,
              max_steps: int, return_logits: bool = False,
              controller: Controller = Controller(), controller_inputs: Any = None,
              cache_buckets: tuple[int, ...] = CACHE_SLOT_BUCKETS) -> ARSample:
  """Samples codebook-1 continuations of the prompts (see the module docstring).

  Args:
    graphdef, state: `nnx.split(ar_model)`.
    phonemes: int [B, L] prompt transcript + target text ids; phoneme_lens: int [B].
    prompt: int [B, P] codebook-1 frames of the acoustic prompts (P a multiple of G);
      prompt_lens: int [B] valid frames; frames past the last whole group are not used.
    rng: PRNG key; the same key gives the same output.
    options: `SampleOptions`: its floats (temperature, top_p, ...) are traced, its other
      fields static.
    max_steps: groups to make room for (static; the cache grows to L + 1 + P/G + max_steps
      slots, without the 1 for an AR without BOS).
    return_logits: also return every step's logits (for tests and analysis).
    controller: a `Controller` (static; the default changes nothing), and
      controller_inputs: the arrays it reads (a pytree).
    cache_buckets: the cache sizes the loop grows through (static; `cache_segments`);
      () decodes in one cache of the whole room.
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
  prefix = phonemes.shape[1] + audio.shape[1]                         # prefill's slots
  sizes = (cache_segments(prefix, max_steps, cache_buckets) if options.use_cache
           else (prefix + max_steps,))                               # segments' slots
  start = _cached_decoder if options.use_cache else _full_forward_decoder
  (logits, decoder), step_fn = start(
      model, phonemes, phoneme_lens, audio, groups + model.bos, sizes[0] - prefix,
      controller.prefill_kwargs(model, controller_inputs, audio, used))

  # The last K prompt frames, oldest first; -1 where the prompt is shorter than K.
  k = options.ras_window
  window = used[:, None] - k + jnp.arange(k)[None]                    # [B, K]
  recent = jnp.where(window >= 0, jnp.take_along_axis(prompt, jnp.maximum(window, 0), 1), -1)
  frame_limit = jnp.ceil(options.max_frames_per_phoneme * phoneme_lens).astype(jnp.int32)
  group_limit = jnp.minimum((frame_limit + g - 1) // g, max_steps)   # [B] groups

  def body(s: _Loop) -> _Loop:
    rng, step_rng = jax.random.split(s.rng)
    logits = controller.adjust_logits(s.controller, s.logits, s.decoder)
    tokens, fell_back, recent = _choose_group(logits, s.recent, step_rng, options)
    is_eos = tokens == eos                                            # [B, G]
    tokens = jnp.where(jnp.cumsum(is_eos, axis=1) > 0, eos, tokens)  # EOS ends the group
    ended = jnp.any(is_eos, axis=1)
    active = ~s.finished
    at_limit = s.step + 1 >= group_limit
    new_frames = jnp.where(ended, jnp.argmax(is_eos, axis=1), g)
    all_logits = (None if s.all_logits is None
                  else s.all_logits.at[:, s.step].set(s.logits))
    carry, step_kwargs = controller.after_choice(s.controller, s.decoder, s.step, active,
                                                 jax.random.fold_in(step_rng, 1))
    logits, decoder = step_fn(tokens, s.decoder, **step_kwargs)
    return _Loop(
        step=s.step + 1, logits=logits, decoder=decoder,
        finished=s.finished | ended | at_limit, recent=recent, rng=rng,
        codes=s.codes.at[:, s.step].set(jnp.where(active[:, None], tokens, 0)),
        lengths=s.lengths + jnp.where(active, new_frames, 0),
        hit_limit=s.hit_limit | (active & ~ended & at_limit),
        ras_fallbacks=s.ras_fallbacks + jnp.where(active, jnp.sum(fell_back, axis=1), 0),
        controller=carry, all_logits=all_logits)

  def run(s: _Loop, segment: int) -> _Loop:
    """Segments `segment`, ... from `s` (its cache of `sizes[segment]` slots); the carry
    they end with, without its cache."""
    room = sizes[segment] - prefix                                   # steps its slots hold
    s = jax.lax.while_loop(lambda s: (s.step < room) & ~jnp.all(s.finished), body, s)
    done = s._replace(decoder=None)
    if segment + 1 == len(sizes):
      return done
    return jax.lax.cond(
        jnp.all(s.finished), lambda: done,
        lambda: run(s._replace(decoder=model.grow_cache(s.decoder, sizes[segment + 1])),
                    segment + 1))

  zeros = jnp.zeros((b,), jnp.int32)
  init = _Loop(
      step=jnp.zeros((), jnp.int32), logits=logits, decoder=decoder,
      finished=jnp.zeros((b,), bool), recent=recent.astype(jnp.int32), rng=rng,
      codes=jnp.zeros((b, max_steps, g), jnp.int32), lengths=zeros,
      hit_limit=jnp.zeros((b,), bool), ras_fallbacks=zeros,
      controller=controller.init(controller_inputs, used, max_steps),
      all_logits=jnp.zeros((b, max_steps) + logits.shape[1:], jnp.float32)
      if return_logits else None)
  s = run(init, 0)
  made = jnp.arange(max_steps * g)[None] < s.lengths[:, None]          # [B, max_steps * G]
  codes = jnp.where(made, s.codes.reshape(b, max_steps * g), 0)
  return ARSample(codes, s.lengths, s.hit_limit, s.ras_fallbacks, s.all_logits,
                  controller.outputs(s.controller, made))


# ---------------------------------------------------------------------------------- NAR


@functools.partial(jax.jit, static_argnames=("graphdef", "codebooks", "stages"))
def decode_nar(graphdef: nnx.GraphDef, state: nnx.State, phonemes: Array,
               phoneme_lens: Array, prompt: Array, prompt_lens: Array, first: Array,
               target_lens: Array, codebooks: int = 0, *,
               stages: tuple[int, ...] | None = None, given_codes: Array | None = None,
               model_inputs: dict[str, Array] | None = None) -> Array:
  """Greedy NAR decoding of codebooks 2..K, one pass per codebook over the whole target.

  `codebooks` is K, how many codebooks to make (the first K: a lower codec bandwidth, and
  K - 1 NAR passes); 0 makes all Q.

  Args:
    graphdef, state: `nnx.split(nar_model)`.
    phonemes: int [B, L]; phoneme_lens: int [B].
    prompt: int [B, P, Q] acoustic prompt codes; prompt_lens: int [B].
    first: int [B, T] codebook-1 codes of the target (the AR's output).
    target_lens: int [B] valid target frames.
    stages (static), given_codes, model_inputs: for a variant's NAR (VALL-E's passes none):
      the 0-based codebooks to predict, in order (default 1..K-1); int [B, T, Q] codes that
      the codebooks no stage predicts (beyond codebook 1, which is `first`) take (default
      0); keyword arguments for each NAR call.
  Returns:
    int32 codes [B, T, K]; 0 past `target_lens`.
  """
  model = nnx.merge(graphdef, state)
  b, t = first.shape
  if not 0 <= codebooks <= model.num_codebooks:
    raise ValueError(f"codebooks must be in [1, {model.num_codebooks}] (0: all), got "
                     f"{codebooks}")
  q, k = model.num_codebooks, codebooks or model.num_codebooks
  stages = tuple(range(1, k)) if stages is None else tuple(j for j in stages if j < k)
  valid = jnp.arange(t)[None] < target_lens[:, None]                  # [B, T]
  codes = (jnp.zeros((b, t, q), jnp.int32) if given_codes is None
           else jnp.asarray(given_codes, jnp.int32))
  codes = jnp.where(valid[..., None], codes.at[..., 0].set(first), 0)
  if not stages:
    return codes[..., :k]
  order = jnp.asarray(stages, jnp.int32)

  def predict(i, codes):
    j = order[i]
    logits = model(phonemes, phoneme_lens, prompt, prompt_lens, codes, target_lens,
                   jnp.full((b,), j, jnp.int32), **(model_inputs or {}))  # [B, T, V]
    predicted = jnp.where(valid, jnp.argmax(logits, axis=-1), 0).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(codes, predicted[..., None], j, axis=2)

  return jax.lax.fori_loop(0, len(stages), predict, codes)[..., :k]


class Decoding:
  """Synthesis's use of the models on a `Batch`: the AR samples codebook 1 (`sample_ar`),
  then the NAR makes codebooks 2..K (`decode_nar`), as VALL-E does. A variant's recipe
  (valle_jax/recipe.py) gives a subclass that steers them its own way."""

  def check(self, continual: bool) -> None:
    """Raises `UserError` for a synthesis mode these models cannot do."""
    del continual

  def __call__(self, ar_def, ar_state, nar_def, nar_state, batch: "Batch", rng: Array,
               options: SampleOptions, codebooks: int = 0, *, nar_text_only: bool = False
               ) -> tuple[Array, Array, Array]:
    """(codes int32 [B, T, K], lengths [B], hit_limit [B]) for the batch's requests.

    `nar_text_only`: the NAR reads the text without the prompt's transcript
    (`text_after_prompt`), as a NAR trained on "segment" or "other_utterance" prompts read
    only its target's text (synthesize's `nar_prompt`)."""
    out = sample_ar(ar_def, ar_state, batch.phonemes, batch.phoneme_lens,
                    batch.prompt[..., 0], batch.prompt_lens, rng, options=options,
                    max_steps=batch.max_steps)
    phonemes, phoneme_lens = (text_after_prompt(batch) if nar_text_only
                              else (batch.phonemes, batch.phoneme_lens))
    made = out.codes.shape[1]
    frames = nar_frames(int(jnp.max(out.lengths)), made)
    codes = decode_nar(nar_def, nar_state, phonemes, phoneme_lens, batch.prompt,
                       batch.prompt_lens, out.codes[:, :frames], out.lengths, codebooks)
    codes = jnp.pad(codes, ((0, 0), (0, made - frames), (0, 0)))     # [B, max_steps * G, K]
    return codes, out.lengths, out.hit_limit


def nar_frames(longest: int, room: int) -> int:
  """The frames the NAR runs over for a batch whose longest AR output is `longest` of the
  `room` it was given: the smallest `NAR_FRAME_BUCKETS` size that holds it, at most `room`."""
  return min([b for b in NAR_FRAME_BUCKETS if b >= longest] + [room])


def text_after_prompt(batch: "Batch") -> tuple[np.ndarray, np.ndarray]:
  """The batch's phonemes [B, L] without each row's first `prompt_phoneme_lens` (its prompt's
  transcript), moved to the front and 0-padded, and their counts [B]."""
  if batch.prompt_phoneme_lens is None:
    raise ValueError("the text after the prompt's transcript needs the prompts' phoneme "
                     "counts (prepare_batch's prompt_phoneme_lens).")
  phonemes, heard = np.asarray(batch.phonemes), np.asarray(batch.prompt_phoneme_lens)
  slots = np.arange(phonemes.shape[1])[None, :]
  lens = np.asarray(batch.phoneme_lens) - heard
  kept = np.take_along_axis(phonemes, np.minimum(slots + heard[:, None], phonemes.shape[1] - 1),
                            1)
  return (np.where(slots < lens[:, None], kept, 0).astype(np.int32), lens.astype(np.int32))


# ------------------------------------------------------------------------------ batching


class Batch(NamedTuple):
  """A padded synthesis batch (numpy), shapes fixed by the buckets.

  phonemes int32 [B, L]; phoneme_lens int32 [B]; prompt int32 [B, P, Q] (codes, 0-padded);
  prompt_lens int32 [B] frames (whole AR groups); max_steps: AR groups to allow;
  prompt_phoneme_lens int32 [B] (the prompt transcript's phonemes, for a controller) or None.
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
      (for a controller that reads where the text to say starts).
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
