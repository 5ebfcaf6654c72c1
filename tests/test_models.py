"""AR and NAR models: shapes, masks, KV cache, AdaLN, weight tying, dtypes, param counts."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import paper, tiny
from valle_jax import models
from valle_jax.models import nar as nar_lib

B, L, T, P, Q = 3, 7, 12, 5, 8
PHONEME_LENS = np.array([7, 5, 3])
CODE_LENS = np.array([12, 9, 4])
PROMPT_LENS = np.array([5, 3, 1])


def _apply(model):
  """A jitted pure function (state, *args) -> model(*args), compiled once per shape."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def apply(state, *args):
    return nnx.merge(graphdef, state)(*args)
  return lambda *args, state=state: apply(state, *args)


@pytest.fixture(scope="module")
def cfg():
  return tiny.get_config().model


@pytest.fixture(scope="module")
def ar_model(cfg):
  return models.ARModel(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def nar_model(cfg):
  return models.NARModel(cfg, rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def batch(cfg):
  rng = np.random.default_rng(0)
  b = models.example_batch(cfg, B, L, T)
  b["phoneme_lens"], b["code_lens"] = PHONEME_LENS, CODE_LENS
  b["prompt_codes"] = rng.integers(0, cfg.codebook_size, (B, P, Q))
  b["prompt_lens"] = PROMPT_LENS
  b["stage"] = np.array([1, 4, 7])
  return {k: jnp.asarray(v) for k, v in b.items()}


@pytest.fixture(scope="module")
def ar_io(cfg, batch):
  return models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                      cfg.codebook_size)


@pytest.fixture(scope="module")
def ar_apply(ar_model):
  return _apply(ar_model)


@pytest.fixture(scope="module")
def ar_logits(ar_apply, batch, ar_io):
  inputs, _, lens = ar_io
  return ar_apply(batch["phonemes"], batch["phoneme_lens"], inputs, lens)


def _nar_args(batch, **changes):
  b = {**batch, **changes}
  return (b["phonemes"], b["phoneme_lens"], b["prompt_codes"], b["prompt_lens"], b["codes"],
          b["code_lens"], b["stage"])


# ---------------------------------------------------------------------------------- AR


def test_ar_inputs_and_targets_layout():
  codes = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  inputs, targets, lens = models.ar_inputs_and_targets(codes, jnp.array([3, 2]), 10)
  eos, bos = 10, 11
  np.testing.assert_array_equal(inputs[..., 0], [[bos, 5, 6, 7, eos], [bos, 8, 9, eos, eos]])
  np.testing.assert_array_equal(targets[..., 0], [[5, 6, 7, eos, eos], [8, 9, eos, eos, eos]])
  np.testing.assert_array_equal(lens, [4, 3])
  # Grouped (G=2): EOS after the codes, padded with EOS to whole groups.
  inputs, targets, lens = models.ar_inputs_and_targets(codes, jnp.array([3, 2]), 10, 2)
  np.testing.assert_array_equal(targets[0], [[5, 6], [7, eos], [eos, eos]])
  np.testing.assert_array_equal(inputs[0], [[bos, bos], [5, 6], [7, eos]])
  np.testing.assert_array_equal(lens, [2, 2])


def test_ar_shapes_and_finite(cfg, ar_logits, ar_io):
  inputs, _, _ = ar_io
  assert ar_logits.shape == (B, inputs.shape[1], 1, cfg.codebook_size + 1)
  assert ar_logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(ar_logits)))


def test_ar_audio_is_causal(ar_apply, batch, ar_io, ar_logits):
  inputs, _, lens = ar_io
  t = 5
  changed = inputs.at[:, t].set((inputs[:, t] + 17) % 1024)
  out = ar_apply(batch["phonemes"], batch["phoneme_lens"], changed, lens)
  np.testing.assert_array_equal(out[:, :t], ar_logits[:, :t])     # nothing before t moves
  assert not np.allclose(out[0, t:], ar_logits[0, t:])             # t and later do


def test_ar_phoneme_changes_every_audio_position(ar_apply, batch, ar_io, ar_logits):
  inputs, _, lens = ar_io
  phonemes = batch["phonemes"].at[:, 0].set((batch["phonemes"][:, 0] + 1) % 128)
  out = ar_apply(phonemes, batch["phoneme_lens"], inputs, lens)
  for b in range(B):
    diff = jnp.max(jnp.abs(out[b, :lens[b]] - ar_logits[b, :lens[b]]), axis=(-1, -2))
    assert bool(jnp.all(diff > 0)), f"example {b}: some audio position ignores the phonemes"


def test_ar_padding_changes_no_valid_logit(ar_apply, batch, ar_io, ar_logits):
  inputs, _, lens = ar_io
  ta = inputs.shape[1]
  pad_phon = jnp.arange(L)[None] >= batch["phoneme_lens"][:, None]
  pad_audio = (jnp.arange(ta)[None] >= lens[:, None])[..., None]
  out = ar_apply(jnp.where(pad_phon, 99, batch["phonemes"]), batch["phoneme_lens"],
                 jnp.where(pad_audio, 3, inputs), lens)
  # And each example alone, unpadded, gives the same logits as inside the batch.
  for b in range(B):
    n_p, n_a = int(batch["phoneme_lens"][b]), int(lens[b])
    np.testing.assert_array_equal(out[b, :n_a], ar_logits[b, :n_a])
    alone = ar_apply(batch["phonemes"][b:b + 1, :n_p], batch["phoneme_lens"][b:b + 1],
                     inputs[b:b + 1, :n_a], lens[b:b + 1])
    np.testing.assert_allclose(alone[0], ar_logits[b, :n_a], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("group_size", [1, 2])
def test_ar_kv_cache_matches_full_forward(cfg, batch, group_size):
  """Prefill a per-example prompt, then decode step by step: every step's logits equal
  the full forward's at that position (float32, atol 2e-5), for ragged prompts."""
  model = models.ARModel(_with(cfg, ar_group_size=group_size), rngs=nnx.Rngs(3))
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 cfg.codebook_size, group_size)
  full_logits = nnx.jit(lambda m, *a: m(*a))(model, batch["phonemes"], batch["phoneme_lens"],
                                             inputs, lens)
  prompt_lens = jnp.array([3, 1, 2])            # BOS + prompt groups, different per example
  num_steps = int(jnp.min(lens - prompt_lens))
  prompt = inputs[:, :int(prompt_lens.max())]

  @nnx.jit
  def run(model, phonemes, phoneme_lens, prompt, inputs, prompt_lens):
    cache = model.init_cache(B, L + inputs.shape[1] + 4)
    logits, cache = model.prefill(phonemes, phoneme_lens, prompt, prompt_lens, cache)
    steps = [logits]
    for i in range(num_steps - 1):
      tokens = inputs[jnp.arange(B), prompt_lens + i]     # [B, G]: each example's next group
      logits, cache = model.decode_step(tokens, cache)
      steps.append(logits)
    return jnp.stack(steps, axis=1)                        # [B, steps, G, V + 1]

  cached = run(model, batch["phonemes"], batch["phoneme_lens"], prompt, inputs, prompt_lens)
  for b in range(B):
    p = int(prompt_lens[b])
    expected = full_logits[b, p - 1:p - 1 + num_steps]
    np.testing.assert_allclose(cached[b], expected, atol=2e-5, rtol=1e-5)


def test_reverse_valid_keeps_padding():
  phonemes = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  out = models.reverse_valid(phonemes, jnp.array([3, 1]))
  np.testing.assert_array_equal(out, [[7, 6, 5, 0], [8, 9, 0, 0]])


def _with(cfg, **changes):
  new = cfg.copy_and_resolve_references()
  for k, v in changes.items():
    new[k] = v
  return new


# --------------------------------------------------------------------------------- NAR


@pytest.fixture(scope="module")
def nar_apply(nar_model):
  return _apply(nar_model)


@pytest.fixture(scope="module")
def nar_logits(nar_apply, batch):
  return nar_apply(*_nar_args(batch))


def test_nar_shapes_and_finite(cfg, nar_logits):
  assert nar_logits.shape == (B, T, cfg.codebook_size)
  assert nar_logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(nar_logits)))


def test_nar_reads_only_codebooks_below_stage(nar_apply, batch, nar_logits):
  stage = batch["stage"]
  codebook = jnp.arange(Q)[None, None, :]
  at_or_above = codebook >= stage[:, None, None]
  changed = jnp.where(at_or_above, (batch["codes"] + 11) % 1024, batch["codes"])
  np.testing.assert_array_equal(nar_apply(*_nar_args(batch, codes=changed)), nar_logits)
  below = codebook == (stage[:, None, None] - 1)
  changed = jnp.where(below, (batch["codes"] + 11) % 1024, batch["codes"])
  out = nar_apply(*_nar_args(batch, codes=changed))
  for b in range(B):
    n = int(batch["code_lens"][b])
    assert not np.allclose(out[b, :n], nar_logits[b, :n])


def test_nar_padding_changes_no_valid_logit(nar_apply, batch, nar_logits):
  def pad_fill(x, lens, value):
    pad = jnp.arange(x.shape[1])[None] >= lens[:, None]
    return jnp.where(pad.reshape(pad.shape + (1,) * (x.ndim - 2)), value, x)
  out = nar_apply(*_nar_args(
      batch, phonemes=pad_fill(batch["phonemes"], batch["phoneme_lens"], 9),
      prompt_codes=pad_fill(batch["prompt_codes"], batch["prompt_lens"], 5),
      codes=pad_fill(batch["codes"], batch["code_lens"], 7)))
  for b in range(B):
    n = int(batch["code_lens"][b])
    np.testing.assert_array_equal(out[b, :n], nar_logits[b, :n])


def test_nar_stage_enters_through_its_adaln_row(nar_model, batch, nar_logits):
  """Perturbing stage j's AdaLN (a_j, b_j) in every norm moves exactly the examples whose
  stage is j."""
  model = nnx.clone(nar_model)
  j = int(batch["stage"][1])
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param) and path[-1] in ("scale", "bias") and var.ndim == 2:
      var[...] = var[...].at[j].add(0.3)
  out = _apply(model)(*_nar_args(batch))
  for b in range(B):
    n = int(batch["code_lens"][b])
    moved = not np.allclose(out[b, :n], nar_logits[b, :n])
    assert moved == (int(batch["stage"][b]) == j), f"example {b}, stage {batch['stage'][b]}"


def test_nar_output_tied_to_acoustic_embedding(cfg, nar_model, batch, nar_logits):
  """Tied: no separate head; the logits for stage j = Q-1 move when only codebook j's
  embedding moves, with no prompt (so codebook Q-1 is read by nothing but the prediction
  layer: targets read codebooks < stage only)."""
  assert not hasattr(nar_model, "head_kernel")
  no_prompt = _nar_args(batch, prompt_lens=jnp.zeros((B,), jnp.int32))
  base = _apply(nar_model)(*no_prompt)
  model = nnx.clone(nar_model)
  j = Q - 1
  model.audio_embed[...] = model.audio_embed[...].at[j].multiply(2.0)
  out = _apply(model)(*no_prompt)
  for b in range(B):
    n = int(batch["code_lens"][b])
    moved = not np.allclose(out[b, :n], base[b, :n])
    assert moved == (int(batch["stage"][b]) == j)
  untied = models.NARModel(_with(cfg, nar_tie_output=False), rngs=nnx.Rngs(1))
  assert untied.head_kernel.shape == (Q, cfg.width, cfg.codebook_size)


def test_nar_stage_as_token_variant(cfg, batch):
  model = models.NARModel(_with(cfg, nar_stage_conditioning="token"), rngs=nnx.Rngs(2))
  apply = _apply(model)
  out = apply(*_nar_args(batch))
  assert out.shape == (B, T, cfg.codebook_size)
  other = apply(*_nar_args(batch, stage=jnp.array([2, 2, 2])))
  assert not np.allclose(out[0], other[0])       # the stage token changes the output
  with pytest.raises(ValueError, match="nar_stage_conditioning"):
    models.NARModel(_with(cfg, nar_stage_conditioning="film"), rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------- losses & dtypes


def test_frames_since_and_until_their_phonemes_boundaries():
  since, until = nar_lib.frames_since_and_until(
      jnp.array([[3, 3, 3, 4, 4, 5, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]]), jnp.array([6, 8]))
  np.testing.assert_array_equal(since[0, :6], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(until[0, :6], [2, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(since[1], [0, 1, 0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(until[1], [1, 0, 5, 4, 3, 2, 1, 0])


def test_nar_codebook1_reads_when_each_frame_is_spoken_and_no_target_code(cfg, batch):
  """With `nar_codebook1`, stage 0 (codebook 1) reads no target code, and each valid frame
  reads its phoneme (`frame_phonemes`): moving a boundary by one frame moves that example's
  logits, changing padding frames' entries moves none; without `frame_phonemes` it is an
  error, and the loss learns stage 0 like any other."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.nar_codebook1 = True
  model = models.NARModel(c, rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(model)
  stage0 = jnp.zeros((B,), jnp.int32)

  @jax.jit
  def apply(codes, frame_phonemes):
    return nnx.merge(graphdef, state)(*_nar_args(batch, codes=codes, stage=stage0),
                                      frame_phonemes=frame_phonemes)
  timing = batch["frame_phonemes"]
  logits = apply(batch["codes"], timing)
  assert logits.shape == (B, T, c.codebook_size)
  np.testing.assert_array_equal(apply((batch["codes"] + 11) % 1024, timing), logits)
  valid = jnp.arange(T)[None] < batch["code_lens"][:, None]
  padding_changed = apply(batch["codes"], jnp.where(valid, timing, 2))
  moved = apply(batch["codes"], timing.at[:, 1].set(timing[:, 0] + 1))
  for b in range(B):
    n = int(batch["code_lens"][b])
    np.testing.assert_array_equal(padding_changed[b, :n], logits[b, :n])
    assert not np.allclose(moved[b, :n], logits[b, :n])
  with pytest.raises(ValueError, match="frame_phonemes"):
    model(*_nar_args(batch, stage=stage0))
  _, metrics = models.nar_loss(model, {**batch, "stage": stage0})
  np.testing.assert_allclose(metrics["count_per_codebook"][0], float(np.sum(CODE_LENS)))


def test_losses_and_top10(cfg, ar_model, nar_model, batch):
  loss, m = nnx.jit(models.ar_loss)(ar_model, batch)
  # Targets: codes plus EOS for each example.
  assert float(m["count"]) == float(jnp.sum(batch["code_lens"] + 1))
  assert abs(float(loss) - np.log(cfg.codebook_size + 1)) < 1.5
  assert 0 <= float(m["top10_correct"]) <= float(m["count"])
  loss, m = nnx.jit(models.nar_loss)(nar_model, batch)
  assert float(m["count"]) == float(jnp.sum(batch["code_lens"]))
  np.testing.assert_allclose(m["count_per_codebook"][np.asarray(batch["stage"])],
                             batch["code_lens"])
  np.testing.assert_allclose(float(jnp.sum(m["loss_sum_per_codebook"])), float(m["loss_sum"]),
                             rtol=1e-5)
  # Top-k counts against a hand-made case.
  logits = jnp.array([[0.0, 3.0, 2.0, 1.0]])
  nll, in_top2 = models.token_nll_and_topk(logits, jnp.array([2]), k=2)
  assert bool(in_top2[0]) and not bool(models.token_nll_and_topk(logits, jnp.array([0]), 2)[1][0])
  np.testing.assert_allclose(nll[0], -jax.nn.log_softmax(logits[0])[2], rtol=1e-6)


def test_padding_rows_and_masked_frames_are_not_scored(ar_model, nar_model, batch):
  """A row without phonemes (data.py's padding) adds nothing to the AR's loss or count, and
  a NAR target frame with loss_mask 0 nothing to the NAR's."""
  padded = {k: np.array(v) for k, v in batch.items()}
  padded["phonemes"][0], padded["phoneme_lens"][0], padded["code_lens"][0] = 0, 0, 0
  _, full = models.ar_loss(ar_model, batch)
  _, m = models.ar_loss(ar_model, padded)
  others = {k: v[1:] for k, v in batch.items()}
  _, rest = models.ar_loss(ar_model, others)
  assert float(m["count"]) == float(rest["count"]) < float(full["count"])
  np.testing.assert_allclose(float(m["loss_sum"]), float(rest["loss_sum"]), rtol=1e-5)
  mask = np.ones(batch["codes"].shape[:2], np.float32)
  mask[:, :3] = 0.0
  _, whole = models.nar_loss(nar_model, batch)
  _, masked = models.nar_loss(nar_model, {**batch, "loss_mask": mask})
  assert float(masked["count"]) == float(whole["count"]) - 3 * len(mask)
  assert float(masked["loss_sum"]) < float(whole["loss_sum"])


def test_bfloat16_compute_is_finite_and_close(cfg, ar_model, nar_model, batch, ar_io,
                                              ar_logits, nar_logits):
  inputs, _, lens = ar_io
  for model, args, ref in ((ar_model, (batch["phonemes"], batch["phoneme_lens"], inputs, lens),
                            ar_logits), (nar_model, _nar_args(batch), nar_logits)):
    model16 = nnx.clone(model)
    model16.dtype = jnp.bfloat16
    out = _apply(model16)(*args)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    valid = np.isfinite(np.asarray(ref))
    err = np.max(np.abs(np.asarray(out) - np.asarray(ref))[valid])
    assert err < 0.05 * float(np.max(np.abs(ref))), f"bf16 error {err}"
    params = jax.tree.leaves(nnx.state(model16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)


def _expected_param_count(mc, kind: str) -> int:
  """Parameter count of the paper's architecture, from its definition."""
  d, f, n_layers, v = mc.width, mc.mlp_dim, mc.num_layers, mc.codebook_size
  attention = 4 * d * d + 4 * d              # q, k, v, out projections with biases
  mlp = 2 * d * f + f + d
  norms = 2 * 2 * d                          # two pre-LNs per block (scale, bias)
  if kind == "ar":
    per_block = attention + mlp + norms
    embeddings = mc.phoneme_vocab_size * d + (v + 2) * d          # + EOS, BOS
    return embeddings + n_layers * per_block + 2 * d + d * (v + 1) + (v + 1)
  q = mc.num_codebooks
  per_block = attention + mlp + 2 * 2 * q * d                     # AdaLN (a_j, b_j) tables
  embeddings = mc.phoneme_vocab_size * d + q * v * d              # tied output head
  return embeddings + n_layers * per_block + 2 * q * d


def test_paper_config_param_counts():
  mc = paper.get_config().model
  assert (mc.num_layers, mc.num_heads, mc.width, mc.mlp_dim) == (12, 16, 1024, 4096)
  for kind, cls in (("ar", models.ARModel), ("nar", models.NARModel)):
    abstract = nnx.eval_shape(lambda: cls(mc, rngs=nnx.Rngs(0)))   # no memory, no compute
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == _expected_param_count(mc, kind), kind


def test_token_embeddings_are_on_par_with_positions(cfg, ar_model, nar_model, batch):
  """At initialisation a looked-up token has unit RMS (the sinusoidal positions added to it
  have RMS ~0.7), so tokens are heard from the first step; tied NAR logits have unit scale."""
  from valle_jax.models import layers
  d = cfg.width
  phonemes = jnp.asarray(batch["phonemes"])
  positions = layers.sinusoidal_positions(jnp.arange(phonemes.shape[1])[None], d)
  tokens = ar_model._embed_phonemes(phonemes) - positions
  rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
  assert 0.8 < rms(tokens) < 1.25
  assert 0.6 < rms(positions) < 0.8
  logits = _apply(nar_model)(*_nar_args(batch))
  assert 0.5 < float(jnp.std(logits)) < 2.0


def test_codebook_embeddings_keep_the_codec_geometry():
  """One orthonormal projection for all codebooks: distances between entries (and between
  sums of entries of different codebooks, the NAR's input) are the codec's, times one scale."""
  from valle_jax.models import layers
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(4, 16, 5)) * np.array([1.0, 0.5, 0.25, 0.1])[:, None, None]
  table = np.asarray(layers.codebook_embeddings(jnp.asarray(vectors), 32, jax.random.key(0)))
  assert table.shape == (4, 16, 32)
  np.testing.assert_allclose(np.sqrt(np.mean(table[0] ** 2)), 32 ** -0.5, rtol=1e-5)
  flat_v, flat_t = vectors.reshape(-1, 5), table.reshape(-1, 32)
  dist_v = np.linalg.norm(flat_v[:, None] - flat_v[None], axis=-1)
  dist_t = np.linalg.norm(flat_t[:, None] - flat_t[None], axis=-1)
  ratio = dist_t[dist_v > 0] / dist_v[dist_v > 0]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  sums_v = vectors[0, :, None] + vectors[1, None, :]                # [16, 16, 5]
  sums_t = table[0, :, None] + table[1, None, :]
  np.testing.assert_allclose(np.linalg.norm(sums_t[3, 4] - sums_t[7, 1]),
                             ratio[0] * np.linalg.norm(sums_v[3, 4] - sums_v[7, 1]), rtol=1e-4)
  wide = layers.codebook_embeddings(jnp.asarray(rng.normal(size=(2, 8, 64))), 16,
                                    jax.random.key(0))
  assert wide.shape == (2, 8, 16) and bool(jnp.all(jnp.isfinite(wide)))


# ------------------------------------------------------------------ AR phoneme pointer


def _pointer_batch(batch):
  """Each example's frames split evenly over its phonemes, the first 2 frames a 'prompt'."""
  frames = np.zeros((B, T), np.int32)
  for b in range(B):
    n, l = int(CODE_LENS[b]), int(PHONEME_LENS[b])
    frames[b, :n] = np.minimum(((np.arange(n) + 0.5) * l / n).astype(int), l - 1)
  return {**batch, "phoneme_of_frame": jnp.asarray(frames),
          "target_start": jnp.array([2, 2, 2])}


def test_pointer_inputs_and_targets():
  """Slot t carries frame t's phoneme (the last phoneme at EOS and after); advance is 1
  where the next frame is in the next phoneme and after the last frame; only target frames
  (from target_start, before code_len) are learnt."""
  frames = jnp.array([[0, 0, 1, 1, 1, 2], [0, 1, 1, 0, 0, 0]])
  pointers, advance, mask = models.pointer_inputs_and_targets(
      frames, jnp.array([6, 3]), jnp.array([3, 2]), jnp.array([2, 0]))
  np.testing.assert_array_equal(pointers, [[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(advance[0, :6], [0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(advance[1, :3], [1, 0, 1])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])


def test_prompt_pointers_split_the_prompt_evenly():
  pointers = models.prompt_pointers(jnp.array([3, 2]), jnp.array([6, 3]), 8)
  np.testing.assert_array_equal(pointers, [[0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 2, 2, 2, 2, 2]])


@pytest.fixture(scope="module")
def pointer_model(cfg):
  return models.ARModel(_with(cfg, ar_phoneme_pointer=True), rngs=nnx.Rngs(5))


def test_ar_pointer_reads_the_pointed_phoneme(pointer_model, batch):
  """Changing the phoneme under slot t's pointer changes the logits from slot t on (and the
  advance logits); the loss learns the advance on target frames only."""
  pb = _pointer_batch(batch)
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 pointer_model.codebook_size)
  pointers, _, _ = models.pointer_inputs_and_targets(
      pb["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"], pb["target_start"])
  apply = nnx.jit(lambda m, ptr: m(batch["phonemes"], batch["phoneme_lens"], inputs, lens,
                                   phoneme_pointers=ptr, return_advance=True))
  logits, advance = apply(pointer_model, pointers)
  assert advance.shape == logits.shape[:2]
  moved = pointers.at[0, 6].set((pointers[0, 6] + 3) % int(PHONEME_LENS[0]))
  logits2, advance2 = apply(pointer_model, moved)
  np.testing.assert_allclose(logits2[0, :6], logits[0, :6], atol=1e-6)
  assert float(jnp.abs(logits2[0, 6] - logits[0, 6]).max()) > 1e-4
  assert float(jnp.abs(advance2[0, 6] - advance[0, 6])) > 1e-5
  np.testing.assert_allclose(logits2[1:], logits[1:], atol=1e-6)
  loss, m = nnx.jit(models.ar_loss)(pointer_model, pb)
  assert np.isfinite(float(loss))
  assert float(m["advance_count"]) == sum(int(n) - 2 for n in CODE_LENS)
  with pytest.raises(ValueError, match="alignments"):
    models.ar_loss(pointer_model, {k: v for k, v in batch.items() if k != "phoneme_of_frame"})


def test_dwell_of_counts_the_frames_before_on_the_same_phoneme():
  dwell = models.dwell_of(jnp.array([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]]))
  np.testing.assert_array_equal(dwell, [[0, 1, 0, 1, 2, 0, 1], [0, 0, 1, 2, 3, 4, 5]])


@pytest.mark.parametrize("dwell_embeddings", [0, 3])
def test_ar_pointer_kv_cache_matches_full_forward(pointer_model, cfg, batch, dwell_embeddings):
  """Prefill with prompt pointers, then decode moving the pointer as the full forward's
  pointers move: every step's code and advance logits equal the full forward's (with the
  dwell embeddings too, counted by the cache as the full forward counts them, clipped)."""
  model = pointer_model
  if dwell_embeddings:
    model = models.ARModel(_with(cfg, ar_phoneme_pointer=True,
                                 ar_dwell_embeddings=dwell_embeddings), rngs=nnx.Rngs(5))
  pb = _pointer_batch(batch)
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 model.codebook_size)
  pointers, advance, _ = models.pointer_inputs_and_targets(
      pb["phoneme_of_frame"], batch["code_lens"], batch["phoneme_lens"], pb["target_start"])
  full, full_advance = nnx.jit(lambda m: m(batch["phonemes"], batch["phoneme_lens"], inputs,
                                           lens, phoneme_pointers=pointers,
                                           return_advance=True))(model)
  prompt_lens = jnp.array([3, 1, 2])
  num_steps = int(jnp.min(lens - prompt_lens))
  prompt = inputs[:, :int(prompt_lens.max())]
  rows = jnp.arange(B)

  @nnx.jit
  def run(model):
    cache = model.init_cache(B, L + inputs.shape[1] + 4)
    logits, cache = model.prefill(batch["phonemes"], batch["phoneme_lens"], prompt,
                                  prompt_lens, cache, pointers[:, :prompt.shape[1]])
    steps, adv = [logits], [cache["advance_logit"]]
    for i in range(num_steps - 1):
      slot = prompt_lens + i
      moved = pointers[rows, slot] > pointers[rows, slot - 1]
      logits, cache = model.decode_step(inputs[rows, slot], cache, advance=moved)
      steps.append(logits)
      adv.append(cache["advance_logit"])
    return jnp.stack(steps, axis=1), jnp.stack(adv, axis=1)

  cached, cached_advance = run(model)
  for b in range(B):
    p = int(prompt_lens[b])
    np.testing.assert_allclose(cached[b], full[b, p - 1:p - 1 + num_steps], atol=2e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(cached_advance[b], full_advance[b, p - 1:p - 1 + num_steps],
                               atol=2e-5, rtol=1e-5)


def test_text_dropout_hides_the_whole_text_of_some_examples_in_training_only(cfg, batch):
  """`ar_text_dropout`: in training each example's loss is the loss of its text or of no
  text (every phoneme <pad>, the pointer's too), both occurring over keys; evaluation
  (no rng) always reads the text."""
  model = models.ARModel(_with(cfg, ar_phoneme_pointer=True, ar_text_dropout=0.5,
                               dropout=0.0), rngs=nnx.Rngs(5))
  pb = _pointer_batch(batch)
  dropped = models.drop_text(pb["phonemes"], 0.5, jax.random.key(0))
  assert all(bool((row == models.NO_TEXT).all() or (row == orig).all())
             for row, orig in zip(dropped, pb["phonemes"]))
  many = jnp.ones((64, 3), jnp.int32)          # one draw decides each example on its own
  assert 0 < int((models.drop_text(many, 0.5, jax.random.key(1)) == 0).all(1).sum()) < 64

  @nnx.jit
  def per_example_loss(model, batch, rng=None):
    return jax.vmap(lambda ex: models.ar_loss(
        model, jax.tree.map(lambda x: x[None], ex), rng)[1]["loss_sum"])(batch)
  with_text = per_example_loss(model, pb)
  no_text = per_example_loss(model, {**pb, "phonemes": jnp.zeros_like(pb["phonemes"])})
  assert (jnp.abs(with_text - no_text) > 1e-3).all()
  seen = set()
  for key in range(12):
    trained = per_example_loss(model, pb, jax.random.key(key))
    is_text = np.isclose(trained, with_text, rtol=1e-5)
    assert (is_text | np.isclose(trained, no_text, rtol=1e-5)).all()
    seen.update(is_text.tolist())
  assert seen == {True, False}
  np.testing.assert_allclose(per_example_loss(model, pb), with_text, rtol=1e-6)
  with pytest.raises(ValueError, match="ar_text_dropout"):
    models.ARModel(_with(cfg, ar_text_dropout=1.0), rngs=nnx.Rngs(0))


def test_audio_token_dropout_hides_the_dropped_frames_in_training_only(cfg, batch, ar_io):
  """`ar_audio_token_dropout`: in training a dropped input frame has no effect on any
  logit (its embedding is zeroed; BOS is never dropped) while a kept one does; evaluation
  (no rng) is the model without it."""
  inputs, _, lens = ar_io
  model = models.ARModel(_with(cfg, ar_audio_token_dropout=0.5, dropout=0.0),
                         rngs=nnx.Rngs(6))
  plain = models.ARModel(_with(cfg, dropout=0.0), rngs=nnx.Rngs(6))   # the same weights
  key = jax.random.key(3)
  keep = models.keep_audio_tokens(jax.random.split(key)[1], inputs.shape[:2], 0.5)  # as
  assert keep[:, 0].all()                                   # ARModel.__call__ splits it
  valid = jnp.arange(inputs.shape[1])[None] < lens[:, None]
  dropped, kept = valid & ~keep, valid & keep & (jnp.arange(inputs.shape[1]) > 0)[None]
  assert dropped.any() and kept.any()

  @nnx.jit
  def train_logits(model, tokens):
    return model(batch["phonemes"], batch["phoneme_lens"], tokens, lens, dropout_rng=key)
  logits = train_logits(model, inputs)
  other = (inputs + 1) % cfg.codebook_size
  np.testing.assert_allclose(
      train_logits(model, jnp.where(dropped[..., None], other, inputs)), logits, atol=1e-5)
  b, s = map(int, np.argwhere(np.asarray(kept))[0])         # change one kept frame
  changed = train_logits(model, inputs.at[b, s].set(other[b, s]))
  assert float(jnp.abs(changed[b, s:lens[b]] - logits[b, s:lens[b]]).max()) > 1e-4
  evaluated = nnx.jit(lambda m: m(batch["phonemes"], batch["phoneme_lens"], inputs, lens))
  np.testing.assert_allclose(evaluated(model), evaluated(plain), atol=1e-6)
  with pytest.raises(ValueError, match="ar_audio_token_dropout"):
    models.ARModel(_with(cfg, ar_audio_token_dropout=1.0), rngs=nnx.Rngs(0))


def test_scheduled_sampling_feeds_back_own_codes_into_the_target_only(cfg, batch, ar_io):
  """`feed_back_samples`: a target input slot holds the true frame or the code drawn from
  the previous slot's logits (never EOS), about `rate` of them the drawn one; BOS, the
  prompt utterance's frames and padding stay. `ar_loss` in training is the plain loss on
  such inputs; evaluation (no rng) is the model without it."""
  inputs, targets, lens = ar_io
  v, (b, ta, _) = cfg.codebook_size, inputs.shape
  peak = (jnp.arange(ta)[None] * 7 + jnp.arange(b)[:, None] + 1) % v         # [B, Ta]
  peak = jnp.where(peak == jnp.roll(inputs[..., 0], -1, axis=1), (peak + 1) % v, peak)
  logits = 60.0 * jax.nn.one_hot(peak, v + 1)[:, :, None]                  # [B, Ta, 1, V+1]
  logits = logits.at[..., v].set(80.0)                           # EOS likelier: not drawn
  own = jnp.concatenate([inputs[:, :1, 0], peak[:, :-1]], axis=1)          # [B, Ta]
  start = jnp.array([0, 3, 1])
  slot = jnp.arange(ta)[None]
  target = (slot >= 1) & (slot < lens[:, None]) & (slot - 1 >= start[:, None])
  fed = lambda rate, key: models.feed_back_samples(inputs, logits, lens, start, rate,
                                                   jax.random.key(key))[..., 0]
  assert (fed(1.0, 0) == jnp.where(target, own, inputs[..., 0])).all()
  assert (fed(0.0, 0) == inputs[..., 0]).all()
  replaced = np.mean([np.asarray(fed(0.5, k) == own)[np.asarray(target)] for k in range(20)])
  assert 0.35 < replaced < 0.65

  model = models.ARModel(_with(cfg, ar_scheduled_sampling=0.5, dropout=0.0), rngs=nnx.Rngs(7))
  plain = models.ARModel(_with(cfg, dropout=0.0), rngs=nnx.Rngs(7))     # the same weights
  key = jax.random.key(4)
  apply = lambda m, tokens: m(batch["phonemes"], batch["phoneme_lens"], tokens, lens)
  first = nnx.jit(apply)(plain, inputs)
  mixed = models.feed_back_samples(inputs, first, lens, jnp.zeros_like(lens), 0.5,
                                   jax.random.split(key)[1])   # as ar_loss splits the key
  assert (mixed != inputs).any()
  nll, _ = models.token_nll_and_topk(nnx.jit(apply)(plain, mixed), targets)
  valid = (slot < lens[:, None])[..., None]
  expected = jnp.sum(nll * valid) / jnp.sum(valid)
  loss = nnx.jit(models.ar_loss)(model, batch, key)[0]
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert abs(float(loss - nnx.jit(models.ar_loss)(plain, batch, key)[0])) > 1e-4
  np.testing.assert_allclose(nnx.jit(models.ar_loss)(model, batch)[0],
                             nnx.jit(models.ar_loss)(plain, batch)[0], rtol=1e-6)
  models.ARModel(_with(cfg, ar_scheduled_sampling=1.0), rngs=nnx.Rngs(0))   # all fed back
  with pytest.raises(ValueError, match=r"ar_scheduled_sampling must be in \[0, 1\]"):
    models.ARModel(_with(cfg, ar_scheduled_sampling=1.5), rngs=nnx.Rngs(0))


def test_ar_pointer_needs_group_size_1(cfg):
  with pytest.raises(ValueError, match="ar_group_size"):
    models.ARModel(_with(cfg, ar_phoneme_pointer=True, ar_group_size=2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ar_dwell_embeddings needs ar_phoneme_pointer"):
    models.ARModel(_with(cfg, ar_dwell_embeddings=4), rngs=nnx.Rngs(0))


def test_ar_dwell_embedding_reads_where_in_its_phoneme_a_frame_is(cfg, batch):
  """Two pointer paths over phonemes 1 and 2, which hold the same symbol, point at the same
  symbols slot by slot and differ only in the dwell: without `ar_dwell_embeddings` the
  logits are the same, with it they differ from the first slot whose dwell differs."""
  phonemes = batch["phonemes"].at[:, 2].set(batch["phonemes"][:, 1])
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 cfg.codebook_size)
  slot = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape[:2])
  stay = jnp.where(slot >= 2, 1, 0)             # phoneme 0 for 2 slots, then phoneme 1
  move = jnp.where(slot >= 4, 2, stay)          # same symbols; dwell 0, 1, 2 from slot 4
  apply = nnx.jit(lambda m, p: m(phonemes, batch["phoneme_lens"], inputs, lens,
                                 phoneme_pointers=p))
  for dwell_embeddings in (0, 8):
    model = models.ARModel(_with(cfg, ar_phoneme_pointer=True,
                                 ar_dwell_embeddings=dwell_embeddings), rngs=nnx.Rngs(5))
    a, b = apply(model, stay), apply(model, move)
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    differs = float(jnp.abs(a[0, 4:] - b[0, 4:]).max()) > 1e-4
    assert differs == bool(dwell_embeddings)
