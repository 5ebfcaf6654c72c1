"""`valle-jax import-checkpoint`: another implementation's VALL-E checkpoint -> a valle-jax run.

    valle-jax import-checkpoint --format=lifeiteng best-valid-loss.pt runs/lifeiteng \\
        --symbols=data/tokenized/unique_text_tokens.k2symbols
    valle-jax synthesize --checkpoint=runs/lifeiteng --text=... --prompt=... --prompt_text=...

CKPT is a PyTorch file of lifeiteng/vall-e (or Amphion's VALL-E v1, same names): a dict
with a "model" state dict, as its trainer saves, or a bare state dict (needs torch); or an
.npz of that state dict (no torch needed). OUT becomes a run folder holding step 0: the
converted AR and NAR parameters (`valle_jax.convert.lifeiteng`), the config that computes
the same function (`configs/lifeiteng.py` at the checkpoint's sizes), the symbol table and
the codec (EnCodec 24 kHz at 6 kbps, lifeiteng's).

--symbols maps lifeiteng's text ids onto valle-jax symbols; without it the text table keeps
lifeiteng's ids under placeholder names, and synthesis from text cannot encode phonemes.
The text front end still differs (docs/fidelity.md): lifeiteng's phonemes carry no stress
marks and each text is wrapped in <bos> ... <eos>.
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags

from valle_jax.errors import UserError

_FORMAT = flags.DEFINE_enum("format", None, ["lifeiteng"], "The checkpoint's layout: "
                            "lifeiteng (lifeiteng/vall-e, Amphion VALL-E v1).")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 16, "Attention heads (not in the state "
                                  "dict; lifeiteng's recipe uses 16).")
_SYMBOLS = flags.DEFINE_string("symbols", None, "lifeiteng's unique_text_tokens.k2symbols, "
                               "to map its text ids onto valle-jax symbols.")
_TRUST_PICKLE = flags.DEFINE_bool("trust_pickle", False, "Load a .pt that holds Python "
                                  "objects besides tensors (runs its pickled code: only for "
                                  "files from a source you trust).")


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """A .pt (dict with "model", or a bare state dict) or .npz -> {name: float array}."""
  if not os.path.isfile(path):
    raise UserError(f"no checkpoint file at {path!r}.")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"reading {path!r} needs torch; install it, or save the state dict as "
                    ".npz (numpy.savez(out, **{k: v.numpy() for k, v in sd.items()})).") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # pickle errors of any kind  pylint: disable=broad-except
    hint = ("" if trust_pickle else "; if it holds Python objects besides tensors and you "
            "trust its source, pass --trust_pickle")
    raise UserError(f"cannot read {path!r} as a PyTorch checkpoint "
                    f"({str(e).splitlines()[0][:200]}){hint}.") from None
  state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise UserError(f"{path!r} holds no state dict (a dict of tensors, or one under "
                    "\"model\").")
  return {k: v.float().numpy() for k, v in state.items()}


def write_run(out: str, model_cfg, params: dict, symbols, codec: dict) -> str:
  """Writes `params` ({"ar", "nar"}) as step 0 of a run at `out`; returns its folder."""
  from configs import lifeiteng  # pylint: disable=g-import-not-at-top
  from valle_jax import checkpoint  # pylint: disable=g-import-not-at-top
  directory = _checkpoints_dir(out)
  config = lifeiteng.get_config()
  config.model = model_cfg
  config.train.steps = 0
  saver = checkpoint.RunCheckpoints(directory, every=1, keep=1, async_save=False)
  saver.save(0, params=params, optimizer={"step": np.zeros((), np.int32)}, data={},
             config=config, symbols={"version": symbols.VERSION, "symbols": symbols.symbols},
             codec=codec, force=True)
  saver.close()
  return directory


def _checkpoints_dir(out: str) -> str:
  """OUT/checkpoints, or a `UserError` when it already holds something."""
  directory = os.path.join(os.path.abspath(out), "checkpoints")
  if os.path.exists(directory) and os.listdir(directory):
    raise UserError(f"{out!r} already holds checkpoints; give a new folder.")
  return directory


def main(argv):
  if len(argv) != 3:
    raise UserError("usage: valle-jax import-checkpoint --format=lifeiteng CKPT OUT.")
  if _FORMAT.value is None:
    raise UserError("--format is required (lifeiteng).")
  from valle_jax.convert import lifeiteng  # pylint: disable=g-import-not-at-top
  ckpt, out = argv[1:]
  _checkpoints_dir(out)
  state = read_state_dict(ckpt, _TRUST_PICKLE.value)
  theirs = lifeiteng.text_symbols(_SYMBOLS.value) if _SYMBOLS.value else None
  model_cfg, params, symbols = lifeiteng.convert(state, _NUM_HEADS.value, theirs)
  if (model_cfg.num_codebooks, model_cfg.codebook_size) != (8, 1024):
    raise UserError(f"the checkpoint has {model_cfg.num_codebooks} codebooks of "
                    f"{model_cfg.codebook_size}; lifeiteng's codec (EnCodec 24 kHz, 6 kbps) "
                    "has 8 of 1024.")
  directory = write_run(out, model_cfg, params, symbols, lifeiteng.ENCODEC_6KBPS)
  print(f"{directory}/0: AR + NAR, {model_cfg.num_layers} layers x {model_cfg.width} "
        f"({model_cfg.num_heads} heads), {len(symbols)} symbols"
        + ("" if theirs else " (placeholders: pass --symbols to synthesize from text)"))
