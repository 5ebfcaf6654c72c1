"""EnCodec 24 kHz (pip `encodec`, PyTorch) as a `Codec`: 6 kbps -> Q = 8 codebooks of 1024,
75 frames/s (hop 320 samples), T = ceil(samples / 320).

Config (the `codec` section; every key but `name` optional):
  name        "encodec"
  bandwidth   6.0 kbps (1.5 / 3 / 6 / 12 / 24 -> Q = 2 / 4 / 8 / 16 / 32)
  weights     "pretrained" (default) or "random" (random init from `seed`: tests, benchmarks;
              same architecture and cost, meaningless tokens)
  checkpoint  local `encodec_24khz-d7cc33bc.th`; empty = the package's own download
              (torch hub cache). Its SHA-256 must start with `checksum`.
  checksum    "d7cc33bc" (the published checkpoint's SHA-256 prefix)
  seed        0 (random weights only)
  device      "cpu" (or "cuda", "cuda:1", ...)

`encodec` imports torchaudio at module level, but only for file I/O helpers valle-jax never
calls (audio I/O is soundfile + soxr here). torchaudio pins its own torch build, so it is not
installed; when it is absent, `_import_encodec` lends `encodec` a placeholder module that
raises if anything touches it, and takes it out of `sys.modules` again right after the import,
so no other code can mistake it for torchaudio.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import types
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from valle_jax.audio import resample
from valle_jax.errors import UserError

CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
CHECKSUM = "d7cc33bc"
HOP = 320  # samples per frame at 24 kHz
MIN_BATCH_FRAMES = 8  # shorter clips are encoded alone (see encode_batch)


class _NoTorchaudio(types.ModuleType):
  """Stands in for torchaudio while `encodec` is imported; fails loudly if used."""

  def __getattr__(self, name):
    raise ImportError(f"torchaudio.{name} is not available: valle-jax does not install "
                      "torchaudio (audio I/O goes through valle_jax.audio).")


def _import_encodec():
  if "encodec.model" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
    import encodec  # pylint: disable=g-import-not-at-top
    return encodec
  if importlib.util.find_spec("encodec") is None:
    raise UserError("the `encodec` package is not installed; run scripts/install.sh "
                    "(it installs `encodec` with --no-deps next to a CPU torch).")
  sys.modules["torchaudio"] = _NoTorchaudio("torchaudio")
  try:
    import encodec  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torchaudio"]
  return encodec


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _load_state_dict(checkpoint: str, checksum: str):
  """Reads and verifies a local checkpoint, or fetches the published one (torch hub)."""
  import torch  # pylint: disable=g-import-not-at-top
  if not checkpoint:
    url = f"https://dl.fbaipublicfiles.com/encodec/v0/{CHECKPOINT_NAME}"
    try:
      return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True)
    except Exception as e:  # network, proxy or hash failure: all mean "get the file yourself"
      raise UserError(
          f"could not download the EnCodec weights ({type(e).__name__}: {e}); download "
          f"{CHECKPOINT_NAME} elsewhere and set codec.checkpoint to its path.") from None
  if not os.path.isfile(checkpoint):
    raise UserError(f"EnCodec checkpoint {checkpoint!r} does not exist; set "
                    f"codec.checkpoint to the path of {CHECKPOINT_NAME}.")
  actual = _sha256(checkpoint)
  if not actual.startswith(checksum):
    raise UserError(f"EnCodec checkpoint {checkpoint!r} has SHA-256 {actual[:16]}..., not "
                    f"{checksum}...; the file is corrupt or not {CHECKPOINT_NAME}: "
                    "download it again.")
  try:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle / zip errors of any kind
    raise UserError(f"EnCodec checkpoint {checkpoint!r} cannot be read ({e}); "
                    "download it again.") from None


def _randomize_codebooks(model, seed: int, norm: float = 0.1) -> None:
  """EnCodec's codebooks start at zero (training k-means-initialises them), so a randomly
  initialised model would emit only code 0. Give each entry a random direction and a fixed
  norm (fixed so the nearest entry is decided by direction, which spreads the codes)."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in model.quantizer.vq.layers:
      book = layer._codebook  # pylint: disable=protected-access
      embed = torch.randn(book.embed.shape, generator=gen)  # [codebook_size, dim]
      book.embed.copy_(embed / embed.norm(dim=1, keepdim=True) * norm)
      book.embed_avg.copy_(book.embed)
      book.inited.fill_(1)


class EncodecCodec:
  """The EnCodec 24 kHz model behind the `Codec` protocol (see the module docstring)."""

  sample_rate = 24_000
  codebook_size = 1024

  def __init__(self, bandwidth: float = 6.0, weights: str = "pretrained",
               checkpoint: str = "", checksum: str = CHECKSUM, seed: int = 0,
               device: str = "cpu"):
    import torch  # pylint: disable=g-import-not-at-top
    encodec = _import_encodec()
    bandwidths = (1.5, 3.0, 6.0, 12.0, 24.0)
    if bandwidth not in bandwidths:
      raise UserError(f"EnCodec bandwidth {bandwidth} is not one of {bandwidths} kbps; "
                      "set codec.bandwidth (6.0 gives VALL-E's 8 codebooks).")
    if weights not in ("pretrained", "random"):
      raise UserError(f"codec.weights must be 'pretrained' or 'random', not {weights!r}.")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated")
      torch.manual_seed(seed)
      model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
    if weights == "pretrained":
      state = _load_state_dict(checkpoint, checksum)
      try:
        model.load_state_dict(state)
      except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{checkpoint or CHECKPOINT_NAME!r} is not an EnCodec 24 kHz "
                        f"checkpoint ({str(e).splitlines()[0]}); use {CHECKPOINT_NAME}.") from None
      self._weights_id = f"sha256:{checksum}"
    else:
      _randomize_codebooks(model, seed)
      self._weights_id = f"random:seed={seed}"
    model.set_target_bandwidth(bandwidth)
    self._torch = torch
    self._device = torch.device(device)
    self._model = model.to(self._device).eval()
    self.bandwidth = float(bandwidth)
    # Q = bandwidth / (bits per frame per codebook * frame rate) = 6000 / (10 * 75) = 8.
    self.num_codebooks = int(round(bandwidth * 1000 / (math.log2(self.codebook_size) * 75)))
    self.frame_rate = self.sample_rate / HOP

  def describe(self) -> dict[str, Any]:
    return {"name": "encodec", "model": "encodec_24khz", "bandwidth": self.bandwidth,
            "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks, "codebook_size": self.codebook_size,
            "hop_length": HOP, "weights": self._weights_id}

  def num_frames(self, num_samples: int) -> int:
    return math.ceil(num_samples / HOP)

  # --- encode ----------------------------------------------------------------------------
  def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
    return self.encode_batch([wav], sr)[0]

  def encode_batch(self, wavs: Sequence[np.ndarray], sr: int) -> list[np.ndarray]:
    """float [N_i] at `sr` each -> int16 [ceil(N_i' / 320), Q] each (N_i' at 24 kHz).

    Clips are zero-padded at the end to whole frames and to the longest; the model is
    causal, so each clip's frames equal those of encoding it alone. Clips under
    MIN_BATCH_FRAMES frames are encoded alone: the encoder's reflection padding at the start
    reaches past the end of so short an input, where the batch's padding would change it.
    """
    wavs = [resample(w, sr, self.sample_rate) for w in wavs]
    out: list[np.ndarray] = [np.zeros((0, self.num_codebooks), np.int16)] * len(wavs)
    batched = [i for i, w in enumerate(wavs) if self.num_frames(w.size) >= MIN_BATCH_FRAMES]
    for i, w in enumerate(wavs):
      if 0 < self.num_frames(w.size) < MIN_BATCH_FRAMES:
        out[i] = self._encode([w])[0]
    if batched:
      for i, codes in zip(batched, self._encode([wavs[i] for i in batched])):
        out[i] = codes
    return out

  def _encode(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
    """non-empty float32 [N_i] at 24 kHz -> int16 [ceil(N_i / 320), Q] each, one forward."""
    torch = self._torch
    # Zero-pad every clip to whole frames: the model pads a partial last frame by
    # reflection, which would make a clip's last frame depend on the batch it is in.
    longest = self.num_frames(max(w.size for w in wavs)) * HOP
    batch = np.zeros((len(wavs), 1, longest), np.float32)  # [B, 1, T * 320]
    for row, w in enumerate(wavs):
      batch[row, 0, :w.size] = w
    with torch.inference_mode():
      frames = self._model.encode(torch.from_numpy(batch).to(self._device))
    codes = frames[0][0].cpu().numpy()  # [B, Q, T]
    return [codes[row, :, :self.num_frames(w.size)].T.astype(np.int16)  # [T_i, Q]
            for row, w in enumerate(wavs)]

  # --- decode ----------------------------------------------------------------------------
  def decode(self, codes: np.ndarray) -> np.ndarray:
    return self.decode_batch([codes])[0]

  def decode_batch(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """int [T_i, q] each -> float32 [T_i * 320] each at 24 kHz (causal decoder, so padding
    the batch at the end does not change any clip). q <= Q: the first q codebooks, EnCodec's
    lower bandwidths (2 codebooks = 1.5 kbps); every clip of a batch has the same q."""
    torch = self._torch
    widths = {c.shape[1] if c.ndim == 2 else -1 for c in codes}
    if len(widths) > 1 or not widths <= set(range(1, self.num_codebooks + 1)):
      raise ValueError(f"codes must be [T, q] with the same q in [1, {self.num_codebooks}] "
                       f"for every clip, got {sorted({c.shape for c in codes})}")
    for c in codes:
      if c.size and (c.min() < 0 or c.max() >= self.codebook_size):
        raise ValueError(f"codes must lie in [0, {self.codebook_size})")
    longest = max((c.shape[0] for c in codes), default=0)
    if longest == 0:
      return [np.zeros((0,), np.float32) for _ in codes]
    batch = np.zeros((len(codes), widths.pop(), longest), np.int64)  # [B, q, T]
    for row, c in enumerate(codes):
      batch[row, :, :c.shape[0]] = c.T
    with torch.inference_mode():
      wav = self._model.decode([(torch.from_numpy(batch).to(self._device), None)])
    wav = wav[:, 0].float().cpu().numpy()  # [B, T * 320]
    return [wav[row, :c.shape[0] * HOP].copy() for row, c in enumerate(codes)]


# Keys `describe()` adds that are fixed properties of EnCodec 24 kHz, not options.
_DESCRIBED = {"model": "encodec_24khz", "sample_rate": 24_000, "frame_rate": 75.0,
              "codebook_size": 1024, "hop_length": HOP}


def _options_from_description(config: Mapping[str, Any]) -> dict[str, Any]:
  """A saved `describe()` dict -> build options (weights id -> weights/seed/checksum)."""
  for key, value in _DESCRIBED.items():
    if key in config and config[key] != value:
      raise UserError(f"the saved codec has {key}={config[key]!r}, but EnCodec 24 kHz has "
                      f"{value!r}; the data was made with another codec.")
  options = {k: v for k, v in config.items() if k not in _DESCRIBED and k != "num_codebooks"}
  weights = str(options.get("weights", ""))
  if weights.startswith("random:seed="):
    options.update(weights="random", seed=int(weights.split("=", 1)[1]))
  elif weights.startswith("sha256:"):
    options.update(weights="pretrained", checksum=weights.split(":", 1)[1])
  return options


def build(config: Mapping[str, Any]) -> EncodecCodec:
  """`get_codec` entry point: the `codec` config section, or a saved `describe()` dict
  (the pretrained weights then come from the package's download, checked against the
  saved checksum) -> EncodecCodec."""
  if "model" in config:
    config = _options_from_description(config)
  known = {"name", "bandwidth", "weights", "checkpoint", "checksum", "seed", "device"}
  # `path`: the offline codec's field of the prepare configs (configs/data/), unset here.
  unknown = set(config) - known - ({"path"} if not config.get("path") else set())
  if unknown:
    raise UserError(f"unknown EnCodec option(s) {sorted(unknown)}; known: {sorted(known)}.")
  kwargs = {k: v for k, v in config.items() if k in known - {"name"}}
  if "checkpoint" in kwargs:
    kwargs["checkpoint"] = os.path.expanduser(kwargs["checkpoint"] or "")
  return EncodecCodec(**kwargs)
