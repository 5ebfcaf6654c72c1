"""The libriheavy builder end to end: LibriLight-layout flac recordings and Libriheavy cut
manifests (both text forms, a missing recording, a span past the end, a broken line), made
here, through the real data prep into records cut to the manifests' segments."""
import gzip
import importlib.util
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

if importlib.util.find_spec("encodec") is None or shutil.which("espeak-ng") is None:
  pytest.skip("needs encodec and espeak-ng (scripts/install.sh)", allow_module_level=True)

import tensorflow_datasets as tfds  # noqa: E402

from configs.data import libriheavy as libriheavy_config  # noqa: E402
from data_prep import corpora, pipeline  # noqa: E402
from valle_jax import audio  # noqa: E402
from valle_jax.codec import get_codec  # noqa: E402
from valle_jax.errors import UserError  # noqa: E402

SR = 16_000  # LibriLight's rate
# recording id -> seconds; "small/300/gone/missing" has no file.
RECORDINGS = {"small/100/sea_fairies/01_baum": 6.0, "small/200/emma/03_austen": 4.0,
              "small/300/walden/02_thoreau": 3.0}
# (cut id, recording, start, duration, text form, text, speaker, manifest split)
CUTS = [
    ("small/100/sea_fairies/01_baum_0", "small/100/sea_fairies/01_baum", 0.5, 2.0, "custom",
     "The little girl was thoughtful for a moment.", "100", "small"),
    ("small/100/sea_fairies/01_baum_1", "small/100/sea_fairies/01_baum", 3.2, 1.64, "custom",
     "But why do folks dive in the water?", "100", "small"),
    ("small/200/emma/03_austen_0", "small/200/emma/03_austen", 1.0, 2.2, "text",
     "Emma Woodhouse, handsome, clever, and rich.", "200", "small"),
    ("small/300/gone/missing_0", "small/300/gone/missing", 0.0, 2.0, "text",
     "This recording was never downloaded.", "300", "small"),
    ("small/200/emma/03_austen_1", "small/200/emma/03_austen", 3.0, 2.0, "custom",
     "This span runs past the end of its file.", "200", "small"),
    ("small/300/walden/02_thoreau_0", "small/300/walden/02_thoreau", 0.25, 2.5, "text",
     "I went to the woods because I wished to live deliberately.", None, "test_clean"),
]
KEPT = [c for c in CUTS if "missing" not in c[0] and not c[0].endswith("austen_1")]


def _chirp(seconds):
  """A rising glide: every instant differs, so a segment read from the wrong offset shows."""
  t = np.arange(int(seconds * SR)) / SR
  return (0.3 * np.sin(2 * np.pi * (120 * t + 40 * t * t))).astype(np.float32)


def _cut(cut_id, rec, start, duration, form, text, speaker):
  """A MonoCut line as the Libriheavy release writes it (README of k2-fsa/libriheavy)."""
  sup = {"id": cut_id, "recording_id": rec, "start": 0, "duration": duration, "channel": 0,
         "language": "English"}
  if speaker is not None:
    sup["speaker"] = speaker
  if form == "custom":  # the raw release: [book text, ASR text]
    sup["custom"] = {"texts": [text, text.upper().strip(".?")], "pre_texts": ["...", "..."],
                     "begin_byte": 0, "end_byte": len(text)}
  else:  # the cases_and_punc / upper_no_punc manifests of `run.sh --stage 2`
    sup["text"] = text
  seconds = RECORDINGS.get(rec, 10.0)
  return {"id": cut_id, "start": start, "duration": duration, "channel": 0,
          "supervisions": [sup],
          "recording": {"id": rec, "sources": [{"type": "file", "channels": [0],
                                                "source": f"download/librilight/{rec}.flac"}],
                        "sampling_rate": SR, "num_samples": int(seconds * SR),
                        "duration": seconds, "channel_ids": [0]},
          "custom": {"text_path": "download/librilight_text/book/text.txt"},
          "type": "MonoCut"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("libriheavy")
  for rec, seconds in RECORDINGS.items():
    (root / "librilight" / rec).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / "librilight" / f"{rec}.flac", _chirp(seconds), SR)
  lines = {"small": [], "test_clean": []}
  for cut_id, rec, start, duration, form, text, speaker, split in CUTS:
    lines[split].append(json.dumps(_cut(cut_id, rec, start, duration, form, text, speaker)))
  lines["small"].insert(2, '{"id": "truncated_line", "start": 1.0, "dur')
  manifests = []
  for split, split_lines in lines.items():
    manifests.append(str(root / f"libriheavy_cuts_{split}.jsonl.gz"))
    with gzip.open(manifests[-1], "wt", encoding="utf-8") as f:
      f.write("\n".join(split_lines) + "\n")
  return root, tuple(manifests)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
  root, manifests = corpus
  cfg = libriheavy_config.get_config()
  cfg.source, cfg.manifests = str(root / "librilight"), manifests
  cfg.output = str(tmp_path_factory.mktemp("out"))
  cfg.codec.weights = "random"
  return cfg.output, pipeline.prepare(cfg)


def test_report_counts_skipped_cuts(built):
  _, report = built
  assert report["records"] == {"small": 3, "test_clean": 1}
  assert report["skipped_by_split"] == {"small": {
      "bad_manifest_row": 1, "missing": 1, "span_outside_file": 1}}


def test_records_are_the_manifests_segments(built, corpus):
  out, _ = built
  root, _ = corpus
  codec = get_codec({"name": "encodec", "weights": "random"})
  for split in ("small", "test_clean"):
    source = tfds.data_source("valle_libriheavy", data_dir=out, split=split)
    records = {r["id"].decode(): r for r in source}
    expected = [c for c in KEPT if c[-1] == split]
    assert sorted(records) == sorted(c[0] for c in expected)
    for cut_id, rec, start, duration, _, text, speaker, _ in expected:
      r = records[cut_id]
      assert r["text"].decode() == text  # the cased, punctuated text in both forms
      assert r["speaker"].decode() == (speaker or rec.split("/")[1])
      assert r["duration_s"] == pytest.approx(duration, abs=1e-3)
      assert abs(r["codes"].shape[0] - duration * codec.frame_rate) <= 1
      # The very samples of the segment: slice the whole recording, resample, encode.
      whole, _ = sf.read(root / "librilight" / f"{rec}.flac", dtype="float32")
      segment = whole[round(start * SR):round((start + duration) * SR)]
      wav = audio.resample(segment, SR, codec.sample_rate)
      np.testing.assert_array_equal(r["codes"], codec.encode(wav, codec.sample_rate))


def test_load_audio_reads_a_segment(corpus):
  root, _ = corpus
  path = root / "librilight" / "small/200/emma/03_austen.flac"  # 4 s
  whole, _ = sf.read(path, dtype="float32")
  np.testing.assert_array_equal(audio.load_audio(path, SR, 1.5, 0.25), whole[24_000:28_000])
  np.testing.assert_array_equal(audio.load_audio(path, SR, 3.5), whole[56_000:])
  # Within the tolerance of a manifest's rounded times: what is there.
  np.testing.assert_array_equal(audio.load_audio(path, SR, 3.5, 0.505), whole[56_000:])
  for start, duration in [(3.5, 0.6), (4.0, 0.1), (-0.1, 1.0)]:
    with pytest.raises(audio.AudioError, match="span_outside_file"):
      audio.load_audio(path, SR, start, duration)


def test_librilight_without_transcripts_points_to_libriheavy(tmp_path):
  with pytest.raises(UserError, match="libriheavy"):
    corpora.list_librilight(str(tmp_path), "")
