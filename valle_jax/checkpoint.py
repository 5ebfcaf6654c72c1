"""Checkpoints: an Orbax CheckpointManager over everything a run needs to go on exactly.

A checkpoint `<workdir>/checkpoints/<step>/` holds these items:
  params     the models' parameters ({"ar": ..., "nar": ...}, whichever were trained)
  optimizer  optimiser state, step, RNG key and NaN-guard counters
  data       the Grain iterator state (the next global batch index)
  config     the run's config (JSON)
  symbols    the phoneme symbol table (JSON, as data_prep wrote it)
  codec      the codec description the dataset was built with (JSON)

Saves are asynchronous (training goes on while arrays are written), every `every` steps,
keeping the last `keep`. Restoring takes abstract arrays with target shardings, so a
checkpoint saved on one mesh restores onto another. `load_inference_bundle` restores only
the parameters, for synthesis.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from valle_jax.errors import UserError

ITEMS = ("params", "optimizer", "data", "config", "symbols", "codec")


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with this project's items."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = max(1, every)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save, create=True),
        item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, *, params, optimizer, data: dict[str, Any],
           config: ml_collections.ConfigDict, symbols: dict[str, Any],
           codec: dict[str, Any], force: bool = False) -> bool:
    """Starts a save if `step` is a multiple of `every` (or `force`); returns whether one
    started."""
    if not force and step % self.every:
      return False
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        optimizer=ocp.args.StandardSave(optimizer),
        data=ocp.args.JsonSave(data),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
        symbols=ocp.args.JsonSave(symbols),
        codec=ocp.args.JsonSave(codec)))

  def restore(self, step: int, *, abstract_params, abstract_optimizer) -> dict[str, Any]:
    """Restores every item at `step`; arrays land with the abstract trees' shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        optimizer=ocp.args.StandardRestore(abstract_optimizer),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
        symbols=ocp.args.JsonRestore(), codec=ocp.args.JsonRestore()))
    return {name: restored[name] for name in ITEMS}

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings (what restore onto a mesh needs)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def checkpoint_dir(path: str) -> tuple[str, int | None]:
  """A workdir, its checkpoints/ folder, or one step's folder -> (checkpoints dir, step)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
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
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoint at {path}; pass a training workdir (`valle-jax train "
                    "--workdir`) or one of its checkpoints/<step> folders.")
  manager = ocp.CheckpointManager(directory, item_names=ITEMS,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f"{directory} holds no finished checkpoint; train longer or pass "
                    "another --checkpoint.")
  meta = manager.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore(), symbols=ocp.args.JsonRestore(),
      codec=ocp.args.JsonRestore()))
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
  params = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))["params"]
  manager.close()
  for name, model in built.items():
    nnx.update(model, params[name])
  return InferenceBundle(config=config, recipe=recipe, ar=built.get("ar"), nar=built.get("nar"),
                         symbols=text.SymbolTable(meta["symbols"]["symbols"]),
                         codec_description=meta["codec"], step=step)
