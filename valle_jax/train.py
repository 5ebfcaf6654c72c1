"""Training: `train(cfg, workdir)` runs (or resumes) a run; the command is
`valle-jax train` (valle_jax/train_cli.py).

The train step is a pure function `(state, batch) -> (state, metrics)` under `jax.jit`
with explicit shardings and donated state buffers:

  state = {"params":    {"ar": ..., "nar": ...}   the trained models' parameters (float32)
           "optimizer": {"opt_state", "step", "rng", "nan_streak", "skipped"}}

- `train.model` chooses "ar", "nar" or "both" (one optimiser over both models).
- AdamW with linear warmup to `optim.peak_lr` and linear decay to 0 at `train.steps`,
  gradient clipping to `optim.grad_clip_norm` by each model's own global norm (so training
  AR and NAR together gives each the updates it would get alone), weight decay on the
  matmul kernels only (`weight_decay_mask`).
- Gradient accumulation splits each global batch into `train.grad_accum_steps`
  micro-batches inside the step (a `lax.scan`), so memory scales with the micro-batch.
- NaN/Inf guard: a step whose loss or gradients are not finite leaves params and
  optimiser state unchanged, is counted, and `train.nan_max_consecutive` such steps in a
  row stop the run with a message.
- Checkpoints (`checkpoint.py`) every `checkpoint.every` steps, asynchronously, and at the
  end, on SIGTERM/SIGINT (preemption) and before any stop; a run restarted with the same
  workdir resumes from the latest one, data iterator included, and reproduces the
  uninterrupted run exactly.
- Faults: a failed checkpoint save (also in Orbax's background threads) or metrics write
  (a full disk) stops the run within a step with one line naming what failed and the last
  complete checkpoint; a second SIGTERM/SIGINT ends the process at once. One run at a time
  per workdir (a lock file), and a resumed run keeps its saved config except for the fields
  `allow_config_change` names (valle_jax/run_guard.py).
- Metrics go to the console (process 0, with rate and ETA), to TensorBoard event files
  (`workdir/tb`, written with tensorboardX, no TensorFlow) and to `workdir/metrics.jsonl`.
- Multi-host: set `distributed.coordinator` (or run under SLURM / on a TPU pod with
  `distributed.auto=True`); every process loads its own rows of each global batch.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from valle_jax import checkpoint as ckpt_lib
from valle_jax import codec as codec_lib
from valle_jax import data as data_lib
from valle_jax import recipe as recipe_lib
from valle_jax import text as text_lib
from valle_jax import config_check, io_check, models, paths, run_guard, sharding
from valle_jax.models import splash
from valle_jax.errors import StorageError, UserError, os_reason


# ------------------------------------------------------------------------- set-up


def maybe_initialize_distributed(cfg: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` when the config asks for a multi-process run."""
  dist = cfg.distributed
  if dist.coordinator:
    if dist.cpu_collectives:  # CPU processes need a collectives library (gloo)
      jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    jax.distributed.initialize(coordinator_address=dist.coordinator,
                               num_processes=dist.num_processes, process_id=dist.process_id)
  elif dist.auto:
    jax.distributed.initialize()   # TPU pods and SLURM: everything from the environment


def model_names(cfg) -> tuple[str, ...]:
  kind = cfg.train.model
  if kind not in ("ar", "nar", "both"):
    raise UserError(f"train.model must be 'ar', 'nar' or 'both', got {kind!r}.")
  return ("ar", "nar") if kind == "both" else (kind,)


def make_schedule(cfg) -> optax.Schedule:
  """Linear warmup to `optim.peak_lr` (the first step already takes peak / warmup), then
  linear decay to 0 at `train.steps`."""
  peak, steps = cfg.optim.peak_lr, cfg.train.steps
  warmup = max(1, min(cfg.optim.warmup_steps, steps))
  return optax.join_schedules(
      [optax.linear_schedule(peak / warmup, peak, warmup - 1),
       optax.linear_schedule(peak, 0.0, max(steps - warmup, 1))], [warmup - 1])


def clip_each_model_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` applied to each model's gradients ({"ar": ..., "nar": ...})
  on its own: one clip over both would scale the AR's step by the NAR's gradient norm."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params
    return {name: clip.update(u, clip.init(u))[0] for name, u in updates.items()}, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# Parameters named with one of these endings are matmul weights (layers.py's convention).
DECAYED_NAME_ENDINGS = ("kernel", "_proj")
# The NAR's own output layer for the last codebook (`nar_tie_offset = 1`, lifeiteng's): a
# [V, D] table read like an embedding, but an untied output head like `head_kernel`.
DECAYED_NAMES = ("last_head",)


def weight_decay_mask(params) -> Any:
  """True for each parameter that gets weight decay: the matmul kernels (attention q/k/v/out,
  MLP, untied output heads, `last_head` included, VALL-E 2's group projection), by their
  names. Never biases, norm or AdaLN gains and biases, embeddings (the NAR's tied output
  reads its acoustic embedding) or the AR's position scales (`ar_position_scale`'s
  scalars): decaying an AdaLN gain or a position scale pulls it toward 0, and an embedding
  row decays whenever its token is rare."""
  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name.endswith(DECAYED_NAME_ENDINGS) or name in DECAYED_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """AdamW on `make_schedule`, after each model's global-norm clipping; weight decay on
  the parameters `weight_decay_mask` selects."""
  o = cfg.optim
  return optax.chain(
      clip_each_model_by_global_norm(o.grad_clip_norm),
      optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  mask=weight_decay_mask))


class _UnderMesh:
  """A jitted function called (and lowered) with `mesh` as the ambient mesh
  (`jax.set_mesh`), which a kernel XLA cannot partition reads to split itself
  (models/splash.py)."""

  def __init__(self, jitted, mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args)


class Trainer:
  """Holds the mesh, model definitions, optimiser and the compiled step functions.

  `recipe` gives the model classes and losses (default: the one the config's `variant`
  names, VALL-E's unless it names one; valle_jax/recipe.py)."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               recipe: recipe_lib.Recipe | None = None):
    self.cfg, self.mesh = cfg, mesh
    self.recipe = recipe or recipe_lib.of_config(cfg)
    self.names = model_names(cfg)
    self.tx = make_optimizer(cfg)
    self.schedule = make_schedule(cfg)
    self.graphdefs, abstract_params = {}, {}
    for name in self.names:
      cls = self.recipe.model_class(name)
      abstract = nnx.eval_shape(lambda cls=cls: cls(cfg.model, rngs=nnx.Rngs(0)))
      graphdef, state = nnx.split(abstract)
      self.graphdefs[name] = graphdef
      abstract_params[name] = state
    param_shardings = {n: nnx.to_pure_dict(sharding.state_shardings(s, mesh))
                       for n, s in abstract_params.items()}
    abstract_params = {n: nnx.to_pure_dict(s) for n, s in abstract_params.items()}
    replicated = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        self.tx, lambda _, s: s, abstract_opt, param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = {
        "params": param_shardings,
        "optimizer": {"opt_state": opt_shardings, "step": replicated, "rng": replicated,
                      "nan_streak": replicated, "skipped": replicated}}
    self.abstract_state = {
        "params": abstract_params,
        "optimizer": {"opt_state": abstract_opt,
                      "step": jax.ShapeDtypeStruct((), jnp.int32),
                      "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
                      "nan_streak": jax.ShapeDtypeStruct((), jnp.int32),
                      "skipped": jax.ShapeDtypeStruct((), jnp.int32)}}
    # The compiled entry points: (state, batch) -> (state, metrics), state donated; and
    # (params, batch) -> metrics without dropout.
    self.train_step = _UnderMesh(jax.jit(
        self._step, out_shardings=(self.state_shardings, replicated), donate_argnums=(0,)),
        mesh)
    self.eval_step = _UnderMesh(jax.jit(self._eval, out_shardings=replicated), mesh)

  # -- state -----------------------------------------------------------------------

  def init_state(self) -> dict[str, Any]:
    """Fresh parameters and optimiser state, created directly in their shardings."""
    cfg = self.cfg

    def init():
      params = {}
      for i, name in enumerate(self.names):
        model = self.recipe.model_class(name)(cfg.model, rngs=nnx.Rngs(params=cfg.seed + i))
        params[name] = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      return {"params": params,
              "optimizer": {"opt_state": self.tx.init(params), "step": jnp.int32(0),
                            "rng": jax.random.key_data(jax.random.key(cfg.seed + 100)),
                            "nan_streak": jnp.int32(0), "skipped": jnp.int32(0)}}
    return jax.jit(init, out_shardings=self.state_shardings)()

  def abstract_for_restore(self):
    return ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)

  # -- pure step functions --------------------------------------------------------------

  def _loss_sums(self, params, batch, rng, deterministic: bool = False):
    """Sum over models of their summed token losses, and the models' metrics.

    Each model's loss depends on its own params only, so the gradient of this sum for
    params[m] is model m's summed-loss gradient; `_step` divides it by m's token count.
    A loss's auxiliary objectives (`metrics["aux"]`, models/losses.py) add their sums.
    """
    total, metrics = 0.0, {}
    for i, name in enumerate(self.names):
      model = nnx.merge(self.graphdefs[name], params[name])
      dropout_rng = None if deterministic else jax.random.fold_in(rng, i)
      _, m = self.recipe.loss(name)(model, batch[name], dropout_rng)
      total += m["loss_sum"] + sum(a["loss_sum"] for a in m.get("aux", {}).values())
      metrics[name] = m
    return total, metrics

  def _grads(self, params, batch, rng):
    """Per-token mean gradients of each model over the whole batch, its loss and metrics."""
    grad_fn = jax.grad(self._loss_sums, has_aux=True)
    # Micro-batches [accum, B / accum, ...]; token-weighted, so accumulating k micro-batches
    # gives the gradient of the whole batch (to float rounding).
    accum = self.cfg.train.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]),
                         batch)

    def body(carry, xs):
      micro_batch, i = xs
      grads, metrics = grad_fn(params, micro_batch, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng))
    (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
    counts = {m: jnp.maximum(metrics[m]["count"], 1.0) for m in self.names}
    grads = {m: jax.tree.map(lambda g, m=m: g / counts[m], grads[m]) for m in self.names}
    loss = sum(metrics[m]["loss_sum"] / counts[m] for m in self.names)
    return grads, loss, metrics

  def _step(self, state, batch):
    opt = state["optimizer"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(opt["rng"]), opt["step"])
    grads, loss, metrics = self._grads(state["params"], batch, rng)
    model_grad_norms = {m: optax.tree.norm(grads[m]) for m in self.names}  # what each clip sees
    grad_norm = jnp.sqrt(sum(n ** 2 for n in model_grad_norms.values()))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = self.tx.update(grads, opt["opt_state"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    state = {
        "params": keep(new_params, state["params"]),
        "optimizer": {"opt_state": keep(new_opt_state, opt["opt_state"]),
                      "step": opt["step"] + 1, "rng": opt["rng"],
                      "nan_streak": jnp.where(finite, 0, opt["nan_streak"] + 1),
                      "skipped": opt["skipped"] + (~finite).astype(jnp.int32)}}
    out = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
           "model_grad_norms": model_grad_norms,
           "lr": self.schedule(opt["step"]), **metrics}
    return state, out

  def _eval(self, params, batch):
    metrics = self._loss_sums(params, batch, None, deterministic=True)[1]
    if "ar" in self.names:
      # What the AR gains from reading the text: its NLL with each example's phonemes
      # reversed (same length and phonemes, wrong order) less its NLL with the true ones.
      ar_batch = {**batch["ar"], "phonemes": models.reverse_valid(
          batch["ar"]["phonemes"], batch["ar"]["phoneme_lens"])}
      _, m = self.recipe.ar_loss(nnx.merge(self.graphdefs["ar"], params["ar"]), ar_batch, None)
      metrics["ar"]["text_gain_sum"] = m["loss_sum"] - metrics["ar"]["loss_sum"]
    return metrics


# ------------------------------------------------------------------------- metrics


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
  """Device metrics of one or more steps (summed) -> flat scalars for logging."""
  out = {}
  for name in ("ar", "nar"):
    if name not in metrics:
      continue
    m = jax.tree.map(np.asarray, metrics[name])
    count = max(float(m["count"]), 1.0)
    out[f"{name}/loss"] = float(m["loss_sum"]) / count
    out[f"{name}/top1_acc"] = float(m["top1_correct"]) / count
    out[f"{name}/top10_acc"] = float(m["top10_correct"]) / count
    out[f"{name}/tokens"] = float(m["count"])
    if "text_gain_sum" in m:
      out[f"{name}/text_gain"] = float(m["text_gain_sum"]) / count
    for aux, a in m.get("aux", {}).items():   # per the objective's own count
      out[f"{name}/{aux}_loss"] = float(a["loss_sum"]) / max(float(a["count"]), 1.0)
    if "count_per_codebook" in m:
      for q, (c, l, a1, a10) in enumerate(zip(
          m["count_per_codebook"], m["loss_sum_per_codebook"], m["top1_correct_per_codebook"],
          m["top10_correct_per_codebook"])):
        if c > 0:
          out[f"{name}/loss_codebook{q + 1}"] = float(l) / float(c)
          out[f"{name}/top1_acc_codebook{q + 1}"] = float(a1) / float(c)
          out[f"{name}/top10_acc_codebook{q + 1}"] = float(a10) / float(c)
  return out


def duration(seconds: float) -> str:
  """Seconds as 0h01m05s ("?" when not finite): the console's elapsed times and ETAs."""
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


class MetricLogger:
  """Console (with rate and ETA), TensorBoard and JSON-lines output; process 0 only.

  Both files are written in the calling thread (TensorBoard events with tensorboardX's
  synchronous `EventsWriter`, not its `SummaryWriter`, whose writer thread dies on a full
  disk and then blocks the next write forever), so a failed write is a `StorageError` here.
  """

  def __init__(self, workdir: str, total_steps: int, start_step: int):
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.events = None
    if self.active:
      tb = os.path.join(workdir, "tb")
      with _storage_errors(f"writing {self.path} and {tb}"):
        _truncate_jsonl(self.path, start_step)       # drop steps a killed run logged past it
        from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=g-import-not-at-top
        paths.path(tb).mkdir(parents=True, exist_ok=True)
        self.events = EventsWriter(os.path.join(tb, "events"))
    self.start_time, self.start_step = time.time(), start_step

  def write(self, step: int, values: dict[str, Any], *, console: bool, prefix: str = "train"):
    if not self.active:
      return
    with _storage_errors(f"writing {self.path}"):
      paths.append_text(self.path, json.dumps({"step": step, "split": prefix, **values}) + "\n")
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    with _storage_errors(f"writing TensorBoard events to {os.path.dirname(self.path)}/tb"):
      for key, value in values.items():
        if isinstance(value, (int, float)):
          self.events.write_event(event_pb2.Event(
              wall_time=time.time(), step=step, summary=summary.scalar(f"{prefix}/{key}", value)))
      self.events.flush()
    if console:
      done = step - self.start_step
      elapsed = time.time() - self.start_time
      rate = done / elapsed if elapsed > 0 else 0.0
      eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
      shown = {k: v for k, v in values.items() if isinstance(v, float) and "codebook" not in k}
      text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
      print(f"[{prefix}] step {step}/{self.total_steps} {text} | {rate:.2f} steps/s, "
            f"ETA {duration(eta)}", flush=True)

  def close(self):
    if self.events is not None:
      with _storage_errors(f"writing TensorBoard events to {os.path.dirname(self.path)}/tb"):
        self.events.close()
      self.events = None


@contextlib.contextmanager
def _storage_errors(what: str):
  """An OSError inside -> `StorageError("<what> failed: <reason>")`."""
  try:
    yield
  except OSError as e:
    raise StorageError(f"{what} failed: {os_reason(e)}") from None


def _truncate_jsonl(path: str, last_step: int):
  """Drops the rows after `last_step`; the file is replaced whole (a full disk leaves the old
  one as it was)."""
  if not paths.path(path).is_file():
    return
  with paths.path(path).open(encoding="utf-8") as f:
    lines = f.readlines()
  kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
  if len(kept) == len(lines):
    return
  with paths.path(path + ".tmp").open("w", encoding="utf-8") as f:
    f.writelines(kept)
  paths.replace(path + ".tmp", path)


# ------------------------------------------------------------------------- the loop


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.received = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received:   # a second signal: the user means now, not after the next save
      os.write(2, f"\n[train] second signal ({name}): exiting now; the run resumes from its "
                  "last complete checkpoint.\n".encode())
      os._exit(128 + signum)
    self.received = name

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train(cfg: ml_collections.ConfigDict, workdir: str,
          allow_config_change: Sequence[str] = ()) -> dict[str, Any]:
  """Runs (or resumes) training; returns a summary with the final step, the last metrics
  and `stopped`: the signal that stopped the run early (saved at `step`), else None.

  Before any work: the config is checked, the workdir locked against a second run
  (`run_guard.WorkdirLock`) and, when resuming, the config compared with the saved one
  (`run_guard.check_resume_config`; `allow_config_change`: fields that may differ).
  """
  config_check.check(config_check.experiment(cfg), "config")
  maybe_initialize_distributed(cfg)
  config_check.check(splash.backend_problems(cfg.model.get("attention", "xla")), "config")
  workdir = io_check.output_dir(workdir, "--workdir")
  lead = jax.process_index() == 0
  with _storage_errors(f"creating {workdir}"):
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
  lock = run_guard.WorkdirLock(workdir).acquire() if lead else None
  try:
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if paths.path(checkpoint_dir).is_dir():
      reader = ckpt_lib.RunCheckpoints(checkpoint_dir, every=1, keep=1, read_only=True)
      latest = reader.latest_step()
      if latest is not None:
        saved = reader.saved_config(latest)
      reader.close()
      if latest is not None:
        run_guard.check_resume_config(saved, cfg, allow_config_change, workdir, latest,
                                      log=print if lead else (lambda *a, **k: None))
    return _train(cfg, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The run itself (`train`, once the workdir is locked and the config checked)."""
  if not cfg.data.dataset:
    raise UserError("config.data.dataset is empty; set --config.data.dataset to a dataset "
                    "written by `valle-jax prepare`.")
  dataset = data_lib.open_dataset(cfg.data.dataset)
  table = text_lib.SymbolTable.load(dataset.symbols_path)
  symbols = json.loads(table.to_json())
  num_symbols = len(table)
  if num_symbols > cfg.model.phoneme_vocab_size:
    raise UserError(f"the dataset has {num_symbols} phoneme symbols but "
                    f"model.phoneme_vocab_size is {cfg.model.phoneme_vocab_size}; raise it.")
  codec = dataset.codec_description
  for key, expected in (("num_codebooks", cfg.model.num_codebooks),
                        ("codebook_size", cfg.model.codebook_size)):
    if key in codec and int(codec[key]) != expected:
      raise UserError(f"the dataset's codec has {key}={codec[key]} but the model expects "
                      f"{expected}; set --config.model.{key}={codec[key]}.")
  frame_rate = float(codec.get("frame_rate", 75.0))

  mesh = sharding.make_mesh(cfg.mesh)
  recipe = recipe_lib.of_config(cfg)
  trainer = Trainer(cfg, mesh, recipe)
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  multiple = data_parallel * cfg.train.grad_accum_steps
  if multiple % jax.process_count():
    raise UserError(f"the global batch must split evenly over {jax.process_count()} "
                    f"processes; use a data x fsdp mesh size that is a multiple of it.")
  source = dataset.split(cfg.data.train_split)
  lengths = data_lib.scan_lengths(
      source, os.path.join(workdir, f"lengths-{cfg.data.train_split}.npz"),
      progress=jax.process_index() == 0)
  plan = data_lib.BatchPlan(lengths, cfg.data, seed=cfg.seed, batch_multiple=multiple,
                            crop_long=recipe.crop_long)
  loader = recipe.batch_loader(cfg, dataset, cfg.data.train_split, source, plan,
                               kind=cfg.train.model, num_codebooks=cfg.model.num_codebooks,
                               frame_rate=frame_rate, process_index=jax.process_index(),
                               process_count=jax.process_count(), symbols=table)
  data_iter = data_lib.Prefetcher(
      data_lib.batch_iterator(loader, cfg.train.steps, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch, workers=cfg.data.workers),
      functools.partial(batch_on_devices, mesh=mesh), depth=cfg.data.device_prefetch)

  checkpoints = ckpt_lib.RunCheckpoints(os.path.join(workdir, "checkpoints"),
                                      every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                      async_save=cfg.checkpoint.async_save)
  latest = checkpoints.latest_step()
  if latest is not None:
    abstract = trainer.abstract_for_restore()
    restored = checkpoints.restore(latest, abstract_params=abstract["params"],
                                   abstract_optimizer=abstract["optimizer"])
    codec_lib.check_same_codec(restored["codec"], codec, f"the checkpoint in {workdir}")
    if restored["symbols"]["symbols"] != symbols["symbols"]:
      raise UserError(f"the checkpoint in {workdir} was trained with another symbol table "
                      f"than {dataset.symbols_path}; use a new --workdir for this dataset.")
    state = {"params": restored["params"], "optimizer": restored["optimizer"]}
    data_state = dict(restored["data"])
    saved_multiple = data_state.pop("batch_multiple", multiple)
    if saved_multiple != multiple:   # the plan's rows per batch follow from it
      raise UserError(
          f"the run in {workdir} laid out its batches for data x fsdp x grad_accum_steps = "
          f"{saved_multiple}; this mesh gives {multiple}, which would change which examples "
          f"each later step reads. Resume with a mesh of that size, or use a new --workdir.")
    saved_workers = data_state.pop("workers", 0)
    if saved_workers != cfg.data.workers:   # Grain's state is per worker process
      raise UserError(
          f"the run in {workdir} loaded its batches with data.workers={saved_workers}; "
          f"resume it with that (not {cfg.data.workers}), or use a new --workdir.")
    data_iter.set_state(data_state)
    start = latest
  else:
    state = trainer.init_state()
    start = 0
  log = print if jax.process_index() == 0 else (lambda *a, **k: None)
  log(f"[train] {cfg.train.model} on mesh {dict(mesh.shape)} "
      f"({jax.process_count()} process(es), {jax.device_count()} devices); "
      f"{'resuming from step ' + str(start) if start else 'starting'}; {plan.describe()}",
      flush=True)
  params_count = {n: sharding.param_count(p) for n, p in state["params"].items()}
  log(f"[train] parameters: {', '.join(f'{n} {c:,}' for n, c in params_count.items())}",
      flush=True)

  eval_batches = _eval_batches(cfg, recipe, dataset, workdir, frame_rate=frame_rate,
                               multiple=multiple)
  logger = MetricLogger(workdir, cfg.train.steps, start)
  if start == 0:      # cropped and left-out long examples, real frames per batch
    logger.write(0, plan.stats(), console=False, prefix="plan")
  stop = _StopSignal()
  save = functools.partial(_save, checkpoints, cfg=cfg, symbols=symbols, codec=codec,
                           batch_multiple=multiple, workers=cfg.data.workers)
  step, window, window_start, last = start, [], time.time(), {}
  storage_failed = False
  try:
    while step < cfg.train.steps:
      batch = next(data_iter)
      examples = batch.pop("index")
      state, metrics = trainer.train_step(state, batch)
      step += 1
      checkpoints.check()        # a background save that failed stops the run here
      window.append(metrics)
      if cfg.debug.log_examples:
        logger.write(step, {"examples": examples.tolist()}, console=False, prefix="data")
      if step % cfg.train.log_every == 0 or step == cfg.train.steps:
        last = _log_window(logger, step, window, window_start)
        window, window_start = [], time.time()
        streak = int(state["optimizer"]["nan_streak"])
        if streak >= cfg.train.nan_max_consecutive:
          save(step, state, data_iter, force=True)
          raise UserError(f"{streak} steps in a row had a non-finite loss or gradient; "
                          "stopping (last checkpoint saved). Lower optim.peak_lr or use "
                          "compute_dtype=float32.")
      save(step, state, data_iter)
      if eval_batches and cfg.train.eval_every and step % cfg.train.eval_every == 0:
        logger.write(step, _evaluate(trainer, state, eval_batches, mesh), console=True,
                     prefix="eval")
      if cfg.debug.kill_at_step == step:      # fault injection for the preemption tests
        checkpoints.wait()
        os.kill(os.getpid(), signal.SIGKILL)
      if stop.received:
        log(f"[train] {stop.received} received: saving step {step} and stopping.", flush=True)
        break
    save(step, state, data_iter, force=True)
  except ckpt_lib.SaveError:      # names the last complete checkpoint itself
    storage_failed = True
    raise
  except StorageError as e:       # a metrics write
    storage_failed = True
    raise StorageError(f"{e}; {checkpoints.last_good()}. Free space (or fix the folder) and "
                       "rerun the same command to resume.") from None
  finally:
    if not stop.received:   # after a signal the next one exits at once (_StopSignal)
      stop.restore()
    data_iter.close()
    if storage_failed:      # don't wait on writes that may never finish; keep the error
      checkpoints.close(wait=False)
      with contextlib.suppress(StorageError):
        logger.close()
    else:
      checkpoints.close()
      logger.close()
  return {"step": step, "metrics": last, "state": state, "stopped": stop.received}


def batch_on_devices(batch: dict[str, Any], mesh) -> dict[str, Any]:
  """A loaded batch with its arrays on the mesh (`sharding.shard_batch`), its example
  indices (`index`) left on the host."""
  batch = dict(batch)
  index = batch.pop("index")
  return {**sharding.shard_batch(batch, mesh), "index": index}


def _save(checkpoints, step, state, data_iter, *, cfg, symbols, codec, batch_multiple,
          workers, force=False):
  """Saves `step`; the data state also records the batch layout's multiple and the loader's
  worker processes (`train`)."""
  if checkpoints.latest_step() == step:
    return
  checkpoints.save(step, params=state["params"], optimizer=state["optimizer"],
                   data={**data_iter.get_state(), "batch_multiple": batch_multiple,
                         "workers": workers},
                   config=cfg, symbols=symbols, codec=codec, force=force)


def _log_window(logger: MetricLogger, step: int, window: list, window_start: float):
  metrics = jax.device_get(window)   # waits for the window's steps (dispatch is async)
  seconds = time.time() - window_start
  summed = jax.tree.map(lambda *xs: np.sum(xs, axis=0), *metrics)
  values = summarize(summed)
  values["loss"] = float(np.mean([m["loss"] for m in metrics]))
  values["grad_norm"] = float(np.mean([m["grad_norm"] for m in metrics]))
  for name in metrics[0]["model_grad_norms"]:   # what each model's clip sees
    values[f"{name}/grad_norm"] = float(np.mean([m["model_grad_norms"][name] for m in metrics]))
  values["lr"] = float(metrics[-1]["lr"])
  values["skipped_steps"] = int(np.sum([not m["finite"] for m in metrics]))
  tokens = sum(values.get(f"{n}/tokens", 0.0) for n in ("ar", "nar"))
  values["step_time_s"] = seconds / len(window)
  values["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
  logger.write(step, values, console=True)
  return values


def _eval_batches(cfg, recipe, dataset, workdir, *, frame_rate: float, multiple: int):
  """A fixed list of held-out batches (same batching rules, own plan), or []."""
  split = cfg.data.eval_split
  if not split or not cfg.train.eval_every:
    return []
  source = dataset.split(split)
  lengths = data_lib.scan_lengths(source, os.path.join(workdir, f"lengths-{split}.npz"),
                                  progress=False)
  plan = data_lib.BatchPlan(lengths, cfg.data, seed=cfg.seed + 1, batch_multiple=multiple,
                            crop_long=recipe.crop_long)
  loader = recipe.batch_loader(cfg, dataset, split, source, plan, kind=cfg.train.model,
                               num_codebooks=cfg.model.num_codebooks, frame_rate=frame_rate,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               symbols=text_lib.SymbolTable.load(dataset.symbols_path))
  return [loader(i) for i in range(min(cfg.train.eval_batches, plan.batches_per_epoch))]


def _evaluate(trainer, state, eval_batches, mesh) -> dict[str, float]:
  totals = None
  for batch in eval_batches:
    batch = dict(batch)
    batch.pop("index")
    m = jax.device_get(trainer.eval_step(state["params"], sharding.shard_batch(batch, mesh)))
    totals = m if totals is None else jax.tree.map(np.add, totals, m)
  return summarize(totals)
