"""The offline scorers: text normalisation + WER (jiwer), PocketSphinx ASR, resemblyzer SIM,
spectral distortion; the paper's scorers (HuBERT CTC, WavLM) on random weights."""
import shutil

import numpy as np
import pytest

from valle_jax import metrics
from valle_jax.errors import UserError


def test_normalize_text():
  assert metrics.normalize_text("  The LORD's  word, said he: \"Go!\" ") == "the lord's word said he go"
  assert metrics.normalize_text("well-known 'quoted' rock’n’roll") == "well known quoted rock'n'roll"


def test_wer_identical_is_zero_and_known_edits():
  assert metrics.wer(["And God said, Let there be light."],
                      ["and god said let there be light"]) == 0.0
  # one substitution in six words
  assert metrics.utterance_wer("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(1 / 6)
  # one deletion + one insertion over two utterances of 3 + 5 words
  assert metrics.wer(["a b c", "d e f g h"], ["a c", "d e f g h i"]) == pytest.approx(2 / 8)
  assert metrics.utterance_wer("one two", "") == 1.0
  with pytest.raises(ValueError):
    metrics.wer(["a"], ["a", "b"])


def test_similarity_and_registry():
  assert metrics.similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
  assert metrics.similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
  with pytest.raises(UserError):
    metrics.get_asr("no-such-asr")
  with pytest.raises(UserError):
    metrics.get_speaker_encoder("no-such-encoder")


def test_spectral_distortion():
  sr = 24000
  t = np.arange(sr) / sr
  rng = np.random.default_rng(0)
  wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.normal(size=sr)).astype(np.float32)
  assert metrics.spectral_distortion(wav, wav, sr) == pytest.approx(0.0, abs=1e-6)
  noisy = wav + 0.05 * rng.normal(size=sr).astype(np.float32)
  louder = wav * 2.0
  assert metrics.spectral_distortion(wav, noisy, sr) > 3.0
  assert metrics.spectral_distortion(wav, louder, sr) == pytest.approx(
      20 * np.log10(2.0), rel=0.05)


needs_tts = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                               reason="needs espeak-ng and flite (scripts/install.sh)")
TEXTS = ["And God called the light Day, and the darkness he called Night.",
         "Then Moses severed three cities on this side Jordan toward the sunrising."]


@pytest.fixture(scope="module")
def clips():
  from data_prep.synthetic import Voice, synthesize
  return {v: synthesize(Voice.parse(v), TEXTS, 16000) for v in ("flite:slt", "espeak-ng:en-us")}


@needs_tts
def test_pocketsphinx_recognises_clear_speech(clips):
  asr = metrics.get_asr("pocketsphinx")
  hyp = asr.transcribe(clips["flite:slt"][0], 16000)
  assert metrics.utterance_wer(TEXTS[0], hyp) < 0.5, hyp
  # the same audio at another rate gives the same words
  from valle_jax.audio import resample
  assert asr.transcribe(resample(clips["flite:slt"][0], 16000, 24000), 24000).split() == hyp.split()
  # a transcript does not depend on what was transcribed before it
  wavs = clips["flite:slt"] + clips["espeak-ng:en-us"]
  forward = [asr.transcribe(w, 16000) for w in wavs]
  backward = [asr.transcribe(w, 16000) for w in wavs[::-1]][::-1]
  assert forward == backward
  assert forward[0] == hyp


@needs_tts
def test_speaker_similarity(clips):
  spk = metrics.get_speaker_encoder("resemblyzer")
  slt = [spk.embed(w, 16000) for w in clips["flite:slt"]]
  en = [spk.embed(w, 16000) for w in clips["espeak-ng:en-us"]]
  assert slt[0].shape == (256,)
  same_clip = metrics.similarity(slt[0], spk.embed(clips["flite:slt"][0], 16000))
  same_voice = metrics.similarity(slt[0], slt[1])
  other_voice = metrics.similarity(slt[0], en[0])
  assert same_clip > 0.999
  assert same_voice > other_voice + 0.15, (same_voice, other_voice)


# --------------------------------------------------------------- the paper's scorers


@pytest.fixture(scope="module")
def random_hubert(tmp_path_factory):
  """A randomly initialised tiny HuBERT CTC model + processor, saved as a local folder."""
  import json
  transformers = pytest.importorskip("transformers")
  folder = tmp_path_factory.mktemp("hubert")
  vocab = {"<pad>": 0, "|": 1, "A": 2, "B": 3, "C": 4}
  (folder / "vocab.json").write_text(json.dumps(vocab))
  tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), pad_token="<pad>",
                                                word_delimiter_token="|")
  features = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000)
  processor = transformers.Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer)
  config = transformers.HubertConfig(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
  transformers.set_seed(0)
  network = transformers.HubertForCTC(config)
  processor.save_pretrained(str(folder))
  network.save_pretrained(str(folder))
  return str(folder), processor, network


def test_hubert_ctc_scorer_plumbing(random_hubert):
  """Random weights, real plumbing: resampling, CTC greedy decoding, loading a folder."""
  import torch
  folder, processor, network = random_hubert
  asr = metrics.get_asr("hubert", model=folder)
  wav = np.sin(np.linspace(0, 800, 24000)).astype(np.float32)
  text = asr.transcribe(wav, 24000)
  assert set(text) <= set("ABC ") and text == asr.transcribe(wav, 24000)
  with torch.no_grad():                       # make "B" win every frame: CTC collapses to "B"
    network.lm_head.weight.zero_()
    network.lm_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0]))
  forced = metrics.HubertCtcAsr(processor=processor, network=network)
  assert forced.transcribe(wav, 16000) == "B"
  with pytest.raises(UserError, match="--asr_model"):
    metrics.get_asr("hubert", model=folder + "/missing")


def test_wavlm_speaker_scorer_plumbing(tmp_path):
  transformers = pytest.importorskip("transformers")
  config = transformers.WavLMConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
      conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
      num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1),
      tdnn_dilation=(1, 1), xvector_output_dim=8)
  transformers.set_seed(0)
  transformers.WavLMForXVector(config).save_pretrained(str(tmp_path))
  transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(str(tmp_path))
  spk = metrics.get_speaker_encoder("wavlm", model=str(tmp_path))
  rng = np.random.default_rng(0)
  a = (0.1 * rng.standard_normal(16000)).astype(np.float32)
  b = np.sin(np.linspace(0, 3000, 16000)).astype(np.float32)
  ea = spk.embed(a, 16000)
  assert ea.shape == (8,) and abs(np.linalg.norm(ea) - 1) < 1e-5
  assert metrics.similarity(ea, spk.embed(a, 16000)) > 0.9999
  assert metrics.similarity(ea, spk.embed(b, 16000)) < 0.9999
  with pytest.raises(UserError, match="--speaker_model"):
    metrics.get_speaker_encoder("wavlm", model=str(tmp_path / "missing"))


def test_scorer_options_are_checked():
  with pytest.raises(UserError, match="'pocketsphinx' takes no model option"):
    metrics.get_asr("pocketsphinx", model="somewhere")
