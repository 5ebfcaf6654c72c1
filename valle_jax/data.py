"""Input pipeline: ArrayRecord datasets (written by `data_prep`) -> padded training batches.

    dataset = open_dataset("/data/valle_folder/1.0.0")          # splits, symbols, codec
    plan = BatchPlan(scan_lengths(dataset.split("train")), config.data, seed=0,
                     batch_multiple=mesh data-parallel size)
    it = batch_iterator(dataset.split("train"), plan, config.data, kind="ar")
    batch = next(it)             # this process's rows of global batch 0
    state = it.get_state()       # checkpointable; it.set_state(state) resumes exactly

Batching (deterministic from the seed):
- Each example goes to the smallest (frames, phonemes) length bucket that holds it; examples
  longer than the largest bucket are left out (counted, reported once).
- A bucket's global batch size is its token budget `max_tokens // bucket_frames` (the paper:
  6k acoustic tokens per GPU), rounded down to a multiple of the data-parallel size and
  capped at `max_batch_size`. Shapes are fixed per bucket, so `jax.jit` compiles once per
  bucket, however long the run.
- Epoch e shuffles each bucket with seed (seed, e), cuts it into batches (the last one
  filled up by wrapping around, so no example is ever left out) and shuffles batch order.
  Global batch i is batch i % n of epoch i // n: a pure function of i, so the iterator
  state is just the next i (Grain's `next_index`) and resuming is exact.
- Multi-host: every process computes the same plan and loads only its own rows of each
  global batch (rows [p * B / P, (p + 1) * B / P)).

NAR batches add an acoustic prompt per example: by default a random prefix of about
`prompt_seconds` (at most half the utterance) with the rest of the utterance as target —
zero-shot inference's layout — or, with `prompt_from_other_utterance`, a random crop of
another utterance of the same speaker with the whole utterance as target (the paper's
option). The stage (codebook to predict, 0-based in [1, Q)) is drawn uniformly per example.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os
import uuid
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from tqdm import tqdm

from valle_jax.errors import UserError


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass
class Dataset:
  """A prepared dataset directory: ArrayRecord splits + symbols.json + codec.json."""
  path: str
  splits: dict[str, Any]           # split -> random-access source (len, __getitem__)
  codec_description: dict[str, Any]

  @property
  def symbols_path(self) -> str:
    return os.path.join(self.path, "symbols.json")

  def split(self, name: str):
    if name not in self.splits:
      raise UserError(f"dataset {self.path} has no split {name!r} (it has "
                      f"{sorted(self.splits)}); set the split name in the config.")
    return self.splits[name]


def open_dataset(path: str) -> Dataset:
  """Opens a dataset written by `valle-jax prepare` (the `<builder>/<version>` directory)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise UserError(f"{path} is not a prepared dataset (no dataset_info.json); point "
                    "--config.data.dataset at the <builder>/<version> directory that "
                    "`valle-jax prepare` printed.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(path)
  splits = {name: builder.as_data_source(split=name) for name in builder.info.splits}
  with open(os.path.join(path, "codec.json"), encoding="utf-8") as f:
    codec_description = json.load(f)
  return Dataset(path=path, splits=splits, codec_description=codec_description)


@dataclasses.dataclass(frozen=True)
class Lengths:
  """What batching needs to know of each example, without its codes."""
  frames: np.ndarray      # int [N]
  phonemes: np.ndarray    # int [N]
  speakers: np.ndarray    # str [N]


def scan_lengths(source, cache_path: str | None = None, progress: bool = True) -> Lengths:
  """Reads every record once for its lengths and speaker (cached at `cache_path`)."""
  if cache_path and os.path.isfile(cache_path):
    with np.load(cache_path, allow_pickle=False) as z:
      if len(z["frames"]) == len(source):
        return Lengths(z["frames"], z["phonemes"], z["speakers"])
  frames, phonemes, speakers = [], [], []
  for i in tqdm(range(len(source)), desc="scanning lengths", disable=not progress,
                unit="rec", mininterval=2.0):
    record = source[i]
    frames.append(len(record["codes"]))
    phonemes.append(len(record["phonemes"]))
    speakers.append(_text(record["speaker"]))
  lengths = Lengths(np.asarray(frames, np.int64), np.asarray(phonemes, np.int64),
                    np.asarray(speakers, dtype=str))
  if cache_path:
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    # Every process of a multi-process run may write the cache at once: each writes
    # its own temporary file and the atomic rename makes the last one win.
    tmp = f"{cache_path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz"
    np.savez(tmp, frames=lengths.frames, phonemes=lengths.phonemes, speakers=lengths.speakers)
    os.replace(tmp, cache_path)
  return lengths


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- batching


@dataclasses.dataclass(frozen=True)
class Bucket:
  frames: int
  phonemes: int
  batch_size: int            # global
  members: np.ndarray        # example indices


class BatchPlan:
  """The deterministic schedule of global batches (see the module docstring)."""

  def __init__(self, lengths: Lengths, data_cfg, *, seed: int, batch_multiple: int = 1):
    self.seed = seed
    self.lengths = lengths
    frame_buckets = sorted(int(b) for b in data_cfg.frame_buckets)
    phoneme_buckets = sorted(int(b) for b in data_cfg.phoneme_buckets)
    assignment: dict[tuple[int, int], list[int]] = {}
    self.dropped = 0
    for i, (nf, nph) in enumerate(zip(lengths.frames, lengths.phonemes)):
      fi = bisect.bisect_left(frame_buckets, nf)
      pi = bisect.bisect_left(phoneme_buckets, nph)
      if fi == len(frame_buckets) or pi == len(phoneme_buckets):
        self.dropped += 1
        continue
      assignment.setdefault((frame_buckets[fi], phoneme_buckets[pi]), []).append(i)
    if not assignment:
      raise UserError(f"no example fits the length buckets (frames <= {frame_buckets[-1]}, "
                      f"phonemes <= {phoneme_buckets[-1]}); raise config.data.frame_buckets / "
                      "phoneme_buckets.")
    self.buckets = []
    for (nf, nph), members in sorted(assignment.items()):
      size = min(data_cfg.max_tokens // nf, data_cfg.max_batch_size)
      size = max(batch_multiple, size // batch_multiple * batch_multiple)
      self.buckets.append(Bucket(nf, nph, size, np.asarray(members)))
    self.batches_per_epoch = sum(-(-len(b.members) // b.batch_size) for b in self.buckets)
    self._epoch_cache: dict[int, list[tuple[int, np.ndarray]]] = {}

  def epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """[(bucket index, global example indices [batch_size])] for one epoch."""
    if epoch not in self._epoch_cache:
      rng = np.random.default_rng([self.seed, epoch])
      batches = []
      for bi, bucket in enumerate(self.buckets):
        order = rng.permutation(bucket.members)
        n = -(-len(order) // bucket.batch_size)
        order = np.resize(order, n * bucket.batch_size)       # wrap to fill the last batch
        batches += [(bi, chunk) for chunk in order.reshape(n, bucket.batch_size)]
      self._epoch_cache = {epoch: [batches[j] for j in rng.permutation(len(batches))]}
    return self._epoch_cache[epoch]

  def batch(self, index: int) -> tuple[Bucket, np.ndarray]:
    bucket_index, members = self.epoch(index // self.batches_per_epoch)[
        index % self.batches_per_epoch]
    return self.buckets[bucket_index], members

  def describe(self) -> str:
    parts = [f"{b.frames}f/{b.phonemes}p x{b.batch_size} ({len(b.members)} ex)"
             for b in self.buckets]
    return (f"{len(self.lengths.frames) - self.dropped} examples in {len(self.buckets)} "
            f"buckets [{', '.join(parts)}], {self.batches_per_epoch} batches/epoch"
            + (f", {self.dropped} longer than the largest bucket left out" if self.dropped else ""))


class BatchLoader:
  """Global batch index -> this process's rows of that batch, padded (numpy)."""

  def __init__(self, source, plan: BatchPlan, data_cfg, *, kind: str, num_codebooks: int,
               frame_rate: float, process_index: int = 0, process_count: int = 1):
    if kind not in ("ar", "nar", "both"):
      raise UserError(f"train.model must be 'ar', 'nar' or 'both', got {kind!r}.")
    self.source, self.plan, self.kind = source, plan, kind
    self.num_codebooks = num_codebooks
    self.prompt_frames = max(1, int(round(data_cfg.prompt_seconds * frame_rate)))
    self.prompt_from_other = bool(data_cfg.prompt_from_other_utterance)
    self.process_index, self.process_count = process_index, process_count
    if self.prompt_from_other:
      self._by_speaker: dict[str, list[int]] = {}
      for i, s in enumerate(plan.lengths.speakers):
        self._by_speaker.setdefault(str(s), []).append(i)

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    bucket, members = self.plan.batch(index)
    rows = len(members) // self.process_count
    mine = members[self.process_index * rows:(self.process_index + 1) * rows]
    records = [self.source[int(i)] for i in mine]
    batch: dict[str, Any] = {"index": np.asarray(mine, np.int64)}
    if self.kind in ("ar", "both"):
      batch["ar"] = self._ar(records, bucket)
    if self.kind in ("nar", "both"):
      rng = np.random.default_rng([self.plan.seed, index, 1])
      batch["nar"] = self._nar(records, mine, bucket, rng)
    return batch

  def _ar(self, records, bucket: Bucket) -> dict[str, np.ndarray]:
    codes = [np.asarray(r["codes"])[:, :1] for r in records]   # AR reads codebook 1 only
    return {**_pad_phonemes(records, bucket.phonemes), **_pad_codes(codes, bucket.frames, 1,
                                                                    "codes", "code_lens")}

  def _nar(self, records, members, bucket: Bucket, rng) -> dict[str, np.ndarray]:
    prompts, targets = [], []
    for record, index in zip(records, members):
      codes = np.asarray(record["codes"])
      other = self._other_utterance(int(index), rng) if self.prompt_from_other else None
      if other is not None:
        other_codes = np.asarray(self.source[other]["codes"])
        length = min(self.prompt_frames, len(other_codes))
        start = int(rng.integers(0, len(other_codes) - length + 1))
        prompts.append(other_codes[start:start + length])
        targets.append(codes)
      else:  # a prefix of about prompt_seconds (at most half) is the prompt, the rest target
        longest = max(1, min(self.prompt_frames, len(codes) // 2))
        length = int(rng.integers(max(1, longest // 2), longest + 1))
        prompts.append(codes[:length])
        targets.append(codes[length:])
    q = self.num_codebooks
    return {**_pad_phonemes(records, bucket.phonemes),
            **_pad_codes(prompts, self.prompt_frames, q, "prompt_codes", "prompt_lens"),
            **_pad_codes(targets, bucket.frames, q, "codes", "code_lens"),
            "stage": rng.integers(1, q, size=len(records)).astype(np.int32)}

  def _other_utterance(self, index: int, rng) -> int | None:
    same = self._by_speaker[str(self.plan.lengths.speakers[index])]
    if len(same) < 2:
      return None
    choice = same[int(rng.integers(0, len(same) - 1))]
    return choice if choice != index else same[-1]


def _pad_phonemes(records, width: int) -> dict[str, np.ndarray]:
  out = np.zeros((len(records), width), np.int32)
  lens = np.zeros((len(records),), np.int32)
  for row, r in enumerate(records):
    ph = np.asarray(r["phonemes"], np.int32)
    out[row, :len(ph)] = ph
    lens[row] = len(ph)
  return {"phonemes": out, "phoneme_lens": lens}


def _pad_codes(codes: Sequence[np.ndarray], width: int, q: int, name: str, lens_name: str):
  out = np.zeros((len(codes), width, q), np.int32)
  lens = np.zeros((len(codes),), np.int32)
  for row, c in enumerate(codes):
    out[row, :len(c)] = c[:width, :q]
    lens[row] = min(len(c), width)
  return {name: out, lens_name: lens}


def batch_iterator(loader: BatchLoader, num_batches: int, *, num_threads: int = 2,
                   prefetch: int = 4) -> Iterator[dict[str, Any]]:
  """A Grain iterator over global batches [0, num_batches); checkpoint it with
  `get_state()` / `set_state()`."""
  dataset = grain.MapDataset.range(num_batches).map(loader)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                        prefetch_buffer_size=prefetch)))
