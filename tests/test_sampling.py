"""The AR sampler and NAR decoding: exactness against full forwards, a growing KV cache
against one of the whole room, token choice (top-k, top-p, repetition-aware sampling),
stopping, grouped codes, determinism, recompiles.

Compiles are the cost here (seconds each on CPU), so each compiled sampler is built once in
a module-scoped fixture and shared by the tests that read it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny, valle2
from valle_jax import models, sampling

PHONEME_LENS = (7, 5, 3)
PROMPT_FRAMES = (5, 3, 1)           # ragged; with G = 2 the groups used are 2, 1 and 0
BUCKETS = {"phoneme_buckets": (16, 32), "prompt_buckets": (8,)}
V = 1024
EOS = V


def _model(group_size, eos_bias):
  """A tiny AR model whose EOS logits are shifted by `eos_bias` (in every group frame)."""
  cfg = tiny.get_config().model
  cfg.ar_group_size = group_size
  model = models.ARModel(cfg, rngs=nnx.Rngs(group_size))
  eos_columns = np.arange(group_size) * (V + 1) + EOS
  model.head_bias[...] = model.head_bias[...].at[eos_columns].add(eos_bias)
  return model


def _inputs(seed=0, phoneme_lens=PHONEME_LENS, prompt_frames=PROMPT_FRAMES):
  rng = np.random.default_rng(seed)
  phonemes = [rng.integers(1, 128, n) for n in phoneme_lens]
  prompts = [rng.integers(0, V, (n, 8)) for n in prompt_frames]
  return phonemes, prompts


def _sample(model, options, key=0, inputs=None, return_logits=False, **kwargs):
  phonemes, prompts = inputs or _inputs()
  batch = sampling.prepare_batch(phonemes, prompts, model.group_size, options, **BUCKETS)
  out = sampling.sample_ar(*nnx.split(model), batch.phonemes, batch.phoneme_lens,
                           batch.prompt[..., 0], batch.prompt_lens, jax.random.key(key),
                           options=options, max_steps=batch.max_steps,
                           return_logits=return_logits, **kwargs)
  return batch, jax.tree.map(np.asarray, out)


def _full_forward(model, phonemes, phoneme_lens, audio, audio_lens):
  return nnx.jit(lambda m, *a: m(*a))(model, phonemes, phoneme_lens, audio, audio_lens)


# EOS at ~13% a frame: sequences end at different steps; RAS + top-p exercise every path.
SAMPLED = sampling.SampleOptions(top_p=0.9, ras=True, max_frames_per_phoneme=6.0)


@pytest.fixture(scope="module", params=[(1, 6.5, 2), (2, 5.0, 0)], ids=["G1", "G2"])
def sampled(request):
  """(model, batch, output) with EOS biased so that, for this key, the three sequences end
  at different steps (with G = 2, inside a group too)."""
  group_size, eos_bias, key = request.param
  model = _model(group_size, eos_bias)
  batch, out = _sample(model, SAMPLED, key=key, return_logits=True)
  return model, batch, out, key


def _groups_made(out, g):
  """Groups each sequence chose while active: up to and including its EOS group."""
  return np.where(out.hit_limit, out.lengths // g, out.lengths // g + 1)


def _teacher_forced(batch, out, g):
  """BOS + prompt groups + the groups the sampler chose [B, A, G] and (groups, made) [B]."""
  groups = batch.prompt_lens // g
  made = _groups_made(out, g)
  b = len(PHONEME_LENS)
  audio = np.full((b, 1 + int(groups.max()) + int(made.max()), g), EOS, np.int32)
  audio[:, 0] = models.bos_id(V)
  for i in range(b):
    audio[i, 1:1 + groups[i]] = batch.prompt[i, :groups[i] * g, 0].reshape(-1, g)
    stream = np.full(made[i] * g, EOS)           # codes, then EOS to the end of the group
    stream[:out.lengths[i]] = out.codes[i, :out.lengths[i]]
    audio[i, 1 + groups[i]:1 + groups[i] + made[i]] = stream.reshape(-1, g)
  return audio, groups, made


def test_cached_logits_equal_full_forward(sampled):
  """At every step of every sequence (ragged prompts), the logits the sampler saw equal a
  full forward over phonemes + BOS + prompt + the groups generated so far."""
  model, batch, out, _ = sampled
  b = len(PHONEME_LENS)
  audio, groups, made = _teacher_forced(batch, out, model.group_size)
  full = _full_forward(model, batch.phonemes[:b], batch.phoneme_lens[:b], audio,
                       1 + groups + made)
  for i in range(b):
    np.testing.assert_allclose(out.logits[i, :made[i]],
                               full[i, groups[i]:groups[i] + made[i]], atol=2e-5, rtol=1e-5)


def test_eos_stops_each_sequence_independently(sampled):
  _, batch, out, _ = sampled
  assert not out.hit_limit.any()
  assert len(set(out.lengths.tolist())) == len(PHONEME_LENS), out.lengths  # ends differ
  for i, n in enumerate(out.lengths):
    assert (out.codes[i, :n] < EOS).all()          # no EOS inside the output
    assert (out.codes[i, n:] == 0).all()           # padding after it
  # Every sequence stopped before its own limit (6 frames a phoneme), the loop ran on for
  # the longest, and the shorter ones took no frames after their EOS.
  assert (out.lengths < 6 * np.array(PHONEME_LENS)).all()


def test_same_key_same_output_other_key_other_output(sampled):
  model, _, out, key = sampled
  _, again = _sample(model, SAMPLED, key=key, return_logits=True)
  np.testing.assert_array_equal(again.codes, out.codes)
  np.testing.assert_array_equal(again.lengths, out.lengths)
  others = [_sample(model, SAMPLED, key=k, return_logits=True)[1] for k in (key + 1, key + 2)]
  for other in others:
    assert not np.array_equal(other.codes, out.codes)
  assert not np.array_equal(others[0].codes, others[1].codes)


def test_no_retrace_when_only_the_text_changes(sampled):
  """Texts and prompts of other lengths within the buckets reuse the compiled sampler;
  a text past the phoneme bucket traces anew (checked by lowering only)."""
  model = sampled[0]
  traces = []

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == "sample_ar":
      traces.append(1)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for seed, lens, frames in ((1, (9, 2, 16), (8, 2, 4)), (2, (1, 12, 4), (1, 6, 7))):
      _sample(model, SAMPLED, inputs=_inputs(seed, lens, frames), return_logits=True)
    assert not traces
    phonemes, prompts = _inputs(3, (20, 2, 2))      # 20 > 16: the next phoneme bucket
    batch = sampling.prepare_batch(phonemes, prompts, model.group_size, SAMPLED, **BUCKETS)
    sampling.sample_ar.lower(*nnx.split(model), batch.phonemes, batch.phoneme_lens,
                             batch.prompt[..., 0], batch.prompt_lens, jax.random.key(0),
                             options=SAMPLED, max_steps=batch.max_steps, return_logits=True)
    assert len(traces) == 1
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_a_new_temperature_or_top_p_reuses_the_compiled_sampler(sampled):
  """The float options are traced: other temperatures, top_p values and RAS thresholds run
  the sampler compiled once, and each gives the codes of the sampler compiled with those
  floats as constants, for the same key."""
  model = sampled[0]
  graphdef, state = nnx.split(model)
  batch = sampling.prepare_batch(*_inputs(11), model.group_size, SAMPLED, **BUCKETS)
  args = (batch.phonemes, batch.phoneme_lens, batch.prompt[..., 0], batch.prompt_lens,
          jax.random.key(5))

  def traced(options):
    return sampling.sample_ar(graphdef, state, *args, options=options,
                              max_steps=batch.max_steps)

  def constant(options):                            # the floats folded into the program
    return jax.jit(lambda state, *args: sampling.sample_ar.__wrapped__(
        graphdef, state, *args, options=options, max_steps=batch.max_steps))(state, *args)

  choices = [dataclasses.replace(SAMPLED, temperature=t, top_p=p, ras_threshold=r)
             for t, p, r in ((0.7, 0.8, 0.1), (1.3, 1.0, 0.2), (1.0, 0.95, 0.1))]
  outputs = [traced(choices[0])]
  compiled = sampling.sample_ar._cache_size()
  outputs += [traced(options) for options in choices[1:]]
  assert sampling.sample_ar._cache_size() == compiled
  for options, out in zip(choices, outputs):
    expected = constant(options)
    np.testing.assert_array_equal(out.codes, expected.codes)
    np.testing.assert_array_equal(out.lengths, expected.lengths)
    np.testing.assert_array_equal(out.ras_fallbacks, expected.ras_fallbacks)
  assert not np.array_equal(outputs[0].codes, outputs[1].codes)


def test_repetition_aware_sampling_in_the_loop_counts_the_prompt(sampled):
  """A model that always prefers token 3 (and never EOS): each frame whose previous 10
  frames, prompt included, hold 3 more than once is redrawn. The used prompts (whole
  groups) end in [.., 3, 3]: every frame is redrawn; in no 3: the first two frames are
  not; in [3] (G = 1; with G = 2 that prompt is empty): the first one (two) are not.
  The same compiled sampler as above: only parameter values change."""
  model = nnx.clone(sampled[0])
  g = model.group_size
  columns = np.arange(g) * (V + 1)
  model.head_bias[...] = model.head_bias[...].at[columns + EOS].set(-1e9).at[columns + 3].add(30.0)
  phonemes, prompts = _inputs(7)
  used = [len(p) // g * g for p in prompts]                           # 5, 3, 1 -> G = 2: 4, 2, 0
  for p in prompts:
    p[:, 0] = np.where(p[:, 0] == 3, 4, p[:, 0])
  prompts[0][used[0] - 2:used[0], 0] = 3
  if used[2]:
    prompts[2][used[2] - 1, 0] = 3
  _, out = _sample(model, SAMPLED, inputs=(phonemes, prompts), return_logits=True)
  limits = 6 * np.array(PHONEME_LENS)
  np.testing.assert_array_equal(out.lengths, limits)
  assert out.hit_limit.all()
  for i, n in enumerate(limits):
    assert (out.codes[i, :n] == 3).all()
  not_redrawn = {1: [0, 2, 1], 2: [0, 2, 2]}[g]
  np.testing.assert_array_equal(out.ras_fallbacks, limits - not_redrawn)


# ------------------------------------------------------------- greedy and length limit

GREEDY = sampling.SampleOptions(top_k=1, max_frames_per_phoneme=2.0)


@pytest.fixture(scope="module")
def never_eos():
  return _model(1, eos_bias=-1e9)


def _greedy_by_full_forwards(model, batch, num_frames):
  """Greedy decoding with no cache: a full forward over the sequence so far each step."""
  b, g = batch.phonemes.shape[0], model.group_size
  groups = batch.prompt_lens // g
  audio = np.zeros((b, 1 + int(groups.max()) + num_frames, g), np.int32)
  audio[:, 0] = models.bos_id(V)
  for i in range(b):
    audio[i, 1:1 + groups[i], 0] = batch.prompt[i, :groups[i], 0]
  lens = 1 + groups
  made = np.zeros((b, num_frames), np.int32)
  forward = nnx.jit(lambda m, *a: m(*a))
  for step in range(num_frames):
    logits = np.asarray(forward(model, batch.phonemes, batch.phoneme_lens, audio, lens))
    tokens = logits[np.arange(b), lens - 1, 0].argmax(-1)
    made[:, step] = tokens
    audio[np.arange(b), lens, 0] = tokens
    lens = lens + 1
  return made


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_top_k_1_is_greedy_and_the_length_limit_stops_a_model_without_eos(never_eos,
                                                                        use_cache):
  options = dataclasses.replace(GREEDY, use_cache=use_cache)
  batch, out = _sample(never_eos, options)
  limits = np.ceil(2.0 * np.array(PHONEME_LENS)).astype(int)         # 14, 10, 6 frames
  np.testing.assert_array_equal(out.lengths, limits)
  assert out.hit_limit.all()
  expected = _greedy_by_full_forwards(never_eos, batch, int(limits.max()))
  for i, n in enumerate(limits):
    np.testing.assert_array_equal(out.codes[i, :n], expected[i, :n])
    assert (out.codes[i, n:] == 0).all()
  # Greedy decoding repeats itself (what RAS would redraw), but RAS is off here.
  assert any(np.sum(out.codes[i, max(0, t - 10):t] == out.codes[i, t]) > 1
             for i, n in enumerate(limits) for t in range(n))
  assert not out.ras_fallbacks.any()


# ----------------------------------------------------------------------- growing cache

# Cache sizes small enough for the tests' short sequences to cross several segments (the
# prefill fills 16 + 1 + 8 = 25 slots with G = 1, 16 + 1 + 4 = 21 with G = 2).
SMALL_BUCKETS = (24, 28, 32, 37, 43, 49, 56, 64, 74)


def _prefix_and_segments(batch, g, buckets):
  prefix = batch.phonemes.shape[1] + 1 + batch.prompt.shape[1] // g
  return prefix, sampling.cache_segments(prefix, batch.max_steps, buckets)


def _assert_same_sampling(out, expected):
  for name in ("codes", "lengths", "hit_limit", "ras_fallbacks"):
    np.testing.assert_array_equal(getattr(out, name), getattr(expected, name), err_msg=name)
  np.testing.assert_allclose(out.logits, expected.logits, atol=1e-5, rtol=1e-5)


def test_cache_segments():
  # Demo shapes: 128 phonemes + BOS + 256 prompt frames, room for 12 frames a phoneme.
  assert sampling.cache_segments(385, 1536) == (512, 1024, 1921)
  assert sampling.cache_segments(500, 1100) == (1024, 1600)   # 512 adds under 1/8 to 500
  assert sampling.cache_segments(300, 800) == (512, 1100)     # 1024 leaves under 1/8
  assert sampling.cache_segments(25, 96, ()) == (121,)
  assert sampling.cache_segments(25, 96, SMALL_BUCKETS) == (32, 37, 43, 49, 56, 64, 74, 121)


@pytest.mark.parametrize("buckets", [(), SMALL_BUCKETS], ids=["one cache", "small"])
def test_sampling_in_a_growing_cache_equals_one_cache_of_the_whole_room(sampled, buckets):
  """The fixture sampled (top-p + RAS, ragged prompts, EOS at different steps) with the
  default cache sizes; in one cache of the whole room, and in small segments (the longest
  sequence crossing two boundaries or more, the segments after its end skipped), the
  same key gives the same codes, lengths and logits."""
  model, batch, out, key = sampled
  _, other = _sample(model, SAMPLED, key=key, return_logits=True, cache_buckets=buckets)
  if buckets:
    prefix, sizes = _prefix_and_segments(batch, model.group_size, buckets)
    made = _groups_made(out, model.group_size).max()
    assert sizes[1] - prefix < made < sizes[-2] - prefix
  _assert_same_sampling(other, out)


@pytest.mark.parametrize("group_size", [1, 2], ids=["G1", "G2"])
def test_decoding_to_the_room_in_a_growing_cache_equals_one_cache(group_size):
  """Greedy decoding of an AR that never emits EOS, to each sequence's limit (the longest
  text's: the whole room), gives the same codes and logits in small segments as in one
  cache of the whole room; other inputs of the same shapes reuse the compiled sampler."""
  model = _model(group_size, eos_bias=-1e9)
  options = dataclasses.replace(GREEDY, max_frames_per_phoneme=4.0)
  inputs = _inputs(0, (16, 5, 3), PROMPT_FRAMES)          # 16: the phoneme bucket, all room
  batch, out = _sample(model, options, inputs=inputs, return_logits=True,
                       cache_buckets=SMALL_BUCKETS)
  _, expected = _sample(model, options, inputs=inputs, return_logits=True, cache_buckets=())
  np.testing.assert_array_equal(out.lengths, 4 * np.array([16, 5, 3]))
  assert out.hit_limit.all() and out.lengths[0] == batch.max_steps * group_size
  prefix, sizes = _prefix_and_segments(batch, group_size, SMALL_BUCKETS)
  assert len(sizes) >= 5 and sizes[-1] == prefix + batch.max_steps
  _assert_same_sampling(out, expected)
  compiled = sampling.sample_ar._cache_size()
  for seed in (1, 2):
    _sample(model, options, key=seed, inputs=_inputs(seed, (9, 16, 2), (8, 2, 4)),
            return_logits=True, cache_buckets=SMALL_BUCKETS)
  assert sampling.sample_ar._cache_size() == compiled


# ------------------------------------------------------------------------ token choice


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda k, p: np.isfinite(np.asarray(sampling.filter_logits(logits, k, p)))[0]
  np.testing.assert_array_equal(kept(2, 1.0), [1, 0, 1, 0])
  np.testing.assert_array_equal(kept(0, 0.5), [1, 0, 0, 0])    # 0.5 alone reaches 0.5
  np.testing.assert_array_equal(kept(0, 0.6), [1, 0, 1, 0])
  np.testing.assert_array_equal(kept(0, 0.9), [1, 0, 1, 1])
  np.testing.assert_array_equal(kept(3, 0.99), [1, 0, 1, 1])   # top-k first, then top-p
  np.testing.assert_array_equal(kept(0, 1.0), [1, 1, 1, 1])


def test_repetition_aware_sampling_falls_back_exactly_when_r_exceeds_threshold():
  """Token 7 holds 90% of the mass, so top-p (0.5) always picks it. Row n's window holds
  n copies of 7 among K = 10 frames: r = n / 10 > t_r = 0.1 exactly for n >= 2. A window
  full of another token never triggers the fallback (RAS switched off: see the greedy test)."""
  num_tokens, k = 50, 10
  probs = np.full(num_tokens, 0.1 / (num_tokens - 1))
  probs[7] = 0.9
  copies = np.arange(k + 1)                                          # rows: n = 0..10
  recent = np.where(np.arange(k)[None] < copies[:, None], 7, 3)      # [11, K]
  recent = np.concatenate([recent, np.full((1, k), 3), np.full((1, k), -1)])  # + 2 rows
  recent = np.tile(recent, (400, 1))                                 # 400 draws per row
  logits = jnp.broadcast_to(jnp.log(probs), (len(recent), num_tokens))
  choose = jax.jit(sampling.choose_tokens, static_argnames="options")
  options = sampling.SampleOptions(top_p=0.5, ras=True, ras_window=k, ras_threshold=0.1)
  tokens, fell_back = map(np.asarray, choose(logits, recent, jax.random.key(0), options=options))
  expected = np.tile(np.concatenate([copies > 1, [False, False]]), 400)
  np.testing.assert_array_equal(fell_back, expected)
  assert (tokens[~expected] == 7).all()                       # nucleus sample kept
  redrawn = tokens[expected]                                  # from the full distribution
  assert 0.05 < np.mean(redrawn != 7) < 0.16, np.mean(redrawn != 7)


def test_options_validation_and_config():
  with pytest.raises(ValueError, match="temperature"):
    sampling.SampleOptions(temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.SampleOptions(top_p=1.5)
  with pytest.raises(ValueError, match="unknown sample options"):
    sampling.SampleOptions.from_config({"topp": 0.5})
  options = sampling.SampleOptions.from_config(valle2.get_config().sample)
  assert (options.ras, options.ras_window, options.ras_threshold) == (True, 10, 0.1)
  assert valle2.get_config().model.ar_group_size == 2
  assert sampling.SampleOptions.from_config(None) == sampling.SampleOptions()


def test_prepare_batch_buckets_groups_and_padding():
  phonemes, prompts = _inputs(0, (7, 20), (5, 3))
  options = sampling.SampleOptions(max_frames_per_phoneme=3.0)
  batch = sampling.prepare_batch(phonemes, prompts, 2, options, batch_size=4, **BUCKETS)
  assert batch.phonemes.shape == (4, 32) and batch.prompt.shape == (4, 8, 8)
  np.testing.assert_array_equal(batch.phoneme_lens, [7, 20, 20, 20])
  np.testing.assert_array_equal(batch.prompt_lens, [4, 2, 2, 2])   # whole groups of 2
  np.testing.assert_array_equal(batch.prompt[0, :4], prompts[0][:4])
  assert (batch.prompt[0, 4:] == 0).all() and (batch.phonemes[0, 7:] == 0).all()
  assert batch.max_steps == 3 * 32 // 2
  with pytest.raises(ValueError, match="phoneme count is 40"):
    sampling.prepare_batch(*_inputs(0, (40,), (3,)), 1, options, **BUCKETS)
  with pytest.raises(ValueError, match="prompt length in frames is 9"):
    sampling.prepare_batch(*_inputs(0, (4,), (9,)), 1, options, **BUCKETS)


# --------------------------------------------------------------------------------- NAR


@pytest.mark.parametrize("given", [(), (1, 2)])
def test_nar_decoding_is_greedy_stage_by_stage(given):
  """decode_nar equals Q - 1 greedy full forwards, each reading the codebooks before it;
  a codebook no stage predicts (`stages`, a variant's) keeps its `given_codes`; padding
  frames stay 0; `codebooks=3` makes the first 3 of the same codes."""
  cfg = tiny.get_config().model
  nar = models.NARModel(cfg, rngs=nnx.Rngs(5))
  phonemes, prompts = _inputs(4)
  batch = sampling.prepare_batch(phonemes, prompts, 1, sampling.SampleOptions(), **BUCKETS)
  rng = np.random.default_rng(1)
  t, b = 12, len(phonemes)
  first = rng.integers(0, V, (b, t))
  target_lens = np.array([12, 7, 4])
  given_codes = np.broadcast_to(batch.prompt[:, :1], (b, t, 8))   # the prompt's first frame
  kwargs = {"stages": tuple(j for j in range(1, 8) if j not in given),
            "given_codes": given_codes} if given else {}
  out = np.asarray(sampling.decode_nar(*nnx.split(nar), batch.phonemes, batch.phoneme_lens,
                                       batch.prompt, batch.prompt_lens, first, target_lens,
                                       **kwargs))
  forward = nnx.jit(lambda m, *a: m(*a))
  codes = np.zeros((b, t, 8), np.int32)
  codes[..., 0] = first
  for stage in range(1, 8):
    if stage in given:
      codes[..., stage] = given_codes[..., stage]
      continue
    logits = forward(nar, batch.phonemes, batch.phoneme_lens, batch.prompt,
                     batch.prompt_lens, codes, target_lens, np.full((b,), stage))
    codes[..., stage] = np.argmax(np.asarray(logits), -1)
  for i, n in enumerate(target_lens):
    np.testing.assert_array_equal(out[i, :n], codes[i, :n])
    assert (out[i, n:] == 0).all()
  first3 = sampling.decode_nar(*nnx.split(nar), batch.phonemes, batch.phoneme_lens,
                               batch.prompt, batch.prompt_lens, first, target_lens, 3,
                               **kwargs)
  np.testing.assert_array_equal(first3, out[..., :3])
  with pytest.raises(ValueError, match="codebooks must be in"):
    sampling.decode_nar(*nnx.split(nar), batch.phonemes, batch.phoneme_lens, batch.prompt,
                        batch.prompt_lens, first, target_lens, codebooks=9)


def test_decoding_runs_the_nar_over_the_ar_output_not_its_room():
  """`Decoding` gives the NAR the AR's longest output rounded up to a `NAR_FRAME_BUCKETS`
  size, not all `max_steps` frames the AR had room for: the same codes as decoding the
  whole room, padded back to its shape."""
  ar = _model(1, 6.5)
  nar = models.NARModel(tiny.get_config().model, rngs=nnx.Rngs(5))
  phonemes, prompts = _inputs()
  batch = sampling.prepare_batch(phonemes, prompts, 1, SAMPLED, **BUCKETS)
  key = jax.random.key(2)
  codes, lengths, _ = sampling.Decoding()(*nnx.split(ar), *nnx.split(nar), batch, key, SAMPLED)
  out = sampling.sample_ar(*nnx.split(ar), batch.phonemes, batch.phoneme_lens,
                           batch.prompt[..., 0], batch.prompt_lens, key, options=SAMPLED,
                           max_steps=batch.max_steps)
  room = batch.max_steps
  assert sampling.nar_frames(int(np.max(out.lengths)), room) < room     # the NAR ran shorter
  whole = sampling.decode_nar(*nnx.split(nar), batch.phonemes, batch.phoneme_lens,
                              batch.prompt, batch.prompt_lens, out.codes, out.lengths)
  assert codes.shape == whole.shape == (3, room, 8)
  np.testing.assert_array_equal(lengths, out.lengths)
  np.testing.assert_array_equal(codes, whole)
  assert (sampling.nar_frames(70, 300), sampling.nar_frames(70, 80),
          sampling.nar_frames(64, 300)) == (96, 80, 64)
