"""valle-jax computes lifeiteng/vall-e's function: its checkpoint, converted, gives its
logits and its greedy codes (golden file of scripts/make_golden_lifeiteng.py; no torch).

The golden file is `$VALLE_JAX_GOLDEN` when set (any size the script makes), else the
committed tests/golden/lifeiteng_w32.npz (width 32, 2 layers, vocabulary patched to 64
codes and 32 text tokens).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from valle_jax import models, sampling
from valle_jax.convert import lifeiteng
from valle_jax.errors import UserError

GOLDEN = os.environ.get("VALLE_JAX_GOLDEN") or os.path.join(
    os.path.dirname(__file__), "golden", "lifeiteng_w32.npz")
# Float32 agreement: |ours - reference| <= 1e-5 x the logits' scale (max |logit|, at least
# 1). Tied NAR logits (a normed state against N(0, 1) embedding rows) reach ~120 at width
# 1024, where 1e-5 absolute would be one ulp: summation order alone moves them by a few.
RTOL = 1e-5


def tolerance(ref: np.ndarray) -> float:
  return RTOL * max(1.0, float(np.abs(ref).max()))


def load_golden(path: str = GOLDEN):
  """(meta, lifeiteng state dict float32, the rest of the file)."""
  with np.load(path) as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop("meta")))
  state = {k[2:]: (data.pop(k).astype(np.uint32) << 16).view(np.float32)
           for k in list(data) if k.startswith("w/")}
  for j in range(meta["num_quantizers"] - 2):   # tied: left out of the file
    state[f"nar_predict_layers.{j}.weight"] = state[
        f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"]
  return meta, state, data


@pytest.fixture(scope="module")
def golden():
  meta, state, data = load_golden()
  cfg, params, _ = lifeiteng.convert(state, num_heads=meta["heads"])
  built = {}
  for name, cls in (("ar", models.ARModel), ("nar", models.NARModel)):
    model = cls(cfg, rngs=nnx.Rngs(0))
    own = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shapes = lambda tree: jax.tree.map(np.shape, tree)   # noqa: E731
    assert shapes(own) == shapes(params[name]), f"{name}: converted tree != model's"
    nnx.update(model, params[name])
    built[name] = model
  return meta, data, built["ar"], built["nar"]


def max_diff_valid(ours, ref, lens):
  """Max |ours - ref| over the first lens[b] positions of each example."""
  return max(float(np.max(np.abs(ours[b, :n] - ref[b, :n]))) for b, n in enumerate(lens))


def test_ar_logits_equal_reference(golden):
  _, data, ar, _ = golden
  x, x_lens, y, y_lens = (data[f"ar/{k}"] for k in ("x", "x_lens", "y", "y_lens"))
  inputs, _, lens = models.ar_inputs_and_targets(jnp.asarray(y[..., 0]), jnp.asarray(y_lens),
                                                 ar.codebook_size, bos=ar.bos)
  np.testing.assert_array_equal(lens, y_lens + ar.bos)   # lifeiteng: BOS with prepend_bos
  ours = np.asarray(ar(jnp.asarray(x), jnp.asarray(x_lens), inputs, lens))[:, :, 0]
  ref = data["ar/logits"]                                    # [B, T, V + 1]
  assert ours.shape == ref.shape
  diff = max_diff_valid(ours, ref, y_lens + ar.bos)
  print(f"AR max |diff| {diff:.2e} (logits up to {np.abs(ref).max():.1f})")
  assert diff <= tolerance(ref)


def test_nar_logits_equal_reference(golden):
  _, data, _, nar = golden
  x, x_lens, y, y_lens = (data[f"ar/{k}"] for k in ("x", "x_lens", "y", "y_lens"))
  b = len(y_lens)
  for i, (stage, prefix) in enumerate(zip(data["nar/stages"], data["nar/prefix_lens"])):
    ref = data[f"nar/logits_{i}"]                            # [B, T - prefix, V]
    ours = np.asarray(nar(jnp.asarray(x), jnp.asarray(x_lens), jnp.asarray(y[:, :prefix]),
                          jnp.full((b,), prefix), jnp.asarray(y[:, prefix:]),
                          jnp.asarray(y_lens - prefix), jnp.full((b,), stage)))
    assert ours.shape == ref.shape
    diff = max_diff_valid(ours, ref, y_lens - prefix)
    print(f"NAR stage {stage} (prompt {prefix}) max |diff| {diff:.2e} (logits up to "
          f"{np.abs(ref).max():.1f})")
    assert diff <= tolerance(ref), (stage, diff)


def test_greedy_zero_shot_codes_equal_reference(golden):
  """Both greedy examples in one ragged batch: the AR with its KV cache, then 7 NAR
  stages, give lifeiteng's `inference(top_k=1)` codes for every frame."""
  _, data, ar, nar = golden
  n = len([k for k in data if k.startswith("infer/") and k.endswith("/codes")])
  texts = [data[f"infer/{i}/x"] for i in range(n)]
  prompts = [data[f"infer/{i}/prompt"] for i in range(n)]
  refs = [data[f"infer/{i}/codes"] for i in range(n)]
  phoneme_lens = np.array([len(t) for t in texts])
  # lifeiteng stops after 16 frames per phoneme, + 1 without BOS (its count includes the
  # BOS slot): (16 + c) x phonemes with 0 < c x phonemes <= 1/2, rounded up, is that.
  c = 0.0 if ar.bos else 0.5 / phoneme_lens.max()
  options = sampling.SampleOptions(top_k=1, max_frames_per_phoneme=16 + c)
  max_steps = int(16 * phoneme_lens.max() + 1)
  phonemes = np.zeros((n, phoneme_lens.max()), np.int32)
  prompt = np.zeros((n, max(len(p) for p in prompts), 8), np.int32)
  for i in range(n):
    phonemes[i, :phoneme_lens[i]] = texts[i]
    prompt[i, :len(prompts[i])] = prompts[i]
  prompt_lens = np.array([len(p) for p in prompts])
  out = sampling.sample_ar(*nnx.split(ar), phonemes, phoneme_lens, prompt[..., 0],
                           prompt_lens, jax.random.key(0), options=options,
                           max_steps=max_steps)
  codes = np.asarray(sampling.decode_nar(*nnx.split(nar), phonemes, phoneme_lens, prompt,
                                         prompt_lens, out.codes, out.lengths))
  for i, ref in enumerate(refs):
    assert int(out.lengths[i]) == len(ref), (i, int(out.lengths[i]), len(ref))
    first_wrong = np.flatnonzero(np.any(codes[i, :len(ref)] != ref, axis=-1))
    assert first_wrong.size == 0, f"example {i}: frames differ from frame {first_wrong[:1]}"


def test_bf16_rounding_is_what_the_file_holds():
  """The stored weights are bfloat16 bits: every value survives the round trip."""
  _, state, _ = load_golden()
  w = state["ar_text_embedding.word_embeddings.weight"]
  assert np.array_equal(w, (w.view(np.uint32) >> 16 << 16).view(np.float32))


def test_converter_names_unknown_missing_and_misshapen_keys():
  meta, state, _ = load_golden()
  with pytest.raises(UserError, match="unknown keys.*ar_text_prenet"):
    lifeiteng.convert({**state, "ar_text_prenet.0.weight": np.zeros(3)}, meta["heads"])
  partial = dict(state)
  del partial["nar_decoder.layers.0.linear2.bias"]
  with pytest.raises(UserError, match="lacks.*nar_decoder.layers.0.linear2.bias"):
    lifeiteng.convert(partial, meta["heads"])
  bad = {**state, "ar_decoder.layers.1.linear1.bias": np.zeros(5, np.float32)}
  with pytest.raises(UserError, match=r"linear1.bias has shape \(5,\)"):
    lifeiteng.convert(bad, meta["heads"])
  with pytest.raises(UserError, match="does not divide"):
    lifeiteng.convert(state, meta["width"] + 1)


def test_symbols_map_rows_onto_valle_jax_ids(tmp_path):
  """lifeiteng's text ids (<pad> <bos> <eos> + sorted k2 symbols) land on valle-jax's
  symbols: each symbol keeps its row, '_' becomes the word boundary, <unk> a zero row."""
  meta, state, _ = load_golden()
  k2 = tmp_path / "unique_text_tokens.k2symbols"
  k2.write_text("<eps> 0\n_ 1\nb 2\na 3\n")
  theirs = lifeiteng.text_symbols(str(k2))
  assert theirs == ["<pad>", "<bos>", "<eos>", "<eps>", "_", "a", "b"]
  cfg, params, symbols = lifeiteng.convert(state, meta["heads"], theirs)
  assert cfg.phoneme_vocab_size == len(symbols) == 5 + 3
  table = state["ar_text_embedding.word_embeddings.weight"]
  perm = lifeiteng.width_permutation(meta["width"])
  ours = params["ar"]["phoneme_embed"] * np.sqrt(meta["width"])
  for symbol, row in (("<pad>", 0), ("<eos>", 2), ("<wb>", 4), ("a", 5), ("b", 6)):
    np.testing.assert_allclose(ours[symbols.encode([symbol])[0]], table[row][perm], rtol=1e-6)
  assert not ours[symbols.unk_id].any()


def test_import_checkpoint_writes_a_run_synthesis_loads(tmp_path):
  """`valle-jax import-checkpoint --format=lifeiteng` on an .npz state dict (lifeiteng's
  real vocabulary, width 8) writes a run whose loaded models hold the converted weights."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from valle_jax import checkpoint  # pylint: disable=g-import-not-at-top
  arch = dict(width=8, num_text_rows=512, codebook_size=1024, num_layers=1,
              num_codebooks=8, mlp_dim=32, ar_bos=False)
  rng = np.random.default_rng(0)
  state = {k: rng.normal(size=shape).astype(np.float32)
           for k, shape in lifeiteng.expected_shapes(arch, tied=True).items()}
  state["nar_text_position.alpha"] = state["nar_audio_position.alpha"] = np.ones(1, np.float32)
  ckpt = tmp_path / "lifeiteng.npz"
  np.savez(ckpt, **state)
  def import_checkpoint():
    return subprocess.run(
        [sys.executable, "-m", "valle_jax.cli", "import-checkpoint", "--format=lifeiteng",
         "--num_heads=2", str(ckpt), str(tmp_path / "run")], capture_output=True, text=True,
        check=False, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  run = import_checkpoint()
  assert run.returncode == 0, run.stderr
  bundle = checkpoint.load_inference_bundle(str(tmp_path / "run"))
  cfg, params, _ = lifeiteng.convert(state, num_heads=2)
  assert bundle.config.model.to_dict() == cfg.to_dict()
  assert bundle.codec_description == lifeiteng.ENCODEC_6KBPS
  from valle_jax import synthesize  # pylint: disable=g-import-not-at-top
  assert synthesize.trained_nar_prompt(bundle.config) == "prefix"   # its prefix_mode=1
  for name, model in (("ar", bundle.ar), ("nar", bundle.nar)):
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, loaded, params[name])
  again = import_checkpoint()
  assert again.returncode == 2 and "already holds checkpoints" in again.stderr


def test_read_state_dict_from_torch_checkpoints(tmp_path):
  """A lifeiteng trainer checkpoint ({"model": state dict, ...}) and a bare state dict read
  the same; one with pickled Python objects needs --trust_pickle."""
  torch = pytest.importorskip("torch")
  import pathlib  # pylint: disable=g-import-not-at-top

  from valle_jax import import_checkpoint  # pylint: disable=g-import-not-at-top
  _, state, _ = load_golden()
  tensors = {k: torch.from_numpy(v) for k, v in list(state.items())[:4]}
  torch.save({"model": tensors, "epoch": 3}, tmp_path / "trainer.pt")
  torch.save(tensors, tmp_path / "bare.pt")
  for name in ("trainer.pt", "bare.pt"):
    read = import_checkpoint.read_state_dict(str(tmp_path / name))
    assert read.keys() == tensors.keys()
    for k, v in read.items():
      np.testing.assert_array_equal(v, state[k])
  torch.save({"model": tensors, "exp_dir": pathlib.Path("exp")}, tmp_path / "objects.pt")
  with pytest.raises(UserError, match="--trust_pickle"):
    import_checkpoint.read_state_dict(str(tmp_path / "objects.pt"))
  assert import_checkpoint.read_state_dict(str(tmp_path / "objects.pt"),
                                           trust_pickle=True).keys() == tensors.keys()
