"""`valle-jax info`: build a config's AR and NAR models, run a forward pass, print sizes.

    valle-jax info --config=configs/paper.py
    valle-jax info --config=configs/tiny.py --config.model.num_layers=4
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx
from ml_collections import config_flags

from valle_jax import config_check, models, sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config file.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Batch size of the forward pass.")
_FRAMES = flags.DEFINE_integer("frames", 225, "Audio frames of the forward pass (75 = 1 s).")
_PHONEMES = flags.DEFINE_integer("phonemes", 40, "Phonemes per example in the forward pass.")


def main(argv):
  del argv
  cfg = _CONFIG.value
  config_check.check(config_check.experiment(cfg, ("model", "mesh")) + config_check.flag_problems(
      [(flag.name, flag.value, flag.value >= 1, "must be >= 1")
       for flag in (_BATCH, _FRAMES, _PHONEMES)]), "config")
  mesh = sharding.make_mesh(cfg.mesh)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh {dict(mesh.shape)}")
  batch = models.example_batch(cfg.model, _BATCH.value, _PHONEMES.value, _FRAMES.value, cfg.seed)
  batch = sharding.shard_batch(batch, mesh)
  for name, model_cls, loss_fn in (("AR", models.ARModel, models.ar_loss),
                                   ("NAR", models.NARModel, models.nar_loss)):
    model = sharding.create_sharded_model(
        lambda: model_cls(cfg.model, rngs=nnx.Rngs(cfg.seed)), mesh)
    params = nnx.state(model, nnx.Param)
    print(f"{name}: {sharding.param_count(params):,} parameters "
          f"({cfg.model.num_layers} layers, {cfg.model.num_heads} heads, width "
          f"{cfg.model.width}, mlp {cfg.model.mlp_dim}, compute {cfg.model.compute_dtype})")
    start = time.perf_counter()
    loss, metrics = nnx.jit(loss_fn)(model, batch)
    loss = float(jax.block_until_ready(loss))
    print(f"  forward on batch {_BATCH.value} x {_FRAMES.value} frames: loss {loss:.3f} "
          f"over {int(metrics['count'])} tokens (uniform would be "
          f"{float(jnp.log(cfg.model.codebook_size + (name == 'AR'))):.3f}), "
          f"{time.perf_counter() - start:.1f} s with compilation")
