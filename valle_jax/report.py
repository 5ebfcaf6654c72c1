"""A static HTML report of a run: results table, held-out prediction, training curves and
listenable samples.

    path = write_report(DIR, table=rows, samples=samples, metrics_path="run/metrics.jsonl",
                        heldout=heldout_rows(last_eval_metrics, unigram_scores))

writes `DIR/report.html` and its files under `DIR/report_files/` (16 kHz 16-bit wavs, PNG
spectrograms and curves), all linked by relative paths, so the folder can be copied, zipped
or opened straight from disk (`file://`); no server and no script. Like the VALL-E paper's demo
page: per sample, the text, players for each version (prompt, ground truth, codec
resynthesis, synthesis) and their spectrograms side by side.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from valle_jax import paths

FILES = "report_files"
AUDIO_RATE = 16000            # copies in the report are resampled to this (keeps files small)
TABLE_COLUMNS = (("wer", "WER ↓"), ("heard", "words heard ↑"),
                 ("sim_prompt", "SIM to prompt ↑"), ("sim_original", "SIM to original ↑"),
                 ("sim_other", "SIM to other voices ↓"))
# Held-out next-token prediction (`heldout_rows`): the model's and the unigram baseline's.
HELDOUT_COLUMNS = (("loss", "loss ↓"), ("unigram_loss", "unigram loss"),
                   ("top1_acc", "top-1 ↑"), ("unigram_top1_acc", "unigram top-1"),
                   ("top10_acc", "top-10 ↑"), ("unigram_top10_acc", "unigram top-10"))


def _matplotlib():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    from valle_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError("the report needs matplotlib; `pip install -e .[eval]`.") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The rows of a training run's metrics.jsonl ([] when the file does not exist)."""
  if not paths.path(path).is_file():
    return []
  with paths.path(path).open(encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(rows: Sequence[Mapping[str, Any]], out_png: str) -> bool:
  """Loss and top-10 accuracy against step, one line per model and split; False when there
  is nothing to plot."""
  series: dict[str, dict[str, list[tuple[int, float]]]] = {"loss": {}, "top10_acc": {}}
  for row in rows:
    for key, value in row.items():
      model, _, metric = key.partition("/")
      if metric in series and isinstance(value, (int, float)):
        series[metric].setdefault(f"{model} ({row.get('split', 'train')})", []).append(
            (row["step"], float(value)))
  if not any(series.values()):
    return False
  plt = _matplotlib()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3), dpi=80)
  for ax, (metric, lines) in zip(axes, series.items()):
    for label, points in sorted(lines.items()):
      steps, values = zip(*sorted(points))
      ax.plot(steps, values, label=label, marker="." if len(steps) < 20 else None)
    ax.set_xlabel("step")
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    if lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_png)
  plt.close(fig)
  return True


def plot_spectrograms(wavs: Sequence[tuple[str, np.ndarray]], sr: int, out_png: str) -> None:
  """Log-mel spectrograms of named waveforms side by side, one colour scale."""
  from valle_jax.audio import log_mel  # pylint: disable=g-import-not-at-top
  plt = _matplotlib()
  fig, axes = plt.subplots(1, len(wavs), figsize=(2.6 * len(wavs), 2.2), dpi=72,
                           squeeze=False)
  mels = [log_mel(w, sr) if len(w) else np.zeros((1, 80), np.float32) for _, w in wavs]
  top = max(float(m.max()) for m in mels)
  for ax, (name, _), mel in zip(axes[0], wavs, mels):
    ax.imshow(mel.T, origin="lower", aspect="auto", vmin=top - 80, vmax=top, cmap="magma")
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  _save_small_png(fig, out_png)
  plt.close(fig)


def _save_small_png(fig, out_png: str, colors: int = 64) -> None:
  """Saves a figure as a palette PNG of `colors` colours (a spectrogram: ~4x smaller)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (a matplotlib dependency)
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  buf.seek(0)
  Image.open(buf).convert("RGB").quantize(colors).save(out_png, optimize=True)


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return "–" if not np.isfinite(value) else f"{value:.3f}"
  return html.escape(str(value))


def _plain(label: str) -> str:
  return label.split(" ↓")[0].split(" ↑")[0]


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Rows {[condition,] system, n, wer, heard, sim_prompt, sim_original, sim_other} as a
  plain-text table."""
  conditions = any("condition" in r for r in rows)
  head = ((f"{'condition':<26} " if conditions else "") + f"{'system':<20} {'n':>3} " +
          " ".join(f"{_plain(label):>18}" for _, label in TABLE_COLUMNS))
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append((f"{r.get('condition', ''):<26} " if conditions else "") +
                 f"{r['system']:<20} {r['n']:>3} " + " ".join(
                     f"{r.get(key, math.nan):>18.3f}" for key, _ in TABLE_COLUMNS))  # older: NaN
  return "\n".join(lines)


def heldout_rows(evaluation: Mapping[str, float], unigram: Sequence[Mapping[str, Any]]
                 ) -> list[dict[str, Any]]:
  """The training run's held-out metrics (train.summarize names: `ar/loss`, `ar/top1_acc`,
  `nar/top10_acc_codebook3`, ...) beside the unigram baseline of each codebook
  (`unigram.scores` rows): {model, codebook, loss, top1_acc, top10_acc, unigram_loss,
  unigram_top1_acc, unigram_top10_acc}, one row for the AR (codebook 1) and one per
  codebook the NAR was evaluated on."""
  baseline = {u["codebook"]: u for u in unigram}
  rows = []
  for model, prefix, codebook, suffix in [("AR", "ar", 1, "")] + [
      ("NAR", "nar", q, f"_codebook{q}") for q in sorted(baseline)]:
    if f"{prefix}/loss{suffix}" not in evaluation:
      continue
    row = {"model": model, "codebook": codebook}
    for key in ("loss", "top1_acc", "top10_acc"):
      row[key] = float(evaluation.get(f"{prefix}/{key}{suffix}", math.nan))
      row[f"unigram_{key}"] = float(baseline.get(codebook, {}).get(key, math.nan))
    rows.append(row)
  return rows


def heldout_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """`heldout_rows` as a plain-text table."""
  head = f"{'model':<6} {'codebook':>8} " + " ".join(f"{_plain(label):>14}"
                                                      for _, label in HELDOUT_COLUMNS)
  return "\n".join([head, "-" * len(head)] + [
      f"{r['model']:<6} {r['codebook']:>8} " + " ".join(f"{r[key]:>14.3f}"
                                                          for key, _ in HELDOUT_COLUMNS)
      for r in rows])


def write_report(out_dir: str, *, table: Sequence[Mapping[str, Any]],
                 samples: Sequence[Mapping[str, Any]], metrics_path: str | None = None,
                 title: str = "valle-jax report", notes: Sequence[str] = (),
                 stage_seconds: Mapping[str, float] | None = None,
                 heldout: Sequence[Mapping[str, Any]] = (), heldout_notes: Sequence[str] = ()
                 ) -> str:
  """Writes `out_dir/report.html` (+ `out_dir/report_files/`); returns the HTML's path.

  Args:
    table: result rows {[condition,] system, n, wer, heard, sim_prompt, sim_original,
      sim_other}; a condition column when the rows have one.
    samples: per utterance {id, speaker, [condition,] text, prompt_text, audio: {label: wav
      path}}; the audio labels are the columns of players and spectrograms, in order.
    metrics_path: a training run's metrics.jsonl for the curves (optional).
    notes: sentences shown under the title (protocol, scorers, ...).
    stage_seconds: wall time per stage, shown as a small table.
    heldout: `heldout_rows`, the held-out prediction table (none when empty), under
      `heldout_notes` (what it was measured on, ...).
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  from valle_jax.audio import NO_SAMPLES, AudioError, load_audio  # pylint: disable=g-import-not-at-top

  files = os.path.join(out_dir, FILES)
  shutil.rmtree(files, ignore_errors=True)
  os.makedirs(files)
  parts = [f"<h1>{html.escape(title)}</h1>"]
  parts += [f"<p>{html.escape(n)}</p>" for n in notes]

  conditions = any("condition" in r for r in table)
  parts.append("<h2>Results</h2>\n<table id='results'><tr>" +
               ("<th>condition</th>" if conditions else "") + "<th>system</th><th>n</th>" +
               "".join(f"<th>{html.escape(label)}</th>" for _, label in TABLE_COLUMNS) +
               "</tr>")
  for r in table:
    parts.append("<tr>" + (f"<td>{html.escape(r.get('condition', ''))}</td>" if conditions
                           else "") +
                 f"<td>{html.escape(r['system'])}</td><td>{r['n']}</td>" +
                 "".join(f"<td class='num'>{_fmt(r.get(key, math.nan))}</td>"
                         for key, _ in TABLE_COLUMNS) +
                 "</tr>")
  parts.append("</table>")

  if heldout:
    parts.append("<h2>Held-out prediction</h2>")
    parts += [f"<p>{html.escape(n)}</p>" for n in heldout_notes]
    parts.append("<table id='heldout'><tr><th>model</th><th>codebook</th>" +
                 "".join(f"<th>{html.escape(label)}</th>" for _, label in HELDOUT_COLUMNS) +
                 "</tr>" + "".join(
                     f"<tr><td>{html.escape(r['model'])}</td><td>{r['codebook']}</td>" +
                     "".join(f"<td class='num'>{_fmt(r[key])}</td>"
                             for key, _ in HELDOUT_COLUMNS) + "</tr>" for r in heldout) +
                 "</table>")

  if stage_seconds:
    parts.append("<h2>Stages</h2>\n<table id='stages'><tr><th>stage</th><th>seconds</th></tr>" +
                 "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{v:.1f}</td></tr>"
                         for k, v in stage_seconds.items()) + "</table>")

  if metrics_path and plot_curves(read_metrics(metrics_path),
                                  os.path.join(files, "training_curves.png")):
    parts.append(f"<h2>Training</h2>\n<img src='{FILES}/training_curves.png' "
                 "alt='training curves'>")

  if samples:
    parts.append("<h2>Samples</h2>")
  for n, s in enumerate(samples):
    wavs, cells = [], []
    for k, (label, path) in enumerate(s["audio"].items()):
      try:
        wav = load_audio(path, AUDIO_RATE)
      except AudioError as e:
        if e.reason != NO_SAMPLES:  # an empty synthesis stays in the report as silence
          raise
        wav = np.zeros(0, np.float32)
      name = f"{n:03d}_{k}.wav"
      sf.write(os.path.join(files, name), wav.astype(np.float32), AUDIO_RATE,
               subtype="PCM_16", format="WAV")
      wavs.append((label, wav))
      cells.append(f"<td>{html.escape(label)}<br><audio controls preload='metadata' "
                   f"src='{FILES}/{name}'></audio></td>")
    spec = f"{n:03d}_spectrograms.png"
    plot_spectrograms(wavs, AUDIO_RATE, os.path.join(files, spec))
    parts.append(
        f"<div class='sample'><h3>{html.escape(s['id'])} ({html.escape(s['speaker'])}"
        f"{', ' + html.escape(s['condition']) if 'condition' in s else ''})</h3>"
        f"<p><b>Text:</b> {html.escape(s['text'])}<br><b>Prompt transcript:</b> "
        f"{html.escape(s.get('prompt_text', ''))}</p><table><tr>{''.join(cells)}</tr></table>"
        f"<img src='{FILES}/{spec}' alt='spectrograms of {html.escape(s['id'])}'></div>")

  page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
          f"<title>{html.escape(title)}</title><style>"
          "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
          "td.num{text-align:right;font-variant-numeric:tabular-nums}"
          ".sample{margin:1.5em 0;border-top:1px solid #ddd}audio{width:230px}"
          "img{max-width:100%}</style></head><body>\n" + "\n".join(parts) +
          "\n</body></html>\n")
  path = os.path.join(out_dir, "report.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path
