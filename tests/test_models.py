"""AR and NAR models: shapes, masks, KV cache, AdaLN, weight tying, dtypes, param counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import paper, tiny
from valle_jax import models
from valle_jax.models import layers

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
  # Without BOS (lifeiteng's layout): the codes predict the next code; the first is given.
  inputs, targets, lens = models.ar_inputs_and_targets(codes, jnp.array([3, 2]), 10, bos=False)
  np.testing.assert_array_equal(inputs[..., 0], [[5, 6, 7, eos], [8, 9, eos, eos]])
  np.testing.assert_array_equal(targets[..., 0], [[6, 7, eos, eos], [9, eos, eos, eos]])
  np.testing.assert_array_equal(lens, [3, 2])


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


def _reference_attention(attn, x, mask, cache=None, layer=0, write_slot=0, *,
                         float32_logits=False):
  """The attention formula the layer had before `jax.nn.dot_product_attention`: scores
  materialised as [B, N, T, S], cast to float32, masked to float32's minimum, softmax in
  float32. `float32_logits` accumulates QK^T in float32 (as dot_product_attention does for
  bfloat16 inputs) instead of casting the compute-dtype product."""
  dtype = x.dtype
  project = lambda kernel, bias: (jnp.einsum("btd,dnh->btnh", x, kernel[...].astype(dtype))
                                  + bias[...].astype(dtype))
  q, k, v = (project(attn.q_kernel, attn.q_bias), project(attn.k_kernel, attn.k_bias),
             project(attn.v_kernel, attn.v_bias))
  if cache is not None:
    rows = jnp.arange(x.shape[0])[:, None]                          # a scatter per example
    slots = write_slot + jnp.arange(x.shape[1])[None, :]
    cache = {name: cache[name].at[layer, rows, :, slots].set(new.astype(cache[name].dtype))
             for name, new in (("k", k), ("v", v))}                  # [L, B, N, S, H]
    k, v = cache["k"][layer].astype(dtype), cache["v"][layer].astype(dtype)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)             # [B, S, N, H]
  logits = jnp.einsum("btnh,bsnh->bnts", q, k,
                      preferred_element_type=jnp.float32 if float32_logits else None)
  logits = logits.astype(jnp.float32) * (attn.head_dim ** -0.5)
  logits = jnp.where(mask, logits, float(jnp.finfo(jnp.float32).min))
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  out = jnp.einsum("bnts,bsnh->btnh", probs, v)
  out = jnp.einsum("btnh,nhd->btd", out, attn.out_kernel[...].astype(dtype))
  return out + attn.out_bias[...].astype(dtype), cache


def _block(model, layer: int) -> layers.Block:
  """Block `layer` of a model's transformer, unstacked from the scanned parameters."""
  graphdef, stacked = nnx.split(model.transformer.blocks)
  return nnx.merge(graphdef, jax.tree.map(lambda x: x[layer], stacked))


def _prefix_lm_inputs(model, batch, ar_io, dtype=jnp.float32):
  """The AR's embedded sequence [B, L + Ta, D] and its prefix-LM mask with ragged padding."""
  inputs, _, lens = ar_io
  x, mask = model._inputs_and_mask(batch["phonemes"], batch["phoneme_lens"], inputs, lens)
  return x.astype(dtype), mask


def test_attention_equals_the_reference_formula(ar_model, batch, ar_io):
  """`jax.nn.dot_product_attention` ("xla") computes the hand-written formula: the AR's
  prefix-LM mask over ragged phonemes and audio, and the KV-cache path (a prefill into a
  cache with spare slots, then one decode step; the reference writes by per-example scatter,
  the layer by one dynamic_update_slice)."""
  attn = _block(ar_model, 0).attn
  x, mask = _prefix_lm_inputs(ar_model, batch, ar_io)              # [B, S, D], [B, 1, S, S]
  np.testing.assert_allclose(attn(x, mask)[0], _reference_attention(attn, x, mask)[0],
                             atol=1e-6, rtol=1e-6)
  b, s = x.shape[:2]
  num_slots = s + 3
  shape = (2, b, attn.out_kernel.shape[0], num_slots, attn.head_dim)
  cache = {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}
  prefill_mask = jnp.pad(mask, [(0, 0), (0, 0), (0, 0), (0, 3)])   # [B, 1, S, S + 3]
  ours = attn(x, prefill_mask, cache=cache, layer=1, write_slot=0)
  ref = _reference_attention(attn, x, prefill_mask, cache, 1, 0)
  np.testing.assert_allclose(ours[0], ref[0], atol=1e-6, rtol=1e-6)
  np.testing.assert_array_equal(ours[1]["k"], ref[1]["k"])
  step_slot = jnp.asarray(s + 1)                                    # one slot left empty
  step_mask = jnp.pad(mask[:, :, -1:], [(0, 0), (0, 0), (0, 0), (0, 3)],
                      constant_values=True) & (jnp.arange(num_slots) != s) & (
                          jnp.arange(num_slots) <= step_slot)        # [B, 1, 1, S]
  x_step = x[:, -1:] + 0.5
  ours = attn(x_step, step_mask, cache=ours[1], layer=1, write_slot=step_slot)
  ref = _reference_attention(attn, x_step, step_mask, ref[1], 1, step_slot)
  np.testing.assert_allclose(ours[0], ref[0], atol=1e-6, rtol=1e-6)
  np.testing.assert_array_equal(ours[1]["v"], ref[1]["v"])


def test_attention_softmax_is_float32_for_bfloat16_inputs(ar_model, batch, ar_io):
  """With bfloat16 inputs the logits are QK^T accumulated in float32 and the softmax is
  float32: the layer equals the reference with float32 logits to bfloat16 rounding of its
  output, and is no further from the float32 layer than that reference."""
  attn = _block(ar_model, 0).attn
  x, mask = _prefix_lm_inputs(ar_model, batch, ar_io, jnp.bfloat16)
  ours = attn(x, mask)[0]
  assert ours.dtype == jnp.bfloat16
  ref = _reference_attention(attn, x, mask, float32_logits=True)[0]
  exact = attn(x.astype(jnp.float32), mask)[0]
  scale = float(jnp.max(jnp.abs(exact)))
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32),
                             atol=2 ** -7 * scale)
  ours_err = float(jnp.max(jnp.abs(ours.astype(jnp.float32) - exact)))
  ref_err = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - exact)))
  assert ours_err <= 1.5 * ref_err + 1e-6, (ours_err, ref_err)


def test_attention_rejects_an_unknown_implementation(cfg):
  with pytest.raises(ValueError, match="attention must be one of"):
    models.ARModel(_with(cfg, attention="flash"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_keeps_the_parameters_and_the_gradients(cfg, batch, remat):
  """Per-block rematerialisation changes neither the parameter tree (checkpoints and the
  lifeiteng converter read it) nor the gradients (AR with dropout, NAR with AdaLN); the
  backward pass does recompute (a remat in the jaxpr)."""
  for cls, loss in ((models.ARModel, models.ar_loss), (models.NARModel, models.nar_loss)):
    plain = cls(_with(cfg, dropout=0.1), rngs=nnx.Rngs(0))
    rematted = cls(_with(cfg, dropout=0.1, remat=remat), rngs=nnx.Rngs(0))
    params = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))   # noqa: E731
    assert jax.tree.structure(params(plain)) == jax.tree.structure(params(rematted))

    def grads(model):
      graphdef, state = nnx.split(model)
      def value(state):
        return loss(nnx.merge(graphdef, state), batch, jax.random.key(3))[0]
      return jax.jit(jax.grad(value))(state), jax.make_jaxpr(jax.grad(value))(state)

    (expected, plain_jaxpr), (got, jaxpr) = grads(plain), grads(rematted)
    assert "remat" not in str(plain_jaxpr) and "remat" in str(jaxpr)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_blocks_are_one_loop_except_in_a_decoding_step(ar_model, batch, ar_io):
  """The forward and the prefill compile one block inside a loop over the stacked layers;
  a decoding step (one query, a cache) is straight-line code over every layer."""
  inputs, _, lens = ar_io
  args = (batch["phonemes"], batch["phoneme_lens"], inputs, lens)
  cache = ar_model.init_cache(inputs.shape[0], inputs.shape[1] + batch["phonemes"].shape[1] + 4)
  _, filled = ar_model.prefill(*args, cache)
  tokens = jnp.zeros((inputs.shape[0], ar_model.group_size), jnp.int32)
  loops = lambda f, *a: jax.jit(f).lower(*a).as_text().count("stablehlo.while")  # noqa: E731
  assert ar_model.num_layers > 1
  assert loops(lambda: ar_model(*args)) == 1
  assert loops(lambda c: ar_model.prefill(*args, c), cache) == 1
  assert loops(lambda c: ar_model.decode_step(tokens, c), filled) == 0


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


def test_losses_and_topk(cfg, ar_model, nar_model, batch):
  loss, m = nnx.jit(models.ar_loss)(ar_model, batch)
  # Targets: codes plus EOS for each example.
  assert float(m["count"]) == float(jnp.sum(batch["code_lens"] + 1))
  assert abs(float(loss) - np.log(cfg.codebook_size + 1)) < 1.5
  assert 0 <= float(m["top1_correct"]) <= float(m["top10_correct"]) <= float(m["count"])
  loss, m = nnx.jit(models.nar_loss)(nar_model, batch)
  assert float(m["count"]) == float(jnp.sum(batch["code_lens"]))
  np.testing.assert_allclose(m["count_per_codebook"][np.asarray(batch["stage"])],
                             batch["code_lens"])
  np.testing.assert_allclose(float(jnp.sum(m["loss_sum_per_codebook"])), float(m["loss_sum"]),
                             rtol=1e-5)
  for key in ("top1_correct", "top10_correct"):   # the stages' sums add up to the total
    np.testing.assert_allclose(float(jnp.sum(m[f"{key}_per_codebook"])), float(m[key]))
  assert 0 <= float(m["top1_correct"]) <= float(m["top10_correct"]) <= float(m["count"])
  # Ranks (top-k: rank < k) against a hand-made case; a tie does not beat the target.
  logits = jnp.array([[0.0, 3.0, 2.0, 1.0, 3.0]])
  targets = jnp.array([[2, 0, 1, 4]])
  nll, rank = models.token_nll_and_rank(jnp.broadcast_to(logits, (1, 4, 5)), targets)
  np.testing.assert_array_equal(rank, [[2, 4, 0, 0]])
  np.testing.assert_allclose(nll[0, 0], -jax.nn.log_softmax(logits[0])[2], rtol=1e-6)
  # The metrics count top-1 and top-10 from those ranks.
  logits12 = jnp.arange(12.0)[None, None, :]                   # code 11 first, 0 last
  _, m = models.nar_metrics(jnp.broadcast_to(logits12, (1, 3, 12)),
                            jnp.array([[[0, 11], [0, 2], [0, 1]]]), jnp.array([3]),
                            jnp.array([1]))
  assert float(m["top1_correct"]) == 1 and float(m["top10_correct"]) == 2
  np.testing.assert_array_equal(m["top1_correct_per_codebook"], [0, 1])


def test_padding_rows_and_masked_frames_are_not_scored(ar_model, nar_model, batch):
  """A row without phonemes (data.py's padding) adds nothing to the AR's loss or count, nor
  the EOS of a row cropped out of a longer utterance (ends_utterance False), and a NAR
  target frame with loss_mask 0 nothing to the NAR's."""
  padded = {k: np.array(v) for k, v in batch.items()}
  padded["phonemes"][0], padded["phoneme_lens"][0], padded["code_lens"][0] = 0, 0, 0
  _, full = models.ar_loss(ar_model, batch)
  _, m = models.ar_loss(ar_model, padded)
  others = {k: v[1:] for k, v in batch.items()}
  _, rest = models.ar_loss(ar_model, others)
  assert float(m["count"]) == float(rest["count"]) < float(full["count"])
  np.testing.assert_allclose(float(m["loss_sum"]), float(rest["loss_sum"]), rtol=1e-5)
  cropped = np.array([False] + [True] * (len(batch["code_lens"]) - 1))
  _, c = models.ar_loss(ar_model, {**batch, "ends_utterance": cropped})
  assert float(c["count"]) == float(full["count"]) - 1          # row 0's EOS only
  assert float(c["loss_sum"]) < float(full["loss_sum"])
  mask = np.ones(batch["codes"].shape[:2], np.float32)
  mask[:, :3] = 0.0
  _, whole = models.nar_loss(nar_model, batch)
  _, masked = models.nar_loss(nar_model, {**batch, "loss_mask": mask})
  assert float(masked["count"]) == float(whole["count"]) - 3 * len(mask)
  assert float(masked["loss_sum"]) < float(whole["loss_sum"])


def test_bfloat16_compute_matches_float32(cfg, ar_model, nar_model, batch, ar_io, ar_logits,
                                         nar_logits):
  """compute_dtype "bfloat16" (configs/paper.py's): the same parameters, still float32, give
  float32 logits and losses within bfloat16's rounding of the float32 model's."""
  assert paper.get_config().model.compute_dtype == "bfloat16"
  inputs, _, lens = ar_io
  cfg16 = _with(cfg, compute_dtype="bfloat16")
  for model, args, ref, loss in (
      (ar_model, (batch["phonemes"], batch["phoneme_lens"], inputs, lens), ar_logits,
       models.ar_loss), (nar_model, _nar_args(batch), nar_logits, models.nar_loss)):
    model16 = type(model)(cfg16, rngs=nnx.Rngs(0))
    nnx.update(model16, nnx.state(model, nnx.Param))
    out = _apply(model16)(*args)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    valid = np.isfinite(np.asarray(ref))
    err = np.max(np.abs(np.asarray(out) - np.asarray(ref))[valid])
    assert err < 0.05 * float(np.max(np.abs(ref))), f"bf16 error {err}"
    (loss16, metrics16), (loss32, _) = (nnx.jit(loss)(m, batch) for m in (model16, model))
    assert loss16.dtype == jnp.float32 and metrics16["loss_sum"].dtype == jnp.float32
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=0.02)
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


def test_lifeiteng_switches_reject_bad_values(cfg):
  for field, value, model, message in (
      ("mlp_activation", "swish", models.ARModel, "mlp_activation must be one of"),
      ("nar_tie_offset", 2, models.NARModel, "nar_tie_offset must be 0 or 1"),
      ("nar_tie_output", False, models.NARModel, "1 needs nar_tie_output")):
    bad = _with(cfg, **{field: value})
    if field == "nar_tie_output":
      bad.nar_tie_offset = 1
    with pytest.raises(ValueError, match=message):
      model(bad, rngs=nnx.Rngs(0))
