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
  assert [r["system"] for r in table] == ["ground truth", "codec resynthesis", "valle-jax"]
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
  assert len(rows) == 12 and {r["system"] for r in rows} == {"ground_truth", "resynthesis",
                                                             "valle"}
  page = open(result["report"], encoding="utf-8").read()
  assert page.count("<audio") == 16 and "training_curves.png" in page
  # Training ends with one evaluation on the held-out voices, text use included.
  gain = result["stages"]["train"]["outputs"]["eval"]["ar/text_gain"]
  assert math.isfinite(gain) and "ar/text_gain" in page
  assert f"{truth['wer']:.3f}" in page
  # Zero-shot protocol: each prompt is another utterance of the same held-out speaker.
  samples = json.load(open(os.path.join(workdir, "samples", "samples.json"), encoding="utf-8"))
  for s in samples:
    assert s["prompt_id"] != s["id"] and s["prompt_id"].split("_")[0] == s["speaker"]
  corpus = json.load(open(os.path.join(workdir, "corpus", "corpus.json"), encoding="utf-8"))
  train_speakers = {sp for sp, _ in corpus["splits"]["train"]["speakers"]}
  assert not train_speakers & {s["speaker"] for s in samples}


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
  from valle_jax.variants import aligned  # pylint: disable=g-import-not-at-top
  del aligned   # registers the variant's recipe
  variant = demo.demo_config(variant="aligned")
  assert variant.train.variant == "aligned" and variant.train.pointer.advance == "median"
  assert variant.synthesis.codebooks == 2 and variant.codec.voice_codebooks == 1
  assert variant.train.train.steps == demo.demo_config().train.train.steps
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
