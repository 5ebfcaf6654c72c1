"""The offline codec: token format, round trip, fitting, codebook use, identity checks."""
import dataclasses
import shutil

import numpy as np
import pytest

from valle_jax import codec as codec_registry
from valle_jax.codec import offline
from valle_jax.codec.base import Codec
from valle_jax.errors import UserError

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                                reason="needs espeak-ng and flite (scripts/install.sh)")

TRAIN_VOICES = ("espeak-ng:en-us", "espeak-ng:en-us+f3", "espeak-ng:en-us+Storm", "flite:kal")
HELDOUT_VOICE = "flite:slt"
FIT = offline.FitConfig(seed=0, iters=3, workers=1)


def _speech(voice, n):
  from data_prep.synthetic import Voice, kjv_sentences, synthesize
  sentences = kjv_sentences(8, 14)[::401][:n]
  return synthesize(Voice.parse(voice), sentences, offline.SAMPLE_RATE)


@pytest.fixture(scope="module")
def train_feats():
  """Features of ~2 min of four training voices (~9.5k frames; the minimum is 8192)."""
  feat = FIT.features
  return [offline.analyze(w, feat) for v in TRAIN_VOICES for w in _speech(v, 9)]


@pytest.fixture(scope="module")
def codec(train_feats):
  return offline.fit_features(train_feats, FIT, progress=False)


@pytest.fixture(scope="module")
def other_codec(train_feats):
  """The same training data, another seed."""
  return offline.fit_features(train_feats, offline.FitConfig(seed=1, iters=3), progress=False)


@pytest.fixture(scope="module")
def heldout():
  return _speech(HELDOUT_VOICE, 2)


def test_is_a_codec_with_encodec_token_format(codec):
  assert isinstance(codec, Codec)
  assert (codec.sample_rate, codec.frame_rate) == (24000, 75.0)
  assert (codec.num_codebooks, codec.codebook_size) == (8, 1024)
  assert codec.codebooks.shape == (8, 1024, FIT.features.dim)


def test_codebooks_sum_to_the_decoded_features(codec, heldout):
  """Summed over codebooks, the codes' centroids are the decoded features (up to the fixed
  affine map): a residual VQ, whose distances are the VQ's."""
  codes = codec.encode(heldout[0], 24000)
  vectors = codec.codebooks
  summed = sum(vectors[q][codes[:, q].astype(int)] for q in range(8))
  np.testing.assert_allclose(summed * codec.scale + codec.mean, codec.dequantize(codes),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 319, 320, 321, 24000 + 17])
def test_frame_count_and_round_trip_shapes(codec, heldout, n):
  wav = np.resize(heldout[0], n)
  codes = codec.encode(wav, 24000)
  assert codes.shape == (-(-n // 320), 8) and codes.dtype == np.int16
  assert codes.min() >= 0 and codes.max() < 1024
  out = codec.decode(codes)
  assert out.dtype == np.float32 and out.shape == (codes.shape[0] * 320,)
  assert np.all(np.isfinite(out))


def test_other_sample_rates_are_resampled(codec, heldout):
  from valle_jax.audio import resample
  wav16 = resample(heldout[0], 24000, 16000)
  codes = codec.encode(wav16, 16000)
  assert codes.shape[0] == -(-round(len(wav16) * 1.5) // 320)
  assert np.mean(codes == codec.encode(heldout[0], 24000)[:len(codes)]) > 0.5


def test_batch_equals_one_by_one(codec, heldout):
  codes = codec.encode_batch(heldout, 24000)
  for w, c in zip(heldout, codes):
    np.testing.assert_array_equal(c, codec.encode(w, 24000))
  for c, w in zip(codes, codec.decode_batch(codes)):
    np.testing.assert_array_equal(w, codec.decode(c))


def test_codes_use_most_of_each_codebook(codec, train_feats):
  # The frames it was fitted on: the training voices and their augmented copies (on the
  # 4 training voices alone, the first codebook's entries for other voices go unused).
  fitted_on = offline.augment(train_feats, FIT, progress=False)
  assert len(fitted_on) == (1 + FIT.augment) * len(train_feats)
  codes = np.concatenate([codec.quantize(f) for f in fitted_on])
  used = [len(np.unique(codes[:, q])) for q in range(8)]
  assert min(used) > 0.8 * 1024, used


FIFTH = 7 * np.log(2.0) / 12   # in log F0


def _another_voice(feats, feat):
  """The same frames with the pitch a fifth higher and the envelope through a fixed filter
  (a constant added to every frame's cepstrum): an utterance-wide change of voice."""
  other = feats.copy()
  other[:, feat.columns("f0")] += FIFTH
  other[:, feat.columns("sp")] += np.linspace(0.3, -0.2, feat.sp_dims)
  return other


def test_content_first_codebook_codes_content_not_the_voice(codec, train_feats, heldout):
  """With `content_first`, codebook 0 chooses for frames less their utterance's mean log F0
  and envelope, so an utterance-wide change of voice leaves it as it is and the later
  codebooks code the change; without it (the default) codebook 0 follows the voice."""
  content_first = offline.fit_features(train_feats, offline.FitConfig(
      seed=0, iters=1, augment=0, features=offline.Features(content_first=True)),
      progress=False)
  feats = codec.analyze(heldout[0], 24000)
  other = _another_voice(feats, codec.features)
  codes, other_codes = content_first.quantize(feats), content_first.quantize(other)
  np.testing.assert_array_equal(codes[:, 0], other_codes[:, 0])
  assert np.mean(codes[:, 1:] != other_codes[:, 1:]) > 0.5
  # ... and decoding follows the change: the 8 codebooks put the pitch back a fifth higher.
  f0 = codec.features.columns("f0")
  shift = np.mean(content_first.dequantize(other_codes)[:, f0]
                  - content_first.dequantize(codes)[:, f0])
  assert abs(shift - FIFTH) < 0.1, shift
  assert not codec.features.content_first   # the default codec: 20% of frames change
  assert np.mean(codec.quantize(feats)[:, 0] != codec.quantize(other)[:, 0]) > 0.1


def test_voice_codebook_codes_each_utterance_voice_once(codec, train_feats, heldout):
  """With `voice_codebooks=1`, codebook 1 is one code per utterance, its mean log F0 and
  envelope: the same at every frame, another code for another voice; codebook 0 still
  ignores the voice, and decoding follows it (the pitch higher: by less than the fifth, as
  this codec knows 4 voices and a fifth above this one is outside them, 0.46 of it)."""
  voice = offline.fit_features(train_feats, offline.FitConfig(
      seed=0, iters=1, augment=0,
      features=offline.Features(content_first=True, voice_codebooks=1)), progress=False)
  feats = codec.analyze(heldout[0], 24000)
  other = _another_voice(feats, codec.features)
  codes, other_codes = voice.quantize(feats), voice.quantize(other)
  assert len(np.unique(codes[:, 1])) == 1 and len(np.unique(other_codes[:, 1])) == 1
  assert codes[0, 1] != other_codes[0, 1]
  np.testing.assert_array_equal(codes[:, 0], other_codes[:, 0])
  f0 = codec.features.columns("f0")
  shift = np.mean(voice.dequantize(other_codes)[:, f0] - voice.dequantize(codes)[:, f0])
  assert FIFTH / 3 < shift < FIFTH, shift
  # 36 training utterances, fewer than 1024 entries: each utterance's mean is an entry, so
  # a training utterance's voice code decodes its mean exactly.
  z = (train_feats[0] - voice.mean) / voice.scale
  offset = offline.utterance_offset(z, voice.features)
  entry = voice.codebooks[1][voice.quantize(train_feats[0])[0, 1]]
  np.testing.assert_allclose(entry, offset, atol=1e-5)
  # ... which the codec names (the aligned variant copies them from the prompt).
  assert voice.describe()["utterance_codebooks"] == [1]
  assert codec.describe()["utterance_codebooks"] == []
  with pytest.raises(ValueError, match="content_first"):
    offline.Features(voice_codebooks=1)
  with pytest.raises(ValueError, match="voice_codebooks must be in"):
    offline.Features(content_first=True, voice_codebooks=7)


def test_more_codebooks_reconstruct_heldout_voice_better(codec, heldout):
  feats = codec.analyze(heldout[0], 24000)
  z = (feats - codec.mean) / codec.scale
  errs = [float(np.mean(((codec.dequantize(codec.quantize(feats, q)) - codec.mean) / codec.scale
                          - z) ** 2)) for q in range(1, 9)]
  assert all(a > b for a, b in zip(errs, errs[1:])), errs
  assert errs[-1] < 0.5 * errs[0]


def test_round_trip_keeps_the_spectrum(codec, heldout):
  from valle_jax.metrics import spectral_distortion
  wav = heldout[1]
  codes = codec.encode(wav, 24000)
  one = spectral_distortion(wav, codec.decode(codes[:, :1])[:len(wav)], 24000)
  eight = spectral_distortion(wav, codec.decode(codes)[:len(wav)], 24000)
  # (a codec fitted on 2 minutes of 4 voices; the real one is measured in docs/offline_codec.md)
  assert eight < min(one - 1.0, 10.0), (one, eight)


def test_augmentation_makes_new_voices_of_the_same_frames(train_feats):
  cfg = offline.FitConfig(augment=2)
  out = offline.augment(train_feats[:3], cfg, progress=False)
  assert len(out) == 9 and all(o is f for o, f in zip(out, train_feats[:3]))
  sp = cfg.features.columns("sp")
  for k, copy in enumerate(out[3:]):
    f = train_feats[k // 2]
    assert copy.shape == f.shape and copy.dtype == np.float32
    np.testing.assert_array_equal(copy[:, 1], f[:, 1])             # voicing kept
    shift = copy[:, 0] - f[:, 0]                                     # one F0 shift, <= 5 st
    assert np.ptp(shift) < 1e-4 and abs(shift[0]) <= 5 * np.log(2) / 12 + 1e-6
    assert np.abs(copy[:, sp] - f[:, sp]).mean() > 0.01              # another envelope
  again = offline.augment(train_feats[:3], cfg, progress=False)
  for a, b in zip(out, again):
    np.testing.assert_array_equal(a, b)
  assert offline.augment(train_feats[:3], offline.FitConfig(augment=0)) == train_feats[:3]


def test_fitting_is_deterministic(codec, other_codec, train_feats):
  again = offline.fit_features(train_feats, FIT, progress=False)
  assert again.checksum() == codec.checksum()
  np.testing.assert_array_equal(again.codebooks, codec.codebooks)
  assert other_codec.checksum() != codec.checksum()


def test_save_load_and_registry(codec, heldout, tmp_path):
  codec.save(str(tmp_path / "c"))
  loaded = codec_registry.get_codec({"name": "offline", "path": str(tmp_path / "c")})
  assert loaded.describe() == codec.describe()
  np.testing.assert_array_equal(loaded.encode(heldout[0], 24000), codec.encode(heldout[0], 24000))
  saved = codec_registry.load_description(str(tmp_path / "c" / "codec.json"))
  codec_registry.check_same_codec(saved, loaded.describe(), "dataset d")
  with pytest.raises(UserError, match="codec.path"):
    codec_registry.get_codec({"name": "offline"})
  with pytest.raises(UserError, match="no offline codec"):
    codec_registry.get_codec({"name": "offline", "path": str(tmp_path / "missing")})


def test_a_dataset_made_with_one_codec_refuses_another(codec, other_codec):
  with pytest.raises(UserError, match="weights"):
    codec_registry.check_same_codec(codec.describe(), other_codec.describe(), "dataset d")
  encodec_like = {"name": "encodec", "sample_rate": 24000, "frame_rate": 75.0,
                  "num_codebooks": 8, "codebook_size": 1024, "weights": "sha256:0"}
  with pytest.raises(UserError, match="name"):
    codec_registry.check_same_codec(codec.describe(), encodec_like, "dataset d")


def test_too_little_training_audio_is_a_user_error(train_feats):
  with pytest.raises(UserError, match="at least 8192"):
    offline.fit_features(train_feats[:1], FIT, progress=False)


def test_rebuilds_from_its_saved_description(codec, tmp_path):
  """A dataset's / checkpoint's codec.json is enough to load the codec again."""
  from valle_jax.codec import get_codec
  codec.save(str(tmp_path / "codec"))
  again = get_codec(codec.describe())
  assert again.checksum() == codec.checksum() and again.path == str(tmp_path / "codec")
  wrong = {**codec.describe(), "weights": "sha256:" + "0" * 32}
  with pytest.raises(UserError, match="not the one the data was made with"):
    get_codec(wrong)


def test_feature_cache_is_shared_by_fitting_and_encoding(codec, heldout, tmp_path):
  """Features analysed from files (as `fit` does) are what an encoder with the same
  `feature_cache` reads back; a damaged entry is recomputed; other settings do not hit."""
  import soundfile as sf
  paths = []
  for i, wav in enumerate(heldout):
    paths.append(str(tmp_path / f"{i}.wav"))
    sf.write(paths[-1], wav, offline.SAMPLE_RATE, subtype="FLOAT")
  cache = str(tmp_path / "cache")
  feats = offline.analyze_files(paths, codec.features, workers=1, progress=False,
                                cache_dir=cache)
  entries = sorted(str(p) for p in (tmp_path / "cache").rglob("*.npy"))
  assert len(entries) == len(heldout)
  for f, wav in zip(feats, heldout):
    np.testing.assert_array_equal(f, offline.analyze(wav, codec.features))
  codec.save(str(tmp_path / "c"))
  cached = codec_registry.get_codec({"name": "offline", "path": str(tmp_path / "c"),
                                     "feature_cache": cache})
  # The encoder reads the cache: plant other features (the second clip's, cut or tiled to
  # the first clip's frame count) in the first clip's entry, and those are what it codes.
  swapped = offline.analyze(heldout[1], codec.features)
  n = min(len(swapped), len(feats[0]))
  target = next(e for e in entries if np.array_equal(np.load(e), feats[0]))
  planted = np.resize(swapped[:n], feats[0].shape)
  assert not np.array_equal(codec.quantize(planted), codec.quantize(feats[0]))
  np.save(target, planted)
  np.testing.assert_array_equal(cached.encode(heldout[0], offline.SAMPLE_RATE),
                                codec.quantize(planted))
  # A damaged entry (garbage, or empty) is analysed again and rewritten.
  for damage in (b"not an array", b""):
    with open(target, "wb") as f:
      f.write(damage)
    np.testing.assert_array_equal(cached.encode(heldout[0], offline.SAMPLE_RATE),
                                  codec.encode(heldout[0], offline.SAMPLE_RATE))
    np.testing.assert_array_equal(np.load(target), feats[0])
  # Other analysis settings are other entries; settings of the VQ alone share them.
  dio = offline.Features(f0_method="dio")
  offline.analyze_cached(heldout[0], dio, cache)
  assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(heldout) + 1
  vq_only = dataclasses.replace(codec.features, content_first=True, f0_weight=1.0)
  np.testing.assert_array_equal(offline.analyze_cached(heldout[0], vq_only, cache), feats[0])
  assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(heldout) + 1
