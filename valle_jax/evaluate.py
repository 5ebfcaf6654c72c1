"""The evaluation protocol of `valle-jax evaluate` and the demo: which utterances, prompted
how, synthesised by every system, scored by valle_jax/metrics.py.

A test list (`read_test_list`; LibriSpeech test-clean: `data_prep.corpora`), (target,
prompt) pairs (`heldout_pairs` for cross-utterance zero-shot prompts, `continual_pairs`),
every system's audio (`synthesize_samples`: ground truth, codec resynthesis, valle-jax),
per-utterance scores (`score_samples`), one row per system (`summarize`) and the files
(`write_results`).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from valle_jax import audio, metrics
from valle_jax.errors import UserError


# (key in a sample's "audio", name in tables), in table order.
SYSTEMS = (("ground_truth", "ground truth"), ("resynthesis", "codec resynthesis"),
           ("valle", "valle-jax"))
TEST_LIST_COLUMNS = ("id", "audio", "text", "speaker")


def read_test_list(path: str, split: str | None = None) -> list[dict[str, str]]:
  """Rows of a test-list TSV whose header names at least id, audio, text and speaker (the
  manifest `valle-jax make-corpus` writes), `audio` made absolute (relative to the TSV's
  folder); only the rows of `split` when given (the optional `split` column)."""
  try:
    with open(path, encoding="utf-8", newline="") as f:
      lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  except UnicodeDecodeError:
    raise UserError(f"the test list {path!r} is not UTF-8; re-save it as UTF-8.") from None
  except OSError as e:
    raise UserError(f"cannot read the test list {path!r} ({e.strerror}); pass a TSV "
                    "file.") from None
  header = lines[0] if lines else []
  missing = [c for c in TEST_LIST_COLUMNS if c not in header]
  if missing:
    raise UserError(f"the test list {path!r} has no {', '.join(missing)} column; its first "
                    f"line must name the tab-separated columns {', '.join(TEST_LIST_COLUMNS)}.")
  if split and "split" not in header:
    raise UserError(f"the test list {path!r} has no split column to pick {split!r} from; "
                    "leave the split out.")
  base = os.path.dirname(os.path.abspath(path))
  rows, ids = [], set()
  for n, line in enumerate(lines[1:], 2):
    if not "".join(line).strip():
      continue
    if len(line) != len(header):
      raise UserError(f"line {n} of the test list {path!r} has {len(line)} fields and its "
                      f"header {len(header)}; fix that line.")
    row = dict(zip(header, line))
    if row["id"] in ids:
      raise UserError(f"the id {row['id']!r} is on two lines of the test list {path!r}; "
                      "give each utterance its own id.")
    ids.add(row["id"])
    if not split or row["split"] == split:
      rows.append({**row, "audio": os.path.join(base, row["audio"])})
  if not rows:
    raise UserError(f"the test list {path!r} holds no utterance"
                    f"{f' of the split {split!r}' if split else ''}; add some.")
  return rows


def durations(rows: Sequence[Mapping[str, str]]) -> dict[str, float]:
  """id -> seconds of each row's audio (from the file's header)."""
  seconds = {}
  for r in rows:
    try:
      seconds[r["id"]] = audio.audio_duration(r["audio"])
    except audio.AudioError as e:
      raise UserError(f"cannot read the audio of {r['id']!r} ({e}); fix or remove that "
                      "utterance.") from None
  return seconds


Pair = tuple[dict[str, str], dict[str, str]]   # (target, prompt)


def heldout_pairs(rows: Sequence[dict[str, str]], prompt_seconds: float,
                  seconds: Mapping[str, float] | None = None,
                  targets: Sequence[dict[str, str]] | None = None) -> list[Pair]:
  """Cross-utterance (zero-shot) prompts: (target, prompt) for each row of `targets`
  (default: `rows`); the prompt is another row of `rows` by the same speaker, the one whose
  duration (`seconds[id]`, read from the files when not given) is closest to
  `prompt_seconds` (ties: the first in `rows`), used whole with its transcript. Targets
  whose speaker has no other row are left out."""
  seconds = durations(rows) if seconds is None else seconds
  by_speaker: dict[str, list[dict[str, str]]] = {}
  for r in rows:
    by_speaker.setdefault(r["speaker"], []).append(r)
  pairs = []
  for r in rows if targets is None else targets:
    others = [o for o in by_speaker.get(r["speaker"], ()) if o["id"] != r["id"]]
    if others:
      pairs.append((r, min(others, key=lambda o: abs(seconds[o["id"]] - prompt_seconds))))
  return pairs


def continual_pairs(rows: Sequence[dict[str, str]], prompt_seconds: float,
                    seconds: Mapping[str, float] | None = None) -> list[Pair]:
  """Continual prompts: (row, row) for each row longer than `prompt_seconds` (its first
  `prompt_seconds` are the prompt); shorter rows leave nothing to continue."""
  seconds = durations(rows) if seconds is None else seconds
  return [(r, r) for r in rows if seconds[r["id"]] > prompt_seconds]


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` as JSON, atomically (a reader never sees half a file)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def check_settings(path: str, settings: Mapping[str, Any], holds: str, flag: str) -> None:
  """Saves `settings` (JSON) at `path` on a first run; on a re-run, refuses other ones with a
  `UserError` naming the differing keys (`holds`: what the folder holds, e.g. "a demo";
  `flag`: the flag that picks another folder)."""
  folder = os.path.dirname(path)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved != settings:
      diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      raise UserError(f"{folder} holds {holds} made with other settings (differing: "
                      f"{', '.join(diff)}); re-run with the same flags or use a new {flag}.")
  else:
    os.makedirs(folder, exist_ok=True)
    write_json(path, dict(settings))


def _write_wav(path: str, wav: np.ndarray, sr: int) -> None:
  """Writes a wav atomically: an interrupted run leaves no partial file to be reused."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path + ".partial", wav, sr, format="WAV")
  os.replace(path + ".partial", path)


def synthesize_samples(ar, nar, symbols, codec, pairs: Sequence[Pair], options, out_dir: str,
                       *, continual: bool = False, prompt_seconds: float = 3.0,
                       lang: str = "en-us", seed: int = 0, batch_size: int = 1,
                       codebooks: int = 0, decoding=None, nar_prompt: str = "prefix",
                       mesh=None) -> list[dict[str, Any]]:
  """Every system's audio for each (target, prompt) pair, in `out_dir`.

  Writes `<id>_resynthesis.wav` (the codec's encode + decode of the target, every codebook)
  and `<id>_valle.wav` (`synthesize.synthesize` with `options`, `codebooks`, `decoding`,
  the run's `sampling.Decoding` (None: VALL-E's), and `nar_prompt`: zero-shot from the
  prompt, or `continual` from the target's first `prompt_seconds`, then also
  `<id>_prompt.wav`, that excerpt); with a `mesh`, each batch runs sharded over it.
  Batch k (pairs k*batch_size...) is sampled with seed `seed + k*batch_size`; a batch
  whose files all exist is reused, so a re-run, or one after
  an interruption, redoes nothing and gives the same files. Returns the samples, also written to
  `out_dir/samples.json`: {id, speaker, text, prompt_id, prompt_text, prompt_seconds,
  valle_seconds, audio: {prompt, ground_truth, resynthesis, valle: wav path}}.
  """
  from valle_jax import synthesize as synth_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  sr = codec.sample_rate
  samples = []
  with tqdm(total=len(pairs), desc="synthesize", unit="utt") as bar:
    for start in range(0, len(pairs), batch_size):
      chunk = pairs[start:start + batch_size]
      files = [{"prompt": os.path.join(out_dir, f"{t['id']}_prompt.wav") if continual
                          else p["audio"],
                "ground_truth": t["audio"],
                "resynthesis": os.path.join(out_dir, f"{t['id']}_resynthesis.wav"),
                "valle": os.path.join(out_dir, f"{t['id']}_valle.wav")} for t, p in chunk]
      if not all(os.path.exists(f["valle"]) for f in files):
        requests = [synth_lib.Request(t["text"], p["audio"], p["text"]) for t, p in chunk]
        wavs = synth_lib.synthesize(ar, nar, symbols, codec, requests, options,
                                    continual=continual, continual_seconds=prompt_seconds,
                                    lang=lang, seed=seed + start, batch_size=batch_size,
                                    codebooks=codebooks, decoding=decoding,
                                    nar_prompt=nar_prompt, mesh=mesh)
        for f, wav in zip(files, wavs):
          _write_wav(f["valle"], wav, sr)
      for (target, prompt), f in zip(chunk, files):
        if not all(os.path.exists(f[k]) for k in ("prompt", "resynthesis")):
          truth = audio.load_audio(target["audio"], sr)
          _write_wav(f["resynthesis"], codec.decode(codec.encode(truth, sr)), sr)
          if continual:
            _write_wav(f["prompt"], truth[:int(prompt_seconds * sr)], sr)
        samples.append({"id": target["id"], "speaker": target["speaker"],
                        "text": target["text"], "prompt_id": prompt["id"],
                        "prompt_text": "" if continual else prompt["text"],
                        "prompt_seconds": round(audio.audio_duration(f["prompt"]), 2),
                        "valle_seconds": round(audio.audio_duration(f["valle"]), 2),
                        "audio": f})
      bar.update(len(chunk))
  write_json(os.path.join(out_dir, "samples.json"), samples)
  return samples


def score_samples(samples: Sequence[Mapping[str, Any]], asr: metrics.AsrScorer,
                  speaker: metrics.SpeakerEncoder) -> list[dict[str, Any]]:
  """Per sample and system (`SYSTEMS` that have a file in the sample's "audio"): the ASR
  hypothesis, WER, and speaker similarity of the system's audio to the prompt, to the ground
  truth and (mean) to the prompts of the other speakers' samples (of the same "condition",
  when samples name one: the row carries it); NaN similarities when the system made no
  audio."""
  sr = 16000
  embed = {}
  for s in tqdm(samples, desc="embed prompts", unit="utt"):
    embed[s["id"]] = speaker.embed(audio.load_audio(s["audio"]["prompt"], sr), sr)
  rows = []
  total = sum(key in s["audio"] for s in samples for key, _ in SYSTEMS)
  with tqdm(total=total, desc="evaluate", unit="clip") as bar:
    for s in samples:
      others = [embed[o["id"]] for o in samples if o["speaker"] != s["speaker"]
                and o.get("condition") == s.get("condition")]
      condition = {"condition": s["condition"]} if "condition" in s else {}
      truth = speaker.embed(audio.load_audio(s["audio"]["ground_truth"], sr), sr)
      for key, _ in SYSTEMS:
        if key not in s["audio"]:
          continue
        try:
          wav = audio.load_audio(s["audio"][key], sr)
        except audio.AudioError as e:
          if e.reason != audio.NO_SAMPLES:
            raise
          wav = None
        row = {"id": s["id"], "speaker": s["speaker"], **condition, "system": key,
               "text": s["text"],
               "seconds": 0.0 if wav is None else round(len(wav) / sr, 2)}
        if wav is None:
          row.update(hypothesis="", wer=metrics.utterance_wer(s["text"], ""),
                     sim_prompt=float("nan"), sim_original=float("nan"),
                     sim_other=float("nan"))
        else:
          hyp = asr.transcribe(wav, sr)
          e = speaker.embed(wav, sr)
          row.update(hypothesis=hyp, wer=metrics.utterance_wer(s["text"], hyp),
                     sim_prompt=metrics.similarity(e, embed[s["id"]]),
                     sim_original=metrics.similarity(e, truth),
                     sim_other=float(np.mean([metrics.similarity(e, o) for o in others]))
                     if others else float("nan"))
        rows.append(row)
        bar.update(1)
  return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per-utterance rows (`score_samples`) -> one row per system present, in `SYSTEMS` order:
  {system, n, the corpus `metrics.word_errors` (wer, heard, words, hits, substitutions,
  deletions, insertions), sim_prompt, sim_original, sim_other (means of the finite values)}.
  Rows that name a "condition" give one such row per condition and system, {condition,
  system, ...}, conditions in their first row's order."""
  conditions = list(dict.fromkeys(r.get("condition") for r in rows))
  table = []
  for condition in conditions:
    for key, name in SYSTEMS:
      mine = [r for r in rows if r["system"] == key and r.get("condition") == condition]
      if not mine:
        continue
      row = {**({} if condition is None else {"condition": condition}), "system": name,
             "n": len(mine),
             **metrics.word_errors([r["text"] for r in mine],
                                   [r["hypothesis"] for r in mine])}
      for col in ("sim_prompt", "sim_original", "sim_other"):
        values = [r[col] for r in mine if np.isfinite(r[col])]
        row[col] = float(np.mean(values)) if values else float("nan")
      table.append(row)
  return table


def write_results(out_dir: str, rows: Sequence[Mapping[str, Any]],
                  table: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
                  ) -> tuple[str, str]:
  """Writes `out_dir/results.csv` (the per-utterance rows) and `out_dir/results.json`
  ({**meta, "table": table}); returns their paths."""
  csv_path = os.path.join(out_dir, "results.csv")
  with open(csv_path, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  json_path = os.path.join(out_dir, "results.json")
  write_json(json_path, {**meta, "table": list(table)})
  return csv_path, json_path
