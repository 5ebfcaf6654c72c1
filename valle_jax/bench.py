"""Benchmarks (not tests): `python -m valle_jax.bench <command> [options]`.

    python -m valle_jax.bench prepare [--clips 24] [--seconds 4] [--batch 8] [--codec-weights random]
    python -m valle_jax.bench sample [--configs tiny,paper] [--batches 1,16] [--steps 50]
    python -m valle_jax.bench train [--config configs/paper.py] [--dtype bfloat16] [--peak-tflops 989]

Each command is a function registered in `COMMANDS` with the argparse options it adds;
add e.g. `train` and `sample` the same way.

`prepare` measures the data prep stages on clips it makes (espeak-ng speech, resampled from
22.05 kHz like most corpora), through `data_prep.pipeline.ItemProcessor` as the Beam workers
use it, and prints seconds of audio processed per second of wall time for each stage
(phonemize, load + resample, encode) and overall. Weights do not change the codec's cost, so
random EnCodec weights give the real encode rate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background, and wait 10 minutes.",
    "It's easy to tell the depth of a well; just drop 3 stones!",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls, isn't it?",
    "The juice of lemons makes fine punch for 25 people.",
)


def _prepare_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--clips", type=int, default=24, help="clips to process")
  p.add_argument("--repeat", type=int, default=3,
                 help="sentence repeats per clip (about 3 s of speech each)")
  p.add_argument("--batch", type=int, default=8, help="clips per codec call")
  p.add_argument("--codec-weights", default="random", choices=("random", "pretrained"))


def bench_prepare(args: argparse.Namespace) -> None:
  from data_prep import corpora, pipeline  # pylint: disable=g-import-not-at-top
  from valle_jax import text  # pylint: disable=g-import-not-at-top
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top

  codec = get_codec({"name": "encodec", "weights": args.codec_weights})
  proc = pipeline.ItemProcessor(text.SymbolTable.default(), codec, 0.0, 1e9)
  with tempfile.TemporaryDirectory() as d:
    items = []
    for i in range(args.clips):
      sentence = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(args.repeat))
      path = os.path.join(d, f"{i}.wav")
      subprocess.run(["espeak-ng", "-w", path, sentence], check=True)
      items.append(corpora.Item(str(i), "train", path, "spk", "en-us", text=sentence))
    text.phonemize("warm up")  # backend creation is a one-off per process
    t0 = time.perf_counter()
    for start in range(0, len(items), args.batch):
      _, skips = proc(items[start:start + args.batch])
      assert not skips, skips
    total = time.perf_counter() - t0
  audio_s = proc.audio_seconds
  print(f"data prep on {os.cpu_count()} cores: {len(items)} clips, {audio_s:.1f} s of audio, "
        f"batch {args.batch}, EnCodec 24 kHz 6 kbps ({args.codec_weights} weights)")
  print(f"{'stage':<12}{'wall s':>10}{'audio s / s':>14}")
  for stage, secs in proc.stage_seconds.items():
    print(f"{stage:<12}{secs:>10.2f}{audio_s / secs:>14.1f}")
  print(f"{'total':<12}{total:>10.2f}{audio_s / total:>14.1f}")


def _sample_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--configs", default="tiny,paper", help="config files under configs/")
  p.add_argument("--batches", default="1,16", help="batch sizes")
  p.add_argument("--steps", type=int, default=50, help="AR steps with the KV cache")
  p.add_argument("--no-cache-steps", type=int, default=4,
                 help="AR steps without the cache (a full forward each, as the PyTorch "
                      "implementations do; 0 to skip)")
  p.add_argument("--phonemes", type=int, default=64, help="phonemes per example")
  p.add_argument("--prompt-seconds", type=float, default=3.0)


def bench_sample(args: argparse.Namespace) -> None:
  """AR sampling speed, prefill apart: `sample_ar` run to 1 and to N steps (the same
  compiled function: the step limit is the phoneme count at 1 frame a phoneme, and the
  phonemes are padded to one size), EOS disabled so every sequence runs to its limit."""
  import importlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from valle_jax import models, sampling  # pylint: disable=g-import-not-at-top

  print(f"AR sampling on {jax.devices()[0].device_kind} ({jax.device_count()} device(s), "
        f"{os.cpu_count()} cores): {args.phonemes} phonemes, {args.prompt_seconds:g} s prompt, "
        "75 frames = 1 s; RTF = wall s per s of audio made, decode only")
  print(f"{'config':<8}{'batch':>6}{'cache':>7}{'steps':>6}{'compile s':>10}{'prefill s':>10}"
        f"{'step ms':>9}{'frames/s':>10}{'RTF':>8}")
  rng = np.random.default_rng(0)
  for name in args.configs.split(","):
    cfg = importlib.import_module(f"configs.{name}").get_config().model
    model = models.ARModel(cfg, rngs=nnx.Rngs(0))
    g, v = cfg.ar_group_size, cfg.codebook_size
    model.head_bias[...] = model.head_bias[...].at[np.arange(g) * (v + 1) + v].set(-1e9)
    graphdef, state = nnx.split(model)
    prompt_frames = int(args.prompt_seconds * 75) // g * g
    for batch in (int(b) for b in args.batches.split(",")):
      for use_cache, steps in ((True, args.steps), (False, args.no_cache_steps)):
        if steps < 2:
          continue
        options = sampling.SampleOptions(max_frames_per_phoneme=g, use_cache=use_cache)
        phonemes = rng.integers(1, cfg.phoneme_vocab_size, (batch, max(args.phonemes, steps)))
        prompt = rng.integers(0, v, (batch, -(-prompt_frames // 128) * 128))

        def run(num_steps):
          out = sampling.sample_ar(
              graphdef, state, phonemes, np.full((batch,), num_steps), prompt,
              np.full((batch,), prompt_frames), jax.random.key(0), options=options,
              max_steps=steps, prompt_phoneme_lens=np.full((batch,), 1))
          return jax.block_until_ready(out)

        t0 = time.perf_counter()
        run(1)
        compile_s = time.perf_counter() - t0
        times = []
        for num_steps in (1, steps):                 # best of 3 (1 for long runs)
          best = float("inf")
          for _ in range(3 if compile_s < 30 else 1):
            t0 = time.perf_counter()
            assert int(run(num_steps).lengths[0]) == num_steps * g
            best = min(best, time.perf_counter() - t0)
          times.append(best)
        step_s = (times[1] - times[0]) / (steps - 1)
        frames_per_s = batch * g / step_s
        print(f"{name:<8}{batch:>6}{'yes' if use_cache else 'no':>7}{steps:>6}"
              f"{compile_s - times[0]:>10.1f}{times[0]:>10.2f}{1e3 * step_s:>9.1f}"
              f"{frames_per_s:>10.1f}{75 / frames_per_s:>8.3f}", flush=True)


def _train_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default="configs/tiny.py", help="experiment config file")
  p.add_argument("--model", default="both", choices=("ar", "nar", "both"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch", type=int, default=8, help="global batch size")
  p.add_argument("--frames", type=int, default=600, help="acoustic frames per example")
  p.add_argument("--phonemes", type=int, default=100, help="phonemes per example")
  p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="peak TFLOP/s of one device at this dtype, for MFU (e.g. 989 for an "
                      "H100 at bf16); 0 = don't report MFU")


def bench_train(args: argparse.Namespace) -> None:
  """Train-step throughput on random batches of a fixed shape: step time, tokens/s, the
  step's FLOPs as XLA counts them, achieved TFLOP/s and MFU against `--peak-tflops`."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from valle_jax import models, sharding, train  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("bench_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.train.model, cfg.model.compute_dtype = args.model, args.dtype
  cfg.train.grad_accum_steps = 1
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train.Trainer(cfg, mesh)
  state = trainer.init_state()
  host = models.example_batch(cfg.model, args.batch, args.phonemes, args.frames)
  fields = {"ar": ("phonemes", "phoneme_lens", "codes", "code_lens"), "nar": tuple(host)}
  batch = {name: {k: host[k] for k in fields[name]} for name in trainer.names}
  batch = sharding.shard_batch(batch, mesh)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps
  tokens = sum(float(metrics[name]["count"]) for name in trainer.names)
  devices = jax.device_count()
  achieved = flops / step_s / 1e12
  print(f"config {args.config} model={args.model} dtype={args.dtype} "
        f"batch={args.batch}x{args.frames} frames on {devices} x {jax.devices()[0].platform} "
        f"(mesh {dict(mesh.shape)})")
  print(f"  compile {compile_s:.1f} s | step {1e3 * step_s:.1f} ms | "
        f"{tokens / step_s:,.0f} tokens/s | {flops / 1e12:.3f} TFLOP/step (XLA) | "
        f"{achieved:.3f} TFLOP/s" + (f" | MFU {100 * achieved / (args.peak_tflops * devices):.1f}%"
                                     if args.peak_tflops else ""))


# command -> (function, argparse options, help)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None],
                          Callable[[argparse.ArgumentParser], None], str]] = {
    "prepare": (bench_prepare, _prepare_args,
                "data prep stages: audio seconds per second (phonemize, load, encode)"),
    "sample": (bench_sample, _sample_args,
               "AR sampler: frames/s and real-time factor, with and without the KV cache"),
    "train": (bench_train, _train_args,
              "train step: step time, tokens/s, XLA FLOPs, TFLOP/s and MFU"),
}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m valle_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (_, add_args, help_text) in COMMANDS.items():
    add_args(sub.add_parser(name, help=help_text))
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  COMMANDS[args.command][0](args)


if __name__ == "__main__":
  main()
