"""The data prep job: corpus items -> (phonemes, codec codes) records in ArrayRecord shards.

    listing (corpora.py, launcher) ─▶ manifests/<split>.jsonl
      ─▶ Beam per split: read ─▶ reshuffle ─▶ batch ─▶ ItemProcessor ─┬▶ records ─▶ TFDS writer
                                                                      └▶ skips ─▶ skipped/<split>.jsonl
         TFDS writer: per shard, ShardWriter writes the shard and its index rows
      ─▶ symbols.json, codec.json, prepare_report.json, skipped.jsonl beside the shards
      ─▶ index-<split>.npz: each record's lengths, speaker and place, gathered from the rows
         of the shards' writers (`gather_index`; no record is read back), what training
         reads at start-up instead of the records (`valle-jax index` writes it for a
         dataset prepared without one, by reading its shards)

The builders are TFDS `GeneratorBasedBuilder`s whose `_generate_examples` returns a Beam
transform, written with `file_format="array_record"` (TensorFlow is not needed for that).
`prepare(config)` builds into `<output>/.tmp-*` and moves the finished dataset to
`<output>/<builder name>/<version>/` only when everything is written, so a crash or a re-run
never leaves a half-written dataset. Read it with
`tfds.data_source("<builder name>", data_dir=<output>)` or
`tfds.builder_from_directory(<dataset dir>).as_data_source()`.

Every bad item is skipped with a reason (missing / empty / non-audio / truncated /
unreadable audio, missing / empty / non-UTF-8 transcript, unknown symbol, too short / long,
...), counted and listed; nothing about one item can stop the job.

`output` may be local or `gs://` (`valle_jax/paths.py`): on `gs://` each shard is written
to a local temporary file and copied up once closed (`ShardWriter`), and the finished dataset
is moved into place by copies in the bucket, `dataset_info.json` last. Distributed runners
(Dataflow, Flink, Spark) need the corpus on a file system every worker mounts (NFS, GCS
FUSE, ...), and `output` there or on `gs://`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import types
import uuid
from typing import Any, Callable, Sequence

import numpy as np

from data_prep import corpora
from valle_jax import audio as audio_lib
from valle_jax import data as data_lib
from valle_jax import paths
from valle_jax import text as text_lib
from valle_jax.codec import Codec, get_codec
from valle_jax.errors import UserError

VERSION = "1.0.0"
STAGES = ("phonemize", "load", "encode")
MAX_PADDING = 0.25   # a codec call's padded samples may exceed its real ones by this fraction


def length_groups(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
  """Indices of `lengths` in groups of similar length, one codec call each: sorted by length,
  a group takes the next (longer) clip while every clip padded to it stays within
  `1 + max_padding` times the group's real samples. A batch pads to its longest clip, so a
  Beam batch of mixed lengths would otherwise spend most of its codec time on padding."""
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  groups: list[list[int]] = []
  real = 0
  for i in order:
    if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + max_padding) * (real + lengths[i]):
      groups[-1].append(i)
      real += lengths[i]
    else:
      groups.append([i])
      real = lengths[i]
  return groups


# --- per-item work (no Beam: the benchmark and tests call this directly) -----------------------
class ItemProcessor:
  """Items -> records + skips. Holds the codec and symbol table; one per Beam worker.

  `stage_seconds` accumulates wall time per stage (phonemize, load, encode) and
  `audio_seconds` the audio turned into records, for progress lines and the benchmark.
  """

  def __init__(self, table: text_lib.SymbolTable, codec: Codec, min_duration_s: float,
               max_duration_s: float, bounds: dict[str, tuple[float, float]] | None = None,
               max_padding: float = MAX_PADDING):
    self.table = table
    self.max_padding = max_padding   # of a codec call (`length_groups`)
    self.codec = codec
    self.min_duration_s = min_duration_s
    self.max_duration_s = max_duration_s
    self.bounds = dict(bounds or {})
    self.stage_seconds = dict.fromkeys(STAGES, 0.0)
    self.audio_seconds = 0.0

  def _transcript(self, item: corpora.Item) -> str:
    if item.text is not None:
      return item.text.strip()
    with open(item.text_file, "rb") as f:  # FileNotFoundError / OSError: handled by caller
      return f.read().decode("utf-8").strip()

  def _phonemes(self, item: corpora.Item) -> tuple[str, np.ndarray]:
    """-> (transcript, int32 ids [L]); raises _SkipError."""
    try:
      text = self._transcript(item)
    except FileNotFoundError:
      raise _SkipError("missing_transcript", item.text_file) from None
    except UnicodeDecodeError as e:
      raise _SkipError("non_utf8_transcript", str(e)) from None
    except OSError as e:
      raise _SkipError("unreadable_transcript", str(e)) from None
    if not text:
      raise _SkipError("empty_transcript")
    try:
      symbols = text_lib.phonemize(text, item.lang)
      ids = self.table.encode(symbols, text=text)
    except text_lib.UnknownSymbolError as e:
      raise _SkipError("unknown_symbol", str(e)) from None
    except UserError as e:  # an unsupported language
      raise _SkipError("bad_language", str(e)) from None
    except RuntimeError as e:  # espeak-ng failures
      raise _SkipError("phonemizer_error", str(e)) from None
    if not any(s not in text_lib.PUNCTUATION and s != text_lib.WORD for s in symbols):
      raise _SkipError("no_phonemes", repr(text))
    return text, ids

  def _load(self, item: corpora.Item) -> np.ndarray:
    try:
      wav = audio_lib.load_audio(item.audio, self.codec.sample_rate, item.start_s,
                                 item.duration_s)
    except audio_lib.AudioError as e:
      raise _SkipError(e.reason, str(e)) from None
    duration = wav.size / self.codec.sample_rate
    lo, hi = self.bounds.get(item.split, (self.min_duration_s, self.max_duration_s))
    if duration < lo:
      raise _SkipError("too_short", f"{duration:.2f} s < {lo} s")
    if duration > hi:
      raise _SkipError("too_long", f"{duration:.2f} s > {hi} s")
    return wav

  def __call__(self, items: Sequence[corpora.Item]
               ) -> tuple[list[tuple[str, dict[str, Any]]], list[corpora.Skip]]:
    """-> ([(key, record)], [skip]); never raises for a bad item."""
    skips: list[corpora.Skip] = []
    ready: list[tuple[corpora.Item, str, np.ndarray, np.ndarray]] = []
    for item in items:
      try:
        t0 = time.perf_counter()
        text, ids = self._phonemes(item)
        t1 = time.perf_counter()
        self.stage_seconds["phonemize"] += t1 - t0
        wav = self._load(item)
        self.stage_seconds["load"] += time.perf_counter() - t1
      except _SkipError as e:
        skips.append(corpora.Skip(item.id, item.split, e.reason, e.detail))
        continue
      ready.append((item, text, ids, wav))
    codes = self._encode([w for _, _, _, w in ready])
    records = []
    for (item, text, ids, wav), c in zip(ready, codes):
      if isinstance(c, Exception):
        skips.append(corpora.Skip(item.id, item.split, "encode_failed", repr(c)))
        continue
      duration = wav.size / self.codec.sample_rate
      self.audio_seconds += duration
      records.append((item.id, {
          "id": item.id, "speaker": item.speaker, "text": text, "lang": item.lang,
          "phonemes": ids,                                  # int32 [L]
          "codes": c,                                       # int16 [T, Q]
          "duration_s": np.float32(duration)}))
    return records, skips

  def _encode(self, wavs: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Encodes clips of similar length together (`length_groups`); a group that fails is
    encoded one by one, so only the bad clip is lost. Codes come back in `wavs`' order."""
    t0 = time.perf_counter()
    out: list = [None] * len(wavs)
    for group in length_groups([w.size for w in wavs], self.max_padding):
      try:
        codes = self.codec.encode_batch([wavs[i] for i in group], self.codec.sample_rate)
      except Exception:  # pylint: disable=broad-except
        codes = []
        for i in group:
          try:
            codes.append(self.codec.encode(wavs[i], self.codec.sample_rate))
          except Exception as e:  # pylint: disable=broad-except
            codes.append(e)
      for i, c in zip(group, codes):
        out[i] = c
    self.stage_seconds["encode"] += time.perf_counter() - t0
    return out


class _SkipError(Exception):

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason)
    self.reason = reason
    self.detail = detail


# --- Beam + TFDS ---------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
  """Everything the workers need; pickled into the Beam graph (no items: they are read
  from `manifests`)."""
  work_dir: str
  manifests: dict[str, str]              # split -> JSONL of items
  counts: dict[str, int]                 # split -> items listed (for progress / ETA)
  symbols: list[str]
  codec_config: dict[str, Any] | None    # built on each worker with get_codec ...
  codec: Codec | None                    # ... unless a ready codec object was given
  num_codebooks: int
  min_duration_s: float
  max_duration_s: float
  bounds: dict[str, tuple[float, float]]
  batch_size: int
  progress_every_s: float


_CODECS: dict[str, Codec] = {}


def _worker_codec(config: dict[str, Any]) -> Codec:
  """One codec per process and config: splits, and with a local runner the launcher too,
  share it instead of loading the model again."""
  key = json.dumps(config, sort_keys=True)
  if key not in _CODECS:
    _CODECS[key] = get_codec(config)
  return _CODECS[key]


def _process_fn(job: Job, split: str):
  """The Beam DoFn of one split (Beam is imported lazily so this module stays importable)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  class ProcessItems(beam.DoFn):

    def setup(self):
      codec = job.codec if job.codec is not None else _worker_codec(job.codec_config)
      self._proc = ItemProcessor(text_lib.SymbolTable(job.symbols), codec, job.min_duration_s,
                                 job.max_duration_s, job.bounds)
      self._done, self._t0, self._last = 0, time.time(), time.time()

    def process(self, batch: list[str]):
      records, skips = self._proc([corpora.Item(**json.loads(line)) for line in batch])
      for s in skips:
        beam.metrics.Metrics.counter("valle_skipped", s.reason).inc()
        yield beam.pvalue.TaggedOutput("skipped", json.dumps(dataclasses.asdict(s)))
      beam.metrics.Metrics.counter("valle", "records").inc(len(records))
      yield from records
      self._done += len(batch)
      if time.time() - self._last >= job.progress_every_s:
        self._last = time.time()
        rate = self._done / (self._last - self._t0)
        total = job.counts[split]
        secs = {k: f"{v:.0f}s" for k, v in self._proc.stage_seconds.items()}
        print(f"[prepare {split}] worker {os.getpid()}: {self._done} items "
              f"({self._proc.audio_seconds / 3600:.2f} h audio), {rate:.1f} items/s, "
              f"split has {total}; time per stage {secs}", file=sys.stderr, flush=True)

  return ProcessItems()


def _write_lines(lines: Sequence[str], path: str) -> None:
  target = paths.path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _split_transform(job: Job, split: str):
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  class EncodeSplit(beam.PTransform):
    """PBegin -> PCollection[(id, record)]; skips go to <work_dir>/skipped/<split>.jsonl."""

    def expand(self, root):
      out = (root
             | "Read" >> beam.io.ReadFromText(job.manifests[split])
             | "Spread" >> beam.Reshuffle()
             | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=job.batch_size)
             | "Process" >> beam.ParDo(_process_fn(job, split)).with_outputs("skipped",
                                                                             main="records"))
      # One file written whole (a retry rewrites it), through `paths`: Beam's own text sink
      # renames its files with GCS batch requests, which the test's emulator does not serve.
      _ = (out.skipped
           | "CollectSkips" >> beam.combiners.ToList()
           | "WriteSkips" >> beam.Map(_write_lines, os.path.join(job.work_dir, "skipped",
                                                                  f"{split}.jsonl")))
      return out.records

  return EncodeSplit()


class ShardWriter:
  """Writes one ArrayRecord shard (TFDS's example writer, the builder's `_example_writer`),
  and beside it `<shard>.rows.npz`: the index rows of its records in their order in the
  shard (frames, phonemes, speaker; `data.index_row`), so the shard and offset of each come
  with it and `gather_index` writes the split's index without reading the shards back.

  TFDS calls `write` on a temporary name (`incomplete.<hex>.<shard>`) and renames every
  file of that prefix once it returns, so the rows appear with their shard. The ArrayRecord
  writer opens local files only: a shard bound elsewhere (`gs://`) is written to a local
  temporary file, closed, copied to its place and the local file removed (as
  `array_record.beam`'s GCS writer does), so no half-written shard is ever there.
  """
  ROWS = ".rows.npz"

  def __init__(self, num_codebooks: int):
    self.num_codebooks = num_codebooks

  def write(self, path, examples) -> None:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    target = os.fspath(path)
    local = target
    if not paths.is_local(target):
      handle, local = tempfile.mkstemp(suffix=".array_record")
      os.close(handle)
    rows = []
    try:
      writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
      for _, serialized in examples:
        writer.write(serialized)
        rows.append(data_lib.index_row(serialized, self.num_codebooks))
      writer.close()
      if local != target:
        with open(local, "rb") as src, paths.path(target).open("wb") as dst:
          shutil.copyfileobj(src, dst, 16 << 20)
    finally:
      if local != target:
        os.remove(local)
    frames, phonemes, speakers = zip(*rows)
    buffer = io.BytesIO()
    np.savez(buffer, frames=np.asarray(frames, np.int32), phonemes=np.asarray(phonemes, np.int32),
             speakers=np.asarray(speakers, dtype=str))
    paths.path(target + self.ROWS).write_bytes(buffer.getvalue())


def gather_index(split_info) -> dict[str, np.ndarray]:
  """The index of a split just written (a TFDS `SplitInfo`: its shard files and lengths)
  from the rows `ShardWriter` wrote beside each shard, shard by shard in order; the rows
  files are then removed. Reads no record."""
  frames, phonemes, speakers = [], [], []
  rows_paths = [paths.path(os.fspath(shard) + ShardWriter.ROWS) for shard in split_info.filepaths]
  for rows_path, count in zip(rows_paths, split_info.shard_lengths):
    with rows_path.open("rb") as f, np.load(f, allow_pickle=False) as rows:
      if len(rows["frames"]) != count:
        raise RuntimeError(f"{rows_path} has {len(rows['frames'])} rows, its shard {count} "
                           "records")
      frames.append(rows["frames"])
      phonemes.append(rows["phonemes"])
      speakers.append(rows["speakers"])
  index = data_lib.index_of(np.concatenate(frames), np.concatenate(phonemes),
                            np.concatenate(speakers), split_info.shard_lengths)
  for rows_path in rows_paths:
    rows_path.unlink()
  return index


def features(num_codebooks: int):
  """The TFDS features of a record (design.md section 3)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  return f.FeaturesDict({
      "id": f.Text(), "speaker": f.Text(), "text": f.Text(), "lang": f.Text(),
      "phonemes": f.Tensor(shape=(None,), dtype=np.int32),
      "codes": f.Tensor(shape=(None, num_codebooks), dtype=np.int16),
      "duration_s": f.Scalar(dtype=np.float32)})


@functools.lru_cache(maxsize=None)
def _builder_base():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class ValleBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Records of ARCHITECTURE.md section 3, one per utterance."""
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "id, speaker, text, lang, phonemes, codes, duration_s."}

    def __init__(self, *, job: Job, **kwargs):
      self._job = job
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                   features=features(self._job.num_codebooks))

    def _split_generators(self, dl_manager):
      del dl_manager  # the corpus is local; nothing to download
      return {split: self._generate_examples(split) for split in self._job.manifests}

    def _generate_examples(self, split):
      return _split_transform(self._job, split)

    def _example_writer(self):
      return ShardWriter(self._job.num_codebooks)

  return ValleBuilder


# corpus name -> (TFDS builder name, lister(config) -> Listing)
CORPORA: dict[str, tuple[str, Callable[[Any], corpora.Listing]]] = {
    "folder": ("valle_folder", lambda c: corpora.list_folder(
        c.source, c.get("manifest", ""), c.lang, c.get("split", "train"))),
    "libritts": ("valle_libritts", lambda c: corpora.list_libritts(
        c.source, c.get("subsets", ()), c.lang, c.get("transcript", "normalized"))),
    "librispeech": ("valle_librispeech", lambda c: corpora.list_librispeech(
        c.source, c.get("subsets", ()), c.lang, c.get("test_4_10s", True))),
    "librilight": ("valle_librilight", lambda c: corpora.list_librilight(
        c.source, c.get("manifest", ""), c.lang)),
    "libriheavy": ("valle_libriheavy", lambda c: corpora.list_libriheavy(
        c.source, c.manifests, c.lang, c.get("path_prefix", "download/librilight"))),
}
_BUILDER_CLASSES: dict[str, type] = {}


def builder_class(corpus: str) -> type:
  """The TFDS builder class of a corpus (`ValleFolder`, ...), used to write datasets."""
  if corpus not in CORPORA:
    raise UserError(f"unknown corpus {corpus!r}; set config.corpus to one of {sorted(CORPORA)}.")
  if corpus not in _BUILDER_CLASSES:
    name = CORPORA[corpus][0]
    cls_name = "".join(p.capitalize() for p in name.split("_"))
    # Not registered with TFDS: readers (tfds.data_source, builder_from_directory) then use
    # the files' own metadata and never need this code or a Job.
    _BUILDER_CLASSES[corpus] = types.new_class(
        cls_name, (_builder_base(),), {"skip_registration": True},
        lambda ns: ns.update({
            "__doc__": f"VALL-E records of a {corpus} corpus (phonemes + codec codes).",
            "__module__": __name__, "name": name}))
  return _BUILDER_CLASSES[corpus]


# --- the job --------------------------------------------------------------------------------
def _beam_options(beam_cfg):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  return PipelineOptions([f"--runner={beam_cfg.runner}", *shlex.split(beam_cfg.options)])


def _read_skips(work_dir: str) -> list[dict[str, str]]:
  out = []
  skipped = paths.path(os.path.join(work_dir, "skipped"))
  for path in sorted(skipped.glob("*.jsonl")) if skipped.exists() else ():
    out.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip())
  return out


class _EmptySplitLogs(logging.Filter):
  """Keeps Beam's logged traceback of an empty split off the console while it runs (the
  error is reported by `_nothing_kept` instead)."""
  PHRASE = "total number of generated examples is 0"

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else ""
    return self.PHRASE not in f"{record.getMessage()} {error}"

  def __enter__(self):
    for handler in logging.getLogger().handlers:
      handler.addFilter(self)

  def __exit__(self, *exc):
    for handler in logging.getLogger().handlers:
      handler.removeFilter(self)


def _nothing_kept(cfg, job: Job, listing, work: str) -> UserError:
  """The error for a job whose every item of some split was skipped, with the reasons."""
  skips = [dataclasses.asdict(s) for s in listing.skips] + _read_skips(work)
  counts = collections.Counter(s["reason"] for s in skips)
  reasons = ", ".join(f"{reason} {n}" for reason, n in counts.most_common()) or "reasons not "\
      "recorded"
  return UserError(
      f"every item of a split was skipped ({sum(job.counts.values())} listed in "
      f"{dict(sorted(job.counts.items()))}; skipped: {reasons}), so the dataset would be "
      f"empty; check config.min_duration_s / max_duration_s ({cfg.min_duration_s:g} to "
      f"{cfg.max_duration_s:g} s), the transcripts and config.source. Nothing was written.")


def _install(built: str, final: str, trash: str) -> None:
  """Moves the finished dataset `built` to `final` (a dataset there before goes to `trash`,
  deleted with the work folder): atomically when local; on `gs://` (no renames) the old one
  is deleted, then `built` copied in the bucket with `dataset_info.json` last, so `final` is
  a dataset (`data.open_dataset`) only once every other file is there."""
  if paths.is_local(final):
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if os.path.exists(final):
      os.replace(final, trash)
    os.replace(built, final)
    return
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, src_root = fsspec.core.url_to_fs(built)
  dst_root = fsspec.core.url_to_fs(final)[1]
  if fs.exists(dst_root):
    fs.rm(dst_root, recursive=True)
  files = fs.find(src_root)
  last = [f for f in files if os.path.basename(f) == "dataset_info.json"]
  for batch in ([f for f in files if f not in last], last):
    if batch:
      fs.copy(batch, [dst_root + f[len(src_root):] for f in batch])
  fs.rm(src_root, recursive=True)


def _write_json(path: str, obj: Any) -> None:
  paths.path(path).write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")


def prepare(cfg, codec: Codec | None = None) -> dict[str, Any]:
  """Runs the job of a prepare config (see configs/data/); returns the report dict.

  `codec`: a ready codec object to use instead of building `cfg.codec` (e.g. one fitted
  just before on the training split); it is pickled to the workers.
  """
  corpus = cfg.corpus
  cls = builder_class(corpus)
  if not cfg.output:
    raise UserError("config.output is empty; set it to the directory to write datasets to.")
  output = paths.absolute(cfg.output)
  final = os.path.join(output, cls.name, VERSION)
  if paths.path(final).exists() and not cfg.overwrite:
    raise UserError(f"{final} already exists; pass --config.overwrite=True to rebuild it.")
  listing = CORPORA[corpus][1](cfg)
  if not listing.items:
    raise UserError(f"the {corpus} corpus at {cfg.source!r} has no usable items "
                    f"({len(listing.skips)} skipped while listing); check config.source.")
  table = (text_lib.SymbolTable.load(cfg.symbols) if cfg.symbols
           else text_lib.SymbolTable.default())
  table.extend(cfg.extra_symbols)
  codec_obj = codec if codec is not None else _worker_codec(cfg.codec.to_dict())
  description = codec_obj.describe()

  work = os.path.join(output, f".tmp-{cls.name}-{uuid.uuid4().hex[:8]}")
  paths.path(os.path.join(work, "manifests")).mkdir(parents=True)
  try:
    by_split: dict[str, list[corpora.Item]] = collections.defaultdict(list)
    for item in listing.items:
      by_split[item.split].append(item)
    manifests = {}
    for split, items in sorted(by_split.items()):
      manifests[split] = os.path.join(work, "manifests", f"{split}.jsonl")
      paths.path(manifests[split]).write_text("".join(
          json.dumps(dataclasses.asdict(i), ensure_ascii=False) + "\n" for i in items),
          encoding="utf-8")
    job = Job(work_dir=work, manifests=manifests, counts={s: len(v) for s, v in by_split.items()},
              symbols=table.symbols,
              codec_config=None if codec is not None else cfg.codec.to_dict(),
              codec=codec,
              num_codebooks=codec_obj.num_codebooks, min_duration_s=cfg.min_duration_s,
              max_duration_s=cfg.max_duration_s, bounds=listing.bounds,
              batch_size=cfg.batch_size, progress_every_s=cfg.progress_every_s)
    print(f"[prepare] {corpus}: {len(listing.items)} items in splits "
          f"{dict(sorted(job.counts.items()))}; codec {description}", file=sys.stderr, flush=True)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = cls(job=job, data_dir=os.path.join(work, "tfds"), file_format="array_record")
    t0 = time.time()
    try:
      with _EmptySplitLogs():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            beam_options=_beam_options(cfg.beam)))
    except Exception as e:  # pylint: disable=broad-except  (Beam wraps everything)
      if _EmptySplitLogs.PHRASE not in str(e):
        raise
      raise _nothing_kept(cfg, job, listing, work) from None
    elapsed = time.time() - t0

    built = os.path.join(work, "tfds", cls.name, VERSION)
    skips = [dataclasses.asdict(s) for s in listing.skips] + _read_skips(work)
    counts = collections.Counter(s["reason"] for s in skips)
    info = builder.info
    report = {
        "corpus": corpus, "source": os.path.abspath(cfg.source), "dataset": final,
        "builder": cls.name, "version": VERSION, "seconds": round(elapsed, 1),
        "records": {s: info.splits[s].num_examples for s in info.splits},
        "listed": job.counts, "skipped": dict(sorted(counts.items())),
        "skipped_examples": {reason: [s["id"] for s in skips if s["reason"] == reason][:3]
                             for reason in sorted(counts)},
        "skipped_by_split": {
            split: dict(sorted(collections.Counter(
                s["reason"] for s in skips if s["split"] == split).items()))
            for split in sorted({s["split"] for s in skips})},
        "codec": description, "num_symbols": len(table)}
    paths.path(os.path.join(built, "symbols.json")).write_text(table.to_json(), encoding="utf-8")
    _write_json(os.path.join(built, "codec.json"), description)
    indexes = {}
    for split in sorted(info.splits):     # from the rows each shard's writer made
      indexes[split] = gather_index(info.splits[split])
      data_lib.write_index(data_lib.index_path(built, split), indexes[split])
    report["lengths"] = long_material(indexes, description)
    _write_json(os.path.join(built, "prepare_report.json"), report)
    paths.path(os.path.join(built, "skipped.jsonl")).write_text("".join(
        json.dumps(s, ensure_ascii=False) + "\n" for s in skips), encoding="utf-8")

    _install(built, final, os.path.join(work, "replaced"))
  finally:
    if paths.is_local(work):
      shutil.rmtree(work, ignore_errors=True)
    else:
      paths.path(work).rmtree(missing_ok=True)
  print(format_report(report), file=sys.stderr, flush=True)
  return report


def index_dataset(dataset: data_lib.Dataset, progress: bool = True
                  ) -> dict[str, dict[str, np.ndarray]]:
  """Writes the index of each split of a prepared dataset beside its shards (what training
  reads at start-up instead of the records; `valle_jax.data.make_index`) and returns them
  by split."""
  indexes = {}
  for split, source in sorted(dataset.splits.items()):
    indexes[split] = data_lib.make_index(source, progress)
    data_lib.write_index(data_lib.index_path(dataset.path, split), indexes[split])
  return indexes


def long_material(indexes: dict[str, dict[str, np.ndarray]], codec_description: dict[str, Any]
                  ) -> dict[str, Any]:
  """Per split, its examples and hours, and those longer than the largest bucket of the
  paper's config (configs/paper.py), which training crops at load time to a random window
  that fits (`valle_jax.data.crop_lengths`; `left_out`: too many phonemes for any window)."""
  from configs import paper  # pylint: disable=g-import-not-at-top
  buckets = paper.get_config().data
  max_frames, max_phonemes = max(buckets.frame_buckets), max(buckets.phoneme_buckets)
  frame_rate = float(codec_description.get("frame_rate", 75.0))
  out: dict[str, Any] = {"max_frames": max_frames, "max_phonemes": max_phonemes, "splits": {}}
  for split, index in sorted(indexes.items()):
    frames, phonemes = index["frames"], index["phonemes"]
    cropped_frames, cropped_phonemes = data_lib.crop_lengths(frames, phonemes, max_frames,
                                                             max_phonemes)
    longer = (cropped_frames != frames) | (cropped_phonemes != phonemes)
    out["splits"][split] = {
        "examples": len(frames), "hours": float(frames.sum()) / frame_rate / 3600,
        "longer": int(longer.sum()),
        "longer_hours": float(frames[longer].sum()) / frame_rate / 3600,
        "left_out": int(np.sum(cropped_frames == 0))}
  return out


def format_report(report: dict[str, Any]) -> str:
  lines = [f"[prepare] wrote {report['dataset']} in {report['seconds']} s",
           f"  records per split: {report['records']}"]
  if report["skipped"]:
    lines.append(f"  skipped {sum(report['skipped'].values())} item(s) "
                 "(listed in skipped.jsonl):")
    examples = report.get("skipped_examples", {})
    lines += [f"    {reason:<24} {n}" + (f"  (e.g. {', '.join(examples[reason])})"
                                          if examples.get(reason) else "")
              for reason, n in report["skipped"].items()]
  else:
    lines.append("  skipped nothing")
  lines.append(format_lengths(report["lengths"], sum(report["skipped"].values())))
  return "\n".join(lines)


def format_lengths(lengths: dict[str, Any], skipped: int | None = None) -> str:
  """One line: examples and hours per split, how many are longer than the paper config's
  largest bucket (cropped at load), and how many items were skipped (when known)."""
  splits = lengths["splits"]
  parts = [f"{s} {n['examples']} examples ({n['hours']:.2f} h), {n['longer']} longer "
           f"({n['longer_hours']:.2f} h)" + (f", {n['left_out']} of them left out"
                                             if n["left_out"] else "")
           for s, n in splits.items()]
  left_out = any(n["left_out"] for n in splits.values())
  return (f"[prepare] {'; '.join(parts)}; longer = over configs/paper.py's largest bucket "
          f"({lengths['max_frames']} frames or {lengths['max_phonemes']} phonemes): training "
          "crops them at load to a random window that fits"
          + (" (left out: too many phonemes for any window)" if left_out else "")
          + (f"; {skipped} item(s) skipped" if skipped is not None else ""))

