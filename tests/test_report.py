"""valle_jax/report.py: a report built from small synthetic inputs, checked on disk and in
headless Chromium (Debian `chromium`; skipped when it is not installed)."""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from valle_jax import report

SR = 24000
TABLE = [
    {"condition": "unseen voice", "system": "ground truth", "n": 2, "wer": 0.25,
     "heard": 0.8, "sim_prompt": 0.91, "sim_original": 1.0, "sim_other": 0.6},
    {"condition": "unseen voice", "system": "codec resynthesis", "n": 2, "wer": 0.5,
     "heard": 0.6, "sim_prompt": 0.85, "sim_original": 0.9, "sim_other": 0.61},
    {"condition": "unseen voice", "system": "valle-jax", "n": 2, "wer": 0.75, "heard": 0.3,
     "sim_prompt": 0.7, "sim_original": 0.72, "sim_other": float("nan")},
    {"condition": "seen voice", "system": "valle-jax", "n": 1, "wer": 0.625, "heard": 0.4,
     "sim_prompt": 0.8, "sim_original": 0.81, "sim_other": 0.5},
]
# A run's last evaluation (train.summarize names) and the unigram baseline (unigram.scores).
EVAL = {"ar/loss": 4.5, "ar/top1_acc": 0.125, "ar/top10_acc": 0.375, "ar/text_gain": 0.2,
        "nar/loss": 5.0, "nar/loss_codebook2": 4.75, "nar/top1_acc_codebook2": 0.0625,
        "nar/top10_acc_codebook2": 0.25}
UNIGRAM = [{"codebook": q, "tokens": 100, "loss": 6.0 + q / 8, "top1_acc": 0.01,
            "top10_acc": 0.05} for q in (1, 2, 3)]

# Injected into a copy of the report (the report itself has no script): once the page has
# loaded, records for every <audio> whether its metadata loaded (and its duration) or it
# failed, in <body data-audio-check="[...]">, which --dump-dom then shows.
_AUDIO_CHECK = """<script>
window.addEventListener('load', () => {
  const audios = Array.from(document.querySelectorAll('audio'));
  const res = []; let pending = audios.length;
  const finish = () => document.body.setAttribute('data-audio-check', JSON.stringify(res));
  audios.forEach((a) => {
    let settled = false;
    const fin = (ok) => { if (settled) return; settled = true;
      res.push({src: a.getAttribute('src'), ok: ok, duration: a.duration});
      if (--pending === 0) finish(); };
    a.addEventListener('loadedmetadata', () => fin(true));
    a.addEventListener('error', () => fin(false));
    if (a.error) fin(false); else if (a.readyState >= 1) fin(true);
  });
  if (!pending) finish();
});
</script>"""


def _write_inputs(root) -> tuple[list[dict], str]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  samples = []
  t = np.arange(int(1.5 * SR)) / SR
  for n in range(2):
    audio = {}
    for k, label in enumerate(("prompt", "ground truth", "codec resynthesis", "valle-jax")):
      path = os.path.join(root, f"s{n}_{k}.wav")
      wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * k + 20 * n) * t) if (n, k) != (1, 3) else []
      sf.write(path, np.asarray(wav, np.float32), SR)   # one empty synthesis
      audio[label] = path
    samples.append({"id": f"utt{n}", "speaker": "voice-a", "text": f"Sentence <{n}> & more.",
                    "condition": ("unseen voice", "seen voice")[n],
                    "prompt_text": "The prompt.", "audio": audio})
  metrics = os.path.join(root, "metrics.jsonl")
  with open(metrics, "w", encoding="utf-8") as f:
    for step in (5, 10, 15):
      f.write(json.dumps({"step": step, "split": "train", "ar/loss": 7.0 - step / 10,
                          "nar/loss": 6.0 - step / 20, "ar/top10_acc": step / 100,
                          "nar/top10_acc": step / 50, "lr": 1e-3}) + "\n")
  return samples, metrics


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  samples, metrics = _write_inputs(str(root))
  out = str(root / "out")
  os.makedirs(out)
  path = report.write_report(out, table=TABLE, samples=samples, metrics_path=metrics,
                             notes=["A note."], stage_seconds={"train": 12.5},
                             heldout=report.heldout_rows(EVAL, UNIGRAM),
                             heldout_notes=["Held out <split>."])
  return out, path


def test_report_files(built):
  out, path = built
  page = open(path, encoding="utf-8").read()
  assert path == os.path.join(out, "report.html")
  srcs = re.findall(r"src='([^']+)'", page)
  assert len([s for s in srcs if s.endswith(".wav")]) == 8
  for src in srcs:  # every linked file exists, relative to the page
    assert not os.path.isabs(src) and os.path.isfile(os.path.join(out, src)), src
  assert "training_curves.png" in page and page.count("_spectrograms.png") == 2
  assert html.escape("Sentence <0> & more.") in page       # text is escaped
  assert "0.250" in page and "–" in page                    # numbers; NaN shown as a dash
  size = sum(os.path.getsize(os.path.join(out, report.FILES, f))
             for f in os.listdir(os.path.join(out, report.FILES)))
  assert size < 1_000_000


def test_results_table_text():
  text = report.results_table(TABLE)
  assert "valle-jax" in text and "0.750" in text and "SIM to prompt" in text
  assert text.splitlines()[-1].startswith("seen voice ")
  plain = report.results_table([{k: v for k, v in r.items() if k != "condition"}
                                for r in TABLE])
  assert "condition" not in plain and plain.splitlines()[-1].startswith("valle-jax ")


def test_heldout_rows_pair_each_model_codebook_with_its_unigram():
  rows = report.heldout_rows(EVAL, UNIGRAM)
  assert [(r["model"], r["codebook"]) for r in rows] == [("AR", 1), ("NAR", 2)]
  ar, nar = rows
  assert (ar["loss"], ar["top1_acc"], ar["top10_acc"]) == (4.5, 0.125, 0.375)
  assert (ar["unigram_loss"], nar["unigram_loss"]) == (6.125, 6.25)
  assert (nar["top1_acc"], nar["unigram_top10_acc"]) == (0.0625, 0.05)
  text = report.heldout_table(rows)
  assert "unigram top-1" in text and "6.250" in text


def test_no_metrics_no_curves(tmp_path):
  path = report.write_report(str(tmp_path), table=TABLE, samples=[],
                             metrics_path=str(tmp_path / "missing.jsonl"))
  page = open(path, encoding="utf-8").read()
  assert "training_curves" not in page and "<table id='results'>" in page


def _chromium(page: str, profile: str) -> tuple[str, str]:
  """Headless Chromium on a local page: (dumped DOM after load, browser log)."""
  exe = shutil.which("chromium")
  if exe is None:
    pytest.skip("Debian `chromium` is not installed (scripts/install.sh installs it)")
  cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", "file://" + page]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
  return done.stdout, done.stderr


def _check_page(out: str, source: str, name: str, tmp_path) -> tuple[list[dict], list[str], str]:
  """Loads a copy of `source` with the audio probe; (audio results, console lines, DOM)."""
  page = os.path.join(out, name)
  with open(page, "w", encoding="utf-8") as f:
    f.write(source.replace("</body>", _AUDIO_CHECK + "</body>"))
  dom, log = _chromium(page, str(tmp_path / f"profile-{name}"))
  found = re.search(r'data-audio-check="([^"]*)"', dom)
  audio = json.loads(html.unescape(found.group(1))) if found else []
  console = [line for line in log.splitlines() if ":CONSOLE" in line]
  return audio, console, dom


def test_report_in_headless_chromium(built, tmp_path):
  out, path = built
  source = open(path, encoding="utf-8").read()
  audio, console, dom = _check_page(out, source, "check.html", tmp_path)
  assert console == []                            # no console message at all
  assert len(audio) == 8 and all(a["ok"] for a in audio), audio
  # One synthesis is empty (its duration is NaN, JSON null); the others last 1.5 s.
  assert sum((a["duration"] or 0) > 1.4 for a in audio) == 7
  table = re.search(r"<table id=\"results\">(.*?)</table>", dom, re.S).group(1)
  assert re.findall(r"<td class=\"num\">(\d\.\d{3})</td>", table)[:5] == [
      "0.250", "0.800", "0.910", "1.000", "0.600"]
  assert table.count("<td>unseen voice</td>") == 3 and "<td>seen voice</td>" in table
  heldout = re.search(r"<table id=\"heldout\">(.*?)</table>", dom, re.S).group(1)
  assert re.findall(r"<td class=\"num\">(\d\.\d{3})</td>", heldout)[:6] == [
      "4.500", "6.125", "0.125", "0.010", "0.375", "0.050"]
  assert "Held out &lt;split&gt;." in dom
  # The probe does catch a broken page: a missing audio file and a console error.
  broken = source.replace(f"{report.FILES}/000_0.wav", f"{report.FILES}/missing.wav")
  broken = broken.replace("</body>", "<script>console.error('boom')</script></body>")
  audio, console, _ = _check_page(out, broken, "broken.html", tmp_path)
  assert any('"boom"' in line for line in console)
  assert [a["src"] for a in audio if not a["ok"]] == [f"{report.FILES}/missing.wav"]
