"""Benchmarks (not tests): `python -m valle_jax.bench <command> [options]`.

    python -m valle_jax.bench prepare [--clips 24] [--batch 8] [--lengths varied] [--max-padding inf]
    python -m valle_jax.bench index [--records 1000000] [--scan-records 20000]
    python -m valle_jax.bench sample [--configs tiny,paper] [--batches 1,16] [--steps 50] [--room 1536]
    python -m valle_jax.bench train [--config configs/paper.py] [--dtype bfloat16] [--peak-tflops 989]
    python -m valle_jax.bench accelerator [--quick] [--config configs/paper.py] [--peak-tflops 989]
    python -m valle_jax.bench input --dataset DIR [--config configs/paper.py] [--workers 0,2]

Each command is a function registered in `COMMANDS` with the argparse options it adds.
Every import beyond the standard library and numpy is inside the command that needs it, so
`accelerator` runs on a bare accelerator machine (no Beam, TFDS, phonemizer, torch or audio
libraries are imported; tests/test_bench.py checks).

`accelerator` runs every measurement of the accelerator table (issue 28) and prints one
table, in under 6 minutes on one H100/H200: the bf16 (MFU peak, unless `--peak-tflops`)
and float32 matmul rates and the copy bandwidth, measured in the same process; the AR and
NAR train steps at paper size (batch 16 x (128 phonemes + 600 frames)) in bfloat16 and
float32; AR decode steps with the KV cache at batch 1, 16, 64; the no-cache baseline step;
synthesis of 10 s of speech from a 3 s prompt (AR + all NAR stages, batch 1). `--quick`
runs the same code on configs/tiny.py at CPU sizes (about a minute).

MFU = analytic model FLOPs (`train_step_flops`: 3 x the forward's matmul FLOPs over the
real tokens, attention over the keys each mask lets a query see) / step time / (peak x
devices). XLA's `cost_analysis()` count is printed beside it, labelled as XLA's: on GPU it
is not the model's (it gave 1.7 TFLOP for a bf16 step of 11.9 analytic TFLOP), and it
counts the scanned layer loop's body once, not once per layer.

`input` loads training batches from a prepared dataset as training does (Grain, with
`--workers` worker processes, and the device prefetch thread putting them on the devices)
and prints batches/s and real frames/s for each setting beside the real frames one training
step consumes: the slowest train step that setting keeps fed. A device whose step is
faster needs more workers (or hosts).

`prepare` measures the data prep stages on clips it makes (espeak-ng speech, resampled from
22.05 kHz like most corpora), through `data_prep.pipeline.ItemProcessor` as the Beam workers
use it, and prints seconds of audio processed per second of wall time for each stage
(phonemize, load + resample, encode) and overall. Weights do not change the codec's cost, so
random EnCodec weights give the real encode rate. `--lengths varied --max-padding inf` against
the default shows what grouping a batch's clips by length (`pipeline.length_groups`) saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from valle_jax.errors import UserError

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
  p.add_argument("--lengths", default="same", choices=("same", "varied"),
                 help="varied: clip i repeats 1 + i %% (2 x repeat - 1) sentences (same mean)")
  p.add_argument("--max-padding", type=float, default=None,
                 help="a codec call's padding over its real samples (default: prepare's; "
                 "inf: one call per batch, however mixed its lengths)")


def bench_prepare(args: argparse.Namespace) -> None:
  from data_prep import corpora, pipeline  # pylint: disable=g-import-not-at-top
  from valle_jax import text  # pylint: disable=g-import-not-at-top
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top

  codec = get_codec({"name": "encodec", "weights": args.codec_weights})
  max_padding = pipeline.MAX_PADDING if args.max_padding is None else args.max_padding
  proc = pipeline.ItemProcessor(text.SymbolTable.default(), codec, 0.0, 1e9,
                                max_padding=max_padding)
  with tempfile.TemporaryDirectory() as d:
    items = []
    for i in range(args.clips):
      repeat = args.repeat if args.lengths == "same" else 1 + i % (2 * args.repeat - 1)
      sentence = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(repeat))
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
        f"batch {args.batch} ({args.lengths} lengths, codec calls padded <= {max_padding:g} "
        f"over real), EnCodec 24 kHz 6 kbps ({args.codec_weights} weights)")
  print(f"{'stage':<12}{'wall s':>10}{'audio s / s':>14}")
  for stage, secs in proc.stage_seconds.items():
    print(f"{stage:<12}{secs:>10.2f}{audio_s / secs:>14.1f}")
  print(f"{'total':<12}{total:>10.2f}{audio_s / total:>14.1f}")


def _index_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--records", type=int, default=1_000_000, help="records in the synthetic index")
  p.add_argument("--scan-records", type=int, default=20_000,
                 help="records of the synthetic dataset today's scan reads (its time is "
                 "scaled to --records)")
  p.add_argument("--speakers", type=int, default=7_000)
  p.add_argument("--shards", type=int, default=1_024)
  p.add_argument("--config", default="configs/paper.py",
                 help="the config whose buckets and token budget the batch plan uses")
  p.add_argument("--batch-multiple", type=int, default=8, help="data-parallel size")


def _synthetic_lengths(records: int, speakers: int, seed: int = 0):
  """LibriLight-like lengths: frames of 1-30 s at 75 Hz (median 10 s), about 14 phonemes a
  second, speakers numbered as LibriLight's are."""
  rng = np.random.default_rng(seed)
  seconds = np.clip(rng.lognormal(np.log(10.0), 0.5, records), 1.0, 30.0)
  frames = np.round(seconds * 75).astype(np.int32)
  phonemes = np.maximum(1, np.round(seconds * 14 * rng.normal(1.0, 0.1, records)))
  names = np.asarray([str(100 + 7 * k) for k in range(speakers)])
  return frames, phonemes.astype(np.int32), names[rng.integers(0, speakers, records)]


def _write_scan_dataset(path: str, frames, phonemes, speakers, shards: int) -> None:
  """ArrayRecord shards of records with these lengths (random codes), in the records'
  format (`data_prep.pipeline.features`), and the TFDS metadata that opens them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  features = pipeline.features(8)
  template = tfds.core.ShardedFileTemplate(
      data_dir=path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name="synthetic", split="train", filetype_suffix="array_record")
  rng = np.random.default_rng(1)
  os.makedirs(path)
  bounds = np.linspace(0, len(frames), shards + 1).astype(int)
  for shard in range(shards):
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(template.sharded_filepath(shard_index=shard, num_shards=shards)),
        "group_size:1")
    for i in range(bounds[shard], bounds[shard + 1]):
      writer.write(features.serialize_example({
          "id": f"u{i}", "speaker": speakers[i], "text": "", "lang": "en-us",
          "phonemes": rng.integers(1, 100, phonemes[i]).astype(np.int32),
          "codes": rng.integers(0, 1024, (frames[i], 8)).astype(np.int16),
          "duration_s": np.float32(frames[i] / 75)}))
    writer.close()
  split = tfds.core.SplitInfo(name="train", shard_lengths=list(np.diff(bounds)), num_bytes=0,
                              filename_template=template)
  tfds.folder_dataset.write_metadata(data_dir=path, features=features, split_infos=[split],
                                     filename_template=template, check_data=False)


def index_startup(kind: str, path: str, config: str, batch_multiple: int) -> dict[str, float]:
  """One training process's data start-up, as `train` does it: the lengths (from the index
  at `path`, or today's scan of the dataset at `path`), the batch plan and its epoch 0
  (`describe`); seconds per part and resident memory (MiB) before and at the peak."""
  from valle_jax import data  # pylint: disable=g-import-not-at-top

  def rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

  cfg = load_config(config)
  if kind == "scan":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    source = tfds.builder_from_directory(path).as_data_source("train")
  before = rss_mib()
  t0 = time.perf_counter()
  if kind == "index":
    with open(os.path.join(os.path.dirname(path), "shard_lengths.json"), encoding="utf-8") as f:
      lengths = data.load_index(path, json.load(f))
  else:
    lengths = data.scan_lengths(source, progress=False)
  t1 = time.perf_counter()
  plan = data.BatchPlan(lengths, cfg.data, seed=0, batch_multiple=batch_multiple)
  plan.describe()
  t2 = time.perf_counter()
  return {"records": len(lengths.frames), "lengths_s": t1 - t0, "plan_s": t2 - t1,
          "rss_before_mib": before,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_child(kind: str, path: str, args: argparse.Namespace) -> dict[str, float]:
  """`index_startup` in a fresh process (its own peak resident memory)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import json; from valle_jax import bench; print(json.dumps(bench.index_startup("
          f"{kind!r}, {path!r}, {args.config!r}, {args.batch_multiple})))")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])


def bench_index(args: argparse.Namespace) -> None:
  from valle_jax import data  # pylint: disable=g-import-not-at-top
  frames, phonemes, speakers = _synthetic_lengths(args.records, args.speakers)
  shard_lengths = np.diff(np.linspace(0, args.records, args.shards + 1).astype(np.int64))
  with tempfile.TemporaryDirectory() as d:
    index_path = data.index_path(d, "train")
    data.write_index(index_path, data.index_of(frames, phonemes, speakers, shard_lengths))
    with open(os.path.join(d, "shard_lengths.json"), "w", encoding="utf-8") as f:
      json.dump(shard_lengths.tolist(), f)
    from_index = _in_child("index", os.fspath(index_path), args)
    m = min(args.scan_records, args.records)
    scan_dir = os.path.join(d, "scan")
    t0 = time.perf_counter()
    _write_scan_dataset(scan_dir, frames[:m], phonemes[:m], speakers[:m],
                        max(1, args.shards * m // args.records))
    written = time.perf_counter() - t0
    scan = _in_child("scan", scan_dir, args)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    data.make_index(tfds.builder_from_directory(scan_dir).as_data_source("train"),
                    progress=False)
    indexing = time.perf_counter() - t0
    index_mib = os.path.getsize(index_path) / 2 ** 20
  scaled = scan["lengths_s"] * args.records / m
  print(f"data start-up of one training process, {args.config}'s buckets and budget, batch "
        f"multiple {args.batch_multiple}, on {os.cpu_count()} cores (records of 1-30 s, "
        f"median 10 s; {args.speakers} speakers):")
  print(f"{'':<34}{'records':>10}{'lengths s':>11}{'plan s':>9}{'total s':>9}"
        f"{'RSS MiB before':>16}{'peak':>8}")
  for name, r, total in (
      (f"index ({index_mib:.1f} MiB)", from_index, from_index["lengths_s"] + from_index["plan_s"]),
      ("scan (today), measured", scan, scan["lengths_s"] + scan["plan_s"]),
      ("scan, time scaled to --records", {**scan, "records": args.records, "lengths_s": scaled,
                                          "plan_s": from_index["plan_s"]},
       scaled + from_index["plan_s"])):
    print(f"{name:<34}{r['records']:>10}{r['lengths_s']:>11.2f}{r['plan_s']:>9.2f}{total:>9.2f}"
          f"{r['rss_before_mib']:>16.0f}{r['peak_rss_mib']:>8.0f}")
  print(f"(the scan's dataset: {m} records written in {written:.0f} s; scaled = its read time "
        f"x {args.records}/{m}, plus the index run's plan; its memory is not scaled)")
  print(f"prepare writes the index (data.make_index) at {m / indexing:.0f} records/s: "
        f"{args.records / (m / indexing):.0f} s for {args.records} records, once per dataset")


# ------------------------------------------------------------------------ analytic FLOPs


@dataclasses.dataclass(frozen=True)
class Flops:
  """FLOPs of one pass over a batch, counted two ways.

  model: the real (unpadded) tokens only, each query against the keys its mask lets it
    see (the AR's prefix-LM mask: a phoneme sees the real phonemes, audio slot i the real
    phonemes and audio slots 0..i; the NAR's full mask: every real slot). MFU uses this.
  hardware: what the dense implementation computes: every padded slot, every query against
    every slot of its sequence.
  """
  model: float
  hardware: float

  def __add__(self, other: "Flops") -> "Flops":
    return Flops(self.model + other.model, self.hardware + other.hardware)

  def __mul__(self, factor: float) -> "Flops":
    return Flops(self.model * factor, self.hardware * factor)


def forward_flops(model_cfg, kind: str, batch: dict[str, np.ndarray]) -> Flops:
  """Matmul FLOPs (2 per multiply-add) of one forward of VALL-E's "ar" or "nar" model on a
  batch laid out as `models.ar_loss` / `models.nar_loss` read it (the NAR: one stage per
  example). Pure arithmetic on the config's sizes and the batch's shapes and lengths.

  Per token: 2 x the block matmul parameters (Q, K, V, output: 4 D^2; MLP: 2 D F) per
  layer. Per (query, visible key) pair: 2 x 2 x D per layer (scores and values, all
  heads). Embeddings are lookups (no FLOPs) except the AR's group projection (G > 1,
  2 G D^2 per audio slot) and the NAR's sum over codebooks (2 Q D per acoustic slot);
  output logits: 2 D G (V + 1) per AR audio slot, 2 D V per NAR target frame. Norms,
  softmax and activations are not counted.
  """
  d, f, n_layers = model_cfg.width, model_cfg.mlp_dim, model_cfg.num_layers
  q, v = model_cfg.num_codebooks, model_cfg.codebook_size
  per_token = 2 * n_layers * (4 * d * d + 2 * d * f)
  per_pair = 4 * d * n_layers
  phoneme_lens = np.asarray(batch["phoneme_lens"], np.float64)
  num_phon = batch["phonemes"].shape[1]
  if kind == "ar":
    g, bos = model_cfg.ar_group_size, int(bool(model_cfg.get("ar_bos", True)))
    num_audio = -(-(batch["codes"].shape[1] + 1) // g) - (1 - bos)            # Ta slots
    audio_lens = -(-(np.asarray(batch["code_lens"], np.float64) + 1) // g) - (1 - bos)
    per_audio = 2 * d * g * (v + 1) + (2 * g * d * d if g > 1 else 0)
    pairs = phoneme_lens ** 2 + audio_lens * phoneme_lens + audio_lens * (audio_lens + 1) / 2
    model = np.sum((phoneme_lens + audio_lens) * per_token + pairs * per_pair
                   + audio_lens * per_audio)
    slots = num_phon + num_audio
    hardware = len(phoneme_lens) * (slots * per_token + slots ** 2 * per_pair
                                    + num_audio * per_audio)
    return Flops(float(model), float(hardware))
  if kind == "nar":
    stage_token = int(model_cfg.nar_stage_conditioning == "token")
    prompt_lens = np.asarray(batch["prompt_lens"], np.float64)
    code_lens = np.asarray(batch["code_lens"], np.float64)
    num_prompt, num_target = batch["prompt_codes"].shape[1], batch["codes"].shape[1]
    per_acoustic, per_target = 2 * q * d, 2 * d * v
    tokens = stage_token + phoneme_lens + prompt_lens + code_lens
    model = np.sum(tokens * per_token + tokens ** 2 * per_pair
                   + (prompt_lens + code_lens) * per_acoustic + code_lens * per_target)
    slots = stage_token + num_phon + num_prompt + num_target
    hardware = len(phoneme_lens) * (slots * per_token + slots ** 2 * per_pair
                                    + (num_prompt + num_target) * per_acoustic
                                    + num_target * per_target)
    return Flops(float(model), float(hardware))
  raise ValueError(f"kind must be 'ar' or 'nar', got {kind!r}.")


def train_step_flops(model_cfg, kind: str, batch: dict[str, np.ndarray]) -> Flops:
  """A train step's FLOPs: forward + backward = 3 x the forward's matmul FLOPs."""
  return forward_flops(model_cfg, kind, batch) * 3


# ---------------------------------------------------------------------------- measuring


def load_config(path: str):
  """The `get_config()` of an experiment config file (configs/*.py), found and loaded as the
  CLI finds and loads them (`config_check`: from any folder, errors in one line)."""
  from valle_jax import config_check  # pylint: disable=g-import-not-at-top
  return config_check.load_config_file(config_check.resolve_config_path(path))


def _xla_flops(compiled) -> float:
  """The FLOPs XLA's `cost_analysis()` reports for a compiled function (0 when none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def measure_matmul(n: int, dtype: str, reps: int = 10) -> float:
  """TFLOP/s of an [n, n] x [n, n] matmul in `dtype` on the default device (best of 3)."""
  import jax  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = matmul(a, b)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / reps)
  return 2 * n ** 3 / best / 1e12


def measure_copy(mib: int, reps: int = 10) -> float:
  """TB/s of reading and writing a float32 array of `mib` MiB (`x * 2`, best of 3)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones((mib * 2 ** 18,), jnp.float32)
  scale = jax.jit(lambda x: x * 2)
  jax.block_until_ready(scale(x))
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = scale(x)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / reps)
  return 2 * x.nbytes / best / 1e12


@dataclasses.dataclass(frozen=True)
class TrainResult:
  compile_s: float
  step_s: float
  tokens: float          # acoustic target tokens per step (the loss's count)
  flops: Flops           # analytic, per step
  xla_flops: float       # XLA's cost_analysis() of the compiled step


def measure_train(cfg, model: str, dtype: str, batch_size: int, num_phonemes: int,
                  num_frames: int, steps: int) -> TrainResult:
  """`train.Trainer`'s step on a random batch of a fixed shape: compile time, step time
  (after 2 warm-up steps), tokens, analytic and XLA FLOPs."""
  import jax  # pylint: disable=g-import-not-at-top

  from valle_jax import models, sharding, train  # pylint: disable=g-import-not-at-top

  cfg = cfg.copy_and_resolve_references()
  cfg.train.model, cfg.model.compute_dtype = model, dtype
  cfg.train.grad_accum_steps = 1
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train.Trainer(cfg, mesh)
  state = trainer.init_state()
  host = models.example_batch(cfg.model, batch_size, num_phonemes, num_frames)
  fields = {"ar": ("phonemes", "phoneme_lens", "codes", "code_lens"), "nar": tuple(host)}
  host = {name: {k: host[k] for k in fields[name]} for name in trainer.names}
  flops = sum((train_step_flops(cfg.model, name, host[name]) for name in trainer.names),
              Flops(0.0, 0.0))
  batch = sharding.shard_batch(host, mesh)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / steps
  tokens = sum(float(metrics[name]["count"]) for name in trainer.names)
  return TrainResult(compile_s, step_s, tokens, flops, _xla_flops(compiled))


def _random_model(cls, model_cfg, seed: int = 0):
  """`nnx.split` of a freshly initialised model; an AR with its EOS logits at -1e9, so
  that it never stops before its step limit."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from valle_jax import models  # pylint: disable=g-import-not-at-top

  model = cls(model_cfg, rngs=nnx.Rngs(seed))
  if isinstance(model, models.ARModel):
    if not model.head_has_bias:
      raise UserError("the benchmark disables EOS through the AR's head bias; use a config "
                      "with model.ar_head_bias = True.")
    g, v = model.group_size, model.codebook_size
    model.head_bias[...] = model.head_bias[...].at[np.arange(g) * (v + 1) + v].set(-1e9)
  return nnx.split(model)


@dataclasses.dataclass(frozen=True)
class DecodeResult:
  compile_s: float
  prefill_s: float       # `sample_ar` run to 1 step: prefill + 1 step
  step_s: float          # one AR step (G frames per example)
  frames_per_s: float    # over the batch


def measure_decode(model_cfg, batch_size: int, steps: int, use_cache: bool = True,
                   num_phonemes: int = 64, prompt_seconds: float = 3.0,
                   room: int | None = None) -> DecodeResult:
  """AR sampling speed, prefill apart: `sample_ar` run to 1 and to `steps` steps (the same
  compiled function: the step limit is the phoneme count at 1 group a phoneme, and the
  phonemes are padded to one size), EOS disabled so every sequence runs to its limit.
  `room`: the groups `sample_ar` makes room for (`max_steps`, default `steps`), as
  synthesis makes room for more than it speaks."""
  import jax  # pylint: disable=g-import-not-at-top

  from valle_jax import models, sampling  # pylint: disable=g-import-not-at-top

  graphdef, state = _random_model(models.ARModel, model_cfg)
  g, v = model_cfg.ar_group_size, model_cfg.codebook_size
  rng = np.random.default_rng(0)
  prompt_frames = int(prompt_seconds * 75) // g * g
  options = sampling.SampleOptions(max_frames_per_phoneme=g, use_cache=use_cache)
  phonemes = rng.integers(1, model_cfg.phoneme_vocab_size,
                          (batch_size, max(num_phonemes, steps)))
  prompt = rng.integers(0, v, (batch_size, -(-prompt_frames // 128) * 128))

  def run(num_steps):
    out = sampling.sample_ar(
        graphdef, state, phonemes, np.full((batch_size,), num_steps), prompt,
        np.full((batch_size,), prompt_frames), jax.random.key(0), options=options,
        max_steps=max(room or steps, steps))
    return jax.block_until_ready(out)

  start = time.perf_counter()
  run(1)
  compile_s = time.perf_counter() - start
  times = []
  for num_steps in (1, steps):                 # best of 3 (1 for long runs)
    best = float("inf")
    for _ in range(3 if compile_s < 30 else 1):
      start = time.perf_counter()
      assert int(run(num_steps).lengths[0]) == num_steps * g
      best = min(best, time.perf_counter() - start)
    times.append(best)
  step_s = (times[1] - times[0]) / (steps - 1)
  return DecodeResult(compile_s - times[0], times[0], step_s, batch_size * g / step_s)


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
  compile_s: float
  total_s: float         # AR (prefill + every step) + every NAR stage, best of 2
  frames: int            # frames made per example


def measure_synthesis(model_cfg, seconds: float, prompt_seconds: float, num_phonemes: int
                      ) -> SynthesisResult:
  """Synthesis of `seconds` of speech from a `prompt_seconds` prompt at batch 1, as
  `synthesize` decodes (`sampling.prepare_batch`, then `sampling.Decoding`: the AR, then
  the NAR's Q - 1 stages), with random weights and EOS disabled so the AR makes exactly
  `seconds` x 75 frames."""
  import jax  # pylint: disable=g-import-not-at-top

  from valle_jax import models, sampling  # pylint: disable=g-import-not-at-top

  ar_def, ar_state = _random_model(models.ARModel, model_cfg)
  nar_def, nar_state = _random_model(models.NARModel, model_cfg, seed=1)
  frames = int(seconds * 75)
  rng = np.random.default_rng(0)
  options = sampling.SampleOptions(max_frames=frames)
  phonemes = rng.integers(1, model_cfg.phoneme_vocab_size, (num_phonemes,))
  prompt = rng.integers(0, model_cfg.codebook_size,
                        (int(prompt_seconds * 75), model_cfg.num_codebooks))
  batch = sampling.prepare_batch([phonemes], [prompt], model_cfg.ar_group_size, options)
  decoding = sampling.Decoding()

  def run():
    codes, lengths, _ = decoding(ar_def, ar_state, nar_def, nar_state, batch,
                                 jax.random.key(0), options)
    return jax.block_until_ready(codes), int(lengths[0])

  start = time.perf_counter()
  run()
  first_s = time.perf_counter() - start
  best = float("inf")
  for _ in range(2):
    start = time.perf_counter()
    _, made = run()
    best = min(best, time.perf_counter() - start)
  if made < frames:
    raise RuntimeError(f"the AR made {made} frames, not {frames}.")
  return SynthesisResult(first_s - best, best, made)


def _flop_text(flops: float) -> str:
  """'11.9 TFLOP', '3.20 GFLOP', ...: 3 significant digits at a readable prefix."""
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if flops >= scale:
      return f"{flops / scale:.3g} {prefix}FLOP"
  return f"{flops:.3g} FLOP"


# ------------------------------------------------------------------------------ commands


def _sample_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--configs", default="tiny,paper", help="config files under configs/")
  p.add_argument("--batches", default="1,16", help="batch sizes")
  p.add_argument("--steps", type=int, default=50, help="AR steps with the KV cache")
  p.add_argument("--no-cache-steps", type=int, default=4,
                 help="AR steps without the cache (a full forward each, as the PyTorch "
                      "implementations do; 0 to skip)")
  p.add_argument("--phonemes", type=int, default=64, help="phonemes per example")
  p.add_argument("--prompt-seconds", type=float, default=3.0)
  p.add_argument("--room", type=int, default=0,
                 help="AR groups the sampler makes room for (max_steps; default --steps); "
                      "synthesis makes room for 12 frames a phoneme")


def bench_sample(args: argparse.Namespace) -> None:
  """AR sampling speed, prefill apart (`measure_decode`)."""
  import jax  # pylint: disable=g-import-not-at-top

  print(f"AR sampling on {jax.devices()[0].device_kind} ({jax.device_count()} device(s), "
        f"{os.cpu_count()} cores): {args.phonemes} phonemes, {args.prompt_seconds:g} s prompt, "
        f"room for {args.room or 'steps'} groups, 75 frames = 1 s; RTF = wall s per s of "
        "audio made, decode only")
  print(f"{'config':<8}{'batch':>6}{'cache':>7}{'steps':>6}{'compile s':>10}{'prefill s':>10}"
        f"{'step ms':>9}{'frames/s':>10}{'RTF':>8}")
  for name in args.configs.split(","):
    model_cfg = load_config(os.path.join("configs", f"{name}.py")).model
    for batch in (int(b) for b in args.batches.split(",")):
      for use_cache, steps in ((True, args.steps), (False, args.no_cache_steps)):
        if steps < 2:
          continue
        r = measure_decode(model_cfg, batch, steps, use_cache, args.phonemes,
                           args.prompt_seconds, args.room or None)
        print(f"{name:<8}{batch:>6}{'yes' if use_cache else 'no':>7}{steps:>6}"
              f"{r.compile_s:>10.1f}{r.prefill_s:>10.2f}{1e3 * r.step_s:>9.1f}"
              f"{r.frames_per_s:>10.1f}{75 / r.frames_per_s:>8.3f}", flush=True)


def _train_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default="configs/tiny.py", help="experiment config file")
  p.add_argument("--model", default="both", choices=("ar", "nar", "both"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch", type=int, default=8, help="global batch size")
  p.add_argument("--frames", type=int, default=600, help="acoustic frames per example")
  p.add_argument("--phonemes", type=int, default=100, help="phonemes per example")
  p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="bf16 peak TFLOP/s of one device for MFU (e.g. 989 for an H100); "
                      "0 = measure a bf16 matmul in-process")
  p.add_argument("--matmul-size", type=int, default=8192,
                 help="n of the n x n x n bf16 matmul that measures the peak")


def bench_train(args: argparse.Namespace) -> None:
  """Train-step throughput on random batches of a fixed shape (`measure_train`): step
  time, tokens/s, analytic FLOPs and MFU, and XLA's FLOP count beside them."""
  import jax  # pylint: disable=g-import-not-at-top

  cfg = load_config(args.config)
  if args.peak_tflops:
    peak, peak_source = args.peak_tflops, "from --peak-tflops"
  else:
    peak = measure_matmul(args.matmul_size, "bfloat16")
    peak_source = f"a {args.matmul_size}^3 bf16 matmul measured in-process"
  r = measure_train(cfg, args.model, args.dtype, args.batch, args.phonemes, args.frames,
                    args.steps)
  devices = jax.device_count()
  print(f"config {args.config} model={args.model} dtype={args.dtype} "
        f"batch={args.batch}x({args.phonemes} phonemes + {args.frames} frames) on {devices} x "
        f"{jax.devices()[0].device_kind}; peak {peak:.1f} TFLOP/s per device ({peak_source})")
  print(f"  compile {r.compile_s:.1f} s | step {1e3 * r.step_s:.1f} ms | "
        f"{r.tokens / r.step_s:,.0f} tokens/s | analytic {_flop_text(r.flops.model)}/step "
        f"(model; {_flop_text(r.flops.hardware)} with padding) | "
        f"{r.flops.model / r.step_s / 1e12:.3g} TFLOP/s | "
        f"MFU {100 * r.flops.model / r.step_s / (peak * 1e12 * devices):.1f}% | "
        f"XLA's count {_flop_text(r.xla_flops)}/step")


def _input_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dataset", required=True,
                 help="a prepared dataset (the <builder>/<version> folder `prepare` printed)")
  p.add_argument("--config", default="configs/paper.py",
                 help="experiment config file: its buckets, token budget, model and loader")
  p.add_argument("--workers", default="0,2",
                 help="comma-separated data.workers settings to measure (0 = in-process)")
  p.add_argument("--threads", type=int, default=-1,
                 help="Grain reader threads per process (default: the config's num_threads)")
  p.add_argument("--device-prefetch", type=int, default=-1,
                 help="batches put on the devices ahead (default: the config's)")
  p.add_argument("--batches", type=int, default=40, help="timed batches (after the first)")


def _real_frames(batch: dict[str, Any], nar_prompt: str) -> int:
  """The utterance frames a loaded batch holds (what the token budget counts): the AR's
  codes, else the NAR's targets (and their prefixes, when the prefix is the prompt)."""
  if "ar" in batch:
    return int(batch["ar"]["code_lens"].sum())
  frames = int(batch["nar"]["code_lens"].sum())
  return frames + (int(batch["nar"]["prompt_lens"].sum()) if nar_prompt == "prefix" else 0)


def measure_input(loader, cfg, mesh, *, workers: int, threads: int, device_prefetch: int,
                  batches: int) -> dict[str, float]:
  """Loads batches as training does (`data.batch_iterator` in a `data.Prefetcher` that puts
  them on `mesh`): seconds to the first batch (start-up, worker processes included), then,
  after as many more as the buffers hold (read ahead while the first loaded), batches/s
  and real frames/s over `batches` more."""
  import jax  # pylint: disable=g-import-not-at-top
  from valle_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from valle_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  def transform(batch):
    return _real_frames(batch, cfg.data.nar_prompt), train_lib.batch_on_devices(batch, mesh)
  buffered = cfg.data.prefetch + device_prefetch + workers
  start = time.perf_counter()
  with data_lib.Prefetcher(
      data_lib.batch_iterator(loader, 1 + buffered + batches, num_threads=threads,
                              prefetch=cfg.data.prefetch, workers=workers),
      transform, depth=device_prefetch) as it:
    jax.block_until_ready(next(it)[1])
    first = time.perf_counter()
    for _ in range(buffered):
      jax.block_until_ready(next(it)[1])
    timed = time.perf_counter()
    frames = 0
    for real, batch in it:
      jax.block_until_ready(batch)
      frames += real
    seconds = time.perf_counter() - timed
  return {"startup_s": first - start, "batches_per_s": batches / seconds,
          "frames_per_s": frames / seconds}


def bench_input(args: argparse.Namespace) -> None:
  """Input pipeline throughput from a prepared dataset on this machine, for each
  `--workers` setting: batches/s and real frames/s delivered on the devices, beside what
  one training step consumes (the plan's real frames per batch), so that a step time from
  `bench train` or `bench accelerator` says how many loading processes a device needs."""
  import jax  # pylint: disable=g-import-not-at-top
  from valle_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from valle_jax import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
  from valle_jax import sharding  # pylint: disable=g-import-not-at-top
  from valle_jax import text as text_lib  # pylint: disable=g-import-not-at-top

  cfg = load_config(args.config)
  try:
    settings = [int(w) for w in args.workers.split(",")]
  except ValueError:
    settings = []
  if not settings or min(settings) < 0 or args.batches < 1:
    raise UserError(f"--workers takes comma-separated counts >= 0 (got {args.workers!r}) "
                    f"and --batches a count >= 1 (got {args.batches}).")
  threads = cfg.data.num_threads if args.threads < 0 else args.threads
  device_prefetch = (cfg.data.device_prefetch if args.device_prefetch < 0
                     else args.device_prefetch)
  dataset = data_lib.open_dataset(args.dataset)
  source = dataset.split(cfg.data.train_split)
  mesh = sharding.make_mesh(cfg.mesh)
  multiple = mesh.shape["data"] * mesh.shape["fsdp"] * cfg.train.grad_accum_steps
  recipe = recipe_lib.of_config(cfg)
  plan = data_lib.BatchPlan(data_lib.scan_lengths(source), cfg.data, seed=cfg.seed,
                            batch_multiple=multiple, crop_long=recipe.crop_long)
  loader = recipe.batch_loader(
      cfg, dataset, cfg.data.train_split, source, plan, kind=cfg.train.model,
      num_codebooks=cfg.model.num_codebooks,
      frame_rate=float(dataset.codec_description.get("frame_rate", 75.0)),
      symbols=text_lib.SymbolTable.load(dataset.symbols_path))
  stats = plan.stats()
  per_step = stats["real_frames_per_batch"]
  print(f"{dataset.path} ({cfg.data.train_split}: {stats['examples']} examples), config "
        f"{args.config}, train.model={cfg.train.model}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores")
  print(f"one training step consumes one global batch: {per_step:,.0f} real frames on average "
        f"(budget data.max_tokens={cfg.data.max_tokens}), {stats['batches_per_epoch']} "
        f"batches an epoch")
  for workers in settings:
    r = measure_input(loader, cfg, mesh, workers=workers, threads=threads,
                      device_prefetch=device_prefetch, batches=args.batches)
    print(f"  data.workers={workers} num_threads={threads} device_prefetch={device_prefetch}: "
          f"{r['batches_per_s']:.2f} batches/s, {r['frames_per_s']:,.0f} real frames/s "
          f"(start-up {r['startup_s']:.1f} s) -> keeps up with train steps of "
          f">= {1e3 / r['batches_per_s']:.0f} ms")
  print("A step faster than that needs more input: more data.workers (each a process with "
        "num_threads readers) until batches/s x step time >= 1; on a multi-host run each "
        "process loads only its 1/process_count of every batch.")


@dataclasses.dataclass(frozen=True)
class AcceleratorPlan:
  """The sizes of `accelerator`'s measurements."""
  config: str
  matmul_size: int
  copy_mib: int
  train_batch: int
  train_phonemes: int
  train_frames: int
  train_steps: int
  train_dtypes: tuple[str, ...]
  decode_batches: dict[str, tuple[int, ...]]    # dtype -> batch sizes
  decode_steps: int
  no_cache_steps: int
  synthesis_seconds: float
  synthesis_prompt_seconds: float
  synthesis_phonemes: int


# Issue 28's table: paper size, batch 16 x (128 phonemes + 600 frames), 10 s from a 3 s prompt.
ACCELERATOR = AcceleratorPlan(
    config="configs/paper.py", matmul_size=8192, copy_mib=1024, train_batch=16,
    train_phonemes=128, train_frames=600, train_steps=5, train_dtypes=("bfloat16", "float32"),
    decode_batches={"bfloat16": (1, 16, 64), "float32": (1, 16)}, decode_steps=50,
    no_cache_steps=4, synthesis_seconds=10.0, synthesis_prompt_seconds=3.0,
    synthesis_phonemes=170)
# The same code path at CPU sizes, one dtype (about a minute on 2 cores).
QUICK = AcceleratorPlan(
    config="configs/tiny.py", matmul_size=512, copy_mib=16, train_batch=2,
    train_phonemes=16, train_frames=75, train_steps=2, train_dtypes=("bfloat16",),
    decode_batches={"bfloat16": (1, 4)}, decode_steps=32, no_cache_steps=3,
    synthesis_seconds=1.0, synthesis_prompt_seconds=1.0, synthesis_phonemes=20)


def _accelerator_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--quick", action="store_true",
                 help="CPU sizes and configs/tiny.py: the same measurements in about a minute")
  p.add_argument("--config", default="",
                 help="experiment config file (default: configs/paper.py, or configs/tiny.py "
                      "with --quick)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="bf16 peak TFLOP/s of one device for MFU (e.g. 989 for an H100); "
                      "0 = the bf16 matmul measured in-process")


def bench_accelerator(args: argparse.Namespace) -> None:
  """Every accelerator measurement of issue 28's table, printed as one table (a row as
  each finishes): matmul peak and copy bandwidth, AR and NAR train steps in bfloat16 and
  float32 (tokens/s, step ms, compile s, analytic MFU with XLA's FLOP count beside it), AR
  decode steps with the KV cache, the no-cache baseline step, and full synthesis."""
  import jax  # pylint: disable=g-import-not-at-top

  plan = QUICK if args.quick else ACCELERATOR
  config = args.config or plan.config
  cfg = load_config(config)
  devices = jax.device_count()
  print(f"valle-jax bench accelerator: {config} ({cfg.model.num_layers} x "
        f"{cfg.model.width}) on {devices} x {jax.devices()[0].device_kind}; MFU = analytic "
        "model FLOPs / step time / (bf16 peak x devices), float32 rows too", flush=True)
  print(f"{'what':<44}{'dtype':<10}{'batch':>6}{'ms':>10}{'rate':>20}{'compile s':>10}  note")

  def row(what, dtype, batch, seconds, rate, compile_s=None, note=""):
    compiled = "" if compile_s is None else f"{compile_s:.1f}"
    print(f"{what:<44}{dtype:<10}{batch:>6}{1e3 * seconds:>10.3f}{rate:>20}{compiled:>10}  "
          f"{note}", flush=True)

  n = plan.matmul_size
  f32_peak = measure_matmul(n, "float32")
  row(f"matmul {n}^3", "float32", "-", 2 * n ** 3 / f32_peak / 1e12,
      f"{f32_peak:.1f} TFLOP/s")
  bf16_peak = measure_matmul(n, "bfloat16")
  peak = args.peak_tflops or bf16_peak
  row(f"matmul {n}^3", "bfloat16", "-", 2 * n ** 3 / bf16_peak / 1e12,
      f"{bf16_peak:.1f} TFLOP/s",
      note=f"MFU peak: {args.peak_tflops:g} TFLOP/s (--peak-tflops)" if args.peak_tflops
      else "MFU peak (measured)")
  copy_tbs = measure_copy(plan.copy_mib)
  row(f"copy {plan.copy_mib} MiB (read + write)", "float32", "-",
      2 * plan.copy_mib * 2 ** 20 / copy_tbs / 1e12, f"{copy_tbs:.3f} TB/s")

  shape = f"{plan.train_phonemes} phonemes + {plan.train_frames} frames"
  for dtype in plan.train_dtypes:
    for model in ("ar", "nar"):
      r = measure_train(cfg, model, dtype, plan.train_batch, plan.train_phonemes,
                        plan.train_frames, plan.train_steps)
      achieved = r.flops.model / r.step_s
      row(f"{model.upper()} train step ({shape})", dtype, plan.train_batch, r.step_s,
          f"{r.tokens / r.step_s:,.0f} tokens/s", r.compile_s,
          f"MFU {100 * achieved / (peak * 1e12 * devices):.1f}% (analytic "
          f"{_flop_text(r.flops.model)}, {_flop_text(r.flops.hardware)} with padding; "
          f"XLA's count {_flop_text(r.xla_flops)})")

  for dtype, batches in plan.decode_batches.items():
    model_cfg = cfg.model.copy_and_resolve_references()
    model_cfg.compute_dtype = dtype
    for batch in batches:
      r = measure_decode(model_cfg, batch, plan.decode_steps,
                         prompt_seconds=plan.synthesis_prompt_seconds)
      row(f"AR decode step, KV cache ({plan.decode_steps} steps)", dtype, batch, r.step_s,
          f"{r.frames_per_s:,.0f} frames/s", r.compile_s, f"prefill + 1 step {r.prefill_s:.3f} s")
  model_cfg = cfg.model.copy_and_resolve_references()
  model_cfg.compute_dtype = "bfloat16"
  r = measure_decode(model_cfg, 1, plan.no_cache_steps, use_cache=False,
                     prompt_seconds=plan.synthesis_prompt_seconds)
  row(f"AR step without cache ({plan.no_cache_steps} steps)", "bfloat16", 1, r.step_s,
      f"{r.frames_per_s:,.0f} frames/s", r.compile_s, "full forward a step (PyTorch baseline)")
  r = measure_synthesis(model_cfg, plan.synthesis_seconds, plan.synthesis_prompt_seconds,
                        plan.synthesis_phonemes)
  row(f"synthesis {plan.synthesis_seconds:g} s from {plan.synthesis_prompt_seconds:g} s prompt",
      "bfloat16", 1, r.total_s, f"{r.frames / r.total_s:,.0f} frames/s", r.compile_s,
      f"AR + {cfg.model.num_codebooks - 1} NAR stages, {r.frames} frames, "
      f"RTF {r.total_s / plan.synthesis_seconds:.4f}")


# command -> (function, argparse options, help)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None],
                          Callable[[argparse.ArgumentParser], None], str]] = {
    "prepare": (bench_prepare, _prepare_args,
                "data prep stages: audio seconds per second (phonemize, load, encode)"),
    "index": (bench_index, _index_args,
              "data start-up from a prepared dataset's index vs reading every record"),
    "sample": (bench_sample, _sample_args,
               "AR sampler: frames/s and real-time factor, with and without the KV cache"),
    "train": (bench_train, _train_args,
              "train step: step time, tokens/s, analytic FLOPs and MFU, XLA's FLOP count"),
    "input": (bench_input, _input_args,
              "input pipeline: batches/s and real frames/s from a prepared dataset"),
    "accelerator": (bench_accelerator, _accelerator_args,
                    "every accelerator measurement (issue 28's table) as one table"),
}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m valle_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (_, add_args, help_text) in COMMANDS.items():
    add_args(sub.add_parser(name, help=help_text))
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    COMMANDS[args.command][0](args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
