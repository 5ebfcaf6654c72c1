"""The evaluation protocol (test lists, prompt pairs, scores per system) and `valle-jax
evaluate` end to end on a trained run."""
import os

import numpy as np
import pytest

from valle_jax import evaluate, metrics
from valle_jax.errors import UserError


# --------------------------------------------------------------- the evaluation protocol


def _rows(tmp_path, spec, sr=8000):
  """Test-list rows with silent wavs of the given durations: spec = [(id, speaker, s)]."""
  import soundfile as sf
  rows = []
  for utt, speaker, seconds in spec:
    path = str(tmp_path / f"{utt}.wav")
    sf.write(path, np.zeros(int(seconds * sr), np.float32), sr)
    rows.append({"id": utt, "audio": path, "text": f"words of {utt}", "speaker": speaker})
  return rows


def test_heldout_pairs_take_the_other_utterance_closest_to_the_prompt_length(tmp_path):
  rows = _rows(tmp_path, [("a1", "A", 5.0), ("a2", "A", 3.5), ("a3", "A", 2.5),
                          ("b1", "B", 3.0), ("c1", "C", 4.0), ("c2", "C", 9.0)])
  pairs = evaluate.heldout_pairs(rows, 3.0)     # durations read from the files
  assert [(t["id"], p["id"]) for t, p in pairs] == [
      ("a1", "a2"),                                # a2 and a3 tie (0.5 s off): the first
      ("a2", "a3"), ("a3", "a2"), ("c1", "c2"), ("c2", "c1")]   # b1: no other utterance
  # Targets may be a subset; prompts still come from every row.
  seconds = evaluate.durations(rows)
  assert seconds["a2"] == pytest.approx(3.5)
  only = evaluate.heldout_pairs(rows, 4.8, seconds, targets=[rows[1], rows[3]])
  assert [(t["id"], p["id"]) for t, p in only] == [("a2", "a1")]


def test_continual_pairs_keep_utterances_longer_than_the_prompt(tmp_path):
  rows = _rows(tmp_path, [("a1", "A", 5.0), ("a2", "A", 3.0), ("b1", "B", 3.2)])
  pairs = evaluate.continual_pairs(rows, 3.0)
  assert [(t["id"], p["id"]) for t, p in pairs] == [("a1", "a1"), ("b1", "b1")]


def test_summarize_is_corpus_wer_and_mean_similarities():
  import jiwer
  nan = float("nan")

  def row(system, text, hyp, sims):
    return {"id": text, "speaker": "s", "system": system, "text": text, "hypothesis": hyp,
            "sim_prompt": sims[0], "sim_original": sims[1], "sim_other": sims[2]}

  rows = [row("valle", "The cat sat.", "the cat sat", (0.5, 0.6, 0.1)),
          row("valle", "A quick brown fox, jumps!", "a quick fox jumps over", (nan, nan, nan)),
          row("ground_truth", "The cat sat.", "the bat sat", (0.9, 1.0, 0.2)),
          row("valle", "Hello there.", "", (0.3, 0.2, -0.1))]
  table = evaluate.summarize(rows)
  assert [r["system"] for r in table] == ["ground truth", "valle-jax"]   # SYSTEMS order
  truth, valle = table
  assert (truth["n"], valle["n"]) == (1, 3)
  assert valle["wer"] == pytest.approx(jiwer.wer(
      ["the cat sat", "a quick brown fox jumps", "hello there"],
      ["the cat sat", "a quick fox jumps over", ""]))
  assert truth["wer"] == pytest.approx(jiwer.wer("the cat sat", "the bat sat"))
  # valle: 3 + 4 hits of 10 words; "brown" and "hello there" deleted, "over" inserted
  assert {k: valle[k] for k in ("words", "hits", "substitutions", "deletions",
                                "insertions")} == {"words": 10, "hits": 7, "substitutions": 0,
                                                   "deletions": 3, "insertions": 1}
  assert valle["heard"] == pytest.approx(0.7)
  assert (truth["hits"], truth["substitutions"], truth["heard"]) == (2, 1, pytest.approx(2 / 3))
  assert valle["sim_prompt"] == pytest.approx(np.mean([0.5, 0.3]))        # NaN left out
  assert valle["sim_other"] == pytest.approx(np.mean([0.1, -0.1]))
  assert truth["sim_original"] == pytest.approx(1.0)


def test_summarize_by_condition():
  def row(condition, system, hyp):
    return {"id": hyp, "speaker": "s", "condition": condition, "system": system,
            "text": "a b", "hypothesis": hyp, "sim_prompt": 0.5, "sim_original": 0.5,
            "sim_other": 0.1}

  rows = [row("unseen", "valle", "a"), row("seen", "ground_truth", "a b"),
          row("seen", "valle", "a b"), row("unseen", "ground_truth", "a b")]
  table = evaluate.summarize(rows)
  assert [(r["condition"], r["system"], r["n"], r["wer"]) for r in table] == [
      ("unseen", "ground truth", 1, 0.0), ("unseen", "valle-jax", 1, 0.5),
      ("seen", "ground truth", 1, 0.0), ("seen", "valle-jax", 1, 0.0)]
  assert "condition" not in evaluate.summarize(
      [{k: v for k, v in r.items() if k != "condition"} for r in rows])[0]


class _FakeAsr:
  name = "fake"

  def transcribe(self, wav, sr):
    return "words" if len(wav) else ""


class _FakeSpeaker:
  name = "fake"

  def embed(self, wav, sr):
    return np.array([1.0, float(np.abs(wav).mean()) * 10])


def test_score_samples_skips_missing_systems_and_scores_empty_audio(tmp_path):
  import soundfile as sf
  sr = 16000
  files = {}
  for name, amplitude, seconds in (("p", 0.1, 1.0), ("t", 0.2, 1.0), ("v", 0.2, 0.5),
                                   ("empty", 0.0, 0.0)):
    files[name] = str(tmp_path / f"{name}.wav")
    sf.write(files[name], np.full(int(seconds * sr), amplitude, np.float32), sr)
  samples = [{"id": "u1", "speaker": "A", "text": "some words",
              "audio": {"prompt": files["p"], "ground_truth": files["t"], "valle": files["v"]}},
             {"id": "u2", "speaker": "B", "text": "more words",
              "audio": {"prompt": files["t"], "ground_truth": files["t"],
                        "valle": files["empty"]}}]
  rows = evaluate.score_samples(samples, _FakeAsr(), _FakeSpeaker())
  assert [(r["id"], r["system"]) for r in rows] == [
      ("u1", "ground_truth"), ("u1", "valle"), ("u2", "ground_truth"), ("u2", "valle")]
  u1_valle, u2_valle = rows[1], rows[3]
  assert u1_valle["seconds"] == 0.5 and u1_valle["sim_original"] == pytest.approx(1.0)
  assert u1_valle["wer"] == pytest.approx(0.5)     # "words" for "some words"
  assert u2_valle["seconds"] == 0.0 and u2_valle["wer"] == 1.0 and u2_valle["hypothesis"] == ""
  assert all(np.isnan(u2_valle[k]) for k in ("sim_prompt", "sim_original", "sim_other"))
  # With conditions, the rows carry them and "other voices" are those of the same condition.
  rows = evaluate.score_samples([{**samples[0], "condition": "seen"},
                                 {**samples[1], "condition": "unseen"}], _FakeAsr(),
                                _FakeSpeaker())
  assert [r["condition"] for r in rows] == ["seen", "seen", "unseen", "unseen"]
  assert all(np.isnan(r["sim_other"]) for r in rows)


def _write_tsv(path, header, lines):
  path.write_text("\n".join("\t".join(x) for x in [header, *lines]) + "\n", encoding="utf-8")
  return str(path)


def test_read_test_list(tmp_path):
  header = ["id", "audio", "text", "speaker", "split"]
  good = _write_tsv(tmp_path / "list.tsv", header, [
      ["u1", "test/a/u1.wav", "One.", "a", "test"], ["u2", "/abs/u2.wav", "Two.", "a", "train"],
      ["", "", "", "", ""]])
  rows = evaluate.read_test_list(good)
  assert [r["id"] for r in rows] == ["u1", "u2"]
  assert rows[0]["audio"] == str(tmp_path / "test/a/u1.wav") and rows[1]["audio"] == "/abs/u2.wav"
  assert [r["id"] for r in evaluate.read_test_list(good, "train")] == ["u2"]
  bad = {
      "missing.tsv": (None, "cannot read the test list"),
      "cols.tsv": ((["id", "audio", "text"], [["u1", "a.wav", "One."]]), "no speaker column"),
      "fields.tsv": ((header, [["u1", "a.wav", "One.", "a"]]), "line 2 .* has 4 fields"),
      "dup.tsv": ((header, [["u1", "a.wav", "One.", "a", "t"]] * 2), "'u1' is on two lines"),
      "empty.tsv": ((header, []), "holds no utterance"),
  }
  for name, (content, message) in bad.items():
    path = str(tmp_path / name) if content is None else _write_tsv(tmp_path / name, *content)
    with pytest.raises(UserError, match=message):
      evaluate.read_test_list(path)
  with pytest.raises(UserError, match="of the split 'dev'"):
    evaluate.read_test_list(good, "dev")
  with pytest.raises(UserError, match="no split column"):
    evaluate.read_test_list(_write_tsv(tmp_path / "nosplit.tsv", header[:4], []), "test")
  (tmp_path / "latin1.tsv").write_bytes("id\taudio\ttext\tspeaker\nu\tx.wav\tcaf\xe9\ta\n"
                                        .encode("latin-1"))
  with pytest.raises(UserError, match="not UTF-8"):
    evaluate.read_test_list(str(tmp_path / "latin1.tsv"))


# --------------------------------------------------------------- `valle-jax evaluate`

FAST = {"top_k": 20, "max_frames_per_phoneme": 1.0}   # short outputs: a fast test


@pytest.fixture(scope="module")
def tone_list(tmp_path_factory):
  """A test list of four tone utterances by two speakers (1-1.6 s), plus one of another
  split."""
  from conftest import write_tone_corpus
  root = tmp_path_factory.mktemp("tone_list")
  write_tone_corpus(str(root))
  lines = [[f"utt{i}", f"spk{i % 2}/utt{i}.wav",
            (root / f"spk{i % 2}" / f"utt{i}.txt").read_text(encoding="utf-8"), f"spk{i % 2}",
            "test" if i < 4 else "dev"] for i in range(5)]
  return _write_tsv(root / "list.tsv", ["id", "audio", "text", "speaker", "split"], lines)


@pytest.fixture
def fake_scorers(monkeypatch):
  """Registers the cheap fake scorers as 'fake' (the real ones cost seconds a clip here)."""
  monkeypatch.setitem(metrics.ASR_SCORERS, "fake", _FakeAsr)
  monkeypatch.setitem(metrics.SPEAKER_SCORERS, "fake", _FakeSpeaker)
  return {"asr": "fake", "speaker": "fake"}


def test_evaluate_cross_then_rerun_reuses_the_wavs(trained_run, tone_list, tmp_path,
                                                    monkeypatch, fake_scorers):
  """Cross mode with PocketSphinx and resemblyzer; a re-run (scored with other scorers)
  synthesises nothing; other synthesis settings in the same folder are refused."""
  import csv
  import json

  from valle_jax import evaluate_cli, synthesize
  out = str(tmp_path / "cross")
  kw = dict(test_list=tone_list, split="test", sample=FAST, batch_size=2)
  first = evaluate_cli.run(trained_run, out, **kw)
  with open(first["csv"], encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 12
  assert {(r["id"], r["system"]) for r in rows} == {
      (f"utt{i}", s) for i in range(4) for s in ("ground_truth", "resynthesis", "valle")}
  with open(first["json"], encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["mode"] == "cross" and saved["asr"] == "pocketsphinx" and saved["step"] == 40
  assert saved["table"] == first["table"]
  assert [r["system"] for r in saved["table"]] == ["ground truth", "codec resynthesis",
                                                   "valle-jax"]
  assert all(r["n"] == 4 for r in saved["table"])
  assert saved["table"][0]["sim_original"] == pytest.approx(1.0, abs=1e-4)
  with open(first["samples"], encoding="utf-8") as f:
    samples = {s["id"]: s for s in json.load(f)}
  assert samples["utt0"]["prompt_id"] == "utt2" and samples["utt3"]["prompt_id"] == "utt1"
  made = sorted(os.listdir(os.path.join(out, "samples")))
  assert made == sorted(["samples.json"] + [f"utt{i}_{s}.wav" for i in range(4)
                                            for s in ("resynthesis", "valle")])
  stamps = {f: os.path.getmtime(os.path.join(out, "samples", f)) for f in made if ".wav" in f}

  def no_synthesis(*args, **kwargs):
    raise AssertionError("a re-run synthesised again")

  monkeypatch.setattr(synthesize, "synthesize", no_synthesis)
  again = evaluate_cli.run(trained_run, out, **kw, **fake_scorers)
  assert [r["n"] for r in again["table"]] == [4, 4, 4]
  assert stamps == {f: os.path.getmtime(os.path.join(out, "samples", f)) for f in stamps}
  with open(again["json"], encoding="utf-8") as f:
    assert json.load(f)["asr"] == "fake"
  with pytest.raises(UserError, match="other settings .*seed"):
    evaluate_cli.run(trained_run, out, **kw, **fake_scorers, seed=1)


def test_evaluate_continual(trained_run, tone_list, tmp_path, fake_scorers):
  import soundfile as sf

  from valle_jax import evaluate_cli
  out = str(tmp_path / "continual")
  result = evaluate_cli.run(trained_run, out, test_list=tone_list, mode="continual",
                            prompt_seconds=1.1, min_seconds=1.1, sample=FAST, batch_size=2,
                            **fake_scorers)
  # utt0 (1.0 s) is under --min_seconds; each other one is continued from its first 1.1 s.
  assert [r["n"] for r in result["table"]] == [4, 4, 4]
  assert {r["id"] for r in result["rows"]} == {"utt1", "utt2", "utt3", "utt4"}
  prompt = sf.info(os.path.join(out, "samples", "utt1_prompt.wav"))
  assert prompt.duration == pytest.approx(1.1, abs=1e-3)
  valle = sf.info(os.path.join(out, "samples", "utt1_valle.wav"))
  assert valle.duration >= prompt.duration       # the whole utterance: the prompt included


@pytest.mark.parametrize("kw, message", [
    (dict(), "either --test_list"),
    (dict(mode="sideways"), "--mode must be one of"),
    (dict(min_seconds=30.0), "none of the 5 utterances lasts 30 to inf s"),
    (dict(test_list="one_each"), "no speaker has two utterances"),
    (dict(mode="continual"), "nothing to continue"),
    (dict(asr="whisper"), "unknown ASR scorer 'whisper'"),
    (dict(test_list=None, librispeech="/nonexistent"), "holds no test-clean folder"),
])
def test_evaluate_user_errors(tone_list, tmp_path, kw, message):
  """Each is found before the checkpoint (which does not exist here) is loaded."""
  from valle_jax import evaluate_cli
  kw = dict(kw)
  if kw.get("test_list") == "one_each":           # its first two rows: one per speaker
    with open(tone_list, encoding="utf-8") as f:
      head = f.readlines()[:3]
    kw["test_list"] = os.path.join(os.path.dirname(tone_list), "one_each.tsv")
    with open(kw["test_list"], "w", encoding="utf-8") as f:
      f.writelines(head)
  kw = {"test_list": tone_list, **kw} if kw else {}
  with pytest.raises(UserError, match=message):
    evaluate_cli.run(str(tmp_path / "no_run"), str(tmp_path / "out"), **kw)


def test_librispeech_test_list(tmp_path, fake_scorers):
  """test-clean as `data_prep.corpora` lists it, bounded to 4-10 s by default."""
  import soundfile as sf

  from data_prep import corpora
  from valle_jax import evaluate_cli
  sr = 8000
  for utt, seconds in (("19-198-0000", 3.0), ("19-198-0001", 5.0), ("26-495-0000", 12.0)):
    speaker, chapter, _ = utt.split("-")
    folder = tmp_path / "LibriSpeech" / "test-clean" / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / f"{utt}.flac"), np.full(int(seconds * sr), 0.1, np.float32), sr)
    with open(folder / f"{speaker}-{chapter}.trans.txt", "a", encoding="utf-8") as f:
      f.write(f"{utt} WORDS OF {utt}\n")
  root = str(tmp_path / "LibriSpeech")
  rows, bounds = corpora.librispeech_test_list(root)
  assert bounds == (4.0, 10.0)
  assert [(r["id"], r["speaker"], r["text"]) for r in rows] == [
      ("19-198-0000", "19", "words of 19-198-0000"), ("19-198-0001", "19", "words of 19-198-0001"),
      ("26-495-0000", "26", "words of 26-495-0000")]
  # Only 19-198-0001 lasts 4-10 s; its prompt is the 3 s one, outside the bounds.
  pairs = evaluate.heldout_pairs(rows, 3.0, targets=[rows[1]])
  assert [(t["id"], p["id"]) for t, p in pairs] == [("19-198-0001", "19-198-0000")]
  with pytest.raises(UserError, match="no checkpoint at"):       # every check before passed
    evaluate_cli.run(str(tmp_path / "no_run"), str(tmp_path / "out"), librispeech=root,
                     **fake_scorers)
  with pytest.raises(UserError, match="none of the 3 utterances lasts 4 to 4.5 s"):
    evaluate_cli.run(str(tmp_path / "no_run"), str(tmp_path / "out"), librispeech=root,
                     max_seconds=4.5)
  with pytest.raises(UserError, match="--split picks rows of a --test_list"):
    evaluate_cli.run(str(tmp_path / "no_run"), str(tmp_path / "out"), librispeech=root,
                     split="test")
