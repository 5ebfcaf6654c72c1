"""`model.attention = "splash"` (valle_jax/models/splash.py) equals XLA's attention.

On CPU the TPU kernel runs in Pallas's interpret mode (chosen automatically off a TPU): the
kernel's own blocking, masking, segment ids and custom gradient, interpreted. Compared on
valid query rows only (a padding query's output differs by design and is never read).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from valle_jax import models
from valle_jax.models import splash

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dense(valid, prefix):
  """The models' dense mask for `splash.Mask(valid, prefix)`: [B, 1, T, T]."""
  slot = jnp.arange(valid.shape[1])
  allowed = (slot[None, :] < prefix) | (slot[None, :] <= slot[:, None])
  return allowed[None, None] & valid[:, None, None, :]


@pytest.mark.parametrize("prefix", [61, 150])   # the AR's prefix-LM; the NAR's full mask
def test_kernel_equals_xla_with_ragged_padding(prefix):
  """Outputs and gradients (of a loss over valid rows) on a 150-slot sequence (two blocks
  of 128 after padding), the prefix ending inside the first block, padding at the end of
  each segment, differently per example."""
  b, t, n, h = 2, 150, 2, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, h)) for i in range(3))
  slot = np.arange(t)
  valid = jnp.asarray(np.stack([(slot < 40) | ((slot >= 61) & (slot < 140)),
                                (slot < 61) | ((slot >= 61) & (slot < 90))]))   # [B, T]
  mask = splash.Mask(valid, prefix=prefix)
  weights = jax.random.normal(jax.random.key(9), (b, t, n, h)) * valid[:, :, None, None]

  def loss(attend, q, k, v):
    return jnp.sum(attend(q, k, v) * weights)
  ours = lambda q, k, v: splash.attention(q, k, v, mask, scale=h ** -0.5)   # noqa: E731
  xla = lambda q, k, v: jax.nn.dot_product_attention(                      # noqa: E731
      q, k, v, mask=_dense(valid, prefix), scale=h ** -0.5, implementation="xla")
  rows = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(ours(q, k, v))[rows], np.asarray(xla(q, k, v))[rows],
                             atol=1e-5, rtol=1e-5)
  got = jax.grad(loss, argnums=(1, 2, 3))(ours, q, k, v)
  expected = jax.grad(loss, argnums=(1, 2, 3))(xla, q, k, v)
  for name, g, e in zip("qkv", got, expected):
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5, err_msg=name)
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]                   # to bfloat16 rounding
  out = ours(*bf16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32)[rows],
                             np.asarray(xla(*bf16), np.float32)[rows], atol=2 ** -6)


def test_kernel_under_a_mesh_runs_per_device():
  """Under an ambient (data 2, fsdp 2, tensor 2) mesh of the 8 simulated devices the kernel
  runs in a shard_map (batch over data x fsdp, heads over tensor) and gives the unsharded
  outputs and gradients."""
  b, t, n, h = 4, 150, 2, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, h)) for i in range(3))
  mask = splash.Mask(jnp.arange(t)[None] < jnp.array([[150], [100], [70], [20]]), prefix=61)
  value = lambda q, k, v: jnp.sum(splash.attention(q, k, v, mask, scale=0.3) ** 2)  # noqa: E731
  run = jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))
  expected = run(q, k, v)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(run)(q, k, v))
    got = run(q, k, v)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _with(cfg, **changes):
  new = cfg.copy_and_resolve_references()
  for key, value in changes.items():
    new[key] = value
  return new


@pytest.fixture(scope="module")
def cfg():
  return tiny.get_config().model


@pytest.fixture(scope="module")
def batch(cfg):
  """Ragged phonemes, codes and NAR prompts (padding at the end of each segment)."""
  b = models.example_batch(cfg, 3, 7, 12)
  b["phoneme_lens"], b["code_lens"] = np.array([7, 5, 3]), np.array([12, 9, 4])
  b["prompt_codes"] = np.random.default_rng(0).integers(0, cfg.codebook_size, (3, 5, 8))
  b["prompt_lens"], b["stage"] = np.array([5, 3, 1]), np.array([1, 4, 7])
  return {key: jnp.asarray(value) for key, value in b.items()}


def _loss_and_grads(cls, loss, cfg, batch, **changes):
  graphdef, state = nnx.split(cls(_with(cfg, **changes), rngs=nnx.Rngs(0)))
  value = lambda state: loss(nnx.merge(graphdef, state), batch, None)[0]   # noqa: E731
  return jax.jit(jax.value_and_grad(value))(state)


def _assert_same_loss_and_grads(got, expected):
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(expected[1]), jax.tree.leaves(got[1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_splash_inside_remat(cfg, batch):
  """Rematerialised blocks (the kernel first built inside that trace: this test runs before
  the AR's other splash test) give the plain XLA model's loss and gradients."""
  _assert_same_loss_and_grads(
      _loss_and_grads(models.ARModel, models.ar_loss, cfg, batch, attention="splash",
                      remat="full"),
      _loss_and_grads(models.ARModel, models.ar_loss, cfg, batch, attention="xla"))


@pytest.mark.parametrize("name", ["ar", "nar"])
def test_models_with_splash_equal_xla(cfg, batch, name):
  """The AR (prefix-LM over ragged phonemes and audio) and the NAR (full attention over
  ragged phonemes, prompt and target) with "splash" give XLA's losses and gradients."""
  cls, loss = {"ar": (models.ARModel, models.ar_loss),
               "nar": (models.NARModel, models.nar_loss)}[name]
  _assert_same_loss_and_grads(_loss_and_grads(cls, loss, cfg, batch, attention="splash"),
                              _loss_and_grads(cls, loss, cfg, batch, attention="xla"))


def test_ar_cache_paths_keep_xla(cfg, batch):
  """With "splash" the AR's prefill and decode step (dense masks: XLA's attention) give
  exactly the "xla" model's logits."""
  inputs, _, lens = models.ar_inputs_and_targets(batch["codes"][..., 0], batch["code_lens"],
                                                 cfg.codebook_size)
  @nnx.jit
  def sample_logits(model):
    cache = model.init_cache(3, 7 + 12 + 2)
    logits, cache = model.prefill(batch["phonemes"], batch["phoneme_lens"], inputs, lens, cache)
    step, _ = model.decode_step(jnp.zeros((3, 1), jnp.int32), cache)
    return logits, step
  got, expected = (sample_logits(models.ARModel(_with(cfg, attention=attention),
                                                rngs=nnx.Rngs(0)))
                   for attention in ("splash", "xla"))
  for got, expected in zip(got, expected):
    np.testing.assert_array_equal(got, expected)


def test_training_refuses_splash_off_a_tpu(tmp_path):
  """On CPU (and GPU) `valle-jax train` with "splash" stops before any work, in one line."""
  result = subprocess.run(
      [sys.executable, "-m", "valle_jax.cli", "train", "--config=configs/tiny.py",
       "--config.model.attention=splash", f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert ("error: invalid config: model.attention = 'splash' is a TPU kernel and this JAX "
          "backend is 'cpu'; use 'xla' (or 'cudnn' on an NVIDIA GPU)") in result.stderr
  assert not (tmp_path / "run").exists()
