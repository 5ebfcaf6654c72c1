"""`valle-jax demo --quick` end to end (every stage, in process): VALL-E's two models, all 8
codebooks; then a re-run that reuses the finished stages. The aligned variant's demo config
(`--variant=aligned`) is checked here; its models, training and synthesis are run by
tests/test_variant_aligned.py."""
import csv
import json
import math
import os
import time

import pytest

from valle_jax import demo
from valle_jax.errors import UserError


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("demo"))
  return workdir, demo.run_demo(workdir, quick=True)


def test_quick_demo_end_to_end(quick_demo):
  workdir, result = quick_demo
  assert list(result["stages"]) == list(demo.STAGES)
  for name in demo.STAGES:
    marker = json.load(open(os.path.join(workdir, "stages", f"{name}.json"), encoding="utf-8"))
    assert marker["seconds"] >= 0 and marker["outputs"]
  assert not os.path.exists(os.path.join(workdir, demo.FEATURE_CACHE))  # prepare removed it
  # VALL-E: nothing but the prepared dataset is needed (no alignments).
  assert "variant" not in result["stages"]["prepare"]["outputs"]
  table = result["table"]
  systems = ["ground truth", "codec resynthesis", "valle-jax"]
  assert [(r["condition"], r["system"]) for r in table] == [
      (c, system) for c in ("unseen voice", "seen voice") for system in systems]
  for row in table:
    assert row["n"] == 4
    assert 0 <= row["wer"] and math.isfinite(row["wer"])
    for col in ("sim_prompt", "sim_original", "sim_other"):
      assert -1 <= row[col] <= 1, (row["system"], col)
  truth = table[0]
  assert truth["sim_original"] == pytest.approx(1.0, abs=1e-4)
  assert truth["wer"] < 1.0                          # PocketSphinx follows the real voices
  assert truth["sim_prompt"] > truth["sim_other"]     # the prompt is the same voice
  with open(os.path.join(workdir, "results.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 24 and {r["system"] for r in rows} == {"ground_truth", "resynthesis",
                                                             "valle"}
  assert {r["condition"] for r in rows} == {"unseen voice", "seen voice"}
  page = open(result["report"], encoding="utf-8").read()
  assert page.count("<audio") == 32 and "training_curves.png" in page
  assert "<th>condition</th>" in page and page.count("<td>seen voice</td>") == 3
  # Held-out prediction: the AR (codebook 1) and every NAR codebook its evaluation met,
  # each beside the unigram baseline of the train split's codes, in the report.
  unigram = result["stages"]["train"]["outputs"]["unigram"]
  assert [u["codebook"] for u in unigram] == list(range(1, 9))
  heldout = result["heldout"]
  assert heldout[0]["model"] == "AR" and heldout[0]["codebook"] == 1
  assert {r["codebook"] for r in heldout[1:]} <= set(range(2, 9)) and len(heldout) > 1
  for r in heldout:
    assert 0 <= r["top1_acc"] <= r["top10_acc"] <= 1 and math.isfinite(r["loss"])
    assert 0 <= r["unigram_top1_acc"] <= r["unigram_top10_acc"] <= 1
    assert 0 < r["unigram_loss"] < 2 * math.log(1024)
    assert f"{r['unigram_loss']:.3f}" in page
  assert "<table id='heldout'>" in page and "Held-out prediction" in page
  # Training ends with one evaluation on the held-out voices, text use included.
  gain = result["stages"]["train"]["outputs"]["eval"]["ar/text_gain"]
  assert math.isfinite(gain) and "ar/text_gain" in page
  assert f"{truth['wer']:.3f}" in page
  # Each prompt is another utterance of the same speaker in the same split: held-out
  # speakers for the unseen voices (zero-shot), training speakers for the seen ones, saying
  # the test sentences.
  samples = json.load(open(os.path.join(workdir, "samples", "samples.json"), encoding="utf-8"))
  for s in samples:
    assert s["prompt_id"] != s["id"] and s["prompt_id"].split("_")[0] == s["speaker"]
    assert ("_seen" in s["prompt_id"]) == ("_seen" in s["id"]) == (s["condition"] == "seen voice")
  corpus = json.load(open(os.path.join(workdir, "corpus", "corpus.json"), encoding="utf-8"))
  train_speakers = {sp for sp, _ in corpus["splits"]["train"]["speakers"]}
  by_condition = {c: [s for s in samples if s["condition"] == c] for c in ("unseen voice",
                                                                           "seen voice")}
  assert not train_speakers & {s["speaker"] for s in by_condition["unseen voice"]}
  assert {s["speaker"] for s in by_condition["seen voice"]} <= train_speakers
  assert ({s["text"] for s in by_condition["seen voice"]} <=
          {s["text"] for s in by_condition["unseen voice"]})


def test_rerun_reuses_finished_stages(quick_demo):
  workdir, first = quick_demo
  t0 = time.time()
  again = demo.run_demo(workdir, quick=True)
  assert time.time() - t0 < 10
  # The markers as written (JSON) are what a re-run reads back, unchanged.
  assert again["stages"] == json.loads(json.dumps(first["stages"]))
  assert again["table"] == first["table"] and again["report"] == first["report"]


def test_the_demo_is_valle_and_the_aligned_variant_has_its_own():
  """The demo's config is the paper's two models (VALL-E, every NAR stage, all codebooks
  decoded, no codebook copied); `--variant=aligned` takes the variant's own config."""
  for quick in (False, True):
    cfg = demo.demo_config(quick)
    assert cfg.train.variant == "valle" and "pointer" not in cfg.train
    assert cfg.synthesis.codebooks == 0 and cfg.codec.voice_codebooks == 0
    assert tuple(cfg.train.data.nar_stage_weights) == ()
    # The seen-voice condition: 2 utterances per training voice (16 in the full demo).
    training_voices = len(cfg.corpus.voices) - len(cfg.corpus.heldout_voices)
    assert cfg.corpus.num_seen_voice_utterances == 2 * training_voices
    assert quick or cfg.corpus.num_seen_voice_utterances == 32
  from valle_jax.variants import aligned  # pylint: disable=g-import-not-at-top
  del aligned   # registers the variant's recipe
  variant = demo.demo_config(variant="aligned")
  assert variant.train.variant == "aligned" and variant.train.pointer.advance == "median"
  assert variant.synthesis.codebooks == 2 and variant.codec.voice_codebooks == 1
  assert variant.train.train.steps == demo.demo_config().train.train.steps
  assert variant.corpus.to_dict() == demo.demo_config().corpus.to_dict()   # same splits
  with pytest.raises(UserError, match="not loaded"):
    demo.demo_config(variant="nonesuch")


def test_budget_scales_the_steps_and_the_final_evaluation_follows():
  full, doubled = demo.demo_config(), demo.demo_config(budget=160)
  assert doubled.train.train.steps == 2 * full.train.train.steps
  assert doubled.train.train.eval_every == doubled.train.train.steps


def test_rerun_with_other_settings_is_refused(quick_demo):
  workdir, _ = quick_demo
  with pytest.raises(UserError, match="other settings"):
    demo.run_demo(workdir, quick=True, budget=120)
