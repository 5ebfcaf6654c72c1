"""Scoring synthesized speech: word error rate (ASR + jiwer) and speaker similarity.

Scorers are pluggable by name. The offline defaults ship their weights inside their PyPI
packages, so they work on a machine with no model downloads:

    asr = get_asr("pocketsphinx")              # CMU Sphinx en-us model from the wheel
    spk = get_speaker_encoder("resemblyzer")   # GE2E speaker encoder from the wheel
    wer([ref], [asr.transcribe(wav, sr)])      # jiwer, after `normalize_text` on both sides
    similarity(spk.embed(a, sr), spk.embed(b, sr))

Every system (ground truth, codec resynthesis, the model) is scored with the same scorer and
the same text normalisation, so numbers are comparable within a table. Register another
scorer (e.g. HuBERT CTC or WavLM through `transformers`) with `ASR_SCORERS[name] = cls` or
`SPEAKER_SCORERS[name] = cls`; a class is built with keyword options and must implement the
`AsrScorer` / `SpeakerEncoder` protocol.

The evaluation protocol (used by `valle-jax evaluate` and the demo) is built from the same
pieces: a test list (`read_test_list`, `librispeech_test_list`), (target, prompt) pairs
(`heldout_pairs` for cross-utterance zero-shot prompts, `continual_pairs`), every system's
audio (`synthesize_samples`: ground truth, codec resynthesis, valle-jax), per-utterance scores
(`score_samples`), one row per system (`summarize`) and the files (`write_results`).
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import os
import re
import threading
import unicodedata
import warnings
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from absl import logging
from tqdm import tqdm

from valle_jax.errors import UserError


# ----------------------------------------------------------------------------------------
# Text normalisation and WER
# ----------------------------------------------------------------------------------------

def normalize_text(text: str) -> str:
  """The one normalisation applied to references and hypotheses before WER: Unicode NFKC,
  lower case, hyphens to spaces, every character other than a-z, 0-9, apostrophe and space
  removed, apostrophes only inside words, single spaces."""
  text = unicodedata.normalize("NFKC", text).lower()
  text = text.replace("’", "'").replace("-", " ")
  text = re.sub(r"[^a-z0-9' ]+", " ", text)
  text = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", text)
  return " ".join(text.split())


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
  """The corpus alignment after `normalize_text`: {wer (total edits / reference words),
  words (reference words), hits, substitutions, deletions, insertions, heard (hits /
  words)}. Near WER 1, `heard` tells saying less (fewer insertions) from being followed."""
  import jiwer  # pylint: disable=g-import-not-at-top
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
  refs = [normalize_text(r) for r in references]
  if not refs or any(not r for r in refs):
    raise ValueError("every reference needs at least one word after normalisation")
  out = jiwer.process_words(refs, [normalize_text(h) for h in hypotheses])
  words = out.hits + out.substitutions + out.deletions
  return {"wer": float(out.wer), "words": words, "hits": out.hits,
          "substitutions": out.substitutions, "deletions": out.deletions,
          "insertions": out.insertions, "heard": out.hits / words}


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  """Corpus word error rate (total edits / total reference words) after `normalize_text`."""
  return word_errors(references, hypotheses)["wer"]


def utterance_wer(reference: str, hypothesis: str) -> float:
  """WER of one utterance (after `normalize_text`)."""
  return wer([reference], [hypothesis])


# ----------------------------------------------------------------------------------------
# Scorer protocols and registries
# ----------------------------------------------------------------------------------------

@runtime_checkable
class AsrScorer(Protocol):
  """Speech recogniser used for WER."""
  name: str

  def transcribe(self, wav: np.ndarray, sr: int) -> str:
    """float mono waveform [N] at `sr` -> recognised text."""


@runtime_checkable
class SpeakerEncoder(Protocol):
  """Speaker-verification embedding used for similarity."""
  name: str

  def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
    """float mono waveform [N] at `sr` -> L2-normalised embedding [D]."""


def similarity(a: np.ndarray, b: np.ndarray) -> float:
  """Cosine similarity of two embeddings."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _as_mono(wav: np.ndarray) -> np.ndarray:
  wav = np.asarray(wav, dtype=np.float32)
  if wav.ndim != 1 or wav.size == 0:
    raise ValueError(f"expected a non-empty mono waveform [N], got shape {wav.shape}")
  return wav


class PocketSphinxAsr:
  """CMU PocketSphinx 5 with the en-us acoustic model, dictionary and 3-gram LM from its wheel.

  A general-domain small-vocabulary recogniser: absolute WERs are high (~0.3 on clean
  synthetic speech), but it is deterministic, independent of the order of utterances, and
  the same for every system compared.
  """
  name = "pocketsphinx"
  sample_rate = 16000

  def __init__(self):
    try:
      from pocketsphinx import Decoder  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("pocketsphinx is not installed; `pip install -e .[eval]` "
                      "(scripts/install.sh does).") from None
    self._decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL")
    self._lock = threading.Lock()

  def transcribe(self, wav: np.ndarray, sr: int) -> str:
    from valle_jax.audio import resample  # pylint: disable=g-import-not-at-top
    wav = resample(_as_mono(wav), sr, self.sample_rate)
    pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    with self._lock:  # one decoder, one utterance at a time
      # The decoder adapts its feature normalisation from utterance to utterance, so a
      # transcript depended on what was decoded before it (2 of 8 changed with the order;
      # resetting only the cepstral mean was not enough): each utterance starts afresh.
      self._decoder.reinit_feat()
      self._decoder.start_utt()
      self._decoder.process_raw(pcm, full_utt=True)
      self._decoder.end_utt()
      hyp = self._decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


class ResemblyzerSpeaker:
  """Resemblyzer's GE2E speaker encoder (weights in the wheel), on CPU.

  Audio is resampled to 16 kHz, loudness-normalised and voice-activity trimmed
  (`resemblyzer.preprocess_wav`) before embedding, as resemblyzer intends.
  """
  name = "resemblyzer"

  def __init__(self, device: str = "cpu"):
    try:
      with warnings.catch_warnings():  # its dependencies warn at import
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder, preprocess_wav  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("resemblyzer is not installed; `pip install -e .[eval]` and "
                      "`pip install --no-deps resemblyzer` (scripts/install.sh does).") from None
    self._encoder = VoiceEncoder(device, verbose=False)
    self._preprocess = preprocess_wav

  def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
    wav = _as_mono(wav).astype(np.float64)
    trimmed = self._preprocess(wav, source_sr=sr)
    if trimmed.size < 1600:  # the VAD kept under 0.1 s: embed the untrimmed audio instead
      from valle_jax.audio import resample  # pylint: disable=g-import-not-at-top
      trimmed = resample(wav, sr, 16000)
    return np.asarray(self._encoder.embed_utterance(trimmed), dtype=np.float32)


def _load_pretrained(cls, model: str, what: str, flag: str):
  """`cls.from_pretrained(model)` with a one-sentence error when it can't be had."""
  try:
    return cls.from_pretrained(model)
  except ImportError:
    raise UserError("the paper's scorers need `transformers`; `pip install "
                    "'transformers>=4.40'`.") from None
  except (OSError, ValueError) as e:
    raise UserError(f"could not load the {what} {model!r} ({str(e).splitlines()[0]}); "
                    f"download it where there is a network and pass its folder with "
                    f"{flag}.") from None


class HubertCtcAsr:
  """The paper's ASR: HuBERT-Large fine-tuned with CTC on LibriSpeech 960 h (greedy CTC
  decoding), through `transformers`, from the hub or a local folder (`model=`).

  `processor` and `network` may also be given directly (e.g. randomly initialised ones in
  tests); `model` is then unused.
  """
  name = "hubert"
  sample_rate = 16000

  def __init__(self, model: str = "facebook/hubert-large-ls960-ft", device: str = "cpu",
               processor=None, network=None):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import HubertForCTC, Wav2Vec2Processor  # pylint: disable=g-import-not-at-top
    self._torch = torch
    self._processor = processor or _load_pretrained(Wav2Vec2Processor, model,
                                                    "HuBERT processor", "--asr_model")
    network = network or _load_pretrained(HubertForCTC, model, "HuBERT CTC model",
                                          "--asr_model")
    self._network = network.to(device).eval()
    self._device = device

  def transcribe(self, wav: np.ndarray, sr: int) -> str:
    from valle_jax.audio import resample  # pylint: disable=g-import-not-at-top
    wav = resample(_as_mono(wav), sr, self.sample_rate)
    inputs = self._processor(wav, sampling_rate=self.sample_rate, return_tensors="pt")
    with self._torch.no_grad():
      logits = self._network(inputs.input_values.to(self._device)).logits   # [1, T, V]
    return self._processor.batch_decode(logits.argmax(-1).cpu())[0]


class WavLMSpeaker:
  """A WavLM speaker-verification model (x-vector head) through `transformers`.

  The paper scored with WavLM-Large + ECAPA-TDNN from the UniSpeech repository, which
  `transformers` does not ship; `microsoft/wavlm-base-plus-sv` is the closest model it
  does, so absolute numbers differ from the paper's while the protocol is the same.
  `feature_extractor` and `network` may be given directly (tests).
  """
  name = "wavlm"
  sample_rate = 16000

  def __init__(self, model: str = "microsoft/wavlm-base-plus-sv", device: str = "cpu",
               feature_extractor=None, network=None):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import AutoFeatureExtractor, WavLMForXVector  # pylint: disable=g-import-not-at-top
    self._torch = torch
    self._features = feature_extractor or _load_pretrained(
        AutoFeatureExtractor, model, "WavLM feature extractor", "--speaker_model")
    network = network or _load_pretrained(WavLMForXVector, model, "WavLM speaker model",
                                          "--speaker_model")
    self._network = network.to(device).eval()
    self._device = device

  def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
    from valle_jax.audio import resample  # pylint: disable=g-import-not-at-top
    wav = resample(_as_mono(wav), sr, self.sample_rate)
    inputs = self._features(wav, sampling_rate=self.sample_rate, return_tensors="pt")
    with self._torch.no_grad():
      emb = self._network(input_values=inputs.input_values.to(self._device)).embeddings[0]
    emb = emb.cpu().numpy().astype(np.float32)
    return emb / (np.linalg.norm(emb) + 1e-12)


ASR_SCORERS: dict[str, Callable[..., AsrScorer]] = {"pocketsphinx": PocketSphinxAsr,
                                                    "hubert": HubertCtcAsr}
SPEAKER_SCORERS: dict[str, Callable[..., SpeakerEncoder]] = {"resemblyzer": ResemblyzerSpeaker,
                                                             "wavlm": WavLMSpeaker}


def _build(registry: dict[str, Callable[..., object]], name: str, what: str, options):
  """`registry[name](**options)`, or a `UserError` for an unknown name or option."""
  if name not in registry:
    raise UserError(f"unknown {what} {name!r}; choose one of {sorted(registry)}.")
  params = inspect.signature(registry[name]).parameters.values()
  if not any(p.kind == p.VAR_KEYWORD for p in params):
    unknown = sorted(set(options) - {p.name for p in params})
    if unknown:
      raise UserError(f"the {what} {name!r} takes no {', '.join(unknown)} option; leave it "
                      "out or choose a scorer that does.")
  return registry[name](**options)


def get_asr(name: str = "pocketsphinx", **options) -> AsrScorer:
  """Builds the ASR scorer registered as `name` (e.g. `model=` for hubert)."""
  return _build(ASR_SCORERS, name, "ASR scorer", options)


def get_speaker_encoder(name: str = "resemblyzer", **options) -> SpeakerEncoder:
  """Builds the speaker encoder registered as `name` (e.g. `model=` for wavlm)."""
  return _build(SPEAKER_SCORERS, name, "speaker scorer", options)


# ----------------------------------------------------------------------------------------
# Spectral distortion and scoring resynthesised audio against originals
# ----------------------------------------------------------------------------------------

def _mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
  """Triangular filters [n_mels, n_fft // 2 + 1] equally spaced on the HTK mel scale."""
  def mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)
  edges_mel = np.linspace(0.0, mel(sr / 2), n_mels + 2)
  edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
  freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def log_mel(wav: np.ndarray, sr: int, n_mels: int = 80, n_fft: int = 1024,
            hop: int = 256) -> np.ndarray:
  """Log-mel power spectrogram in dB [frames, n_mels] (Hann window, centred frames, power
  floored at 1e-10)."""
  wav = _as_mono(wav).astype(np.float64)
  padded = np.pad(wav, (n_fft // 2, n_fft // 2), mode="reflect" if len(wav) > n_fft // 2
                  else "constant")
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
  power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2
  mel = power @ _mel_filterbank(sr, n_fft, n_mels).T
  return (10.0 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32)


def spectral_distortion(reference: np.ndarray, degraded: np.ndarray, sr: int,
                        floor_db: float = 60.0) -> float:
  """Log-mel spectral distortion in dB: per frame the RMS over 80 mel bands of the dB
  difference, averaged over the reference's frames within `floor_db` of its loudest frame
  (both clipped to that floor, so silence does not dominate). Lengths are cut to the
  shorter."""
  a, b = log_mel(reference, sr), log_mel(degraded, sr)
  n = min(len(a), len(b))
  a, b = a[:n], b[:n]
  top = a.max()
  a, b = np.maximum(a, top - floor_db), np.maximum(b, top - floor_db)
  frame_db = a.max(axis=1)
  keep = frame_db > top - floor_db + 10.0
  d = np.sqrt(np.mean((a - b) ** 2, axis=1))
  return float(d[keep].mean() if keep.any() else d.mean())


@dataclasses.dataclass
class ResynthesisScore:
  """Scores of one system's audio against the originals (see `score_resynthesis`)."""
  wer: float                  # corpus WER of the system's audio
  similarity: float           # mean speaker similarity to the original utterance
  distortion_db: float        # mean log-mel spectral distortion to the original
  hypotheses: list[str]


def score_resynthesis(texts: Sequence[str], originals: Sequence[np.ndarray],
                      outputs: Sequence[np.ndarray], sr: int, asr: AsrScorer,
                      speaker: SpeakerEncoder,
                      original_embeddings: Sequence[np.ndarray] | None = None
                      ) -> ResynthesisScore:
  """WER of `outputs` against `texts`, and their similarity and spectral distortion to the
  `originals` they were made from (all at rate `sr`)."""
  if original_embeddings is None:
    original_embeddings = [speaker.embed(w, sr) for w in originals]
  hyps = [asr.transcribe(w, sr) for w in outputs]
  sims = [similarity(e, speaker.embed(w, sr)) for e, w in zip(original_embeddings, outputs)]
  dists = [spectral_distortion(o, w, sr) for o, w in zip(originals, outputs)]
  return ResynthesisScore(wer(texts, hyps), float(np.mean(sims)), float(np.mean(dists)), hyps)


# ----------------------------------------------------------------------------------------
# The evaluation protocol: test lists, prompts, every system's audio, scores, tables
# ----------------------------------------------------------------------------------------

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


def librispeech_test_list(root: str) -> tuple[list[dict[str, str]], tuple[float, float]]:
  """The paper's test set: rows of every LibriSpeech test-clean utterance under `root` (as
  `data_prep.corpora.list_librispeech` lists them), and the (4, 10) s bounds of its
  `test_clean_4_10s` split."""
  from data_prep import corpora  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(root, "test-clean")):
    raise UserError(f"{root!r} holds no test-clean folder; pass the LibriSpeech folder "
                    "that does.")
  listing = corpora.list_librispeech(root, ["test-clean"])
  for skip in listing.skips:
    if skip.split == corpora.TEST_CLEAN_4_10S:
      logging.warning("left out %s (%s): %s", skip.id, skip.reason, skip.detail)
  rows = [{"id": i.id, "audio": i.audio, "text": i.text, "speaker": i.speaker}
          for i in listing.items if i.split == corpora.TEST_CLEAN_4_10S]
  return rows, listing.bounds[corpora.TEST_CLEAN_4_10S]


def durations(rows: Sequence[Mapping[str, str]]) -> dict[str, float]:
  """id -> seconds of each row's audio (from the file's header)."""
  from valle_jax import audio  # pylint: disable=g-import-not-at-top
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
                       codebooks: int = 0, decoding=None, nar_prompt: str = "prefix"
                       ) -> list[dict[str, Any]]:
  """Every system's audio for each (target, prompt) pair, in `out_dir`.

  Writes `<id>_resynthesis.wav` (the codec's encode + decode of the target, every codebook)
  and `<id>_valle.wav` (`synthesize.synthesize` with `options`, `codebooks`, `decoding`,
  the run's `sampling.Decoding` (None: VALL-E's), and `nar_prompt`: zero-shot from the
  prompt, or `continual` from the target's first `prompt_seconds`, then also
  `<id>_prompt.wav`, that excerpt). Batch k (pairs k*batch_size...) is sampled with seed
  `seed + k*batch_size`; a batch whose files all exist is reused, so a re-run, or one after
  an interruption, redoes nothing and gives the same files. Returns the samples, also written to
  `out_dir/samples.json`: {id, speaker, text, prompt_id, prompt_text, prompt_seconds,
  valle_seconds, audio: {prompt, ground_truth, resynthesis, valle: wav path}}.
  """
  from valle_jax import audio  # pylint: disable=g-import-not-at-top
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
                                    nar_prompt=nar_prompt)
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


def score_samples(samples: Sequence[Mapping[str, Any]], asr: AsrScorer,
                  speaker: SpeakerEncoder) -> list[dict[str, Any]]:
  """Per sample and system (`SYSTEMS` that have a file in the sample's "audio"): the ASR
  hypothesis, WER, and speaker similarity of the system's audio to the prompt, to the ground
  truth and (mean) to the prompts of the other speakers' samples (of the same "condition",
  when samples name one: the row carries it); NaN similarities when the system made no
  audio."""
  from valle_jax import audio  # pylint: disable=g-import-not-at-top
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
          row.update(hypothesis="", wer=utterance_wer(s["text"], ""),
                     sim_prompt=float("nan"), sim_original=float("nan"),
                     sim_other=float("nan"))
        else:
          hyp = asr.transcribe(wav, sr)
          e = speaker.embed(wav, sr)
          row.update(hypothesis=hyp, wer=utterance_wer(s["text"], hyp),
                     sim_prompt=similarity(e, embed[s["id"]]),
                     sim_original=similarity(e, truth),
                     sim_other=float(np.mean([similarity(e, o) for o in others]))
                     if others else float("nan"))
        rows.append(row)
        bar.update(1)
  return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per-utterance rows (`score_samples`) -> one row per system present, in `SYSTEMS` order:
  {system, n, the corpus `word_errors` (wer, heard, words, hits, substitutions, deletions,
  insertions), sim_prompt, sim_original, sim_other (means of the finite values)}. Rows that
  name a "condition" give one such row per condition and system, {condition, system, ...},
  conditions in their first row's order."""
  conditions = list(dict.fromkeys(r.get("condition") for r in rows))
  table = []
  for condition in conditions:
    for key, name in SYSTEMS:
      mine = [r for r in rows if r["system"] == key and r.get("condition") == condition]
      if not mine:
        continue
      row = {**({} if condition is None else {"condition": condition}), "system": name,
             "n": len(mine),
             **word_errors([r["text"] for r in mine], [r["hypothesis"] for r in mine])}
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
