"""Data prep end to end: a small folder corpus (espeak-ng speech, tones, bad files) through
the Beam job (local runner) into ArrayRecord, read back with tfds.data_source and Grain."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import soundfile as sf

if importlib.util.find_spec("encodec") is None or shutil.which("espeak-ng") is None:
  pytest.skip("needs encodec and espeak-ng (scripts/install.sh)", allow_module_level=True)

import grain  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs.data import folder as folder_config  # noqa: E402
from configs.data import librispeech as librispeech_config  # noqa: E402
from data_prep import corpora, pipeline  # noqa: E402
from valle_jax import audio, data, text  # noqa: E402
from valle_jax.codec import get_codec  # noqa: E402
from valle_jax.errors import UserError  # noqa: E402

CODEC = {"name": "encodec", "weights": "random", "seed": 0}
SPEECH = {"alice/a1": "Hello world, this is a test.",
          "alice/a2": "The quick brown fox jumps over 2 lazy dogs!",
          "bob/b1": "Is it raining today? I think so."}


def _espeak(path, sentence, voice="en-us"):
  subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), sentence], check=True)


def _tone(path, seconds, sr=16_000):
  t = np.arange(int(seconds * sr)) / sr
  sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  for name, sentence in SPEECH.items():
    os.makedirs(root / os.path.dirname(name), exist_ok=True)
    _espeak(root / f"{name}.wav", sentence, "en-us+f3" if name.startswith("bob") else "en-us")
    (root / f"{name}.txt").write_text(sentence)
  _tone(root / "bob" / "tone.flac", 1.0)
  (root / "bob" / "tone.txt").write_text("A one second tone.")
  bad = root / "bad"
  bad.mkdir()
  for name, txt in [("empty", "empty"), ("trunc", "truncated"), ("noise", "not audio"),
                    ("latin1", None), ("blank", ""), ("short", "too short"), ("notext", None)]:
    if txt is not None:
      (bad / f"{name}.txt").write_text(txt)
  (bad / "empty.wav").write_bytes(b"")
  _espeak(bad / "trunc.wav", "This file will be cut in half.")
  data = (bad / "trunc.wav").read_bytes()
  (bad / "trunc.wav").write_bytes(data[:len(data) // 2])
  (bad / "noise.wav").write_bytes(b"this is not a wav file" * 20)
  _tone(bad / "latin1.wav", 1.0)
  (bad / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
  _tone(bad / "blank.wav", 1.0)
  _tone(bad / "short.wav", 0.1)
  _tone(bad / "notext.wav", 1.0)
  return root


EXPECTED_SKIPS = {"empty_file": 1, "truncated": 1, "not_audio": 1, "non_utf8_transcript": 1,
                  "empty_transcript": 1, "too_short": 1, "missing_transcript": 1}


def _config(source, output, **kw):
  cfg = folder_config.get_config()
  cfg.source, cfg.output = str(source), str(output)
  cfg.codec.weights = "random"
  cfg.update(kw)
  return cfg


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  report = pipeline.prepare(_config(corpus, out, batch_size=4))
  return out, report


def test_report_counts_bad_items(built):
  out, report = built
  assert report["records"] == {"train": 4}
  assert report["skipped"] == EXPECTED_SKIPS
  dataset = out / "valle_folder" / "1.0.0"
  on_disk = json.loads((dataset / "prepare_report.json").read_text())
  assert on_disk["skipped"] == EXPECTED_SKIPS
  skipped = [json.loads(l) for l in (dataset / "skipped.jsonl").read_text().splitlines()]
  assert sorted(s["id"] for s in skipped) == sorted(f"bad/{n}" for n in (
      "empty", "trunc", "noise", "latin1", "blank", "short", "notext"))
  assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
  assert on_disk["lengths"]["splits"]["train"]["examples"] == 4
  assert (dataset / "index-train.npz").exists()


def _shard_reads(run):
  """`run()` under a profiler (every thread; nothing replaced) -> the names of the calls
  that read ArrayRecord shards: `data.make_index` and ArrayRecordReader's methods (C++,
  known by the signature pybind11 writes into their docstrings)."""
  reads = []

  def profile(frame, event, arg):
    if event == "c_call" and ".ArrayRecordReader)" in (getattr(arg, "__doc__", None) or ""):
      reads.append(arg.__name__)
    elif event == "call" and frame.f_code is data.make_index.__code__:
      reads.append("make_index")

  threading.setprofile(profile)
  sys.setprofile(profile)
  try:
    run()
  finally:
    sys.setprofile(None)
    threading.setprofile(None)
  return reads


def test_index_is_written_without_reading_the_shards_back(tmp_path):
  """The writer of each shard makes its index rows (`pipeline.ShardWriter`), so prepare
  reads no shard after the Beam job; the index equals the one made by reading the shards
  back (`data.make_index`, what `valle-jax index` runs)."""
  from conftest import write_tone_corpus  # pylint: disable=g-import-not-at-top
  cfg = _config(write_tone_corpus(str(tmp_path / "corpus"), texts=("one two", "three four",
                                                                     "five six")),
                tmp_path / "out")
  reports = []
  assert _shard_reads(lambda: reports.append(pipeline.prepare(cfg))) == []
  dataset = data.open_dataset(reports[0]["dataset"])
  read_back = []
  assert {"make_index", "read"} <= set(_shard_reads(
      lambda: read_back.append(data.make_index(dataset.split("train"), progress=False))))
  assert not list(tmp_path.glob("out/**/*.rows.npz"))
  with np.load(data.index_path(dataset.path, "train")) as written:
    assert sorted(written.files) == sorted(read_back[0])
    for key in written.files:
      np.testing.assert_array_equal(written[key], read_back[0][key], err_msg=key)


def test_index_rows_locate_records_across_shards(built, tmp_path):
  """`gather_index` makes the index of several shards from their writers' rows alone (the
  shards deleted first): each (shard, offset) is the record's place in the shard files."""
  out, _ = built
  source = data.open_dataset(str(out / "valle_folder" / "1.0.0")).split("train")
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  serialized = []
  for path in source.dataset_info.splits["train"].filepaths:
    reader = array_record_module.ArrayRecordReader(str(path))
    serialized += reader.read(0, reader.num_records())
    reader.close()
  lengths = [1, len(serialized) - 1]
  shards = [str(tmp_path / f"s.array_record-0000{i}-of-00002") for i in range(2)]
  writer = pipeline.ShardWriter(num_codebooks=8)
  writer.write(shards[0], [(0, serialized[-1])])
  writer.write(shards[1], [(i, r) for i, r in enumerate(serialized[:-1])])
  split_read_back = types.SimpleNamespace(filepaths=shards, shard_lengths=lengths)
  wanted = []
  for path in shards:
    reader = array_record_module.ArrayRecordReader(path)
    wanted += [data.index_row(r, 8) for r in reader.read(0, reader.num_records())]
    reader.close()
    os.remove(path)
  index = pipeline.gather_index(split_read_back)
  frames, phonemes, speakers = zip(*wanted)
  expected = data.index_of(frames, phonemes, speakers, lengths)
  for key in expected:
    np.testing.assert_array_equal(index[key], expected[key], err_msg=key)
  assert list(index["shard"]) == [0] + [1] * (len(serialized) - 1)
  assert list(index["offset"]) == [0] + list(range(len(serialized) - 1))
  assert not list(tmp_path.iterdir())          # the rows files removed once gathered


def test_long_material_counts_examples_longer_than_the_paper_buckets():
  # configs/paper.py's largest bucket: 1500 frames, 384 phonemes. 2250 frames and 500
  # phonemes are cropped at load; 5000 phonemes in 10 frames fit no window (left out).
  index = {"frames": np.array([750, 2250, 1200, 10]), "phonemes": np.array([100, 200, 500, 5000])}
  got = pipeline.long_material({"train": index}, {"frame_rate": 75.0})
  assert (got["max_frames"], got["max_phonemes"]) == (1500, 384)
  assert got["splits"]["train"] == {
      "examples": 4, "hours": pytest.approx(4210 / 75 / 3600), "longer": 3,
      "longer_hours": pytest.approx(3460 / 75 / 3600), "left_out": 1}
  line = pipeline.format_lengths(got, skipped=7)
  assert line.startswith("[prepare] train 4 examples (0.02 h), 3 longer (0.01 h), 1 of them "
                         "left out; longer = over configs/paper.py's largest bucket (1500 "
                         "frames or 384 phonemes)")
  assert line.endswith("(left out: too many phonemes for any window); 7 item(s) skipped")
  assert "\n" not in line


def test_codec_calls_group_clips_of_similar_length():
  lengths = [100, 1000, 110, 1050, 105, 5000]
  groups = pipeline.length_groups(lengths, max_padding=0.25)
  assert groups == [[0, 4, 2], [1, 3], [5]]
  for group in groups:       # padded to its longest clip, within 1.25 x its real samples
    assert len(group) * max(lengths[i] for i in group) <= 1.25 * sum(lengths[i] for i in group)
  assert pipeline.length_groups([]) == []
  assert pipeline.length_groups([7] * 5) == [[0, 1, 2, 3, 4]]


def test_records_exact(built, corpus):
  """Every record as its clip encoded alone: the Beam batches of 4 mix lengths (a 1 s tone,
  speech), which the codec calls regroup by length (`length_groups`) and put back in order."""
  out, _ = built
  dataset = out / "valle_folder" / "1.0.0"
  table = text.SymbolTable.load(dataset / "symbols.json")
  assert table == text.SymbolTable.default()
  codec = get_codec(CODEC)
  assert json.loads((dataset / "codec.json").read_text()) == codec.describe()

  source = tfds.data_source("valle_folder", data_dir=str(out), split="train")
  records = {r["id"].decode(): r for r in grain.MapDataset.source(source)}
  expected = {**SPEECH, "bob/tone": "A one second tone."}
  assert set(records) == set(expected)
  for item_id, sentence in expected.items():
    r = records[item_id]
    ext = ".flac" if item_id == "bob/tone" else ".wav"
    wav = audio.load_audio(corpus / f"{item_id}{ext}", codec.sample_rate)
    assert r["codes"].dtype == np.int16 and r["phonemes"].dtype == np.int32
    np.testing.assert_array_equal(r["codes"], codec.encode(wav, codec.sample_rate))
    np.testing.assert_array_equal(r["phonemes"], text.text_to_ids(sentence, table))
    assert r["text"].decode() == sentence
    assert r["speaker"].decode() == item_id.split("/")[0]
    assert r["lang"].decode() == "en-us"
    assert r["duration_s"] == pytest.approx(wav.size / codec.sample_rate, abs=1e-4)


def test_rerun_needs_overwrite_and_replaces_atomically(built, corpus):
  out, _ = built
  with pytest.raises(UserError, match="overwrite"):
    pipeline.prepare(_config(corpus, out))


def test_librispeech_layout_and_4_10s_split(tmp_path):
  chapter = tmp_path / "LibriSpeech" / "test-clean" / "61" / "70968"
  chapter.mkdir(parents=True)
  _tone(chapter / "61-70968-0000.flac", 2.0)
  _tone(chapter / "61-70968-0001.flac", 4.5)
  (chapter / "61-70968.trans.txt").write_text(
      "61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n61-70968-0001 GIVE NOT SO EARNEST A MIND\n")
  cfg = librispeech_config.get_config()
  cfg.source, cfg.output = str(tmp_path / "LibriSpeech"), str(tmp_path / "out")
  cfg.codec.weights = "random"
  report = pipeline.prepare(cfg)
  assert report["records"] == {"test_clean": 2, "test_clean_4_10s": 1}
  assert report["skipped_by_split"] == {"test_clean_4_10s": {"too_short": 1}}
  source = tfds.data_source("valle_librispeech", data_dir=str(tmp_path / "out"),
                            split="test_clean_4_10s")
  (record,) = list(source)
  assert record["id"] == b"61-70968-0001" and record["speaker"] == b"61"
  assert record["text"] == b"give not so earnest a mind"


def test_libritts_and_librilight_listing(tmp_path):
  utt = tmp_path / "LibriTTS" / "dev-clean" / "84" / "121123"
  utt.mkdir(parents=True)
  for stem in ("84_121123_000007_000001", "84_121123_000008_000000"):
    _tone(utt / f"{stem}.wav", 0.2, 24_000)
  (utt / "84_121123_000007_000001.normalized.txt").write_text("Hello there.")
  listing = corpora.list_libritts(str(tmp_path / "LibriTTS"))
  assert [(i.id, i.split, i.speaker) for i in listing.items] == [
      ("84_121123_000007_000001", "dev_clean", "84")]
  assert [s.reason for s in listing.skips] == ["missing_transcript"]

  (tmp_path / "ll.tsv").write_text("path\ttext\nsmall/100/book/a.flac\thi there\nbroken\n")
  listing = corpora.list_librilight(str(tmp_path), str(tmp_path / "ll.tsv"))
  (item,) = listing.items
  assert (item.id, item.split, item.speaker, item.text) == ("small/100/book/a", "small", "100",
                                                            "hi there")
  assert item.audio == str(tmp_path / "small/100/book/a.flac")
  assert [s.reason for s in listing.skips] == ["bad_manifest_row"]


def test_cli_reports_user_errors(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "valle_jax.cli", "prepare", "--config=configs/data/folder.py",
       f"--config.source={tmp_path / 'nope'}", f"--config.output={tmp_path / 'out'}"],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 2
  assert "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
