"""Training: loss falls, exact resume after SIGKILL, restore onto another mesh, NaN guard,
two real processes with jax.distributed."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from valle_jax import checkpoint as ckpt_lib
from valle_jax import sharding, text, train
from valle_jax.errors import EXIT_STOPPED, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One bucket (one compiled step) of 8 examples: fast and still the real pipeline.
FLAGS = ["--config=configs/tiny.py", "--config.train.model=both",
         "--config.data.frame_buckets=(200,)", "--config.data.phoneme_buckets=(64,)",
         "--config.data.max_tokens=800", "--config.train.log_every=1",
         "--config.debug.log_examples=True"]


def _cfg(dataset, **changes):
  cfg = tiny.get_config()
  cfg.data.dataset = dataset
  cfg.train.model = "both"
  cfg.data.frame_buckets = (200,)
  cfg.data.phoneme_buckets = (64,)
  cfg.data.max_tokens = 1600
  for key, value in changes.items():
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return cfg


def _metrics(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r for r in rows if r["split"] == split}


def _run_train(workdir, dataset, *extra, devices=2):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
         "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  return subprocess.run(
      [sys.executable, "-m", "valle_jax.cli", "train", *FLAGS,
       f"--config.data.dataset={dataset}", f"--workdir={workdir}", *extra],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _final_params(workdir, step):
  manager = ckpt_lib.RunCheckpoints(os.path.join(workdir, "checkpoints"), every=1, keep=10)
  meta = manager.manager.item_metadata(step)
  params = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = manager.manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(params)))["params"]
  manager.close()
  return restored


def test_loss_falls_and_nan_free(trained_run):
  """Overfit 8 utterances: both losses fall clearly within 40 steps (8 devices, mesh 8x1x1),
  on the training metrics and on the periodic evaluation."""
  evals = _metrics(trained_run, "eval")
  assert sorted(evals) == [20, 40]
  assert evals[40]["ar/loss"] < evals[20]["ar/loss"]
  assert evals[40]["nar/loss"] < evals[20]["nar/loss"]
  # The evaluation also scores the AR with each example's phonemes reversed.
  assert all(np.isfinite(e["ar/text_gain"]) and e["ar/text_gain"] != 0 for e in evals.values())
  # Top-1 and top-10 accuracy, for the AR and for each NAR stage it met.
  final = evals[40]
  stages = [q for q in range(2, 9) if f"nar/loss_codebook{q}" in final]
  assert stages and "nar/loss_codebook1" not in final
  for prefix, suffix in [("ar", ""), ("nar", "")] + [("nar", f"_codebook{q}") for q in stages]:
    assert 0 <= final[f"{prefix}/top1_acc{suffix}"] <= final[f"{prefix}/top10_acc{suffix}"] <= 1
  rows = _metrics(trained_run)
  first, last = rows[5], rows[40]
  assert last["ar/loss"] < first["ar/loss"] - 2.0, (first["ar/loss"], last["ar/loss"])
  assert last["nar/loss"] < first["nar/loss"] - 1.0, (first["nar/loss"], last["nar/loss"])
  assert sum(rows[s]["skipped_steps"] for s in range(5, 41, 5)) == 0
  assert os.listdir(os.path.join(trained_run, "checkpoints")) == ["40"]
  assert os.listdir(os.path.join(trained_run, "tb"))          # TensorBoard events written


def test_sigkill_and_resume_is_exact(tiny_dataset, tmp_path):
  """2N steps straight == N steps, SIGKILL (after a saved checkpoint), resume to 2N."""
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  result = _run_train(straight, tiny_dataset, "--config.train.steps=8",
                      "--config.checkpoint.every=4")
  assert result.returncode == 0, result.stderr[-3000:]
  result = _run_train(broken, tiny_dataset, "--config.train.steps=8",
                      "--config.checkpoint.every=4", "--config.debug.kill_at_step=6")
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(broken, "checkpoints"))) == ["4"]
  result = _run_train(broken, tiny_dataset, "--config.train.steps=8",
                      "--config.checkpoint.every=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 4" in result.stdout

  want, got = _metrics(straight), _metrics(broken)
  assert sorted(got) == list(range(1, 9))
  for step in range(1, 9):
    assert got[step]["ar/loss"] == want[step]["ar/loss"], step
    assert got[step]["nar/loss"] == want[step]["nar/loss"], step
  want_data, got_data = _metrics(straight, "data"), _metrics(broken, "data")
  assert [got_data[s]["examples"] for s in range(1, 9)] == \
         [want_data[s]["examples"] for s in range(1, 9)]
  for a, b in zip(jax.tree.leaves(_final_params(straight, 8)),
                  jax.tree.leaves(_final_params(broken, 8))):
    np.testing.assert_array_equal(a, b)


def test_restore_onto_another_mesh(tiny_dataset, tmp_path):
  cfg = _cfg(tiny_dataset)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 8, 1, 1
  saver = train.Trainer(cfg, sharding.make_mesh(cfg.mesh))
  state = saver.init_state()
  ckpt = ckpt_lib.RunCheckpoints(str(tmp_path), every=1, keep=1)
  ckpt.save(3, params=state["params"], optimizer=state["optimizer"], data={"next_index": 3},
            config=cfg, symbols={"symbols": []}, codec={"name": "x"})
  ckpt.wait()
  other = cfg.copy_and_resolve_references()
  other.mesh.data, other.mesh.fsdp, other.mesh.tensor = 2, 2, 2
  loader = train.Trainer(other, sharding.make_mesh(other.mesh))
  abstract = loader.abstract_for_restore()
  restored = ckpt.restore(3, abstract_params=abstract["params"],
                          abstract_optimizer=abstract["optimizer"])
  ckpt.close()
  q = restored["params"]["ar"]["transformer"]["blocks"]["attn"]["q_kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(
      {"params": restored["params"], "optimizer": restored["optimizer"]})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored["data"] == {"next_index": 3}


def test_checkpoint_with_per_layer_blocks_restores_stacked(tiny_dataset, tmp_path):
  """A checkpoint written before the transformer scanned its blocks (parameters and
  optimiser moments under blocks/0, blocks/1, ...) restores into the stacked layout, onto
  another mesh, for training and for synthesis."""
  cfg = _cfg(tiny_dataset)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 8, 1, 1
  state = train.Trainer(cfg, sharding.make_mesh(cfg.mesh)).init_state()
  state = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(x.size), x.shape, x.dtype)
                       if jnp.issubdtype(x.dtype, jnp.floating) else x, state)

  def per_layer(x):
    if not (isinstance(x, dict) and "blocks" in x):
      return x
    layers = range(cfg.model.num_layers)
    return {**x, "blocks": {i: jax.tree.map(lambda y, i=i: y[i], x["blocks"]) for i in layers}}
  old = jax.tree.map(per_layer, state, is_leaf=lambda x: isinstance(x, dict) and "blocks" in x)
  assert set(old["params"]["ar"]["transformer"]["blocks"]) == {0, 1}
  ckpt = ckpt_lib.RunCheckpoints(str(tmp_path / "checkpoints"), every=1, keep=1)
  ckpt.save(3, params=old["params"], optimizer=old["optimizer"], data={"next_index": 3},
            config=cfg, symbols={"symbols": text.SymbolTable.default().symbols},
            codec={"name": "x"})
  ckpt.wait()
  assert ckpt_lib.per_layer_blocks(str(tmp_path / "checkpoints" / "3" / "params")) == 2
  other = cfg.copy_and_resolve_references()
  other.mesh.data, other.mesh.fsdp, other.mesh.tensor = 2, 2, 2
  abstract = train.Trainer(other, sharding.make_mesh(other.mesh)).abstract_for_restore()
  restored = ckpt.restore(3, abstract_params=abstract["params"],
                          abstract_optimizer=abstract["optimizer"])
  ckpt.close()
  assert jax.tree.structure(restored["optimizer"]) == jax.tree.structure(state["optimizer"])
  q = restored["params"]["ar"]["transformer"]["blocks"]["attn"]["q_kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(
      {"params": restored["params"], "optimizer": restored["optimizer"]})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  bundle = ckpt_lib.load_inference_bundle(str(tmp_path))
  for name, model in (("ar", bundle.ar), ("nar", bundle.nar)):
    for a, b in zip(jax.tree.leaves(state["params"][name]),
                    jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _PoisonableTrainer(train.Trainer):
  """The real trainer, whose loss turns NaN on a batch marked poisoned (phoneme id -1)."""

  def _loss_sums(self, params, batch, rng, deterministic=False):
    total, metrics = super()._loss_sums(params, batch, rng, deterministic)
    poisoned = jnp.any(batch["ar"]["phonemes"] < 0)
    return total * jnp.where(poisoned, jnp.nan, 1.0), metrics


def _batches(dataset_path, cfg, kind, count):
  """The loader's first `count` global batches (without their "index")."""
  from valle_jax import data  # pylint: disable=g-import-not-at-top
  source = data.open_dataset(dataset_path).split("train")
  plan = data.BatchPlan(data.scan_lengths(source, progress=False), cfg.data, seed=0,
                        batch_multiple=8)
  loader = data.BatchLoader(source, plan, cfg.data, kind=kind, num_codebooks=8,
                            frame_rate=75.0)
  batches = [loader(i) for i in range(count)]
  for batch in batches:
    batch.pop("index")
  return batches


def test_grad_accumulation_equals_whole_batch(tiny_dataset):
  """2 token-weighted micro-batches give the whole batch's gradients and loss."""
  cfg = _cfg(tiny_dataset)
  mesh = sharding.make_mesh(cfg.mesh)
  batch = sharding.shard_batch(_batches(tiny_dataset, cfg, "both", 1)[0], mesh)
  whole = train.Trainer(cfg, mesh)
  params = whole.init_state()["params"]
  accumulated = train.Trainer(_cfg(tiny_dataset, **{"train.grad_accum_steps": 2}), mesh)
  rng = jax.random.key(0)
  g1, loss1, m1 = jax.jit(whole._grads)(params, batch, rng)
  g2, loss2, m2 = jax.jit(accumulated._grads)(params, batch, rng)
  np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-6)
  assert float(m2["nar"]["count"]) == float(m1["nar"]["count"])
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=1e-7)


def test_splash_train_step_on_a_mesh_equals_xla(tiny_dataset):
  """The splash kernel (interpreted off a TPU) inside the compiled train step on a
  2 x 2 x 2 mesh, which it splits by hand under the step's ambient mesh: the same loss
  and gradients as XLA's attention, AR and NAR."""
  changes = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "model.dropout": 0.0}
  cfg = _cfg(tiny_dataset, **changes)
  mesh = sharding.make_mesh(cfg.mesh)
  batch = sharding.shard_batch(_batches(tiny_dataset, cfg, "both", 1)[0], mesh)
  results = []
  for attention in ("xla", "splash"):
    trainer = train.Trainer(_cfg(tiny_dataset, **changes, **{"model.attention": attention}),
                            mesh)
    state = trainer.init_state()
    lowered = trainer.train_step.lower(state, batch).as_text()
    assert ("manual" in lowered) == (attention == "splash")   # the kernel's shard_map
    grads = train._UnderMesh(jax.jit(trainer._grads), mesh)  # pylint: disable=protected-access
    results.append(grads(state["params"], batch, jax.random.key(0)))
  (xla_grads, xla_loss, _), (splash_grads, splash_loss, _) = results
  np.testing.assert_allclose(float(splash_loss), float(xla_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(xla_grads), jax.tree.leaves(splash_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_ar_trained_with_the_nar_gets_the_updates_it_gets_alone(tiny_dataset):
  """Each model's gradients are clipped by its own norm: with a clip that binds, 4 steps of
  "both" leave the AR's parameters where 4 steps of the AR alone do (one clip over both
  models would scale the AR's steps by the NAR's gradient norm, and Adam's later steps with
  it)."""
  binding_clip = {"optim.grad_clip_norm": 0.05, "optim.warmup_steps": 1}
  cfg = _cfg(tiny_dataset, **binding_clip)
  mesh = sharding.make_mesh(cfg.mesh)
  batches = _batches(tiny_dataset, cfg, "both", 4)
  both = train.Trainer(cfg, mesh)
  alone = train.Trainer(_cfg(tiny_dataset, **binding_clip, **{"train.model": "ar"}), mesh)
  state_both, state_alone = both.init_state(), alone.init_state()
  for b in batches:
    state_both, m_both = both.train_step(state_both, sharding.shard_batch(b, mesh))
    state_alone, _ = alone.train_step(state_alone, sharding.shard_batch({"ar": b["ar"]}, mesh))
    assert float(m_both["model_grad_norms"]["ar"]) > 0.05           # the clip binds
    assert float(m_both["model_grad_norms"]["nar"]) > 0.05
  for a, b in zip(jax.tree.leaves(state_both["params"]["ar"]),
                  jax.tree.leaves(state_alone["params"]["ar"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_nan_guard_skips_poisoned_batch_and_continues(tiny_dataset):
  cfg = _cfg(tiny_dataset, **{"train.model": "ar"})
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = _PoisonableTrainer(cfg, mesh)
  batch = _batches(tiny_dataset, cfg, "ar", 1)[0]
  poisoned = jax.tree.map(np.copy, batch)
  poisoned["ar"]["phonemes"][0, 0] = -1
  state = trainer.init_state()
  before = jax.tree.map(np.asarray, state["params"])
  state, metrics = trainer.train_step(state, sharding.shard_batch(poisoned, mesh))
  assert not bool(metrics["finite"])
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, np.asarray(b))             # update skipped
  assert int(state["optimizer"]["skipped"]) == 1 and int(state["optimizer"]["nan_streak"]) == 1
  state, metrics = trainer.train_step(state, sharding.shard_batch(batch, mesh))
  assert bool(metrics["finite"]) and int(state["optimizer"]["nan_streak"]) == 0
  assert int(state["optimizer"]["step"]) == 2
  assert any(not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state["params"])))


def test_nan_streak_stops_with_a_message(tiny_dataset, tmp_path):
  """A learning rate of 1e30 blows the model up; the run stops after N bad steps in a row."""
  cfg = _cfg(tiny_dataset, **{"train.model": "ar", "optim.peak_lr": 1e30,
                              "optim.warmup_steps": 1,
                              "train.steps": 40, "train.log_every": 4,
                              "train.nan_max_consecutive": 3})
  with pytest.raises(UserError, match="steps in a row had a non-finite"):
    train.train(cfg, str(tmp_path))
  assert os.listdir(os.path.join(str(tmp_path), "checkpoints"))   # saved before stopping


def test_two_processes_agree_with_one(tiny_dataset, tmp_path):
  """launch/local.sh: 2 processes x 1 device == 1 process x 2 devices, same global batch."""
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  result = _run_train(single, tiny_dataset, "--config.train.steps=3",
                      "--config.train.model=ar", devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  env = {**os.environ, "PORT": str(20000 + os.getpid() % 10000),
         "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache")}
  launched = subprocess.run(
      ["bash", "launch/local.sh", "2", *FLAGS, f"--config.data.dataset={tiny_dataset}",
       f"--workdir={multi}", "--config.train.steps=3", "--config.train.model=ar"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  logs = [open(os.path.join(multi, f"process_{i}.log")).read() for i in range(2)]
  assert launched.returncode == 0, "".join(log[-2000:] for log in logs)
  assert "(2 process(es), 2 devices)" in logs[0]
  want, got = _metrics(single), _metrics(multi)
  for step in (1, 2, 3):
    np.testing.assert_allclose(got[step]["ar/loss"], want[step]["ar/loss"], rtol=1e-5)


def test_sigterm_saves_and_stops(tiny_dataset, tmp_path):
  """Preemption: SIGTERM mid-run saves a checkpoint at the current step and exits 75
  (EX_TEMPFAIL: requeue)."""
  workdir = str(tmp_path)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
         "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache")}
  proc = subprocess.Popen(
      [sys.executable, "-m", "valle_jax.cli", "train", *FLAGS, "--config.train.model=ar",
       f"--config.data.dataset={tiny_dataset}", f"--workdir={workdir}",
       "--config.train.steps=100000", "--config.checkpoint.every=100000"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isfile(os.path.join(workdir, "metrics.jsonl")) and len(_metrics(workdir)) >= 3:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_STOPPED == 75, err[-3000:]
  assert "SIGTERM received" in out
  assert "stopped at step" in err and "requeue to resume" in err
  saved = int(sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1])
  assert saved == max(_metrics(workdir)) >= 3


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("changes", [
    {"nar_stage_conditioning": "adaln", "nar_tie_output": True},
    {"nar_stage_conditioning": "token", "nar_tie_output": False, "ar_group_size": 2},
    {"mlp_activation": "relu", "ar_position_scale": True, "ar_bos": False,
     "ar_head_bias": False, "nar_tie_output": True, "nar_tie_offset": 1}])   # lifeiteng's
def test_weight_decay_only_on_matmul_kernels(changes):
  """The decay mask is True for every matmul kernel (attention, MLP, untied heads, the
  NAR's `last_head` among them, the grouped AR's projection) and False for every bias,
  norm / AdaLN gain, embedding and AR position scale; one AdamW step with zero gradients
  leaves those unchanged and shrinks the kernels."""
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from valle_jax import models  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  cfg.model.update(changes)
  params = {"ar": nnx.to_pure_dict(nnx.state(models.ARModel(cfg.model, rngs=nnx.Rngs(0)),
                                             nnx.Param)),
            "nar": nnx.to_pure_dict(nnx.state(models.NARModel(cfg.model, rngs=nnx.Rngs(1)),
                                              nnx.Param))}
  mask = _leaves(train.weight_decay_mask(params))
  kernels = {f"{m}/transformer/blocks/{k}" for m in ("ar", "nar")
             for k in ("attn/q_kernel", "attn/k_kernel", "attn/v_kernel", "attn/out_kernel",
                       "mlp/in_kernel", "mlp/out_kernel")}
  kernels |= {"ar/head_kernel"} | ({"ar/group_proj"} if cfg.model.ar_group_size > 1 else set())
  kernels |= set() if cfg.model.nar_tie_output else {"nar/head_kernel"}
  kernels |= {"nar/last_head"} if cfg.model.nar_tie_offset else set()
  assert {name for name, decays in mask.items() if decays} == kernels
  # Everything else is a bias, a norm's (or AdaLN's [stages, width]) gain or bias, an
  # embedding, or an AR position scale.
  others = set(mask) - kernels
  assert all(n.endswith(("_bias", "norm/scale", "norm/bias", "_embed", "_pos_scale"))
             for n in others), others
  assert {"ar/phoneme_embed", "ar/audio_embed", "nar/audio_embed"} <= others
  scales = {"ar/phoneme_pos_scale", "ar/audio_pos_scale"}
  assert (scales <= others) == cfg.model.ar_position_scale
  assert ("ar/head_bias" in others) == cfg.model.ar_head_bias
  adaln = cfg.model.nar_stage_conditioning == "adaln"     # gains [stages, width]
  assert params["nar"]["transformer"]["final_norm"]["scale"].ndim == (2 if adaln else 1)

  cfg.optim.weight_decay = 0.1
  tx = train.make_optimizer(cfg)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  before, after = _leaves(params), _leaves(optax.apply_updates(params, updates))
  shrink = 1 - float(train.make_schedule(cfg)(0)) * 0.1
  for name, value in after.items():
    if name in kernels:
      np.testing.assert_allclose(value, before[name] * shrink, rtol=1e-6)
    else:
      np.testing.assert_array_equal(value, before[name])
