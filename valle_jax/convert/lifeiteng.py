"""lifeiteng/vall-e (and Amphion's VALL-E v1, same names) state dict -> valle-jax models.

The state dict of `VALLE(d_model, nhead, num_layers, norm_first=True, add_prenet=False,
prefix_mode=1, share_embedding=True, nar_scale_factor=1.0, prepend_bos=False or True,
num_quantizers=Q)` maps onto `configs/lifeiteng.py` (ReLU FFN, a learned position scale per
AR segment, no AR BOS unless `prepend_bos`, no AR head bias, NAR output tied with offset 1)
with these exact reparameterisations (docs/fidelity.md):

- Sinusoids: lifeiteng interleaves sin/cos over the width, valle-jax concatenates them.
  The two residual streams are one permutation of the width apart (`width_permutation`),
  applied to every parameter that reads or writes the residual stream (embedding columns,
  norm gains and biases, q/k/v and FFN input rows, attention and FFN output columns and
  biases, output layers' columns). LayerNorm is permutation-invariant.
- Embedding scale: `layers.embed` multiplies a looked-up row by sqrt(D), so tables are
  divided by sqrt(D). A NAR output layer tied to a table reads it unscaled, so the final
  AdaLN of each tied stage is multiplied by sqrt(D) (per stage, hence exact).
- AdaLN: lifeiteng projects a learned stage embedding e_s to (w_s, b_s) and applies them to
  an affine LayerNorm (gamma, beta): w_s (gamma n + beta) + b_s. valle-jax keeps one
  (scale, bias) per stage: scale_s = w_s gamma, bias_s = w_s beta + b_s.
- Attention: `in_proj_weight` [3D, D] -> q/k/v kernels [D, N, H] (heads contiguous, as
  PyTorch splits them); `out_proj` -> [N, H, D].
- Rows that only padding reads are dropped: NAR codebook 1's EOS row (its table has V + 1
  rows); the stage row 0 (codebook 1, which this NAR never predicts) is the identity.

Everything is float64 numpy while converting and float32 in the output.
"""
from __future__ import annotations

import re
from typing import Mapping

import ml_collections
import numpy as np

from valle_jax import text
from valle_jax.errors import UserError

# EnCodec 24 kHz at 6 kbps (8 codebooks), the codec lifeiteng/vall-e trains on, as
# `valle_jax.codec` describes it (weights: the released checkpoint's checksum).
ENCODEC_6KBPS = {"name": "encodec", "model": "encodec_24khz", "bandwidth": 6.0,
                 "sample_rate": 24_000, "frame_rate": 75.0, "num_codebooks": 8,
                 "codebook_size": 1024, "hop_length": 320, "weights": "sha256:d7cc33bc"}

# lifeiteng's word separator; valle-jax's is text.WORD.
WORD_SEPARATOR = "_"

_LAYER_KEYS = ("self_attn.in_proj_weight", "self_attn.in_proj_bias",
               "self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight",
               "linear1.bias", "linear2.weight", "linear2.bias")


def width_permutation(width: int) -> np.ndarray:
  """perm [D]: valle-jax's residual coordinate i is lifeiteng's coordinate perm[i] (its
  sines at even, cosines at odd coordinates; valle-jax's sines first, then cosines)."""
  return np.concatenate([np.arange(0, width, 2), np.arange(1, width, 2)])


def text_symbols(k2_symbols_path: str) -> list[str]:
  """lifeiteng's text token ids: `<pad>`, `<bos>`, `<eos>`, then the symbols of its
  `unique_text_tokens.k2symbols` (lines `symbol id`) sorted (its TextTokenCollater)."""
  try:
    with open(k2_symbols_path, encoding="utf-8") as f:
      lines = [line.split() for line in f if line.strip()]
  except OSError as e:
    raise UserError(f"cannot read the symbol file {k2_symbols_path!r} ({e.strerror}).") from None
  if any(len(fields) != 2 or not fields[1].isdigit() for fields in lines):
    raise UserError(f"{k2_symbols_path!r} is not a k2 symbol table (lines `symbol id`); give "
                    "lifeiteng's unique_text_tokens.k2symbols.")
  return ["<pad>", "<bos>", "<eos>"] + sorted(fields[0] for fields in lines)


def symbol_table(lifeiteng_symbols: list[str] | None, num_rows: int
                 ) -> tuple[text.SymbolTable, np.ndarray]:
  """valle-jax's symbol table for a lifeiteng text table of `num_rows` rows, and for each of
  its ids the lifeiteng row it takes (-1: a zero row).

  With lifeiteng's symbols (`text_symbols`): valle-jax's specials first (`<pad>`, `<bos>`,
  `<eos>` are lifeiteng's; its "_" becomes the word boundary; `<unk>` has no row), then the
  others in lifeiteng's order. Without: lifeiteng's ids unchanged, under placeholder names
  `<lifeiteng:i>` (the specials' names on ids 0-4), so synthesis from text needs the symbols.
  """
  if lifeiteng_symbols is None:
    names = list(text.SPECIALS) + [f"<lifeiteng:{i}>" for i in range(len(text.SPECIALS),
                                                                      num_rows)]
    return text.SymbolTable(names), np.arange(num_rows)
  if len(lifeiteng_symbols) > num_rows:
    raise UserError(f"the symbol file has {len(lifeiteng_symbols)} text tokens, the "
                    f"checkpoint's text embedding {num_rows}; give the checkpoint's own file.")
  row = {s: i for i, s in enumerate(lifeiteng_symbols)}
  row[text.WORD] = row.pop(WORD_SEPARATOR, -1)
  names = list(text.SPECIALS) + [s for s in lifeiteng_symbols if s not in text.SPECIALS
                                  and s != WORD_SEPARATOR]
  return text.SymbolTable(names), np.array([row.get(s, -1) for s in names])


def _architecture(state: Mapping[str, np.ndarray]) -> dict[str, int | bool]:
  """Sizes and switches read off the state dict's shapes."""
  for key in ("ar_text_embedding.word_embeddings.weight", "ar_predict_layer.weight",
              "ar_audio_embedding.word_embeddings.weight",
              "ar_decoder.layers.0.linear1.weight"):
    if key not in state:
      raise UserError(f"the checkpoint has no {key!r}; is it a lifeiteng/vall-e VALLE state "
                      "dict (norm_first=True, add_prenet=False)?")
  count = lambda prefix: len({m.group(1) for k in state  # noqa: E731
                              if (m := re.match(rf"{prefix}\.(\d+)\.", k))})
  num_rows, width = state["ar_text_embedding.word_embeddings.weight"].shape
  codebook_size = state["ar_predict_layer.weight"].shape[0] - 1
  audio_rows = state["ar_audio_embedding.word_embeddings.weight"].shape[0]
  if audio_rows not in (codebook_size + 1, codebook_size + 2):
    raise UserError(f"ar_audio_embedding has {audio_rows} rows for {codebook_size} codes; "
                    f"expected {codebook_size + 1} (or {codebook_size + 2} with prepend_bos).")
  arch = dict(width=width, num_text_rows=num_rows, codebook_size=codebook_size,
              num_layers=count("ar_decoder.layers"), num_codebooks=count("nar_audio_embeddings"),
              mlp_dim=state["ar_decoder.layers.0.linear1.weight"].shape[0],
              ar_bos=audio_rows == codebook_size + 2)
  if arch["num_codebooks"] < 2:
    raise UserError("the checkpoint has no NAR (num_quantizers = 1); valle-jax needs both models.")
  if count("nar_decoder.layers") != arch["num_layers"]:
    raise UserError(f"the NAR has {count('nar_decoder.layers')} layers and the AR "
                    f"{arch['num_layers']}; nar_scale_factor != 1 is not supported.")
  return arch


def expected_shapes(arch: dict, tied: bool) -> dict[str, tuple[int, ...]]:
  """Every key a lifeiteng state dict of architecture `arch` (keys as `_architecture`
  returns) must hold, with its shape; with `tied`, the NAR prediction layers tied to
  acoustic embeddings are left out (they repeat them)."""
  d, f, v, q = arch["width"], arch["mlp_dim"], arch["codebook_size"], arch["num_codebooks"]
  rows = arch["num_text_rows"]
  layer = {"self_attn.in_proj_weight": (3 * d, d), "self_attn.in_proj_bias": (3 * d,),
           "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
           "linear1.weight": (f, d), "linear1.bias": (f,), "linear2.weight": (d, f),
           "linear2.bias": (d,)}
  shapes = {"ar_text_embedding.word_embeddings.weight": (rows, d),
            "nar_text_embedding.word_embeddings.weight": (rows, d),
            "ar_audio_embedding.word_embeddings.weight": (v + 1 + arch["ar_bos"], d),
            "ar_predict_layer.weight": (v + 1, d),
            "ar_decoder.norm.weight": (d,), "ar_decoder.norm.bias": (d,),
            "nar_decoder.norm.project_layer.weight": (2 * d, d),
            "nar_decoder.norm.project_layer.bias": (2 * d,),
            "nar_decoder.norm.norm.weight": (d,), "nar_decoder.norm.norm.bias": (d,)}
  for name in ("ar_text_position", "ar_audio_position", "nar_text_position",
               "nar_audio_position"):
    shapes[f"{name}.alpha"] = (1,)
  for i in range(arch["num_layers"]):
    for model in ("ar", "nar"):
      for key, shape in layer.items():
        shapes[f"{model}_decoder.layers.{i}.{key}"] = shape
    for norm in ("norm1", "norm2"):
      shapes[f"ar_decoder.layers.{i}.{norm}.weight"] = (d,)
      shapes[f"ar_decoder.layers.{i}.{norm}.bias"] = (d,)
      shapes[f"nar_decoder.layers.{i}.{norm}.project_layer.weight"] = (2 * d, d)
      shapes[f"nar_decoder.layers.{i}.{norm}.project_layer.bias"] = (2 * d,)
      shapes[f"nar_decoder.layers.{i}.{norm}.norm.weight"] = (d,)
      shapes[f"nar_decoder.layers.{i}.{norm}.norm.bias"] = (d,)
  for j in range(q):
    shapes[f"nar_audio_embeddings.{j}.word_embeddings.weight"] = (v + (j == 0), d)
  for j in range(q - 1):
    shapes[f"nar_stage_embeddings.{j}.word_embeddings.weight"] = (1, d)
    if not tied or j == q - 2:
      shapes[f"nar_predict_layers.{j}.weight"] = (v, d)
  return shapes


def _tied_keys(state, num_codebooks: int) -> tuple[bool, list[str]]:
  """(whether the NAR's prediction layers 0..Q-3 are its acoustic embeddings 2..Q-1, as
  share_embedding=True makes them; the tied keys present, which then only repeat them)."""
  keys = [f"nar_predict_layers.{j}.weight" for j in range(num_codebooks - 2)]
  present = [k for k in keys if k in state]
  tied = all(np.array_equal(state[k], state.get(f"nar_audio_embeddings.{j + 2}"
                                                ".word_embeddings.weight"))
             for j, k in enumerate(keys) if k in present)
  if not tied and len(present) != len(keys):
    raise UserError("the NAR's prediction layers are neither all tied to its embeddings "
                    "(share_embedding=True) nor all present; the checkpoint is incomplete.")
  return tied, present


def model_config(arch, num_heads: int, tied: bool, phoneme_vocab_size: int
                 ) -> ml_collections.ConfigDict:
  """The `model` config section computing the checkpoint's function."""
  from configs import lifeiteng  # pylint: disable=g-import-not-at-top
  cfg = lifeiteng.get_config().model
  if arch["width"] % num_heads:
    raise UserError(f"--num_heads={num_heads} does not divide the width {arch['width']}.")
  cfg.update(width=arch["width"], num_heads=num_heads, num_layers=arch["num_layers"],
             mlp_dim=arch["mlp_dim"], codebook_size=arch["codebook_size"],
             num_codebooks=arch["num_codebooks"], phoneme_vocab_size=phoneme_vocab_size,
             ar_bos=arch["ar_bos"], nar_tie_output=tied, nar_tie_offset=int(tied))
  return cfg


def convert(state: Mapping[str, np.ndarray], num_heads: int,
            lifeiteng_symbols: list[str] | None = None
            ) -> tuple[ml_collections.ConfigDict, dict, text.SymbolTable]:
  """A lifeiteng `VALLE` state dict -> (model config, {"ar": params, "nar": params},
  symbol table). `num_heads` is not in the state dict (lifeiteng's recipe: 16).
  `lifeiteng_symbols`: `text_symbols(...)` of its unique_text_tokens.k2symbols, to map the
  text table onto valle-jax's symbols (see `symbol_table`). A `UserError` names any
  unknown, missing or misshapen key."""
  prefix = "module."   # a state dict saved from DistributedDataParallel
  if state and all(k.startswith(prefix) for k in state):
    state = {k[len(prefix):]: v for k, v in state.items()}
  state = {k: np.asarray(v, np.float64) for k, v in state.items()}
  arch = _architecture(state)
  tied, tied_present = _tied_keys(state, arch["num_codebooks"])
  expected = expected_shapes(arch, tied)
  unknown = sorted(set(state) - set(expected) - set(tied_present))
  if unknown:
    raise UserError(f"unknown keys in the checkpoint: {_some(unknown)}; only "
                    "VALLE(norm_first=True, add_prenet=False) state dicts convert.")
  missing = sorted(set(expected) - set(state))
  if missing:
    raise UserError(f"the checkpoint lacks {_some(missing)}.")
  for key, shape in expected.items():
    if state[key].shape != shape:
      raise UserError(f"{key} has shape {state[key].shape}, expected {shape} from the "
                      "checkpoint's other sizes.")
  for name in ("nar_text_position", "nar_audio_position"):
    if state[f"{name}.alpha"][0] != 1.0:
      raise UserError(f"{name}.alpha is {state[f'{name}.alpha'][0]}; lifeiteng's NAR fixes "
                      "it at 1 and valle-jax's NAR has no position scale.")
  symbols, text_rows = symbol_table(lifeiteng_symbols, arch["num_text_rows"])
  cfg = model_config(arch, num_heads, tied, len(symbols))
  params = {"ar": _convert_ar(state, arch, num_heads, text_rows),
            "nar": _convert_nar(state, arch, num_heads, text_rows, tied)}
  params = _map_arrays(lambda x: np.asarray(x, np.float32), params)
  return cfg, params, symbols


def _some(keys: list[str]) -> str:
  return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _map_arrays(fn, tree):
  if isinstance(tree, dict):
    return {k: _map_arrays(fn, v) for k, v in tree.items()}
  return fn(tree)


def _table(weight: np.ndarray, perm: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
  """An embedding table [V, D] as `layers.embed` reads it (permuted, divided by sqrt(D));
  `rows`: the source row of each output row (-1: zeros)."""
  if rows is not None:
    weight = np.where((rows >= 0)[:, None], weight[np.maximum(rows, 0)], 0.0)
  return weight[:, perm] / np.sqrt(weight.shape[1])


def _block(state, prefix: str, perm: np.ndarray, num_heads: int) -> dict:
  """One transformer layer's attention and FFN (norms are added by the caller)."""
  d = perm.size
  h = d // num_heads
  w_q, w_k, w_v = np.split(state[f"{prefix}.self_attn.in_proj_weight"], 3)    # [D, D] each
  b_q, b_k, b_v = np.split(state[f"{prefix}.self_attn.in_proj_bias"], 3)
  w_out = state[f"{prefix}.self_attn.out_proj.weight"]                        # [D_out, D_in]
  attn = {f"{n}_kernel": w[:, perm].T.reshape(d, num_heads, h)
          for n, w in (("q", w_q), ("k", w_k), ("v", w_v))}
  attn.update({f"{n}_bias": b.reshape(num_heads, h) for n, b in (("q", b_q), ("k", b_k),
                                                                   ("v", b_v))})
  attn["out_kernel"] = w_out[perm].T.reshape(num_heads, h, d)
  attn["out_bias"] = state[f"{prefix}.self_attn.out_proj.bias"][perm]
  mlp = {"in_kernel": state[f"{prefix}.linear1.weight"][:, perm].T,
         "in_bias": state[f"{prefix}.linear1.bias"],
         "out_kernel": state[f"{prefix}.linear2.weight"][perm].T,
         "out_bias": state[f"{prefix}.linear2.bias"][perm]}
  return {"attn": attn, "mlp": mlp}


def _stacked(layers: list[dict]) -> dict:
  """Per-layer parameter trees -> one tree, each leaf stacked on a leading layer axis (the
  layout `layers.Transformer` scans over)."""
  if isinstance(layers[0], dict):
    return {key: _stacked([layer[key] for layer in layers]) for key in layers[0]}
  return np.stack(layers)


def _convert_ar(state, arch, num_heads: int, text_rows: np.ndarray) -> dict:
  perm = width_permutation(arch["width"])

  def norm(prefix):
    return {"scale": state[f"{prefix}.weight"][perm], "bias": state[f"{prefix}.bias"][perm]}

  blocks = _stacked([
      {**_block(state, prefix, perm, num_heads),
       "attn_norm": norm(f"{prefix}.norm1"), "mlp_norm": norm(f"{prefix}.norm2")}
      for prefix in (f"ar_decoder.layers.{i}" for i in range(arch["num_layers"]))])
  return {
      "phoneme_embed": _table(state["ar_text_embedding.word_embeddings.weight"], perm,
                              text_rows),
      "audio_embed": _table(state["ar_audio_embedding.word_embeddings.weight"], perm),
      "phoneme_pos_scale": state["ar_text_position.alpha"][0],
      "audio_pos_scale": state["ar_audio_position.alpha"][0],
      "transformer": {"blocks": blocks, "final_norm": norm("ar_decoder.norm")},
      "head_kernel": state["ar_predict_layer.weight"][:, perm].T,
  }


def _adaptive_norm(state, prefix: str, perm: np.ndarray, num_codebooks: int,
                   output_scale: np.ndarray | None = None) -> dict:
  """lifeiteng's AdaptiveLayerNorm at `prefix` -> per-stage (scale, bias) [Q, D]; stage s
  (codebook s, 0-based) is lifeiteng's stage embedding s - 1; row 0 is the identity.
  `output_scale` [Q] multiplies each stage's map (the tied output's sqrt(D))."""
  d = perm.size
  gamma, beta = state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"]
  scale, bias = np.ones((num_codebooks, d)), np.zeros((num_codebooks, d))
  for s in range(1, num_codebooks):
    stage = state[f"nar_stage_embeddings.{s - 1}.word_embeddings.weight"][0]      # [D]
    w_b = (state[f"{prefix}.project_layer.weight"] @ stage
           + state[f"{prefix}.project_layer.bias"])                                # [2D]
    w, b = w_b[:d], w_b[d:]
    scale[s], bias[s] = (w * gamma)[perm], (w * beta + b)[perm]
  if output_scale is not None:
    scale, bias = scale * output_scale[:, None], bias * output_scale[:, None]
  return {"scale": scale, "bias": bias}


def _convert_nar(state, arch, num_heads: int, text_rows: np.ndarray, tied: bool) -> dict:
  d, q, v = arch["width"], arch["num_codebooks"], arch["codebook_size"]
  perm = width_permutation(d)
  blocks = _stacked([
      {**_block(state, prefix, perm, num_heads),
       "attn_norm": _adaptive_norm(state, f"{prefix}.norm1", perm, q),
       "mlp_norm": _adaptive_norm(state, f"{prefix}.norm2", perm, q)}
      for prefix in (f"nar_decoder.layers.{i}" for i in range(arch["num_layers"]))])
  # A tied stage reads a table divided by sqrt(D): its final norm makes up for it.
  output_scale = np.where((np.arange(q) < q - 1) & tied, np.sqrt(d), 1.0)
  params = {
      "phoneme_embed": _table(state["nar_text_embedding.word_embeddings.weight"], perm,
                              text_rows),
      "audio_embed": np.stack([
          _table(state[f"nar_audio_embeddings.{j}.word_embeddings.weight"][:v], perm)
          for j in range(q)]),
      "transformer": {"blocks": blocks,
                      "final_norm": _adaptive_norm(state, "nar_decoder.norm", perm, q,
                                                   output_scale)},
  }
  predict = lambda j: state[f"nar_predict_layers.{j}.weight"][:, perm]   # noqa: E731  [V, D]
  if tied:
    params["last_head"] = predict(q - 2)
  else:   # stage s by lifeiteng's layer s - 1; stage 0 is never predicted
    params["head_kernel"] = np.stack([np.zeros((d, v))] + [predict(s - 1).T
                                                          for s in range(1, q)])
  return params
