"""What a run is made of: its model classes, losses, batch loader and decoding.

    recipe = recipe_lib.of_config(cfg)        # cfg.variant, default "valle"
    ar = recipe.ar_model(cfg.model, rngs=nnx.Rngs(0))

The core is VALL-E (`VALLE`). A variant (valle_jax/variants/<name>/, big_vision's `proj/`
pattern) builds its own `Recipe` from its own classes and `register`s it when imported; a
run's config names it in `variant`. Training, checkpoints and synthesis take everything
variant-specific from the recipe, so the core never imports a variant: `valle-jax`
(cli.py) imports the variants before it runs a command.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from valle_jax import data, models, sampling
from valle_jax.errors import UserError


def _batch_loader(cfg, dataset, split: str, source, plan, **kwargs) -> data.BatchLoader:
  del dataset, split   # VALL-E reads the records alone
  return data.BatchLoader(source, plan, cfg.data, **kwargs)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The parts of a run that a variant may replace.

  ar_model, nar_model: the model classes, built as `cls(cfg.model, rngs=...)`.
  ar_loss, nar_loss: (model, batch, dropout_rng) -> (loss, metrics) (`models.ar_loss`).
  batch_loader: (cfg, dataset, split, source, plan, **BatchLoader keywords) -> a loader.
  crop_long: whether the batch plan crops examples longer than the largest bucket to a
    window (`data.BatchPlan(crop_long=)`); False leaves them out, for a loader whose inputs
    a crop would not follow (alignments).
  decoding: (run config, codec description) -> the `sampling.Decoding` synthesis runs the
    models with.
  prepare_dataset: what a prepared dataset (its path) needs before training, or None (the
    demo runs it; returns a JSON-able summary).
  demo_config: quick -> the variant's `valle-jax demo` config (configs/demo.py layout).
  """
  name: str
  ar_model: type = models.ARModel
  nar_model: type = models.NARModel
  ar_loss: Callable = models.ar_loss
  nar_loss: Callable = models.nar_loss
  batch_loader: Callable[..., data.BatchLoader] = _batch_loader
  crop_long: bool = True
  decoding: Callable[[Any, dict], sampling.Decoding] = (
      lambda cfg, codec_description: sampling.Decoding())
  prepare_dataset: Callable[[str], Any] | None = None
  demo_config: Callable[[bool], Any] | None = None

  def model_class(self, name: str) -> type:
    return {"ar": self.ar_model, "nar": self.nar_model}[name]

  def loss(self, name: str) -> Callable:
    return {"ar": self.ar_loss, "nar": self.nar_loss}[name]


VALLE = Recipe("valle")
_RECIPES: dict[str, Recipe] = {VALLE.name: VALLE}


def register(recipe: Recipe) -> Recipe:
  _RECIPES[recipe.name] = recipe
  return recipe


def names() -> list[str]:
  """The registered recipes' names, sorted."""
  return sorted(_RECIPES)


def of_config(cfg) -> Recipe:
  """The recipe a run's config names in `variant` ("valle" when it names none)."""
  return get(cfg.get("variant", VALLE.name))


def get(name: str) -> Recipe:
  """The recipe registered as `name`; a `UserError` when none is."""
  if name not in _RECIPES:
    raise UserError(f"this run is of the variant {name!r}, which is not loaded (known: "
                    f"{sorted(_RECIPES)}); run it through `valle-jax`, or import "
                    f"valle_jax.variants.{name} first.")
  return _RECIPES[name]
