"""The built-in synthetic speech corpus: many English voices from Debian's speech synthesisers.

    valle-jax make-corpus --config=configs/corpus/synthetic.py --out=DIR   (data_prep/make_corpus.py)
    info = make_corpus(get_config(), DIR)                                  (from Python)

Text is the public-domain King James Bible (Debian `bible-kjv-text`, read through its `bible`
program), split into sentences, normalised and kept when it has `min_words..max_words`
words. Each voice of the config is one speaker: an `espeak-ng` voice + variant (+ pitch and
speed), a `flite` voice or a `festival` voice, any of them optionally warped (`/warp=W`:
pitch, formants and tempo scaled together, a new speaker from an old one). Voices named in
`heldout_voices` speak only in the `test` split, and their sentences are never spoken in
`train`: they are unseen speakers saying unseen text, for zero-shot evaluation. With
`num_seen_voice_utterances` > 0, the `test_seen` split has training voices say those same
test sentences: seen speakers saying unseen text, the control that tells a model that fails
on new voices from one that fails on new sentences.

The output is an ordinary folder corpus, read by the folder builder like any user corpus:

    DIR/corpus.json                  config, voices, counts, hours
    DIR/manifest.tsv                 id, audio, text, speaker, split (audio relative to DIR)
    DIR/<split>/<speaker>/<id>.wav   mono 16-bit PCM at `sample_rate`
    DIR/<split>/<speaker>/<id>.txt   the transcript

so the folder builder reads it either through the manifest (every split, speaker and split
from its columns) or one split folder at a time (`DIR/train`: speaker = subfolder).

Everything is a function of the config (the seed picks and orders sentences; the
synthesisers are deterministic), so the same config gives byte-identical files. Work is
spread over processes; the corpus is written into `DIR.partial` and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from valle_jax.errors import UserError

ENGINES = ("espeak-ng", "flite", "festival")
SPLITS = ("train", "test", "test_seen")
# Debian package that provides each engine (named in "not installed" messages).
_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival",
             "bible": "bible-kjv"}
_MANIFEST_COLUMNS = ("id", "audio", "text", "speaker", "split")


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------

def read_kjv_verses() -> list[str]:
  """All verses of the King James Bible as one line of text each (needs `bible-kjv`)."""
  out = _run(["bible", "-l1000", "Gen1:1-Rev22:21"]).decode("utf-8", "replace")
  verses, current = [], []
  for line in out.splitlines():
    m = re.match(r"^\s+\d+\s+(.*)$", line)
    if m:  # a verse starts: "  12 text..."
      if current:
        verses.append(" ".join(current))
      current = [m.group(1).strip()]
    elif line and not line[0].isspace():  # a book/chapter heading: "Genesis 1"
      if current:
        verses.append(" ".join(current))
      current = []
    elif line.strip() and current:  # continuation of a wrapped verse
      current.append(line.strip())
  if current:
    verses.append(" ".join(current))
  return verses


def normalize_sentence(text: str) -> str:
  """Tidies one sentence for speech: letters, apostrophes and , ; : . ? ! only; single spaces;
  capitalised; ends with . ? or !. Returns "" when nothing speakable is left."""
  text = re.sub(r"[()\[\]{}\"`]", " ", text)
  text = re.sub(r"[^A-Za-z',;:.?! -]", " ", text)
  text = re.sub(r"\s+-+\s+|--+", ", ", text)
  text = re.sub(r"\s+([,;:.?!])", r"\1", text)
  text = re.sub(r"([,;:])(?=[,;:.?!])", "", text)
  text = re.sub(r"\s+", " ", text).strip(" ,;:-")
  if not re.search(r"[A-Za-z]", text):
    return ""
  if text[-1] not in ".?!":
    text += "."
  return text[0].upper() + text[1:]


@functools.lru_cache(maxsize=4)
def kjv_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
  """Unique normalised KJV sentences with `min_words..max_words` words, sorted."""
  if not 1 <= min_words <= max_words:
    raise UserError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}.")
  sentences = set()
  for verse in read_kjv_verses():
    for part in re.split(r"(?<=[.?!])\s+(?=[A-Z])", verse):
      s = normalize_sentence(part)
      if s and min_words <= len(s.split()) <= max_words:
        sentences.add(s)
  return tuple(sorted(sentences))


# ----------------------------------------------------------------------------------------
# Voices
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Voice:
  """One speaker: `engine:voice[/pitch=P][/speed=S][/warp=W]`, e.g.
  `espeak-ng:en-us+f3/pitch=60`, `flite:slt`, `festival:kal_diphone`, `flite:slt/warp=85`.
  Pitch (0-99) and speed (words/min) are espeak-ng's. Warp (percent, any engine) plays the
  voice's audio at W% of its rate: every frequency (pitch and formants, the vocal tract's
  length) times W/100 and the tempo with them, as vocal tract length perturbation does."""
  engine: str
  voice: str
  pitch: int | None = None
  speed: int | None = None
  warp: int | None = None

  @classmethod
  def parse(cls, spec: str) -> "Voice":
    engine, _, rest = spec.partition(":")
    if engine not in ENGINES or not rest:
      raise UserError(f"bad voice {spec!r}; write engine:voice with engine one of {ENGINES}.")
    voice, *opts = rest.split("/")
    kw: dict[str, int] = {}
    for opt in opts:
      key, _, value = opt.partition("=")
      if key not in ("pitch", "speed", "warp") or not value.isdigit():
        raise UserError(f"bad option {opt!r} in voice {spec!r}; use pitch=N, speed=N or "
                        "warp=N.")
      kw[key] = int(value)
    if "warp" in kw and not 50 <= kw["warp"] <= 200:
      raise UserError(f"voice {spec!r}: warp is a percentage in [50, 200].")
    if {"pitch", "speed"} & set(kw) and engine != "espeak-ng":
      raise UserError(f"voice {spec!r}: pitch and speed are options of espeak-ng voices only.")
    return cls(engine, voice, **kw)

  @property
  def spec(self) -> str:
    opts = "".join(f"/{k}={v}" for k, v in self._options() if v is not None)
    return f"{self.engine}:{self.voice}{opts}"

  @property
  def speaker(self) -> str:
    """A file-name-safe speaker id, unique per spec (`espeak-en-us-f3-p60`)."""
    short = {"espeak-ng": "espeak", "flite": "flite", "festival": "festival"}[self.engine]
    name = self.voice.replace("_diphone", "").replace("_arctic_hts", "")
    parts = [short, name] + [f"{k[0]}{v}" for k, v in self._options() if v is not None]
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()

  def _options(self):
    return (("pitch", self.pitch), ("speed", self.speed), ("warp", self.warp))


def _run(cmd: Sequence[str], **kw) -> bytes:
  try:
    return subprocess.run(cmd, check=True, capture_output=True, **kw).stdout
  except FileNotFoundError:
    pkg = _PACKAGES.get(cmd[0], cmd[0])
    raise UserError(f"`{cmd[0]}` is not installed; install the Debian package {pkg} "
                    "(scripts/install.sh does).") from None
  except subprocess.CalledProcessError as e:
    err = e.stderr.decode("utf-8", "replace").strip().splitlines()
    raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {err[-1] if err else e}") from None


def synthesize(voice: Voice, texts: Sequence[str], sample_rate: int) -> list[np.ndarray]:
  """Speaks each text with `voice`; float32 mono waveforms at `sample_rate`, silence trimmed
  to 0.1 s at both ends and peak-normalised to -1 dBFS."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  from valle_jax.audio import resample  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(prefix="valle-synth-") as tmp:
    paths = [os.path.join(tmp, f"{i}.wav") for i in range(len(texts))]
    if voice.engine == "festival":  # one process for the whole chunk: start-up is ~0.3 s
      script = [f"(voice_{voice.voice})"]
      for text, path in zip(texts, paths):
        script.append(f'(utt.save.wave (utt.synth (Utterance Text "{_scheme_str(text)}")) '
                      f'"{path}" \'riff)')
      scm = os.path.join(tmp, "batch.scm")
      with open(scm, "w", encoding="utf-8") as f:
        f.write("\n".join(script) + "\n")
      _run(["festival", "--batch", scm])
    else:
      for text, path in zip(texts, paths):
        if voice.engine == "flite":
          _run(["flite", "-voice", voice.voice, "-t", text, "-o", path])
        else:
          cmd = ["espeak-ng", "-v", voice.voice, "-w", path]
          cmd += ["-p", str(voice.pitch)] if voice.pitch is not None else []
          cmd += ["-s", str(voice.speed)] if voice.speed is not None else []
          _run(cmd + ["--", text])
    wavs = []
    for path in paths:
      if not os.path.exists(path):
        raise RuntimeError(f"{voice.spec} wrote no audio (is the voice installed?)")
      wav, sr = sf.read(path, dtype="float32", always_2d=True)
      if voice.warp is not None:   # the samples played at warp% of their rate
        sr = round(sr * voice.warp / 100)
      wavs.append(_tidy(resample(wav.mean(axis=1), sr, sample_rate), sample_rate))
  return wavs


def _scheme_str(text: str) -> str:
  return text.replace("\\", " ").replace('"', " ")


def _tidy(wav: np.ndarray, sr: int, pad_s: float = 0.1, floor_db: float = -45.0) -> np.ndarray:
  peak = float(np.max(np.abs(wav))) if wav.size else 0.0
  if peak <= 0:
    raise RuntimeError("the synthesiser produced silence")
  wav = wav / peak
  loud = np.flatnonzero(np.abs(wav) > 10 ** (floor_db / 20))
  pad = int(pad_s * sr)
  wav = wav[max(0, loud[0] - pad): loud[-1] + pad + 1]
  return (wav * 10 ** (-1 / 20)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  split: str
  speaker: str
  voice: str
  text: str


def plan_corpus(cfg) -> list[Item]:
  """Which voice says which sentence in which split: a pure function of the config."""
  voices = [Voice.parse(v) for v in cfg.voices]
  speakers = [v.speaker for v in voices]
  if len(set(speakers)) != len(speakers):
    raise UserError("two voices in the config map to the same speaker; list each voice once.")
  unknown = set(cfg.heldout_voices) - {v.spec for v in voices} - set(speakers)
  if unknown:
    raise UserError(f"held-out voices {sorted(unknown)} are not in `voices`; list them there.")
  held = [v for v in voices if v.spec in cfg.heldout_voices or v.speaker in cfg.heldout_voices]
  train = [v for v in voices if v not in held]
  if not train:
    raise UserError("every voice is held out; leave at least one voice for training.")
  n_test = cfg.num_heldout_utterances if held else 0
  n_train = cfg.num_utterances
  pool = kjv_sentences(cfg.min_words, cfg.max_words)
  if n_train + n_test > len(pool):
    raise UserError(f"asked for {n_train + n_test} utterances but only {len(pool)} sentences "
                    f"have {cfg.min_words}-{cfg.max_words} words; ask for fewer.")
  order = np.random.default_rng(cfg.seed).permutation(len(pool))[: n_train + n_test]
  texts = [pool[i] for i in order]
  items = []
  for split, split_voices, split_texts in (("test", held, texts[:n_test]),
                                           ("train", train, texts[n_test:])):
    for i, text in enumerate(split_texts):
      v = split_voices[i % len(split_voices)]
      items.append(Item(f"{v.speaker}_{i:05d}", split, v.speaker, v.spec, text))
  n_seen = cfg.get("num_seen_voice_utterances", 0)
  if n_seen < 0:
    raise UserError(f"num_seen_voice_utterances must be >= 0, got {n_seen}.")
  if n_seen and not n_test:
    raise UserError("the test_seen split speaks the test split's sentences; set "
                    "num_heldout_utterances > 0 (and heldout_voices) or "
                    "num_seen_voice_utterances = 0.")
  for i in range(n_seen):  # training voices say the test sentences
    v = train[i % len(train)]
    items.append(Item(f"{v.speaker}_seen{i:05d}", "test_seen", v.speaker, v.spec,
                      texts[i % n_test]))
  return items


def _synth_chunk(args) -> list[tuple[Item, float]]:
  """Worker: speaks one chunk of items (all one voice) and writes wav + txt files."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  root, items, sample_rate = args
  wavs = synthesize(Voice.parse(items[0].voice), [it.text for it in items], sample_rate)
  out = []
  for it, wav in zip(items, wavs):
    d = os.path.join(root, it.split, it.speaker)
    os.makedirs(d, exist_ok=True)
    sf.write(os.path.join(d, it.id + ".wav"), wav, sample_rate, subtype="PCM_16", format="WAV")
    with open(os.path.join(d, it.id + ".txt"), "w", encoding="utf-8") as f:
      f.write(it.text + "\n")
    out.append((it, len(wav) / sample_rate))
  return out


def _chunks(items: Sequence[Item], size: int) -> Iterable[list[Item]]:
  by_voice: dict[str, list[Item]] = {}
  for it in items:
    by_voice.setdefault(it.voice, []).append(it)
  for group in by_voice.values():
    for i in range(0, len(group), size):
      yield group[i:i + size]


def workers_for(requested: int) -> int:
  """`requested` processes, or one per core when 0."""
  return requested if requested > 0 else (os.cpu_count() or 1)


def make_corpus(cfg, out_dir: str, overwrite: bool = False, progress: bool = True) -> dict:
  """Writes the corpus of `cfg` to `out_dir` (see the module doc); returns `corpus.json`."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    if not overwrite:
      raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out.")
  items = plan_corpus(cfg)
  partial = out_dir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  jobs = [(partial, chunk, cfg.sample_rate) for chunk in _chunks(items, cfg.chunk_size)]
  durations: dict[str, float] = {}
  with ProcessPoolExecutor(workers_for(cfg.workers)) as pool, \
      tqdm(total=len(items), desc="make-corpus", unit="utt", disable=not progress) as bar:
    for done in pool.map(_synth_chunk, jobs):
      for it, dur in done:
        durations[it.id] = dur
      bar.update(len(done))
  with open(os.path.join(partial, "manifest.tsv"), "w", encoding="utf-8") as f:
    f.write("\t".join(_MANIFEST_COLUMNS) + "\n")
    for it in items:
      f.write(f"{it.id}\t{it.split}/{it.speaker}/{it.id}.wav\t{it.text}\t{it.speaker}\t"
              f"{it.split}\n")
  info = {
      "config": cfg.to_dict(),
      "splits": {split: {
          "utterances": sum(it.split == split for it in items),
          "hours": round(sum(durations[it.id] for it in items if it.split == split) / 3600, 4),
          "speakers": sorted({it.speaker: it.voice for it in items if it.split == split}.items()),
      } for split in SPLITS},
  }
  with open(os.path.join(partial, "corpus.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(partial, out_dir)
  return info


def read_manifest(corpus_dir: str, split: str | None = None) -> list[dict[str, str]]:
  """Rows of `<corpus_dir>/manifest.tsv` (of one split, if given), `audio` made absolute."""
  path = os.path.join(corpus_dir, "manifest.tsv")
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist; make the corpus with `valle-jax make-corpus`.")
  with open(path, encoding="utf-8") as f:
    header, *lines = f.read().splitlines()
  cols = header.split("\t")
  rows = [dict(zip(cols, line.split("\t"))) for line in lines]
  for r in rows:
    r["audio"] = os.path.join(corpus_dir, r["audio"])
  return [r for r in rows if split is None or r["split"] == split]


# ----------------------------------------------------------------------------------------
# Voice distinctness
# ----------------------------------------------------------------------------------------

def voice_similarity(voice_specs: Sequence[str], sentences: Sequence[str],
                     workers: int = 0, progress: bool = True) -> np.ndarray:
  """[V, V] cosine similarity of the voices' mean speaker embeddings (resemblyzer), each voice
  speaking the same `sentences`."""
  from valle_jax.metrics import ResemblyzerSpeaker  # pylint: disable=g-import-not-at-top
  voices = [Voice.parse(s) for s in voice_specs]
  scorer = ResemblyzerSpeaker()
  sr = 16000
  with ProcessPoolExecutor(workers_for(workers)) as pool:
    jobs = pool.map(synthesize, voices, [list(sentences)] * len(voices), [sr] * len(voices))
    emb = []
    for wavs in tqdm(jobs, total=len(voices), desc="voices", disable=not progress):
      e = np.mean([scorer.embed(w, sr) for w in wavs], axis=0)
      emb.append(e / np.linalg.norm(e))
  emb = np.stack(emb)
  return emb @ emb.T


def pick_distinct(sim: np.ndarray, max_similarity: float, first: int = 0) -> list[int]:
  """Greedy: starting from voice `first`, adds in order every voice whose similarity to all
  voices chosen so far is at most `max_similarity`."""
  chosen = [first]
  for j in range(len(sim)):
    if j not in chosen and all(sim[j, i] <= max_similarity for i in chosen):
      chosen.append(j)
  return chosen


def similarity_table(names: Sequence[str], sim: np.ndarray) -> str:
  """The similarity matrix as a markdown table."""
  short = [str(i) for i in range(len(names))]
  lines = ["| # | voice | " + " | ".join(short) + " |",
           "|---|---|" + "---|" * len(names)]
  for i, n in enumerate(names):
    lines.append(f"| {i} | {n} | " + " | ".join(
        "" if i == j else f"{sim[i, j]:.2f}" for j in range(len(names))) + " |")
  return "\n".join(lines)
