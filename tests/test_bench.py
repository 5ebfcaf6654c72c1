"""The benchmark's analytic FLOP count, and `bench accelerator` run at CPU sizes."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from valle_jax import bench, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_cfg(base=None, **fields):
  """A copy of `base` (default: configs/tiny.py's model) with `fields` set."""
  cfg = (tiny.get_config().model if base is None else base).copy_and_resolve_references()
  cfg.update(fields)
  return cfg


def _hand_batch():
  """One example: 2 of 3 phonemes real; AR: 1 of 2 frames; NAR: prompt 1 of 2, target
  2 of 3."""
  return {"phonemes": np.zeros((1, 3), np.int32), "phoneme_lens": np.array([2]),
          "codes": np.zeros((1, 2, 2), np.int32), "code_lens": np.array([1]),
          "prompt_codes": np.zeros((1, 2, 2), np.int32), "prompt_lens": np.array([1]),
          "nar_codes": np.zeros((1, 3, 2), np.int32), "nar_code_lens": np.array([2])}


def test_flops_hand_count():
  # D = 4, F = 8, 1 layer, V = 3, Q = 2: per token 2 x (4 D^2 + 2 D F) = 256; per visible
  # (query, key) pair 2 x 2 x D = 16.
  cfg = _model_cfg(width=4, mlp_dim=8, num_heads=2, num_layers=1, codebook_size=3,
                   num_codebooks=2)
  b = _hand_batch()
  # AR: BOS + 1 frame + EOS -> 2 real audio slots of Ta = ceil((2 + 1) / 1) = 3.
  # Real: 4 tokens; pairs: 2 phonemes x 2 + audio 0 sees 2 + 1, audio 1 sees 2 + 2 = 11;
  # logits 2 x D x (V + 1) = 32 per audio slot.
  ar = bench.forward_flops(cfg, "ar", b)
  assert ar.model == 4 * 256 + 11 * 16 + 2 * 32
  assert ar.hardware == 6 * 256 + 6 * 6 * 16 + 3 * 32
  # NAR: 2 phonemes + 1 prompt + 2 target frames = 5 real tokens, all seeing all (25 pairs);
  # codebook sum 2 x Q x D = 16 per acoustic slot; logits 2 x D x V = 24 per target frame.
  nar_batch = dict(b, codes=b["nar_codes"], code_lens=b["nar_code_lens"])
  nar = bench.forward_flops(cfg, "nar", nar_batch)
  assert nar.model == 5 * 256 + 25 * 16 + 3 * 16 + 2 * 24
  assert nar.hardware == 8 * 256 + 8 * 8 * 16 + 5 * 16 + 3 * 24
  # VALL-E 2's stage token is one more real slot; groups of 2 frames halve the AR's slots
  # and add the group projection (2 x G x D^2 = 64 per audio slot).
  token = bench.forward_flops(_model_cfg(cfg, nar_stage_conditioning="token"), "nar",
                              nar_batch)
  assert token.model == 6 * 256 + 36 * 16 + 3 * 16 + 2 * 24
  grouped = bench.forward_flops(_model_cfg(cfg, ar_group_size=2), "ar", b)
  # 1 frame + EOS -> 1 group: inputs BOS + that group's predecessor, 1 real slot of
  # Ta = ceil(3 / 2) = 2; 3 real tokens, pairs 2 x 2 + (2 + 1) = 7; logits
  # 2 x D x G x (V + 1) = 64 per slot.
  assert grouped.model == 3 * 256 + 7 * 16 + 1 * (64 + 64)
  assert grouped.hardware == 5 * 256 + 5 * 5 * 16 + 2 * (64 + 64)
  assert bench.train_step_flops(cfg, "ar", b) == ar * 3


@pytest.mark.parametrize("group_size", [1, 2])
def test_flops_match_xla_on_cpu(group_size):
  """On CPU, float32, XLA counts a dot's FLOPs exactly; it also counts the elementwise
  work the analytic count leaves out (norms, softmax, GELU: 2.0-2.4% at these sizes), so
  the padded ("hardware") count must be within [0, 5%] below XLA's. One layer: XLA counts
  a loop's body once, and the blocks are a loop over the layers."""
  cfg = _model_cfg(width=128, mlp_dim=512, num_heads=4, num_layers=1, codebook_size=256,
                   phoneme_vocab_size=64, ar_group_size=group_size)
  batch = models.example_batch(cfg, 2, 16, 48)
  batch.update(phoneme_lens=np.array([16, 9]), code_lens=np.array([48, 30]),
               prompt_lens=np.array([16, 5]))
  ar_def, ar_state = nnx.split(models.ARModel(cfg, rngs=nnx.Rngs(0)))
  nar_def, nar_state = nnx.split(models.NARModel(cfg, rngs=nnx.Rngs(1)))

  def ar_forward(state, b):
    inputs, _, group_lens = models.ar_inputs_and_targets(
        b["codes"][..., 0], b["code_lens"], cfg.codebook_size, group_size)
    return nnx.merge(ar_def, state)(b["phonemes"], b["phoneme_lens"], inputs, group_lens)

  def nar_forward(state, b):
    return nnx.merge(nar_def, state)(b["phonemes"], b["phoneme_lens"], b["prompt_codes"],
                                     b["prompt_lens"], b["codes"], b["code_lens"], b["stage"])

  cpu = jax.devices("cpu")[0]
  for kind, forward, state in (("ar", ar_forward, ar_state), ("nar", nar_forward, nar_state)):
    with jax.default_device(cpu):
      xla = bench._xla_flops(jax.jit(forward).lower(state, batch).compile())  # pylint: disable=protected-access
    flops = bench.forward_flops(cfg, kind, batch)
    assert flops.hardware <= xla <= 1.05 * flops.hardware, (kind, xla, flops)
    assert flops.model < 0.85 * flops.hardware     # the padding and masked keys are left out


FORBIDDEN = ("apache_beam", "tensorflow", "tensorflow_datasets", "phonemizer", "soundfile",
             "torch", "torchaudio", "librosa", "audioread", "encodec", "resampy", "scipy")


def test_accelerator_quick_runs_and_imports_nothing_it_does_not_need():
  """`bench accelerator --quick` in a fresh process prints every row of its table, and no
  data-prep, codec or audio library gets imported along the way."""
  code = (
      "import json, sys\n"
      "from valle_jax import bench\n"
      "bench.main(['accelerator', '--quick'])\n"
      f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"))
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  print(out.stdout)
  assert json.loads(lines[-1]) == []
  table = "\n".join(lines[:-1])
  for what in ("matmul 512^3", "copy 16 MiB", "AR train step", "NAR train step",
               "AR decode step, KV cache", "AR step without cache", "synthesis 1 s"):
    assert what in table, what
  assert table.count("AR decode step, KV cache") == 2           # batch 1 and 4
  assert "MFU" in table and "XLA's count" in table


def test_input_reports_batches_and_frames_per_second(tiny_dataset, capsys):
  """`bench input` loads batches from a prepared dataset onto the devices and prints their
  rate and real frames per second beside the real frames one training step consumes."""
  bench.main(["input", f"--dataset={tiny_dataset}", "--config=configs/tiny.py",
              "--workers=0", "--batches=6"])
  out = capsys.readouterr().out
  per_step = float(out.split("consumes one global batch: ")[1].split(" real frames")[0]
                   .replace(",", ""))
  row = out.split("data.workers=0 ")[1]
  batches_per_s = float(row.split(": ")[1].split(" batches/s")[0])
  frames_per_s = float(row.split("batches/s, ")[1].split(" real frames/s")[0].replace(",", ""))
  assert per_step > 0 and batches_per_s > 0
  # Frames per batch loaded agree with the plan's mean (batches differ in length).
  assert 0.5 * per_step < frames_per_s / batches_per_s < 2 * per_step
  with pytest.raises(SystemExit):
    bench.main(["input", f"--dataset={tiny_dataset}", "--workers=two"])
