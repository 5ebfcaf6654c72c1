"""The built-in synthetic corpus: text, voices, determinism, held-out speakers, layout."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from configs.corpus.synthetic import get_config
from data_prep import synthetic
from valle_jax.errors import UserError

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("espeak-ng", "flite", "festival", "bible")),
    reason="needs the Debian packages of scripts/install.sh")


def small_config(**overrides):
  c = get_config()
  c.voices = ["espeak-ng:en-us", "espeak-ng:en-us+f3/pitch=70", "flite:slt",
              "festival:ked_diphone"]
  c.heldout_voices = ["flite:slt"]
  c.num_utterances = 6
  c.num_heldout_utterances = 2
  c.workers = 2
  c.chunk_size = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def tree_digest(root):
  """{relative path: sha256} of every file under root."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("corpus") / "synthetic")
  info = synthetic.make_corpus(small_config(), out, progress=False)
  return out, info


def test_sentences_are_normalised_and_in_range():
  sentences = synthetic.kjv_sentences(5, 20)
  assert len(sentences) > 10000
  for s in sentences[::97]:
    assert 5 <= len(s.split()) <= 20
    assert s[0].isupper() and s[-1] in ".?!"
    assert all(ch.isalpha() or ch in " ',;:.?!-" for ch in s), s


def test_normalize_sentence():
  assert synthetic.normalize_sentence("  and (he said) -- go 3 ways ;") == "And he said, go ways."
  assert synthetic.normalize_sentence("12 ; ") == ""


def test_voice_specs():
  v = synthetic.Voice.parse("espeak-ng:en-us+f3/pitch=70/speed=150")
  assert (v.engine, v.voice, v.pitch, v.speed) == ("espeak-ng", "en-us+f3", 70, 150)
  assert synthetic.Voice.parse(v.spec) == v
  assert v.speaker == "espeak-en-us-f3-p70-s150"
  assert synthetic.Voice.parse("festival:kal_diphone").speaker == "festival-kal"
  warped = synthetic.Voice.parse("flite:slt/warp=85")
  assert (warped.warp, warped.speaker, warped.spec) == (85, "flite-slt-w85", "flite:slt/warp=85")
  for bad in ("sapi:foo", "flite:slt/pitch=3", "espeak-ng:en/volume=3", "flite",
              "flite:slt/warp=20", "flite:slt/warp=0.9"):
    with pytest.raises(UserError):
      synthetic.Voice.parse(bad)


def test_warp_scales_frequencies_and_tempo_together():
  """warp=80: the speech lasts 1/0.8 as long and its spectrum's centroid is 0.8 as high."""
  text = ["In the beginning God created the heaven and the earth."]
  sr = 16000
  plain = synthetic.synthesize(synthetic.Voice.parse("flite:slt"), text, sr)[0]
  warped = synthetic.synthesize(synthetic.Voice.parse("flite:slt/warp=80"), text, sr)[0]
  pad = 2 * int(0.1 * sr)                        # _tidy keeps 0.1 s of silence at each end
  assert (len(warped) - pad) / (len(plain) - pad) == pytest.approx(1 / 0.8, rel=0.03)

  def centroid(wav):
    power = np.abs(np.fft.rfft(wav)) ** 2
    return np.sum(np.fft.rfftfreq(len(wav), 1 / sr) * power) / np.sum(power)
  assert centroid(warped) / centroid(plain) == pytest.approx(0.8, rel=0.05)


def test_the_folder_builder_reads_it(corpus):
  corpora = pytest.importorskip("data_prep.corpora")
  root, _ = corpus
  listing = corpora.list_folder(root, manifest=os.path.join(root, "manifest.tsv"))
  assert not listing.skips
  assert sorted((it.split, it.speaker) for it in listing.items) == sorted(
      (r["split"], r["speaker"]) for r in synthetic.read_manifest(root))
  train = corpora.list_folder(os.path.join(root, "train"))
  assert not train.skips and len(train.items) == 6
  assert {it.speaker for it in train.items} == {"espeak-en-us", "espeak-en-us-f3-p70",
                                                "festival-ked"}


def test_layout_and_manifest(corpus):
  root, info = corpus
  assert info["splits"]["train"]["utterances"] == 6
  assert info["splits"]["test"]["utterances"] == 2
  with open(os.path.join(root, "corpus.json")) as f:
    assert json.load(f)["splits"] == json.loads(json.dumps(info["splits"]))
  rows = synthetic.read_manifest(root)
  assert sorted(r["split"] for r in rows) == ["test"] * 2 + ["train"] * 6
  for r in rows:
    assert r["audio"] == os.path.join(root, r["split"], r["speaker"], r["id"] + ".wav")
    wav, sr = sf.read(r["audio"])
    assert sr == 24000 and wav.ndim == 1 and 0.5 < len(wav) / sr < 15
    with open(r["audio"][:-4] + ".txt") as f:
      assert f.read().strip() == r["text"]
  assert not os.path.exists(root + ".partial")


def test_heldout_voices_and_texts_never_in_train(corpus):
  root, _ = corpus
  train = synthetic.read_manifest(root, "train")
  test = synthetic.read_manifest(root, "test")
  assert {r["speaker"] for r in test} == {"flite-slt"}
  assert "flite-slt" not in {r["speaker"] for r in train}
  assert not os.path.exists(os.path.join(root, "train", "flite-slt"))
  assert not {r["text"] for r in train} & {r["text"] for r in test}
  assert len({r["speaker"] for r in train}) == 3


def test_same_seed_same_files_other_seed_other_text(corpus, tmp_path):
  root, _ = corpus
  again = str(tmp_path / "again")
  synthetic.make_corpus(small_config(workers=1), again, progress=False)
  # corpus.json records the worker count, which may differ; every other byte must match.
  a, b = tree_digest(root), tree_digest(again)
  a.pop("corpus.json"), b.pop("corpus.json")
  assert a == b
  other = synthetic.plan_corpus(small_config(seed=1))
  assert [it.text for it in other] != [it.text for it in synthetic.plan_corpus(small_config())]


def test_refuses_existing_output_and_bad_configs(corpus):
  root, _ = corpus
  with pytest.raises(UserError, match="already exists"):
    synthetic.make_corpus(small_config(), root, progress=False)
  with pytest.raises(UserError, match="not in `voices`"):
    synthetic.plan_corpus(small_config(heldout_voices=["flite:kal"]))
  with pytest.raises(UserError, match="every voice is held out"):
    synthetic.plan_corpus(small_config(voices=["flite:slt"]))
  with pytest.raises(UserError, match="only"):
    synthetic.plan_corpus(small_config(num_utterances=10 ** 6))


def test_pick_distinct():
  import numpy as np
  sim = np.array([[1.0, 0.95, 0.5], [0.95, 1.0, 0.6], [0.5, 0.6, 1.0]])
  assert synthetic.pick_distinct(sim, 0.9) == [0, 2]
  assert synthetic.pick_distinct(sim, 0.99) == [0, 1, 2]


def test_default_corpus_trains_on_no_copy_of_a_heldout_voice():
  """The built-in config's corpus plan (`plan_corpus`, warped voices included) trains on
  every training voice and on no copy of a held-out voice under other options (a warped
  flite rms would be rms again); each training voice is its own speaker."""
  c = get_config()
  c.num_utterances = len(c.voices)     # one utterance per voice at least (round-robin)
  items = synthetic.plan_corpus(c)
  voices = {split: {synthetic.Voice.parse(it.voice) for it in items if it.split == split}
            for split in ("train", "test")}
  assert len(voices["test"]) == len(c.heldout_voices)
  assert len(voices["train"]) == len(c.voices) - len(c.heldout_voices)
  held = {(v.engine, v.voice) for v in voices["test"]}
  assert not [v.spec for v in voices["train"] if (v.engine, v.voice) in held]
  assert len({v.speaker for v in voices["train"]}) == len(voices["train"])


def test_seen_voice_split_has_training_voices_say_the_test_sentences():
  items = synthetic.plan_corpus(small_config(num_seen_voice_utterances=6))
  by_split = {s: [it for it in items if it.split == s] for s in synthetic.SPLITS}
  seen, train, test = by_split["test_seen"], by_split["train"], by_split["test"]
  assert len(seen) == 6
  train_speakers = {it.speaker for it in train}
  assert {it.speaker for it in seen} == train_speakers            # each voice twice
  assert {it.text for it in seen} == {it.text for it in test}      # the test sentences
  assert not {it.text for it in seen} & {it.text for it in train}  # never trained on
  assert len({(it.split, it.id) for it in items}) == len(items)
  # The train and test splits do not change when the seen-voice split is added.
  assert [it for it in items if it.split != "test_seen"] == synthetic.plan_corpus(small_config())
  with pytest.raises(UserError, match="test split's sentences"):
    synthetic.plan_corpus(small_config(num_seen_voice_utterances=2, heldout_voices=[],
                                       num_heldout_utterances=0))
