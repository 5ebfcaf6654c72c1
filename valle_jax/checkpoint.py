"""Checkpoints: an Orbax CheckpointManager over everything a run needs to go on exactly.

A checkpoint `<workdir>/checkpoints/<step>/` holds these items:
  params     the models' parameters ({"ar": ..., "nar": ...}, whichever were trained)
  optimizer  optimiser state, step, RNG key and NaN-guard counters
  data       the Grain iterator state (the next global batch index)
  config     the run's config (JSON)
  symbols    the phoneme symbol table (JSON, as data_prep wrote it)
  codec      the codec description the dataset was built with (JSON)

Saves are asynchronous (training goes on while arrays are written), every `every` steps,
keeping the last `keep`. A save that fails, in the call or in Orbax's background threads
(a full disk), is a `StorageError` naming the last complete checkpoint, raised by `save` or
by `check`, which the training loop calls after every step; a checkpoint that cannot be read
back is a `UserError` naming the previous readable one. Nothing is deleted on the way. Restoring takes abstract arrays with target shardings, so a
checkpoint saved on one mesh restores onto another. `load_inference_bundle` restores only
the parameters, for synthesis.

Checkpoints written before the transformer scanned its blocks hold each block's
parameters (and their optimiser moments) under `blocks/0`, `blocks/1`, ...; they are read
in that layout and stacked on the layer axis (`per_layer_blocks`), so old
runs resume and synthesise unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from typing import Any, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from valle_jax import paths
from valle_jax.errors import StorageError, UserError, os_reason

ITEMS = ("params", "optimizer", "data", "config", "symbols", "codec")


class SaveError(StorageError):
  """A checkpoint save failed; the message names the last complete checkpoint."""


class _BackgroundErrors(logging.Filter):
  """Orbax logs, rather than raises, most errors of its background save threads (with
  tracebacks dozens of lines long) and asyncio reports their futures' errors: this keeps
  the first one, for `RunCheckpoints.check` to say what failed, and off the console."""

  LOGGERS = ("absl", "asyncio")

  def __init__(self, directory: str):
    super().__init__()
    self.directory = directory
    self.first: BaseException | None = None

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    text = f"{record.getMessage()} {error or ''}"
    ours = record.levelno >= logging.ERROR and (
        self.directory in text or "orbax" in text or "orbax" in record.pathname
        or _raised_in_orbax(error))
    if ours and error is not None and self.first is None:
      self.first = error
    return not ours

  def install(self):
    for name in self.LOGGERS:
      logging.getLogger(name).addFilter(self)

  def remove(self):
    for name in self.LOGGERS:
      logging.getLogger(name).removeFilter(self)


def _raised_in_orbax(error: BaseException | None) -> bool:
  """Whether `error` was raised inside Orbax (asyncio's 'Future exception was never
  retrieved' of an Orbax write names neither Orbax nor the folder, only its traceback does)."""
  tb = error.__traceback__ if error is not None else None
  while tb is not None:
    if "orbax" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


class RunCheckpoints:
  """Thin wrapper over `ocp.CheckpointManager` with this project's items."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
               read_only: bool = False):
    self.directory = paths.absolute(directory)
    self.every = max(1, every)
    self._pending: int | None = None     # the step of the save in flight, if any
    self._background_errors = _BackgroundErrors(self.directory)
    self._background_errors.install()
    _quiet_leftover_errors()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            enable_async_checkpointing=async_save, create=not read_only),
        item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def complete_steps(self) -> list[int]:
    """The steps whose checkpoint folder is complete on disk (Orbax renames a step's
    temporary folder to `<step>` only once every item is written), oldest first."""
    if not paths.path(self.directory).is_dir():
      return []
    return sorted(int(p.name) for p in paths.path(self.directory).iterdir() if p.name.isdigit())

  def last_good(self) -> str:
    """Where a rerun resumes from, in words."""
    steps = self.complete_steps()
    if not steps:
      return f"no complete checkpoint in {self.directory} yet"
    return f"the last complete checkpoint is step {steps[-1]} ({self.directory}/{steps[-1]})"

  def _failed(self, step: int, e: BaseException | None) -> SaveError:
    reason = os_reason(e) if e is not None else "its files were not all written"
    free = _free_bytes(self.directory)
    if free is not None:
      reason += f"; {free / 2**20:.1f} MiB free there"
    return SaveError(f"saving checkpoint step {step} to {self.directory} failed: {reason}; "
                     f"{self.last_good()}. Free space (or fix the folder) and rerun the same "
                     "command to resume.")

  def check(self) -> None:
    """Raises a `StorageError` if the last save failed; cheap enough for every step."""
    if self._pending is None or self.manager.is_saving_in_progress():
      return
    step, self._pending = self._pending, None
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (Orbax re-raises the thread's)
      raise self._failed(step, e) from None
    if step not in self.complete_steps():   # failed, its error only logged by Orbax
      raise self._failed(step, self._background_errors.first)

  def save(self, step: int, *, params, optimizer, data: dict[str, Any],
           config: ml_collections.ConfigDict, symbols: dict[str, Any],
           codec: dict[str, Any], force: bool = False) -> bool:
    """Starts a save if `step` is a multiple of `every` (or `force`); returns whether one
    started."""
    if not force and step % self.every:
      return False
    self.check()
    try:
      started = self.manager.save(step, force=force, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params),
          optimizer=ocp.args.StandardSave(optimizer),
          data=ocp.args.JsonSave(data),
          config=ocp.args.JsonSave(json.loads(config.to_json())),
          symbols=ocp.args.JsonSave(symbols),
          codec=ocp.args.JsonSave(codec)))
    except Exception as e:  # pylint: disable=broad-except  (a previous save's error too)
      raise self._failed(step, e) from None
    if started:
      self._pending = step
    return started

  def saved_config(self, step: int) -> dict[str, Any]:
    """The config (JSON) saved with `step`; a `UserError` if it cannot be read."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None

  def restore(self, step: int, *, abstract_params, abstract_optimizer) -> dict[str, Any]:
    """Restores every item at `step`; arrays land with the abstract trees' shardings. A
    checkpoint that cannot be read (truncated, partly deleted) is a `UserError` naming the
    previous readable one."""
    try:
      restored = self._restore_all(step, abstract_params, abstract_optimizer)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e, abstract_params, abstract_optimizer) from None
    return {name: restored[name] for name in ITEMS}

  def _restore_all(self, step, abstract_params, abstract_optimizer):
    per_layer = per_layer_blocks(os.path.join(self.directory, str(step), "params"))
    restored = dict(self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_unstacked(abstract_params, per_layer)),
        optimizer=ocp.args.StandardRestore(_unstacked(abstract_optimizer, per_layer)),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
        symbols=ocp.args.JsonRestore(), codec=ocp.args.JsonRestore())))
    if per_layer:
      restored["params"] = _stack_per_layer(restored["params"], abstract_params)
      restored["optimizer"] = _stack_per_layer(restored["optimizer"], abstract_optimizer)
    return restored

  def _unreadable(self, step: int, e: BaseException, abstract_params=None,
                  abstract_optimizer=None) -> UserError:
    """The error for an unreadable `step`, naming the newest earlier step that reads."""
    previous, unreadable = None, [step]
    for earlier in reversed([s for s in self.complete_steps() if s < step]):
      try:
        if abstract_params is None:
          self.manager.restore(earlier, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        else:
          self._restore_all(earlier, abstract_params, abstract_optimizer)
        previous = earlier
        break
      except Exception:  # pylint: disable=broad-except
        unreadable.append(earlier)
    reason = _damage(e)
    path = os.path.join(self.directory, str(step))
    folders = " and ".join(os.path.join(self.directory, str(s)) for s in unreadable)
    if previous is None:
      then = (f"no earlier checkpoint reads either; restore {folders} from a backup or use a "
              "new workdir")
    else:
      others = unreadable[1:]
      also = (f"step{'s' * (len(others) > 1)} {', '.join(map(str, others))} "
              f"{'do' if len(others) > 1 else 'does'} not read either; " if others else "")
      then = (f"{also}step {previous} reads: move {folders} out of {self.directory} (keep them "
              f"until the run resumes) and rerun to resume from step {previous}")
    return UserError(f"checkpoint step {step} ({path}) cannot be read ({reason}); {then}.")

  def wait(self):
    self.manager.wait_until_finished()

  def close(self, wait: bool = True):
    """Waits for the save in flight and checks it (a `StorageError` if it failed); with
    `wait=False` (after a failure) only lets go of the manager, without waiting."""
    if not wait:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(self._pending if self._pending is not None else -1, e) from None
    self.check()
    self.manager.close()
    self._background_errors.remove()


def _quiet_leftover_errors():
  """After a failed save or restore, Orbax's abandoned coroutines and TensorStore's callbacks
  into a closed asyncio loop report the same error by the dozen, as 'Exception ignored'
  tracebacks, as they happen; they say nothing the one-line error does not, so they are not
  shown (installed once per process, by the first RunCheckpoints)."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_checkpoint_leftovers", False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
    if not (closed_loop or (code is not None and "orbax" in code.co_filename)):
      previous(unraisable)
  hook.quiets_checkpoint_leftovers = True
  sys.unraisablehook = hook


def _damage(e: BaseException) -> str:
  """Why a checkpoint did not read, in words."""
  return ("some of its array files are damaged or missing" if "TensorStore" in str(e)
          else os_reason(e))


def _free_bytes(path: str) -> int | None:
  """Free bytes where `path` lies; None when unknown (or not local: a bucket has no "free")."""
  if not paths.is_local(path):
    return None
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def _has_blocks(x) -> bool:
  return isinstance(x, dict) and "blocks" in x


def per_layer_blocks(params_dir: str) -> int:
  """How many per-layer blocks (`blocks/0`, `blocks/1`, ...) the params item in
  `params_dir` holds: 0 for a checkpoint with stacked blocks (or none)."""
  def count(node) -> int:
    if not isinstance(node, Mapping):
      return 0
    blocks = node.get("blocks")
    if isinstance(blocks, Mapping) and "0" in blocks:
      return len(blocks)
    return max((count(child) for child in node.values()), default=0)
  metadata = ocp.StandardCheckpointer().metadata(paths.path(params_dir)).item_metadata
  return count(metadata.tree)


def _unstacked(abstract: Any, num_layers: int) -> Any:
  """The per-layer form of an abstract tree (stacked blocks -> blocks/0 .. num_layers-1):
  the layout an old checkpoint is read in, each layer with the stacked target's sharding
  less its (never split) layer axis."""
  if not num_layers:
    return abstract

  def layer(x):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
          *tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)

  def split(x):
    if not _has_blocks(x):
      return x
    return {**x, "blocks": {i: jax.tree.map(layer, x["blocks"]) for i in range(num_layers)}}
  return jax.tree.map(split, abstract, is_leaf=_has_blocks)


def _stack_per_layer(tree: Any, abstract: Any) -> Any:
  """A tree read in the per-layer layout -> the stacked layout, placed as `abstract`
  (ShapeDtypeStructs with shardings) says."""
  def stack(x):
    if not _has_blocks(x):
      return x
    layers = [x["blocks"][i] for i in sorted(x["blocks"], key=int)]
    return {**x, "blocks": jax.tree.map(lambda *ys: jax.numpy.stack(ys), *layers)}
  shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), abstract)
  return jax.jit(lambda t: jax.tree.map(stack, t, is_leaf=_has_blocks),
                 out_shardings=shardings)(tree)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings (what restore onto a mesh needs)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def checkpoint_dir(path: str) -> tuple[str, int | None]:
  """A workdir, its checkpoints/ folder, or one step's folder -> (checkpoints dir, step)."""
  path = paths.absolute(path)
  if paths.path(os.path.join(path, "checkpoints")).is_dir():
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(path)
  if base.isdigit() and paths.path(os.path.join(path, "params")).is_dir():
    return os.path.dirname(path), int(base)
  return path, None


@dataclasses.dataclass
class InferenceBundle:
  """What synthesis needs from a training run."""
  config: ml_collections.ConfigDict
  recipe: Any      # recipe.Recipe: the run's model classes and decoding
  ar: Any          # models.ARModel | None
  nar: Any         # models.NARModel | None
  symbols: Any                     # text.SymbolTable the model was trained with
  codec_description: dict[str, Any]
  step: int


def load_inference_bundle(path: str, recipe=None) -> InferenceBundle:
  """Loads the models of a run (workdir, checkpoints dir or step dir) onto one device, as
  the classes of `recipe` (default: the one the run's config names, valle_jax/recipe.py)."""
  from valle_jax import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
  from valle_jax import text  # pylint: disable=g-import-not-at-top

  directory, step = checkpoint_dir(path)
  if not paths.path(directory).is_dir():
    raise UserError(f"no checkpoint at {path}; pass a training workdir (`valle-jax train "
                    "--workdir`) or one of its checkpoints/<step> folders.")
  manager = ocp.CheckpointManager(directory, item_names=ITEMS,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f"{directory} holds no finished checkpoint; train longer or pass "
                    "another --checkpoint.")
  _quiet_leftover_errors()

  def read(**items):
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (truncated or deleted files)
      earlier = [s for s in manager.all_steps() if s < step]
      raise UserError(
          f"checkpoint step {step} in {directory} cannot be read ({_damage(e)}); "
          + (f"pass an earlier one, e.g. --checkpoint={os.path.join(directory, str(max(earlier)))}"
             if earlier else "restore it from a backup") + ".") from None
  meta = read(config=ocp.args.JsonRestore(), symbols=ocp.args.JsonRestore(),
              codec=ocp.args.JsonRestore())
  config = ml_collections.ConfigDict(meta["config"])
  recipe = recipe or recipe_lib.of_config(config)
  built = {}
  for name in ("ar", "nar"):
    if config.train.model in (name, "both"):
      cls = recipe.model_class(name)
      built[name] = nnx.eval_shape(lambda cls=cls: cls(config.model, rngs=nnx.Rngs(0)))
  abstract = {name: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for name, m in built.items()}
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  per_layer = per_layer_blocks(os.path.join(directory, str(step), "params"))
  params = read(params=ocp.args.StandardRestore(_unstacked(abstract, per_layer)))["params"]
  if per_layer:
    params = _stack_per_layer(params, abstract)
  manager.close()
  for name, model in built.items():
    nnx.update(model, params[name])
  return InferenceBundle(config=config, recipe=recipe, ar=built.get("ar"), nar=built.get("nar"),
                         symbols=text.SymbolTable(meta["symbols"]["symbols"]),
                         codec_description=meta["codec"], step=step)
