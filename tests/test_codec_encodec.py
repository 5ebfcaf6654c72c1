"""EnCodec backend with random weights (the published weights cannot be downloaded here)."""
import hashlib
import importlib.util
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("encodec") is None:  # importing it needs our torchaudio stand-in
  pytest.skip("encodec is not installed (scripts/install.sh installs it)",
              allow_module_level=True)

from valle_jax.codec import Codec, check_same_codec, get_codec  # noqa: E402
from valle_jax.errors import UserError  # noqa: E402

RANDOM = {"name": "encodec", "weights": "random", "seed": 0}


@pytest.fixture(scope="module")
def codec():
  return get_codec(RANDOM)


@pytest.fixture(scope="module")
def wavs():
  rng = np.random.default_rng(0)
  t = np.arange(24_000) / 24_000
  tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
  return [tone, tone[:12_001], 0.1 * rng.standard_normal(7_777).astype(np.float32), tone[:320],
          tone[:1]]


def test_protocol_and_description(codec):
  assert isinstance(codec, Codec)
  assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (
      24_000, 75.0, 8, 1024)
  assert codec.describe()["weights"] == "random:seed=0"
  assert "torchaudio" not in sys.modules  # the import placeholder was removed again


def test_encode_shapes_and_frames(codec, wavs):
  for w in wavs:
    codes = codec.encode(w, 24_000)
    assert codes.dtype == np.int16
    assert codes.shape == (math.ceil(w.size / 320), 8)
    assert codes.min() >= 0 and codes.max() < 1024
  assert len(np.unique(codec.encode(wavs[0], 24_000))) > 8  # not a constant output


def test_encode_resamples(codec, wavs):
  codes = codec.encode(wavs[0][::3].copy(), 8_000)  # 1 s at 8 kHz
  assert codes.shape == (75, 8)


def test_batch_equals_one_by_one(codec, wavs):
  one = [codec.encode(w, 24_000) for w in wavs]
  batch = codec.encode_batch(wavs, 24_000)
  for a, b in zip(one, batch):
    np.testing.assert_array_equal(a, b)
  decoded = codec.decode_batch(one[1:3])
  for c, d in zip(one[1:3], decoded):
    assert d.dtype == np.float32 and d.shape == (c.shape[0] * 320,)
    np.testing.assert_allclose(d, codec.decode(c), atol=1e-5)


def test_fewer_codebooks_decode_their_sum(codec, wavs):
  """Codes [T, q] decode from the sum of the first q codebooks' entries (EnCodec's lower
  bandwidths); q = 8 is the full decode; other widths are refused."""
  codes = codec.encode(wavs[0], 24_000)
  vectors = [layer.codebook.detach().numpy() for layer in codec._model.quantizer.vq.layers]
  for q in (1, 2, 8):
    latent = sum(vectors[j][codes[:, j].astype(np.int64)] for j in range(q))  # [T, 128]
    with torch.inference_mode():
      expected = codec._model.decoder(torch.from_numpy(latent.T[None].copy()))[0, 0].numpy()
    np.testing.assert_array_equal(codec.decode(codes[:, :q]), expected[:len(codes) * 320])
  # random weights: the decoder barely hears its input, but the widths differ (by ~1e-4)
  assert not np.array_equal(codec.decode(codes[:, :2]), codec.decode(codes))
  for bad in ([codes[:, :0]], [codes[:, :2], codes[:, :3]], [np.zeros((4, 9), np.int16)]):
    with pytest.raises(ValueError, match="same q in"):
      codec.decode_batch(bad)


def test_deterministic_across_instances(codec, wavs):
  other = get_codec(RANDOM)
  np.testing.assert_array_equal(other.encode(wavs[2], 24_000), codec.encode(wavs[2], 24_000))
  assert not np.array_equal(get_codec({**RANDOM, "seed": 1}).encode(wavs[2], 24_000),
                            codec.encode(wavs[2], 24_000))


def test_check_same_codec(codec):
  check_same_codec(codec.describe(), codec.describe(), "dataset x")
  with pytest.raises(UserError, match="dataset x"):
    check_same_codec({**codec.describe(), "weights": "sha256:d7cc33bc"}, codec.describe(),
                     "dataset x")


def _sha(path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_checkpoint_loads(codec, wavs, tmp_path):
  path = tmp_path / "encodec_24khz-local.th"
  torch.save(codec._model.state_dict(), path)  # the random weights, as a checkpoint file
  local = get_codec({"name": "encodec", "checkpoint": str(path), "checksum": _sha(path)[:8]})
  np.testing.assert_array_equal(local.encode(wavs[2], 24_000), codec.encode(wavs[2], 24_000))
  assert local.describe()["weights"] == f"sha256:{_sha(path)[:8]}"


def test_bad_checkpoints_give_clear_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    get_codec({"name": "encodec", "checkpoint": str(tmp_path / "nope.th")})
  corrupt = tmp_path / "encodec_24khz-d7cc33bc.th"
  corrupt.write_bytes(b"\x00not a checkpoint" * 100)
  with pytest.raises(UserError, match="SHA-256.*corrupt"):  # the default checksum d7cc33bc
    get_codec({"name": "encodec", "checkpoint": str(corrupt)})
  with pytest.raises(UserError, match="cannot be read"):  # right checksum, unreadable data
    get_codec({"name": "encodec", "checkpoint": str(corrupt), "checksum": _sha(corrupt)[:8]})
  wrong = tmp_path / "other.th"
  torch.save({"weight": torch.zeros(3)}, wrong)
  with pytest.raises(UserError, match="not an EnCodec 24 kHz checkpoint"):
    get_codec({"name": "encodec", "checkpoint": str(wrong), "checksum": _sha(wrong)[:8]})


def test_config_errors():
  with pytest.raises(UserError, match="unknown codec"):
    get_codec({"name": "mp3"})
  with pytest.raises(UserError, match="bandwidth"):
    get_codec({**RANDOM, "bandwidth": 5.0})
  with pytest.raises(UserError, match="unknown EnCodec option"):
    get_codec({**RANDOM, "bandwith": 6.0})
