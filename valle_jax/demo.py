"""`valle-jax demo`: VALL-E end to end on this machine, offline, ending with DIR/report.html.

    valle-jax demo --workdir=demo            # the full demo: about an hour on a 2-core CPU
    valle-jax demo --workdir=demo --budget=120   # twice the training steps
    valle-jax demo --workdir=ci --quick      # every stage in a few minutes (CI)

Stages (configs/demo.py holds every setting):

  1 corpus      the built-in synthetic corpus (data_prep/synthetic.py); the held-out voices
                speak only in its test split                          -> DIR/corpus/
  2 codec       the offline codec fitted on the TRAIN split only      -> DIR/codec/
  3 prepare     phonemes + codec codes of both splits (data_prep)     -> DIR/data/
  4 train       AR and NAR together (valle_jax/train.py)              -> DIR/run/
  5 synthesize  zero-shot, for every held-out utterance: the prompt is ANOTHER utterance of
                the same unseen speaker (the one closest to 3 s, with its transcript), the
                text a sentence never seen in training; plus the codec resynthesis of the
                ground truth                                          -> DIR/samples/
  6 evaluate    WER (PocketSphinx) and speaker similarity (resemblyzer) of ground truth,
                codec resynthesis and valle-jax                       -> DIR/results.csv,json
  7 report      DIR/report.html (valle_jax/report.py)

Each finished stage writes `DIR/stages/<stage>.json` (its outputs and seconds); a re-run
reuses finished stages, and a killed training resumes from its last checkpoint. The demo's
config is saved in DIR/demo_config.json; re-running with other flags in the same DIR is an
error (use a new --workdir).
"""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Any, Callable

import numpy as np
from absl import flags
from tqdm import tqdm

from valle_jax.errors import UserError

STAGES = ("corpus", "codec", "prepare", "train", "synthesize", "evaluate", "report")
SYSTEMS = (("ground_truth", "ground truth"), ("resynthesis", "codec resynthesis"),
           ("valle", "valle-jax"))

# valle_jax.train (imported by the train stage, after flag parsing) defines its own
# --workdir at import; allow_override lets it replace this flag then. main() reads the value
# before any stage runs, so the demo's parsed value is the one used.
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's output.",
                               allow_override=True)
_BUDGET = flags.DEFINE_float("budget", None, "Minutes the whole demo may take (scales the "
                             "training steps; default: the config's budget_minutes).")
_QUICK = flags.DEFINE_bool("quick", False, "A tiny corpus and model and a few steps: every "
                           "stage in a few minutes (CI).")


def demo_config(quick: bool = False, budget: float | None = None):
  """The demo's config (configs/demo.py), training steps scaled to `budget` minutes."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  cfg = demo.get_config(quick)
  if budget is not None:
    if budget <= 0:
      raise UserError(f"--budget must be a positive number of minutes, got {budget:g}.")
    cfg.train.train.steps = max(1, round(cfg.train.train.steps * budget / cfg.budget_minutes))
    cfg.budget_minutes = float(budget)
  return cfg


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _check_config(workdir: str, cfg) -> None:
  """Saves the config on the first run; refuses a different one in the same workdir."""
  path = os.path.join(workdir, "demo_config.json")
  current = json.loads(cfg.to_json())
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved != current:
      diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
      raise UserError(f"{workdir} holds a demo made with other settings (differing: "
                      f"{', '.join(diff)}); re-run with the same flags or use a new --workdir.")
  else:
    _write_json(path, current)


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
  codec = offline.fit(paths, offline.FitConfig(seed=cfg.seed, iters=cfg.codec.iters,
                                               max_frames=cfg.codec.max_frames))
  out = codec.save(os.path.join(workdir, "codec"))
  return {"codec": out, "fitted_on": len(paths), "checksum": codec.checksum()}


def _load_codec(codec_dir: str):
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top
  return get_codec({"name": "offline", "path": codec_dir})


def _prepare(workdir: str, corpus: str, codec_dir: str) -> dict[str, Any]:
  from configs.data import folder  # pylint: disable=g-import-not-at-top
  from data_prep import pipeline  # pylint: disable=g-import-not-at-top
  pcfg = folder.get_config()
  pcfg.source = corpus
  pcfg.manifest = os.path.join(corpus, "manifest.tsv")
  pcfg.output = os.path.join(workdir, "data")
  pcfg.overwrite = True  # only a run killed between writing and marking leaves one
  report = pipeline.prepare(pcfg, codec=_load_codec(codec_dir))
  return {"dataset": report["dataset"], "records": report["records"],
          "skipped": report["skipped"]}


def _train(cfg, workdir: str, dataset: str) -> dict[str, Any]:
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  tcfg = cfg.train.copy_and_resolve_references()
  tcfg.data.dataset = dataset
  run = os.path.join(workdir, "run")
  summary = train.train(tcfg, run)
  if summary["step"] < tcfg.train.steps:
    raise UserError(f"training stopped at step {summary['step']} of {tcfg.train.steps}; "
                    "re-run the same command to resume it.")
  return {"run": run, "step": summary["step"], "metrics": summary["metrics"]}


def heldout_pairs(rows: list[dict[str, str]], prompt_seconds: float
                  ) -> list[tuple[dict[str, str], dict[str, str]]]:
  """(target, prompt) for each test row: the prompt is another utterance of the same speaker,
  the one whose duration is closest to `prompt_seconds` (ties: the first in the manifest).
  Rows of speakers with a single test utterance are left out."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  seconds = {r["id"]: sf.info(r["audio"]).duration for r in rows}
  pairs = []
  for r in rows:
    others = [o for o in rows if o["speaker"] == r["speaker"] and o["id"] != r["id"]]
    if others:
      pairs.append((r, min(others, key=lambda o: abs(seconds[o["id"]] - prompt_seconds))))
  return pairs


def _synthesize(cfg, workdir: str, corpus: str, run: str) -> dict[str, Any]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  from data_prep.synthetic import read_manifest  # pylint: disable=g-import-not-at-top
  from valle_jax import audio, checkpoint, sampling  # pylint: disable=g-import-not-at-top
  from valle_jax import synthesize as synth_lib  # pylint: disable=g-import-not-at-top
  from valle_jax.codec import get_codec  # pylint: disable=g-import-not-at-top

  pairs = heldout_pairs(read_manifest(corpus, "test"), cfg.synthesis.prompt_seconds)
  if not pairs:
    raise UserError(f"the corpus in {corpus} has no held-out speaker with two test "
                    "utterances; raise corpus.num_heldout_utterances.")
  if cfg.synthesis.max_utterances:
    pairs = pairs[:cfg.synthesis.max_utterances]
  bundle = checkpoint.load_inference_bundle(run)
  codec = get_codec(bundle.codec_description)   # the run's own codec, checksum checked
  options = sampling.SampleOptions.from_config(cfg.synthesis.sample)
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  sr = codec.sample_rate
  samples = []
  size = cfg.synthesis.batch_size
  with tqdm(total=len(pairs), desc="synthesize", unit="utt") as bar:
    for start in range(0, len(pairs), size):
      chunk = pairs[start:start + size]
      requests = [synth_lib.Request(t["text"], p["audio"], p["text"]) for t, p in chunk]
      wavs = synth_lib.synthesize(bundle.ar, bundle.nar, bundle.symbols, codec, requests,
                                  options, seed=cfg.synthesis.seed + start, batch_size=size)
      for (target, prompt), wav in zip(chunk, wavs):
        truth = audio.load_audio(target["audio"], sr)
        files = {"prompt": prompt["audio"], "ground_truth": target["audio"],
                 "resynthesis": os.path.join(out_dir, f"{target['id']}_resynthesis.wav"),
                 "valle": os.path.join(out_dir, f"{target['id']}_valle.wav")}
        sf.write(files["resynthesis"], codec.decode(codec.encode(truth, sr)), sr)
        sf.write(files["valle"], wav, sr)
        samples.append({"id": target["id"], "speaker": target["speaker"],
                        "text": target["text"], "prompt_id": prompt["id"],
                        "prompt_text": prompt["text"],
                        "prompt_seconds": round(sf.info(prompt["audio"]).duration, 2),
                        "valle_seconds": round(len(wav) / sr, 2), "audio": files})
      bar.update(len(chunk))
  _write_json(os.path.join(out_dir, "samples.json"), samples)
  return {"samples": os.path.join(out_dir, "samples.json"), "count": len(samples),
          "checkpoint_step": bundle.step, "sample_options": cfg.synthesis.sample.to_dict()}


def _score_rows(samples: list[dict[str, Any]], asr, speaker) -> list[dict[str, Any]]:
  """Per utterance and system: the ASR hypothesis, WER and similarities (NaN when the system
  produced no audio)."""
  from valle_jax import audio, evaluate  # pylint: disable=g-import-not-at-top
  sr = 16000
  embed = {}
  for s in tqdm(samples, desc="embed prompts", unit="utt"):
    embed[s["id"]] = speaker.embed(audio.load_audio(s["audio"]["prompt"], sr), sr)
  rows = []
  with tqdm(total=len(samples) * len(SYSTEMS), desc="evaluate", unit="clip") as bar:
    for s in samples:
      others = [embed[o["id"]] for o in samples if o["speaker"] != s["speaker"]]
      truth = speaker.embed(audio.load_audio(s["audio"]["ground_truth"], sr), sr)
      for key, _ in SYSTEMS:
        try:
          wav = audio.load_audio(s["audio"][key], sr)
        except audio.AudioError as e:
          if e.reason != audio.NO_SAMPLES:
            raise
          wav = None
        row = {"id": s["id"], "speaker": s["speaker"], "system": key, "text": s["text"],
               "seconds": 0.0 if wav is None else round(len(wav) / sr, 2)}
        if wav is None:
          row.update(hypothesis="", wer=evaluate.utterance_wer(s["text"], ""),
                     sim_prompt=float("nan"), sim_original=float("nan"),
                     sim_other=float("nan"))
        else:
          hyp = asr.transcribe(wav, sr)
          e = speaker.embed(wav, sr)
          row.update(hypothesis=hyp, wer=evaluate.utterance_wer(s["text"], hyp),
                     sim_prompt=evaluate.similarity(e, embed[s["id"]]),
                     sim_original=evaluate.similarity(e, truth),
                     sim_other=float(np.mean([evaluate.similarity(e, o) for o in others]))
                     if others else float("nan"))
        rows.append(row)
        bar.update(1)
  return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per-utterance rows -> one row per system: corpus WER and mean similarities."""
  from valle_jax import evaluate  # pylint: disable=g-import-not-at-top
  table = []
  for key, name in SYSTEMS:
    mine = [r for r in rows if r["system"] == key]
    if not mine:
      continue
    row = {"system": name, "n": len(mine),
           "wer": evaluate.wer([r["text"] for r in mine], [r["hypothesis"] for r in mine])}
    for col in ("sim_prompt", "sim_original", "sim_other"):
      values = [r[col] for r in mine if np.isfinite(r[col])]
      row[col] = float(np.mean(values)) if values else float("nan")
    table.append(row)
  return table


def _evaluate(cfg, workdir: str, samples_path: str) -> dict[str, Any]:
  from valle_jax import evaluate  # pylint: disable=g-import-not-at-top
  with open(samples_path, encoding="utf-8") as f:
    samples = json.load(f)
  rows = _score_rows(samples, evaluate.get_asr(cfg.evaluate.asr),
                     evaluate.get_speaker_encoder(cfg.evaluate.speaker))
  csv_path = os.path.join(workdir, "results.csv")
  with open(csv_path, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = summarize(rows)
  json_path = os.path.join(workdir, "results.json")
  _write_json(json_path, {"asr": cfg.evaluate.asr, "speaker": cfg.evaluate.speaker,
                          "table": table})
  return {"csv": csv_path, "json": json_path, "table": table}


def _report(cfg, workdir: str, samples_path: str, table, run: str, seconds) -> dict[str, Any]:
  from valle_jax import report  # pylint: disable=g-import-not-at-top
  with open(samples_path, encoding="utf-8") as f:
    samples = json.load(f)
  labels = {"prompt": "prompt", **dict(SYSTEMS)}
  shown = [{**s, "audio": {labels[k]: s["audio"][k] for k in ("prompt", *dict(SYSTEMS))}}
           for s in samples[:cfg.report.max_samples]]
  notes = [
      f"{'Quick (CI) demo' if cfg.quick else 'Demo'}: zero-shot TTS for {len(samples)} "
      "utterances of voices never heard in training, saying sentences never heard in "
      "training; each prompt is another utterance of the same speaker (the one closest to "
      f"{cfg.synthesis.prompt_seconds:g} s) with its transcript.",
      f"WER: {cfg.evaluate.asr} + jiwer after one text normalisation. SIM: cosine similarity "
      f"of {cfg.evaluate.speaker} speaker embeddings to the prompt, to the original "
      "utterance, and (mean) to the prompts of the other held-out voices.",
      f"Model: {cfg.train.model.num_layers} layers, width {cfg.train.model.width}, "
      f"{cfg.train.train.steps} training steps (AR and NAR).",
  ]
  path = report.write_report(workdir, table=table, samples=shown,
                             metrics_path=os.path.join(run, "metrics.jsonl"),
                             title="valle-jax demo", notes=notes, stage_seconds=seconds)
  return {"report": path}


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------

def run_demo(workdir: str, quick: bool = False, budget: float | None = None) -> dict[str, Any]:
  """Runs (or resumes) every stage; returns {"stages": {stage: marker}, "table": rows,
  "report": path}."""
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
  cfg = demo_config(quick, budget)
  _check_config(workdir, cfg)
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
          f"{_duration(time.time() - t_start)})", flush=True)
    t0 = time.time()
    outputs = fn()
    markers[name] = {"stage": name, "seconds": round(time.time() - t0, 1), "outputs": outputs}
    _write_json(path, markers[name])
    print(f"[demo] {n}/{len(STAGES)} {name}: done in {markers[name]['seconds']:.1f} s",
          flush=True)
    return outputs

  corpus = stage("corpus", lambda: _corpus(cfg, workdir))["corpus"]
  codec_dir = stage("codec", lambda: _codec(cfg, workdir, corpus))["codec"]
  dataset = stage("prepare", lambda: _prepare(workdir, corpus, codec_dir))["dataset"]
  run = stage("train", lambda: _train(cfg, workdir, dataset))["run"]
  samples = stage("synthesize",
                  lambda: _synthesize(cfg, workdir, corpus, run))["samples"]
  table = stage("evaluate", lambda: _evaluate(cfg, workdir, samples))["table"]
  seconds = {k: v["seconds"] for k, v in markers.items()}
  report = stage("report", lambda: _report(cfg, workdir, samples, table, run, seconds))
  return {"stages": markers, "table": table, "report": report["report"]}


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass everything as --flags.")
  workdir = _WORKDIR.value  # read before the stages import valle_jax.train (see _WORKDIR)
  if not workdir:
    raise UserError("--workdir is required: the directory for the demo's files.")
  from valle_jax import report  # pylint: disable=g-import-not-at-top
  result = run_demo(workdir, quick=_QUICK.value, budget=_BUDGET.value)
  print("\n[demo] stage seconds: " + ", ".join(
      f"{k} {v['seconds']:.1f}" for k, v in result["stages"].items()))
  print("\n" + report.results_table(result["table"]))
  print(f"\n[demo] report: {result['report']}")
