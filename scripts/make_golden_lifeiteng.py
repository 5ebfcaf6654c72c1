#!/usr/bin/env python3
"""Golden outputs of lifeiteng/vall-e's own VALLE, for tests/test_vs_lifeiteng.py.

    python scripts/make_golden_lifeiteng.py --reference ../shared/reference/lifeiteng-vall-e \\
        --seed 0 --layers 2 --width 32 --heads 4 --audio_tokens 64 --text_tokens 32 \\
        --out tests/golden/lifeiteng_w32.npz          # the committed one (~300 KB)
    python scripts/make_golden_lifeiteng.py --reference ... --seed 1 --layers 2 \\
        --width 1024 --heads 16 --out /tmp/lifeiteng_w1024.npz   # real vocab, ~140 MB

Builds `VALLE(width, heads, layers, norm_first=True, add_prenet=False, prefix_mode=1,
share_embedding=True, nar_scale_factor=1.0, prepend_bos=False, num_quantizers=8)` (or
`--prepend_bos`) with the reference's own constructor, gives it random weights (norm gains and biases, biases and
the AR position scales randomised too, so that every conversion is exercised) rounded to
bfloat16-representable values (stored in 2 bytes, losslessly), and records, under
`model.eval()` and `torch.no_grad()`:
- AR logits of its `forward(train_stage=1)` on a ragged batch (every example its own text
  and audio length), captured by a forward hook on `ar_predict_layer`;
- NAR logits of `forward(train_stage=2)` on the same batch for several stages (the stage is
  the one its `rng.choices` returns, fixed here; the prompt length is its own
  `torch.randint` draw, read back from the logits' length), hooked on `nar_predict_layers`;
- codes of its `inference(top_k=1)` (greedy) on two examples of different lengths.
The only changes to the reference are its training accuracy metrics (a stub in the shims)
replaced by no-ops, and the EOS row of `ar_predict_layer` set to zero, so that greedy
decoding of a random model runs to its length limit (16 frames per phoneme, + 1) instead
of stopping after a few frames.

--audio_tokens / --text_tokens patch the reference's NUM_AUDIO_TOKENS / NUM_TEXT_TOKENS
(its valle/models/macros.py: 1024 and 512, the defaults) before the model is built: a
smaller vocabulary keeps the committed file small (8 x 1024 x D embeddings and [B, T, 1025]
logits otherwise dominate it).

File layout (one .npz): `meta` (JSON: sizes, seed); `w/<state dict key>` uint16 bfloat16
bits (the NAR prediction layers tied to embeddings are left out: they repeat them);
`ar/{x,x_lens,y,y_lens,logits}`; `nar/{stages,prefix_lens}` and `nar/logits_<i>`;
`infer/<i>/{x,prompt,codes}`.
"""
import argparse
import json
import os
import sys

import numpy as np

INFER_TEXT_LENS = (14, 18)      # phonemes of the two greedy examples (16 x + 1 frames each)
INFER_PROMPT_LENS = (30, 45)    # their prompts' frames
NAR_STAGES = (1, 4, 7)          # codebooks (1-based 2, 5, 8): tied to the next, and untied


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reference", required=True, help="lifeiteng-vall-e folder (with _shims)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--audio_tokens", type=int, default=1024,
                 help="patched NUM_AUDIO_TOKENS (codebook size); 1024 is the real one")
  p.add_argument("--text_tokens", type=int, default=512,
                 help="patched NUM_TEXT_TOKENS; 512 is the real one")
  p.add_argument("--prepend_bos", action="store_true",
                 help="VALLE(prepend_bos=True) (converts to model.ar_bos = True)")
  p.add_argument("--out", required=True)
  return p.parse_args()


def bf16_bits(t) -> np.ndarray:
  """A float tensor whose values are bfloat16-representable -> their uint16 bits."""
  return (t.detach().float().numpy().view(np.uint32) >> 16).astype(np.uint16)


def _no_metric(*args, **kwargs):
  """Stands in for the training accuracy metrics (the shims' stub raises)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.zeros(())


class _FixedStage:
  """Stands in for `VALLE.rng` so `forward` trains the NAR stage asked for."""

  def __init__(self, stage):
    self.stage = stage

  def choices(self, *args, **kwargs):
    return [self.stage]


def build_model(args):
  sys.path[:0] = [args.reference, os.path.join(args.reference, "_shims")]
  import torch  # pylint: disable=g-import-not-at-top
  from valle.models import macros  # pylint: disable=g-import-not-at-top
  macros.NUM_AUDIO_TOKENS, macros.NUM_TEXT_TOKENS = args.audio_tokens, args.text_tokens
  from valle.models import valle  # pylint: disable=g-import-not-at-top
  valle.NUM_AUDIO_TOKENS, valle.NUM_TEXT_TOKENS = args.audio_tokens, args.text_tokens
  torch.manual_seed(args.seed)
  model = valle.VALLE(args.width, args.heads, args.layers, norm_first=True, add_prenet=False,
                      prefix_mode=1, share_embedding=True, nar_scale_factor=1.0,
                      prepend_bos=args.prepend_bos, num_quantizers=8)
  gen = torch.Generator().manual_seed(args.seed + 1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if name.startswith("ar_") and name.endswith("position.alpha"):
        param.copy_(1.0 + 0.3 * noise)
      elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
        param.copy_(1.0 + 0.2 * noise)
      elif name.endswith(("norm.bias", "norm1.bias", "norm2.bias", "in_proj_bias",
                          "out_proj.bias")):
        param.copy_(0.1 * noise)
    model.ar_predict_layer.weight[args.audio_tokens].zero_()   # EOS: see the docstring
    for param in model.parameters():
      param.copy_(param.to(torch.bfloat16).float())
  for metric in ("ar_accuracy_metric", "nar_accuracy_metric"):
    model._modules.pop(metric)   # pylint: disable=protected-access
    object.__setattr__(model, metric, _no_metric)
  return model.eval(), valle


def ragged_batch(rng, args, text_lens, audio_lens):
  x = np.zeros((len(text_lens), max(text_lens)), np.int64)
  y = np.zeros((len(audio_lens), max(audio_lens), 8), np.int64)
  for i, (lx, ly) in enumerate(zip(text_lens, audio_lens)):
    x[i, :lx] = rng.integers(1, args.text_tokens, lx)
    y[i, :ly] = rng.integers(0, args.audio_tokens, (ly, 8))
  return x, np.array(text_lens), y, np.array(audio_lens)


def main():
  args = parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  model, valle = build_model(args)
  rng = np.random.default_rng(args.seed)
  out = {"meta": np.array(json.dumps({
      "width": args.width, "heads": args.heads, "layers": args.layers, "seed": args.seed,
      "audio_tokens": args.audio_tokens, "text_tokens": args.text_tokens,
      "num_quantizers": 8, "prepend_bos": args.prepend_bos}))}
  tied = {f"nar_predict_layers.{j}.weight" for j in range(6)}
  for name, value in model.state_dict().items():
    if name not in tied:
      out[f"w/{name}"] = bf16_bits(value)

  captured = []
  def keep(module, inputs, output):
    captured.append((module, output.detach().numpy().copy()))
  hooks = [model.ar_predict_layer.register_forward_hook(keep)]
  hooks += [layer.register_forward_hook(keep) for layer in model.nar_predict_layers]

  x, x_lens, y, y_lens = ragged_batch(rng, args, (23, 17, 12), (41, 33, 24))
  tensors = [torch.from_numpy(a) for a in (x, x_lens, y, y_lens)]
  with torch.no_grad():
    model(*tensors, train_stage=1)
    (module, logits), = captured
    assert module is model.ar_predict_layer
    out.update({"ar/x": x, "ar/x_lens": x_lens, "ar/y": y, "ar/y_lens": y_lens,
                "ar/logits": logits})                      # [B, T, V + 1]
    prefix_lens = []
    for i, stage in enumerate(NAR_STAGES):
      captured.clear()
      model.rng = _FixedStage(stage)
      model(*tensors, train_stage=2)
      (module, logits), = captured
      assert module is model.nar_predict_layers[stage - 1]
      out[f"nar/logits_{i}"] = logits                      # [B, T - prefix, V]
      prefix_lens.append(y.shape[1] - logits.shape[1])
    out["nar/stages"] = np.array(NAR_STAGES)
    out["nar/prefix_lens"] = np.array(prefix_lens)
    for h in hooks:
      h.remove()
    for i, (lx, lp) in enumerate(zip(INFER_TEXT_LENS, INFER_PROMPT_LENS)):
      xi, _, prompt, _ = ragged_batch(rng, args, (lx,), (lp,))
      codes = model.inference(torch.from_numpy(xi), torch.tensor([lx]),
                              torch.from_numpy(prompt), torch.tensor([lx]), top_k=1)
      out.update({f"infer/{i}/x": xi[0], f"infer/{i}/prompt": prompt[0],
                  f"infer/{i}/codes": codes[0].numpy()})    # [frames, 8]
  for key, value in out.items():
    if value.dtype == np.int64:
      out[key] = value.astype(np.int32)
  np.savez_compressed(args.out, **out)
  frames = [out[f"infer/{i}/codes"].shape[0] for i in range(len(INFER_TEXT_LENS))]
  print(f"{args.out}: {os.path.getsize(args.out) / 1e3:.0f} KB, greedy frames {frames}, "
        f"NAR stages {NAR_STAGES} prompts {prefix_lens}")


if __name__ == "__main__":
  main()
