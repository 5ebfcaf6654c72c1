"""Input pipeline: ArrayRecord datasets (written by `data_prep`) -> padded training batches.

    dataset = open_dataset("/data/valle_folder/1.0.0")          # splits, symbols, codec
    plan = BatchPlan(scan_lengths(dataset.split("train")), config.data, seed=0,
                     batch_multiple=mesh data-parallel size)
    it = batch_iterator(dataset.split("train"), plan, config.data, kind="ar")
    batch = next(it)             # this process's rows of global batch 0
    state = it.get_state()       # checkpointable; it.set_state(state) resumes exactly

Lengths and speakers come from the index `prepare` writes beside each split's shards
(`read_index`), so start-up reads no record; a dataset prepared without one is scanned
(`valle-jax index` writes it).

Batching (deterministic from the seed):
- Each example goes to the smallest (frames, phonemes) length bucket that holds it. An
  example longer than the largest bucket (frames or phonemes) is cropped at load time to a
  random window that fits it (the paper crops to 10-20 s), drawn anew each epoch: at most
  the largest frame bucket, fewer frames when the window's share of the phonemes would not
  fit the largest phoneme bucket, and that share of the phonemes, at the same relative
  position (`crop_lengths`: no alignment is needed, the text is assumed spoken at an even
  rate, so a window's text is right up to the edge words; the aligned variant's alignments,
  which a crop would not follow, leave such examples out: `crop_long=False`). How many are
  cropped or left out, and their share of the audio, is printed at train start (`describe`)
  and logged (`stats`).
- Token budget (the paper: 6k real acoustic tokens per GPU): each bucket's examples, in
  shuffled order, fill batches until their real frames would pass `max_tokens`, or the
  batch has `max_examples` of them: the budget over the mean length of the bucket's
  examples (in epoch 0, pairs included), at most `max_batch_size`, rounded to the nearest multiple of the data-parallel
  size (rows for that many are the bucket's one shape; when rounding up, the batch still
  stops at the first count). Rows a batch does not fill are padding (utterance -1:
  no phonemes, no frames, not scored). Many examples a batch sum to near their mean times
  their count, so batches end close to the budget: with the paper's 96k budget, examples
  of 751-1200 frames (uniform) fill 94.7k real frames a batch of 98 rows, 80% of the padded
  slots (a padded-length budget gave 80 rows, 78.0k real frames; rows for the shortest
  example, 127, would hold 62% real). With a few examples a batch the row count binds
  first, as a padded-length budget did. Fixed shapes per bucket: `jax.jit` compiles once
  per bucket, however long the run.
- Epoch e shuffles each bucket with seed (seed, e), cuts it into batches (every example
  exactly once) and shuffles batch order.
  Global batch i is batch i - (first batch of e) of the epoch e it falls in: a pure function
  of i, so the iterator state is just the next i (Grain's `next_index`) and resuming is exact.
- Same-speaker pairs (`same_speaker_pairs = p`, default 0): in each epoch, each example is,
  with probability p, another utterance of its speaker (drawn with seed (seed, e)) followed by
  itself, when the pair fits the largest bucket: codes concatenated, phonemes joined as
  zero-shot synthesis joins a prompt's transcript and the text (`text.join_prompt_and_text`).
  Training sequences then look like zero-shot inference's (an utterance of the voice, then
  new text in it) even when a corpus's utterances are short: trained on single 4 s
  utterances, the AR learns to stop where they stop and ends zero-shot speech early. Pairs are bucketed by
  their own lengths, so an epoch's batch count depends on e.
- Multi-host: every process computes the same plan and loads only its own rows of each
  global batch (rows [p * B / P, (p + 1) * B / P)).
- Feeding the devices: `batch_iterator` loads batches with Grain reader threads, or in
  worker processes (`data.workers`); training wraps it in a `Prefetcher`, which puts the
  next `data.device_prefetch` batches on the devices on a background thread while a step
  runs, and checkpoints the state of the batches taken. `python -m valle_jax.bench input`
  measures how fast a dataset loads.

NAR batches add an acoustic prompt per example, chosen by `nar_prompt`:
- "prefix": a random prefix of about `prompt_seconds` (at most half the utterance) is the
  prompt and the rest of the utterance the target: zero-shot inference's layout (prompt
  audio, then new audio, on one position axis); lifeiteng/vall-e's prefix_mode 1.
- "segment" (the paper, §5.1): a random window of `prompt_seconds` (at most a quarter of the
  utterance) is the prompt and the whole utterance the target; the target frames under the
  window are not scored (`loss_mask`), else the NAR learns to copy them from the prompt, as
  in lifeiteng/vall-e's prefix_mode 2.
- "other_utterance": a random window of `prompt_seconds` of another utterance of the same
  speaker is the prompt and the whole utterance the target (a prefix for a speaker with one
  utterance).
The stage (codebook to predict, 0-based in [1, Q)) is drawn per example, uniformly
or with the probabilities `nar_stage_weights` (one weight per codebook 2..Q) give.

A variant's loader (valle_jax/variants) subclasses `BatchLoader`: `first_stage`, and the
`_record`, `_ar` and `_nar_target_inputs` methods, are where it adds its own inputs.
"""
from __future__ import annotations

import bisect
import dataclasses
import io
import json
import os
import queue
import threading
import uuid
import zipfile
from typing import Any, Iterator, Sequence

from etils import epath
import grain
import numpy as np
from tqdm import tqdm

from valle_jax import paths
from valle_jax import text as text_lib
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
  path = paths.absolute(path)
  if not paths.path(os.path.join(path, "dataset_info.json")).is_file():
    raise UserError(f"{path} is not a prepared dataset (no dataset_info.json); point "
                    "--config.data.dataset at the <builder>/<version> directory that "
                    "`valle-jax prepare` printed.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(path)
  check_shards(builder.info.splits, path)
  splits = {name: builder.as_data_source(split=name) for name in builder.info.splits}
  with paths.path(os.path.join(path, "codec.json")).open(encoding="utf-8") as f:
    codec_description = json.load(f)
  return Dataset(path=path, splits=splits, codec_description=codec_description)


def check_shards(splits, path: str) -> None:
  """Every ArrayRecord shard of every split is there, readable and holds the records
  dataset_info.json lists; else a `UserError` naming the first bad shard (nothing is
  changed: rebuilding is the user's call)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for name, split in splits.items():
    for shard, expected in zip(split.filepaths, split.shard_lengths):
      shard = str(shard)
      try:
        reader = array_record_module.ArrayRecordReader(shard)
        found = reader.num_records()
        reader.close()
        problem = None if found == expected else f"holds {found} records, not {expected}"
      except (RuntimeError, OSError, ValueError) as e:
        problem = ("is missing" if not paths.path(shard).exists() else
                   f"cannot be read ({str(e).strip().splitlines()[0]}; truncated?)")
      if problem:
        raise UserError(f"the {name!r} shard {shard} of the dataset {path} {problem}; "
                        "restore it, or rebuild the dataset with `valle-jax prepare` "
                        "(--config.overwrite=True).")


@dataclasses.dataclass(frozen=True)
class Lengths:
  """What batching needs to know of each example, without its codes."""
  frames: np.ndarray      # int [N]
  phonemes: np.ndarray    # int [N]
  speakers: np.ndarray    # str [N]


def scan_lengths(source, cache_path: str | None = None, progress: bool = True) -> Lengths:
  """Each example's lengths and speaker: from the split's index when `prepare` wrote one
  (`read_index`), else by reading every record once (cached at `cache_path`)."""
  lengths = read_index(source)
  if lengths is not None:
    return lengths
  if cache_path and paths.path(cache_path).is_file():
    with paths.path(cache_path).open("rb") as f, np.load(f, allow_pickle=False) as z:
      if len(z["frames"]) == len(source):
        return Lengths(z["frames"], z["phonemes"], z["speakers"])
  if progress and hasattr(source, "dataset_info"):
    print(f"[data] {source.dataset_info.data_dir} has no index of its {source.split!r} "
          "split (prepared by an older valle-jax): reading every record for its lengths; "
          "write the index once with `valle-jax index "
          f"{source.dataset_info.data_dir}`, or re-run `valle-jax prepare`.", flush=True)
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
    paths.path(os.path.dirname(cache_path)).mkdir(parents=True, exist_ok=True)
    # Every process of a multi-process run may write the cache at once: each writes
    # its own temporary file and the atomic rename makes the last one win.
    tmp = f"{cache_path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz"
    with paths.path(tmp).open("wb") as f:
      np.savez(f, frames=lengths.frames, phonemes=lengths.phonemes, speakers=lengths.speakers)
    paths.replace(tmp, cache_path)
  return lengths


# The index `prepare` writes beside a split's shards (`index-<split>.npz`), so that training
# learns lengths and speakers without reading the records: per record, in the split's
# order, int32 columns `frames`, `phonemes`, `speaker` (into `speaker_names`, the split's
# speakers sorted), `shard` (into the split's shard files) and `offset` (the record's
# position in its shard), about 20 bytes a record; `shard_lengths` (records per shard) ties
# it to the split's shards, `version` says the layout. Every process of a run reads
# `frames`, `phonemes` and `speaker` (12 bytes a record): they all compute the same global
# batch plan, whose batches have one shape on every process at each step, and then read
# only their own rows' records (`BatchLoader`).
INDEX_VERSION = 1
INDEX_FIELDS = ("version", "frames", "phonemes", "speaker", "speaker_names", "shard", "offset",
                "shard_lengths")


def index_path(dataset_dir, split: str) -> epath.Path:
  return epath.Path(dataset_dir) / f"index-{split}.npz"


def make_index(source, progress: bool = True) -> dict[str, np.ndarray]:
  """The index of a prepared split (a `Dataset.split`) by reading its shards back in order
  (`index_row` of each record): for a dataset prepared without one (`valle-jax index`);
  `prepare` has the writer of each shard make its rows (data_prep/pipeline.py)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  split = source.dataset_info.splits[source.split]
  num_codebooks = source.dataset_info.features["codes"].shape[-1]
  rows = []
  with tqdm(total=len(source), desc=f"indexing {source.split}", disable=not progress,
            unit="rec", mininterval=2.0) as bar:
    for path, count in zip(split.filepaths, split.shard_lengths):
      reader = array_record_module.ArrayRecordReader(os.fspath(path))
      for start in range(0, count, 1024):
        chunk = reader.read(start, min(start + 1024, count))
        rows.extend(index_row(serialized, num_codebooks) for serialized in chunk)
        bar.update(len(chunk))
      reader.close()
  frames, phonemes, speakers = zip(*rows) if rows else ((), (), ())
  return index_of(frames, phonemes, speakers, split.shard_lengths)


def index_row(serialized: bytes, num_codebooks: int) -> tuple[int, int, str]:
  """(frames, phonemes, speaker) of a serialized record: only these parsed out of its
  tf.train.Example (a tenth of the time of decoding the record as training does)."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  feature = tf_example_pb2.Example.FromString(serialized).features.feature
  return (len(feature["codes"].int64_list.value) // num_codebooks,
          len(feature["phonemes"].int64_list.value),
          feature["speaker"].bytes_list.value[0].decode("utf-8"))


def index_of(frames, phonemes, speakers, shard_lengths: Sequence[int]
             ) -> dict[str, np.ndarray]:
  """The index of records with these lengths and speakers ([N] each, in the split's order),
  laid out in shards of `shard_lengths` records."""
  names, speaker = np.unique(np.asarray(speakers, dtype=str), return_inverse=True)
  shard_lengths = np.asarray(shard_lengths, np.int64)
  starts = np.cumsum(shard_lengths) - shard_lengths
  shard = np.repeat(np.arange(len(shard_lengths)), shard_lengths)
  return {"version": np.int32(INDEX_VERSION), "frames": np.asarray(frames, np.int32),
          "phonemes": np.asarray(phonemes, np.int32), "speaker": speaker.astype(np.int32),
          "speaker_names": names, "shard": shard.astype(np.int32),
          "offset": (np.arange(len(shard)) - starts[shard]).astype(np.int32),
          "shard_lengths": shard_lengths}


def write_index(path, index: dict[str, np.ndarray]) -> None:
  """Writes an index (`make_index`) to `path` whole or not at all (a temporary file beside
  it, renamed)."""
  path = epath.Path(path)
  buffer = io.BytesIO()
  np.savez(buffer, **index)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)


def read_index(source) -> Lengths | None:
  """The lengths and speakers of a prepared split (a `Dataset.split`) from its index; None
  when it has none (a dataset prepared before indexes, or records that are not a dataset's
  split)."""
  if not hasattr(source, "dataset_info"):
    return None
  path = index_path(source.dataset_info.data_dir, source.split)
  if not path.exists():
    return None
  return load_index(path, source.dataset_info.splits[source.split].shard_lengths)


def load_index(path, shard_lengths: Sequence[int]) -> Lengths:
  """The index at `path` as `Lengths` (speakers as names), checked against the split's
  records per shard; a `UserError` when it is damaged or is another dataset's. Reads only
  the fields batching needs."""
  path = epath.Path(path)
  redo = (f"write it again with `valle-jax index {path.parent}` (or delete it: "
          "training then reads every record for the lengths).")
  try:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
      missing = [k for k in INDEX_FIELDS if k not in z.files]
      if missing:
        raise UserError(f"the index {path} has no {', '.join(missing)} (damaged, or written "
                        f"by another program); {redo}")
      if int(z["version"]) != INDEX_VERSION:
        raise UserError(f"the index {path} has layout version {int(z['version'])}, this "
                        f"valle-jax reads {INDEX_VERSION}; {redo}")
      index = {k: z[k] for k in ("frames", "phonemes", "speaker", "speaker_names",
                                 "shard_lengths")}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"the index {path} cannot be read ({str(e).strip().splitlines()[0]}); "
                    f"{redo}") from None
  n = len(index["frames"])
  if any(np.shape(index[k]) != (n,) for k in ("frames", "phonemes", "speaker")):
    raise UserError(f"the index {path} has columns of different lengths; {redo}")
  if (n != int(np.sum(shard_lengths)) or len(index["shard_lengths"]) != len(shard_lengths)
      or np.any(index["shard_lengths"] != np.asarray(shard_lengths))):
    raise UserError(f"the index {path} lists {n} records, the split's shards hold "
                    f"{int(np.sum(shard_lengths))} (in {len(shard_lengths)} shards): it is "
                    f"another build's; {redo}")
  speaker = index["speaker"]
  if n and (speaker.min() < 0 or speaker.max() >= len(index["speaker_names"])):
    raise UserError(f"the index {path} names speakers it does not list; {redo}")
  return Lengths(index["frames"].astype(np.int64), index["phonemes"].astype(np.int64),
                 index["speaker_names"][speaker])


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- batching


@dataclasses.dataclass(frozen=True)
class Bucket:
  frames: int
  phonemes: int
  batch_size: int            # global rows (real examples and padding)


def crop_lengths(frames: np.ndarray, phonemes: np.ndarray, max_frames: int,
                 max_phonemes: int) -> tuple[np.ndarray, np.ndarray]:
  """Per example, its (frames, phonemes) in batching: its own when it fits the largest
  bucket, else those of the window it is cropped to: at most `max_frames` frames, fewer when
  the window's share of the phonemes (at the example's own rate) would pass `max_phonemes`,
  and that share of the phonemes; (0, 0) when no window of a frame and a phoneme fits."""
  frames, phonemes = np.asarray(frames, np.int64), np.asarray(phonemes, np.int64)
  fits = (frames <= max_frames) & (phonemes <= max_phonemes)
  window = np.minimum(np.minimum(frames, max_frames),
                      frames * max_phonemes // np.maximum(phonemes, 1))
  share = np.round(window * phonemes / np.maximum(frames, 1)).astype(np.int64)
  share = np.minimum(np.minimum(share, phonemes), max_phonemes)
  croppable = (window >= 1) & (share >= 1)
  return (np.where(fits, frames, np.where(croppable, window, 0)),
          np.where(fits, phonemes, np.where(croppable, share, 0)))


def fill_batches(frames: np.ndarray, max_tokens: int, max_examples: int) -> list[slice]:
  """Cuts examples (in order, real frames int [N]) into consecutive batches, each filled
  until the next example would pass `max_tokens` frames or `max_examples` examples (an
  example longer than the budget alone in its batch)."""
  total = np.concatenate([[0], np.cumsum(frames)])
  batches, start = [], 0
  while start < len(frames):
    end = int(np.searchsorted(total, total[start] + max_tokens, side="right")) - 1
    end = min(max(end, start + 1), start + max_examples, len(frames))
    batches.append(slice(start, end))
    start = end
  return batches


class BatchPlan:
  """The deterministic schedule of global batches (see the module docstring).

  An example is a pair of rows (partner, utterance): `partner` is -1 for a single utterance,
  else another utterance of the same speaker that comes first (`same_speaker_pairs`); a
  padding row is (-1, -1).
  """

  def __init__(self, lengths: Lengths, data_cfg, *, seed: int, batch_multiple: int = 1,
               crop_long: bool = True):
    """`crop_long=False` (for alignments, which a crop would not follow): examples longer
    than the largest bucket are left out, counted, instead of cropped."""
    self.seed = seed
    self.lengths = lengths
    self.frame_buckets = np.asarray(sorted(int(b) for b in data_cfg.frame_buckets))
    self.phoneme_buckets = np.asarray(sorted(int(b) for b in data_cfg.phoneme_buckets))
    self.max_tokens = int(data_cfg.max_tokens)
    self.pair_probability = float(data_cfg.get("same_speaker_pairs", 0.0))
    if not 0.0 <= self.pair_probability <= 1.0:
      raise UserError("config.data.same_speaker_pairs is a probability in [0, 1], got "
                      f"{self.pair_probability}.")
    # Each single example's lengths in batching: its own, or its crop window's (0: left out).
    self.frames, self.phonemes = crop_lengths(lengths.frames, lengths.phonemes,
                                              self.frame_buckets[-1], self.phoneme_buckets[-1])
    if not crop_long:
      fits = (self.frames == lengths.frames) & (self.phonemes == lengths.phonemes)
      self.frames, self.phonemes = self.frames * fits, self.phonemes * fits
    self.cropped = (self.frames > 0) & ((self.frames < lengths.frames)
                                        | (self.phonemes < lengths.phonemes))   # bool [N]
    self.dropped = int(np.sum(self.frames == 0))
    if self.dropped == len(self.frames):
      raise UserError(f"no example fits the length buckets (frames <= {self.frame_buckets[-1]}, "
                      f"phonemes <= {self.phoneme_buckets[-1]}) or can be cropped to them; "
                      "raise config.data.frame_buckets / phoneme_buckets.")
    # Same-speaker groups: example i is order[group_start[i] + position_in_group[i]].
    speakers = np.asarray(lengths.speakers)
    self._order = np.argsort(speakers, kind="stable")
    _, first, counts = np.unique(speakers[self._order], return_index=True, return_counts=True)
    self._group_size = np.empty(len(speakers), np.int64)
    self._group_start = np.empty(len(speakers), np.int64)
    self._position_in_group = np.empty(len(speakers), np.int64)
    for start, count in zip(first, counts):
      members = self._order[start:start + count]
      self._group_size[members], self._group_start[members] = count, start
      self._position_in_group[members] = np.arange(count)
    # Per frame bucket: the most examples a batch takes, the budget over the mean length of
    # the bucket's examples in epoch 0 (pairs included; the middle of its range when it has
    # none), at most max_batch_size; and its rows, that rounded to the nearest multiple of
    # batch_multiple (at least one, at most max_batch_size); fewer rows lower the most
    # examples. Fixed from epoch 0, so shapes never change.
    _, frames, flat = self._assignment(0)
    bucket = flat[flat >= 0] // len(self.phoneme_buckets)
    mean = (np.concatenate([[0], self.frame_buckets[:-1]]) + self.frame_buckets + 1) / 2
    for b in np.unique(bucket):
      mean[b] = frames[flat >= 0][bucket == b].mean()
    self.max_examples = np.clip((self.max_tokens // mean).astype(np.int64), 1,
                                int(data_cfg.max_batch_size))
    rows = np.maximum(1, np.round(self.max_examples / batch_multiple)).astype(np.int64)
    rows *= batch_multiple
    capped = max(batch_multiple, int(data_cfg.max_batch_size) // batch_multiple * batch_multiple)
    self.batch_sizes = np.where(rows > data_cfg.max_batch_size, capped, rows)
    self.max_examples = np.minimum(self.max_examples, self.batch_sizes)
    self._lock = threading.RLock()
    self._epoch_starts = [0]            # global index of each epoch's first batch, computed lazily
    self._epoch_cache: dict[int, list[tuple[Bucket, np.ndarray]]] = {}

  def __getstate__(self):   # Grain's worker processes get the plan pickled, less its lock
    return {**self.__dict__, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.RLock())

  def _bucket_of(self, frames: np.ndarray, phonemes: np.ndarray) -> np.ndarray:
    """Flat index (frame bucket * #phoneme buckets + phoneme bucket) per example; -1: too
    long, or 0 frames (an example that cannot be cropped)."""
    fi = np.searchsorted(self.frame_buckets, frames, side="left")
    pi = np.searchsorted(self.phoneme_buckets, phonemes, side="left")
    fits = (fi < len(self.frame_buckets)) & (pi < len(self.phoneme_buckets)) & (frames > 0)
    return np.where(fits, fi * len(self.phoneme_buckets) + pi, -1)

  def partners(self, epoch: int) -> np.ndarray:
    """int [N]: the utterance each example is paired with in `epoch` (-1: none)."""
    n = len(self.lengths.frames)
    if self.pair_probability == 0.0:
      return np.full((n,), -1, np.int64)
    rng = np.random.default_rng([self.seed, epoch, 2])
    paired = (rng.random(n) < self.pair_probability) & (self._group_size > 1)
    offset = (rng.random(n) * (self._group_size - 1)).astype(np.int64)   # among the others
    offset += offset >= self._position_in_group
    partner = self._order[self._group_start + np.minimum(offset, self._group_size - 1)]
    frames = self.lengths.frames + self.lengths.frames[partner]
    phonemes = self.lengths.phonemes + self.lengths.phonemes[partner] + 1   # + word boundary
    paired &= self._bucket_of(frames, phonemes) >= 0        # a pair too long stays single
    return np.where(paired, partner, -1)

  def _assignment(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(partner [N], real frames [N], flat bucket index [N], -1 = left out) of each example
    in `epoch`."""
    partner = self.partners(epoch)
    pair = partner >= 0
    frames = np.where(pair, self.lengths.frames + self.lengths.frames[partner], self.frames)
    phonemes = np.where(pair, self.lengths.phonemes + self.lengths.phonemes[partner] + 1,
                        self.phonemes)
    return partner, frames, self._bucket_of(frames, phonemes)

  def epoch(self, epoch: int) -> list[tuple[Bucket, np.ndarray]]:
    """[(bucket, examples int [batch_size, 2] of (partner, utterance))] for one epoch."""
    with self._lock:          # Grain's reader threads share the plan
      if epoch not in self._epoch_cache:
        self._epoch_cache[epoch] = self._make_epoch(epoch)
        while len(self._epoch_cache) > 2:     # readers near an epoch boundary need two
          del self._epoch_cache[next(iter(self._epoch_cache))]
      return self._epoch_cache[epoch]

  def _make_epoch(self, epoch: int) -> list[tuple[Bucket, np.ndarray]]:
    partner, frames, bucket_of = self._assignment(epoch)
    examples = np.stack([partner, np.arange(len(partner))], axis=1)     # [N, 2]
    rng = np.random.default_rng([self.seed, epoch])
    batches = []
    for flat in np.unique(bucket_of[bucket_of >= 0]):
      fi, pi = divmod(int(flat), len(self.phoneme_buckets))
      bucket = Bucket(int(self.frame_buckets[fi]), int(self.phoneme_buckets[pi]),
                      int(self.batch_sizes[fi]))
      order = rng.permutation(np.flatnonzero(bucket_of == flat))
      for cut in fill_batches(frames[order], self.max_tokens, int(self.max_examples[fi])):
        rows = np.full((bucket.batch_size, 2), -1, np.int64)        # padding: (-1, -1)
        rows[:cut.stop - cut.start] = examples[order[cut]]
        batches.append((bucket, rows))
    return [batches[j] for j in rng.permutation(len(batches))]

  @property
  def batches_per_epoch(self) -> int:
    """Batches in epoch 0 (every epoch has about this many)."""
    return self.batch_offset(1)

  def _extend_starts(self, until) -> None:
    with self._lock:
      while not until():
        self._epoch_starts.append(
            self._epoch_starts[-1] + len(self.epoch(len(self._epoch_starts) - 1)))

  def batch_offset(self, epoch: int) -> int:
    """Global index of the first batch of `epoch`."""
    self._extend_starts(lambda: len(self._epoch_starts) > epoch)
    return self._epoch_starts[epoch]

  def batch(self, index: int) -> tuple[Bucket, np.ndarray]:
    """Global batch `index` -> (its bucket, examples int [batch_size, 2] (partner, utterance))."""
    self._extend_starts(lambda: self._epoch_starts[-1] > index)
    epoch = bisect.bisect_right(self._epoch_starts, index) - 1
    return self.epoch(epoch)[index - self._epoch_starts[epoch]]

  def stats(self) -> dict[str, float]:
    """Long material and the token budget, for the metrics log: examples cropped to a
    window (and their share of the audio), left out, and epoch 0's mean real frames per
    batch."""
    frames = self.lengths.frames.astype(np.float64)
    _, real, _ = self._assignment(0)
    batches = self.epoch(0)
    return {"examples": len(frames),
            "cropped_examples": int(np.sum(self.cropped)),
            "cropped_audio_share": float(frames[self.cropped].sum() / frames.sum()),
            "left_out_examples": self.dropped,
            "left_out_audio_share": float(frames[self.frames == 0].sum() / frames.sum()),
            "batches_per_epoch": len(batches),
            "real_frames_per_batch": float(np.mean(
                [real[e[e[:, 1] >= 0, 1]].sum() for _, e in batches]))}

  def describe(self) -> str:
    members: dict[tuple[int, int, int], set[int]] = {}
    for bucket, examples in self.epoch(0):
      key = (bucket.frames, bucket.phonemes, bucket.batch_size)
      members.setdefault(key, set()).update(examples[examples[:, 1] >= 0, 1].tolist())
    counts = {key: len(m) for key, m in members.items()}
    parts = [f"{f}f/{p}p x{b} ({n} ex)" for (f, p, b), n in sorted(counts.items())]
    placed = len(self.lengths.frames) - self.dropped
    stats = self.stats()
    pairs = ""
    if self.pair_probability:
      paired = int(np.sum(self.partners(0) >= 0))
      pairs = f" ({paired} of the {placed} examples follow a same-speaker partner)"
    long = ""
    if stats["cropped_examples"] or self.dropped:
      long = (f"; longer than the largest bucket ({self.frame_buckets[-1]} frames, "
              f"{self.phoneme_buckets[-1]} phonemes): {stats['cropped_examples']} examples "
              f"({stats['cropped_audio_share']:.1%} of the audio) cropped at load to a random "
              f"window that fits")
      if self.dropped:
        long += (f", {self.dropped} ({stats['left_out_audio_share']:.1%} of the audio) "
                 "left out")
    return (f"{placed} examples in {len(counts)} buckets [{', '.join(parts)}], "
            f"{stats['batches_per_epoch']} batches in epoch 0 of "
            f"{stats['real_frames_per_batch']:.0f} real frames on average (budget "
            f"{self.max_tokens}){pairs}{long}")


class BatchLoader:
  """Global batch index -> this process's rows of that batch, padded (numpy)."""
  first_stage = 1            # the first codebook (0-based) the NAR's stages are drawn from

  def __init__(self, source, plan: BatchPlan, data_cfg, *, kind: str, num_codebooks: int,
               frame_rate: float, process_index: int = 0, process_count: int = 1,
               symbols: text_lib.SymbolTable | None = None):
    if kind not in ("ar", "nar", "both"):
      raise UserError(f"train.model must be 'ar', 'nar' or 'both', got {kind!r}.")
    self.source, self.plan, self.kind, self.symbols = source, plan, kind, symbols
    self.num_codebooks = num_codebooks
    self.prompt_frames = max(1, int(round(data_cfg.prompt_seconds * frame_rate)))
    self.nar_prompt = data_cfg.nar_prompt
    if self.nar_prompt not in NAR_PROMPTS:
      raise UserError(f"config.data.nar_prompt must be one of {list(NAR_PROMPTS)}, got "
                      f"{self.nar_prompt!r}.")
    self.stage_probabilities = _stage_probabilities(
        tuple(data_cfg.get("nar_stage_weights", ())), num_codebooks, self.first_stage)
    self.process_index, self.process_count = process_index, process_count
    if plan.pair_probability and symbols is None:
      raise ValueError("same_speaker_pairs joins phonemes with text.join_prompt_and_text, "
                       "which needs the dataset's symbol table (symbols=).")
    if self.nar_prompt == "other_utterance":
      self._by_speaker: dict[str, list[int]] = {}
      for i, s in enumerate(plan.lengths.speakers):
        self._by_speaker.setdefault(str(s), []).append(i)

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    bucket, examples = self.plan.batch(index)
    rows = len(examples) // self.process_count
    mine = examples[self.process_index * rows:(self.process_index + 1) * rows]
    records = [self._record(int(partner), int(i), index) for partner, i in mine]
    batch: dict[str, Any] = {"index": np.asarray(mine[:, 1], np.int64)}
    if self.kind in ("ar", "both"):
      batch["ar"] = self._ar(records, bucket)
    if self.kind in ("nar", "both"):
      rng = np.random.default_rng([self.plan.seed, index, 1])
      batch["nar"] = self._nar(records, mine[:, 1], bucket, rng)
    return batch

  def _record(self, partner: int, index: int, batch_index: int) -> dict[str, Any]:
    """The example's phonemes and codes: the utterance's, after its partner's if paired
    (phonemes joined by `text.join_prompt_and_text`, zero-shot synthesis's layout, with
    `prompt_phonemes`, how many of them come before the utterance's), or a window of it when
    it is longer than the largest bucket (`_crop`); none for a padding row (index -1)."""
    if index < 0:     # a padding row: no phonemes, no frames, nothing scored
      return {"phonemes": np.zeros((0,), np.int32),
              "codes": np.zeros((0, self.num_codebooks), np.int32)}
    record = self.source[index]
    if self.plan.cropped[index]:     # never paired (a pair fits the largest bucket)
      return self._crop(record, index, batch_index)
    if partner < 0:
      return record
    first = self.source[partner]
    phonemes, heard = text_lib.join_prompt_and_text(first["phonemes"], record["phonemes"],
                                                    self.symbols)
    return {"phonemes": phonemes, "prompt_phonemes": heard,
            "codes": np.concatenate([np.asarray(first["codes"]),
                                     np.asarray(record["codes"])])}

  def _crop(self, record, index: int, batch_index: int) -> dict[str, Any]:
    """A random window of `plan.frames[index]` frames of a long example, with the
    `plan.phonemes[index]` phonemes at the same relative position (an even speaking rate);
    drawn per batch, so each epoch sees another window. `ends_utterance` says whether the
    window ends where the utterance does (else the AR's EOS there is not scored)."""
    codes, phonemes = np.asarray(record["codes"]), np.asarray(record["phonemes"])
    frames, count = int(self.plan.frames[index]), int(self.plan.phonemes[index])
    rng = np.random.default_rng([self.plan.seed, batch_index, 3, index])
    start = int(rng.integers(0, len(codes) - frames + 1))
    first = min(int(round(start * len(phonemes) / len(codes))), len(phonemes) - count)
    return {**record, "codes": codes[start:start + frames],
            "phonemes": phonemes[first:first + count],
            "ends_utterance": start + frames == len(codes)}

  def _ar(self, records, bucket: Bucket) -> dict[str, np.ndarray]:
    codes = [np.asarray(r["codes"])[:, :1] for r in records]   # AR reads codebook 1 only
    return {**_pad_phonemes(records, bucket.phonemes),
            **_pad_codes(codes, bucket.frames, 1, "codes", "code_lens"),
            "ends_utterance": np.array([bool(r.get("ends_utterance", True)) for r in records])}

  def _nar(self, records, members, bucket: Bucket, rng) -> dict[str, np.ndarray]:
    prompts, targets, target_starts, unscored = [], [], [], []
    for record, index in zip(records, members):
      codes = np.asarray(record["codes"])
      if index < 0:                        # a padding row
        prompts.append(codes)
        targets.append(codes)
        target_starts.append(0)
        unscored.append((0, 0))
        continue
      other = (self._other_utterance(int(index), rng) if self.nar_prompt == "other_utterance"
               else None)
      if other is not None:
        other_codes = np.asarray(self.source[other]["codes"])
        length = min(self.prompt_frames, len(other_codes))
        start = int(rng.integers(0, len(other_codes) - length + 1))
        prompts.append(other_codes[start:start + length])
        targets.append(codes)
        target_starts.append(0)
      elif self.nar_prompt == "segment":   # a window is the prompt, the whole the target
        length = max(1, min(self.prompt_frames, len(codes) // 4))
        start = int(rng.integers(0, max(1, len(codes) - length + 1)))
        prompts.append(codes[start:start + length])
        targets.append(codes)
        target_starts.append(0)
        unscored.append((start, start + length))
      else:  # a prefix of about prompt_seconds (at most half) is the prompt, the rest target
        longest = max(1, min(self.prompt_frames, len(codes) // 2))
        length = int(rng.integers(max(1, longest // 2), longest + 1))
        prompts.append(codes[:length])
        targets.append(codes[length:])
        target_starts.append(length)
    q = self.num_codebooks
    stages = rng.choice(np.arange(self.first_stage, q), size=len(records),
                        p=self.stage_probabilities)
    batch = {**_pad_phonemes(records, bucket.phonemes),
             **_pad_codes(prompts, self.prompt_frames, q, "prompt_codes", "prompt_lens"),
             **_pad_codes(targets, bucket.frames, q, "codes", "code_lens"),
             "stage": stages.astype(np.int32),
             **self._nar_target_inputs(records, target_starts, bucket)}
    if self.nar_prompt == "segment":   # 1 where a target frame's loss counts
      batch["loss_mask"] = np.ones((len(records), bucket.frames), np.float32)
      for row, (start, end) in enumerate(unscored):
        batch["loss_mask"][row, start:end] = 0.0
    return batch

  def _nar_target_inputs(self, records, target_starts: list[int], bucket: Bucket
                         ) -> dict[str, np.ndarray]:
    """More NAR inputs, given where in each record its target starts (VALL-E: none)."""
    del records, target_starts, bucket
    return {}

  def _other_utterance(self, index: int, rng) -> int | None:
    same = self._by_speaker[str(self.plan.lengths.speakers[index])]
    if len(same) < 2:
      return None
    choice = same[int(rng.integers(0, len(same) - 1))]
    return choice if choice != index else same[-1]


NAR_PROMPTS = ("prefix", "segment", "other_utterance")


def _stage_probabilities(weights: tuple[float, ...], num_codebooks: int,
                         first_stage: int = 1) -> np.ndarray:
  """`data.nar_stage_weights` (one weight per codebook first_stage + 1..Q; empty: uniform)
  -> [Q - first_stage]."""
  n = num_codebooks - first_stage
  if not weights:
    return np.full((n,), 1.0 / n)
  w = np.asarray(weights, np.float64)
  if w.shape != (n,) or np.any(w < 0) or not np.any(w > 0):
    raise UserError(f"config.data.nar_stage_weights needs {n} non-negative weights (codebooks "
                    f"{first_stage + 1}..{num_codebooks}), not all 0; got {weights}.")
  return w / w.sum()


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
                   prefetch: int = 4, workers: int = 0) -> Iterator[dict[str, Any]]:
  """A Grain iterator over global batches [0, num_batches), in this order; checkpoint it
  with `get_state()` / `set_state()`. `workers` > 0 loads batches in that many worker
  processes (Grain's `mp_prefetch`: batch i in worker i % workers, each with `num_threads`
  reader threads), for when one process cannot load as fast as the devices train; their
  state is per worker, so a run resumes with the same `workers`. Workers are spawned: they
  import the main module again (its work belongs under `if __name__ == "__main__":`) and
  get the loader pickled."""
  dataset = grain.MapDataset.range(num_batches).map(loader).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if workers:
    _parse_absl_flags()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(dataset)


def _parse_absl_flags() -> None:
  """Grain's multiprocessing reads its absl flags (`--grain_*`), which raise until parsed:
  a program that parsed none (an argparse CLI, a notebook, a test) parses them with their
  defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class Prefetcher:
  """Wraps a checkpointable batch iterator (`batch_iterator`): a background thread takes
  its next batches and applies `transform` to each (training puts them on the devices,
  `sharding.shard_batch`) while the caller works on the current one, keeping up to `depth`
  ready in a bounded queue; `depth` 0 does both on the caller's thread when asked.

  `get_state()` is the state after the batches the caller has *taken*, not after those
  read ahead, so a checkpoint of it resumes exactly at the next batch the caller would have
  taken; `set_state` only before the first `next`. An exception the iterator or `transform`
  raises is raised again, itself, by the `next` that would have returned that batch.
  `close()` (or leaving a `with`) stops the thread."""

  _END = object()

  def __init__(self, iterator, transform=lambda batch: batch, depth: int = 2):
    self._iterator, self._transform, self.depth = iterator, transform, depth
    self._state = None         # after the batches taken; None: the iterator's own
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __iter__(self):
    return self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state() if self._state is None else self._state

  def set_state(self, state: dict[str, Any]) -> None:
    if self._thread is not None:
      raise RuntimeError("Prefetcher.set_state after reading ahead began")
    self._iterator.set_state(state)
    self._state = None

  def __next__(self):
    if self.depth == 0:
      batch = self._transform(next(self._iterator))
      self._state = self._iterator.get_state()
      return batch
    if self._thread is None:
      self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
      self._thread.start()
    item, state = self._queue.get()
    if item is self._END:
      self._queue.put((item, state))   # every later `next` ends too
      raise StopIteration
    if isinstance(item, BaseException):
      self._queue.put((item, state))
      raise item
    self._state = state
    return item

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._transform(next(self._iterator))
        state = self._iterator.get_state()
      except StopIteration:
        item, state = self._END, None
      except BaseException as e:  # pylint: disable=broad-except  # the consumer raises it
        item, state = e, None
      while not self._stop.is_set():
        try:
          self._queue.put((item, state), timeout=0.1)
          break
        except queue.Full:
          continue
      if item is self._END or isinstance(item, BaseException):
        return

  def close(self) -> None:
    """Stops reading ahead (batches read ahead are dropped) and closes the iterator (its
    worker processes); idempotent."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if hasattr(self._iterator, "close"):
      self._iterator.close()
