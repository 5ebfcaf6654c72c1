"""Scoring speech: word error rate (ASR + jiwer), speaker similarity, spectral distortion.

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

This module scores waveforms and texts only; the evaluation protocol that makes them (test
lists, prompts, synthesis, tables) is valle_jax/evaluate.py.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import threading
import unicodedata
import warnings
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from valle_jax import audio
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
    wav = audio.resample(audio.as_mono(wav), sr, self.sample_rate)
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
    wav = audio.as_mono(wav).astype(np.float64)
    trimmed = self._preprocess(wav, source_sr=sr)
    if trimmed.size < 1600:  # the VAD kept under 0.1 s: embed the untrimmed audio instead
      trimmed = audio.resample(wav, sr, 16000)
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
    wav = audio.resample(audio.as_mono(wav), sr, self.sample_rate)
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
    wav = audio.resample(audio.as_mono(wav), sr, self.sample_rate)
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

def spectral_distortion(reference: np.ndarray, degraded: np.ndarray, sr: int,
                        floor_db: float = 60.0) -> float:
  """Log-mel spectral distortion in dB: per frame the RMS over 80 mel bands of the dB
  difference, averaged over the reference's frames within `floor_db` of its loudest frame
  (both clipped to that floor, so silence does not dominate). Lengths are cut to the
  shorter."""
  a, b = audio.log_mel(reference, sr), audio.log_mel(degraded, sr)
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
