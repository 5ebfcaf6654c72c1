"""`valle-jax demo`: VALL-E end to end on this machine, offline, ending with DIR/report.html.

    valle-jax demo --workdir=demo            # the full demo: about 55 minutes on a 2-core CPU
    valle-jax demo --workdir=demo --budget=160   # twice the training steps (budget_minutes 80)
    valle-jax demo --workdir=ci --quick      # every stage in a few minutes (CI)
    valle-jax demo --workdir=demo_aligned --variant=aligned   # a variant's demo

The demo trains and samples VALL-E's two models (the AR's codebook-1 tokens, the NAR's 7
stages, all 8 codebooks decoded). `--variant=NAME` runs a variant's own demo config
(valle_jax/variants/NAME; its recipe's `demo_config`) instead.

Stages (configs/demo.py holds every setting; docs/demo.md says why each has its value):

  1 corpus      the built-in synthetic corpus (data_prep/synthetic.py); the held-out voices
                speak only in its test split, and in its test_seen split training voices
                say the test split's sentences                        -> DIR/corpus/
  2 codec       the offline codec fitted on the TRAIN split only      -> DIR/codec/
                (its analysed features are kept in DIR/codec_features/ for stage 3)
  3 prepare     phonemes + codec codes of every split (data_prep)     -> DIR/data/
                (reads the train split's features from the cache, then deletes it), then
                what the variant's recipe needs of a dataset (`prepare_dataset`; the
                aligned variant: its forced alignments)
  4 train       AR and NAR together (valle_jax/train.py), ending with one evaluation on
                the test split (loss, top-1/top-10 accuracy, ar/text_gain), and the
                unigram baseline of that split's codes (valle_jax/unigram.py) -> DIR/run/
  5 synthesize  for two conditions, CONDITIONS: unseen voices (the test split: zero-shot)
                and seen voices (test_seen: training voices), both saying sentences never
                seen in training. The prompt is ANOTHER utterance of the same speaker in
                that split (the one closest to 3 s, with its transcript); plus the codec
                resynthesis of the ground truth                       -> DIR/samples/
  6 evaluate    WER (PocketSphinx) and speaker similarity (resemblyzer) of ground truth,
                codec resynthesis and valle-jax, per condition        -> DIR/results.csv,json
  7 report      DIR/report.html (valle_jax/report.py)

Each finished stage writes `DIR/stages/<stage>.json` (its outputs and seconds); a re-run
reuses finished stages, and a killed training resumes from its last checkpoint. The demo's
config is saved in DIR/demo_config.json; re-running with other flags in the same DIR is an
error (use a new --workdir).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable

from absl import flags

from valle_jax import evaluate, io_check, metrics, report
from valle_jax.errors import UserError

# The codec stage's analysed features (WORLD analysis with Harvest F0, ~3x real time per
# core), read back by the prepare stage instead of analysing the train split twice.
FEATURE_CACHE = "codec_features"
STAGES = ("corpus", "codec", "prepare", "train", "synthesize", "evaluate", "report")
# (corpus split, condition): whose voices synthesis speaks in, in table order.
CONDITIONS = (("test", "unseen voice"), ("test_seen", "seen voice"))

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's output.")
_BUDGET = flags.DEFINE_float("budget", None, "Minutes the whole demo may take (scales the "
                             "training steps; default: the config's budget_minutes).")
_QUICK = flags.DEFINE_bool("quick", False, "A tiny corpus and model and a few steps: every "
                           "stage in a few minutes (CI).")
_VARIANT = flags.DEFINE_string("variant", "valle", "valle (VALL-E) or a variant's name "
                               "(valle_jax/variants): whose demo config to run.")


def demo_config(quick: bool = False, budget: float | None = None, variant: str = "valle"):
  """The demo's config (configs/demo.py, or `variant`'s recipe's `demo_config`), training
  steps scaled to `budget` minutes."""
  if variant == "valle":
    from configs import demo  # pylint: disable=g-import-not-at-top
    cfg = demo.get_config(quick)
  else:
    from valle_jax import recipe  # pylint: disable=g-import-not-at-top
    make = recipe.get(variant).demo_config
    if make is None:
      raise UserError(f"the variant {variant!r} has no demo.")
    cfg = make(quick)
  if budget is not None:
    if budget <= 0:
      raise UserError(f"--budget must be a positive number of minutes, got {budget:g}.")
    cfg.train.train.steps = max(1, round(cfg.train.train.steps * budget / cfg.budget_minutes))
    cfg.budget_minutes = float(budget)
  return cfg


# ----------------------------------------------------------------------------------------
# Stages: each returns its outputs (JSON-serialisable)
# ----------------------------------------------------------------------------------------

def _corpus(cfg, workdir: str) -> dict[str, Any]:
  from data_prep.synthetic import make_corpus  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, "corpus")
  info = make_corpus(cfg.corpus, out, overwrite=True)
  return {"corpus": out, "splits": info["splits"]}


def _codec(cfg, workdir: str, corpus: str) -> dict[str, Any]:
  from data_prep.synthetic import read_manifest  # pylint: disable=g-import-not-at-top
  from valle_jax.codec import offline  # pylint: disable=g-import-not-at-top
  paths = [r["audio"] for r in read_manifest(corpus, "train")]
  features = offline.Features(content_first=cfg.codec.content_first,
                              voice_codebooks=cfg.codec.voice_codebooks)
  codec = offline.fit(paths, offline.FitConfig(seed=cfg.seed, iters=cfg.codec.iters,
                                               max_frames=cfg.codec.max_frames,
                                               features=features),
                      cache_dir=os.path.join(workdir, FEATURE_CACHE))
  out = codec.save(os.path.join(workdir, "codec"))
  return {"codec": out, "fitted_on": len(paths), "checksum": codec.checksum()}


def _prepare(cfg, workdir: str, corpus: str, codec_dir: str) -> dict[str, Any]:
  from configs.data import folder  # pylint: disable=g-import-not-at-top
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  pcfg = folder.get_config()
  pcfg.source = corpus
  pcfg.manifest = os.path.join(corpus, "manifest.tsv")
  pcfg.output = os.path.join(workdir, "data")
  pcfg.overwrite = True  # only a run killed between writing and marking leaves one
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top
  cache = os.path.join(workdir, FEATURE_CACHE)
  made = pipeline.prepare(pcfg, codec=get_codec(
      {"name": "offline", "path": codec_dir, "feature_cache": cache}))
  shutil.rmtree(cache, ignore_errors=True)
  outputs = {"dataset": made["dataset"], "records": made["records"],
             "skipped": made["skipped"]}
  from valle_jax import recipe  # pylint: disable=g-import-not-at-top
  prepare_dataset = recipe.of_config(cfg.train).prepare_dataset
  if prepare_dataset is not None:
    outputs["variant"] = prepare_dataset(made["dataset"])
  return outputs


def _train(cfg, workdir: str, dataset: str) -> dict[str, Any]:
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  tcfg = cfg.train.copy_and_resolve_references()
  tcfg.data.dataset = dataset
  run = os.path.join(workdir, "run")
  summary = train.train(tcfg, run)
  if summary["step"] < tcfg.train.steps:
    raise UserError(f"training stopped at step {summary['step']} of {tcfg.train.steps}; "
                    "re-run the same command to resume it.")
  from valle_jax import unigram  # pylint: disable=g-import-not-at-top
  return {"run": run, "step": summary["step"], "metrics": summary["metrics"],
          "eval": _last_eval(run),
          "unigram": unigram.dataset_baseline(dataset, tcfg.data.eval_split,
                                          train_split=tcfg.data.train_split)}


def _last_eval(run: str) -> dict[str, float]:
  """The run's last evaluation row in metrics.jsonl ({} if none)."""
  last = {}
  with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row.get("split") == "eval":
        last = row
  return last


def _synthesize(cfg, workdir: str, corpus: str, run: str) -> dict[str, Any]:
  from data_prep.synthetic import read_manifest  # pylint: disable=g-import-not-at-top
  from valle_jax import checkpoint, sampling, synthesize  # pylint: disable=g-import-not-at-top
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top

  pairs, conditions = [], []
  for split, condition in CONDITIONS:
    if split == "test_seen" and not cfg.corpus.num_seen_voice_utterances:
      continue
    mine = evaluate.heldout_pairs(read_manifest(corpus, split), cfg.synthesis.prompt_seconds)
    if not mine:
      count = "num_heldout_utterances" if split == "test" else "num_seen_voice_utterances"
      raise UserError(f"the {split} split of the corpus in {corpus} has no speaker with two "
                      f"utterances; raise corpus.{count}.")
    mine = mine[:cfg.synthesis.max_utterances or None]
    pairs += mine
    conditions += [condition] * len(mine)
  bundle = checkpoint.load_inference_bundle(run)
  codec = get_codec(bundle.codec_description)   # the run's own codec, checksum checked
  options = sampling.SampleOptions.from_config(cfg.synthesis.sample)
  out_dir = os.path.join(workdir, "samples")
  samples = evaluate.synthesize_samples(
      bundle.ar, bundle.nar, bundle.symbols, codec, pairs, options, out_dir,
      seed=cfg.synthesis.seed, batch_size=cfg.synthesis.batch_size,
      codebooks=cfg.synthesis.codebooks,
      decoding=bundle.recipe.decoding(bundle.config, bundle.codec_description),
      nar_prompt=synthesize.trained_nar_prompt(bundle.config))
  for sample, condition in zip(samples, conditions):   # samples are in pairs' order
    sample["condition"] = condition
  evaluate.write_json(os.path.join(out_dir, "samples.json"), samples)
  return {"samples": os.path.join(out_dir, "samples.json"), "count": len(samples),
          "checkpoint_step": bundle.step, "sample_options": cfg.synthesis.sample.to_dict()}


def _evaluate(cfg, workdir: str, samples_path: str) -> dict[str, Any]:
  with open(samples_path, encoding="utf-8") as f:
    samples = json.load(f)
  rows = evaluate.score_samples(samples, metrics.get_asr(cfg.evaluate.asr),
                                metrics.get_speaker_encoder(cfg.evaluate.speaker))
  table = evaluate.summarize(rows)
  csv_path, json_path = evaluate.write_results(
      workdir, rows, table, {"asr": cfg.evaluate.asr, "speaker": cfg.evaluate.speaker})
  return {"csv": csv_path, "json": json_path, "table": table}


def _report(cfg, workdir: str, samples_path: str, table, run: str, trained, seconds
            ) -> dict[str, Any]:
  with open(samples_path, encoding="utf-8") as f:
    samples = json.load(f)
  labels = {"prompt": "prompt", **dict(evaluate.SYSTEMS)}
  present = [c for _, c in CONDITIONS if any(s["condition"] == c for s in samples)]
  per_condition = max(1, cfg.report.max_samples // len(present))
  by_condition = {c: [s for s in samples if s["condition"] == c] for c in present}
  shown = [{**s, "audio": {labels[k]: s["audio"][k] for k in labels}}
           for c in present for s in by_condition[c][:per_condition]]
  count = {c: len(mine) for c, mine in by_condition.items()}
  notes = [
      f"{'Quick (CI) demo' if cfg.quick else 'Demo'}: TTS of sentences never heard in "
      f"training, in two conditions: unseen voice ({count.get('unseen voice', 0)} "
      "utterances of voices never heard in training: zero-shot) and seen voice "
      f"({count.get('seen voice', 0)} utterances of training voices, the same sentences). "
      "Each prompt is another utterance of the same speaker in the same condition (the one "
      f"closest to {cfg.synthesis.prompt_seconds:g} s) with its transcript. A model that "
      "does well on seen voices only has learned its training voices, not to clone a voice.",
      f"WER: {cfg.evaluate.asr} + jiwer after one text normalisation. SIM: cosine similarity "
      f"of {cfg.evaluate.speaker} speaker embeddings to the prompt, to the original "
      "utterance, and (mean) to the prompts of the other voices of the same condition. "
      "Ground truth and codec resynthesis bound what the scorers and the codec allow.",
      f"Model: {cfg.train.model.num_layers} layers, width {cfg.train.model.width}, "
      f"{cfg.train.train.steps} training steps (AR and NAR).",
  ]
  notes += list(cfg.report.notes)
  if cfg.synthesis.codebooks:
    notes.append(f"valle-jax makes and decodes the codec's first {cfg.synthesis.codebooks} "
                 "codebooks (a lower bandwidth); the codec resynthesis decodes all of them.")
  evaluation = trained["eval"]
  heldout_notes = [
      "Next-token prediction on the test split (unseen voices, unseen sentences): the "
      f"models' evaluation at the end of training ({cfg.train.train.eval_batches} batches "
      "made as for training, same-speaker pairs included; the AR's tokens include its "
      "end-of-speech ones; each NAR example scores one codebook, drawn as in training), "
      "next to a unigram baseline that predicts each codebook's codes from their "
      "frequencies in the training split, scored on every code of the test split "
      "(valle_jax/unigram.py). Loss in nats per token; top-1 / top-10: the share of tokens "
      "whose code the model ranks first / in its first 10 (chance: 1 / 10 in "
      f"{cfg.train.model.codebook_size}). A model no better than the unigram has learned "
      "only how often each code occurs."]
  gain = evaluation.get("ar/text_gain")
  if gain is not None:
    heldout_notes.append(
        f"Does the AR read the text? On the same pairs, reversing each transcript raises "
        f"its loss by {gain:.3f} nats per token (ar/text_gain: loss with the phonemes "
        "reversed minus loss with them right); near 0, the AR continues the prompt's sound "
        "without following the words.")
  path = report.write_report(workdir, table=table, samples=shown,
                             metrics_path=os.path.join(run, "metrics.jsonl"),
                             title="valle-jax demo", notes=notes, stage_seconds=seconds,
                             heldout=report.heldout_rows(evaluation, trained["unigram"]),
                             heldout_notes=heldout_notes)
  return {"report": path}


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------

def run_demo(workdir: str, quick: bool = False, budget: float | None = None,
             variant: str = "valle") -> dict[str, Any]:
  """Runs (or resumes) every stage; returns {"stages": {stage: marker}, "table": rows,
  "report": path}."""
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
  cfg = demo_config(quick, budget, variant)
  evaluate.check_settings(os.path.join(workdir, "demo_config.json"),
                          json.loads(cfg.to_json()), "a demo", "--workdir")
  t_start = time.time()
  markers: dict[str, dict[str, Any]] = {}

  def stage(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    n = STAGES.index(name) + 1
    path = os.path.join(workdir, "stages", f"{name}.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        markers[name] = json.load(f)
      print(f"[demo] {n}/{len(STAGES)} {name}: reused (took {markers[name]['seconds']:.1f} s "
            "when it ran)", flush=True)
      return markers[name]["outputs"]
    print(f"[demo] {n}/{len(STAGES)} {name}: running (demo elapsed "
          f"{train.duration(time.time() - t_start)})", flush=True)
    t0 = time.time()
    outputs = fn()
    markers[name] = {"stage": name, "seconds": round(time.time() - t0, 1), "outputs": outputs}
    evaluate.write_json(path, markers[name])
    print(f"[demo] {n}/{len(STAGES)} {name}: done in {markers[name]['seconds']:.1f} s",
          flush=True)
    return outputs

  corpus = stage("corpus", lambda: _corpus(cfg, workdir))["corpus"]
  codec_dir = stage("codec", lambda: _codec(cfg, workdir, corpus))["codec"]
  dataset = stage("prepare", lambda: _prepare(cfg, workdir, corpus, codec_dir))["dataset"]
  trained = stage("train", lambda: _train(cfg, workdir, dataset))
  run = trained["run"]
  samples = stage("synthesize",
                  lambda: _synthesize(cfg, workdir, corpus, run))["samples"]
  table = stage("evaluate", lambda: _evaluate(cfg, workdir, samples))["table"]
  seconds = {k: v["seconds"] for k, v in markers.items()}
  written = stage("report", lambda: _report(cfg, workdir, samples, table, run, trained,
                                             seconds))
  return {"stages": markers, "table": table,
          "heldout": report.heldout_rows(trained["eval"], trained["unigram"]),
          "report": written["report"]}


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass everything as --flags.")
  workdir = _WORKDIR.value
  if not workdir:
    raise UserError("--workdir is required: the directory for the demo's files.")
  if _BUDGET.value is not None and not _BUDGET.value > 0:
    raise UserError(f"--budget={_BUDGET.value}: must be > 0 (minutes).")
  io_check.output_dir(workdir, "--workdir")
  result = run_demo(workdir, quick=_QUICK.value, budget=_BUDGET.value, variant=_VARIANT.value)
  print("\n[demo] stage seconds: " + ", ".join(
      f"{k} {v['seconds']:.1f}" for k, v in result["stages"].items()))
  print("\n" + report.heldout_table(result["heldout"]))
  print("\n" + report.results_table(result["table"]))
  print(f"\n[demo] report: {result['report']}")
