"""Codec backends behind the one `Codec` protocol (`base.py`), chosen by name.

    codec = get_codec({"name": "encodec", "bandwidth": 6.0})   # or an ml_collections config
    codes = codec.encode(wav, sr)                                # int16 [T, Q]
    json.dump(codec.describe(), f)                               # saved with data / checkpoints

A backend is a module defining `build(config: Mapping[str, Any]) -> Codec`; `config` is the
`codec` section of a config (always with `name`). Backends are imported only when built,
so `import valle_jax.codec` pulls in neither torch nor anything else heavy.

A codec that must be fitted to data (the offline codec) is fitted first, by its own tool,
into a directory; its config then names that directory (e.g. `codec.path`) and `build`
loads it. Data prep also accepts a ready `Codec` object (`data_prep.pipeline.prepare(...,
codec=...)`), so a caller may fit and pass one directly.
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Mapping

from valle_jax.codec.base import Codec
from valle_jax.errors import UserError

# name -> module defining `build(config) -> Codec`.
BACKENDS: dict[str, str] = {
    "encodec": "valle_jax.codec.encodec_backend",
    "offline": "valle_jax.codec.offline",
}


def register_backend(name: str, module: str) -> None:
  """Makes `get_codec({"name": name, ...})` call `module.build` (for out-of-tree codecs)."""
  BACKENDS[name] = module


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"a codec config must be a mapping, got {type(config).__name__}")
  return dict(config)


def get_codec(config: Any) -> Codec:
  """Builds the codec a config section (or a saved `describe()` dict) names."""
  config = _as_dict(config)
  name = config.get("name")
  if name not in BACKENDS:
    raise UserError(f"unknown codec {name!r}; set codec.name to one of {sorted(BACKENDS)}.")
  module = importlib.import_module(BACKENDS[name])
  codec = module.build(config)
  if not isinstance(codec, Codec):
    raise TypeError(f"{BACKENDS[name]}.build returned {type(codec).__name__}, not a Codec")
  return codec


# The keys of `describe()` that must agree for two codecs to produce the same tokens.
IDENTITY_KEYS = ("name", "sample_rate", "frame_rate", "num_codebooks", "codebook_size",
                 "weights")


def check_same_codec(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
  """Raises `UserError` when two `describe()` dicts would give different tokens.

  `where` names the saved side (e.g. "dataset /data/libritts") for the message.
  """
  diff = {k: (saved.get(k), current.get(k)) for k in IDENTITY_KEYS
          if saved.get(k) != current.get(k)}
  if diff:
    detail = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
    raise UserError(f"the codec differs from the one {where} was made with ({detail}); "
                    "use the same codec config.")


def load_description(path: str) -> dict[str, Any]:
  """Reads a `codec.json` written next to a dataset."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path!r} does not exist; point to a dataset made by "
                    "`valle-jax prepare`.") from None


__all__ = ["BACKENDS", "Codec", "IDENTITY_KEYS", "check_same_codec", "get_codec",
           "load_description", "register_backend"]
