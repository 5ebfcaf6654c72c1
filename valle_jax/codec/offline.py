"""The offline codec: WORLD vocoder features + residual k-means VQ; no pretrained weights.

Same token format as EnCodec at 6 kbps: 24 kHz audio, a frame every 320 samples (75 frames/s,
T = ceil(samples / 320)), Q = 8 residual codebooks of 1024 entries, codebook 0 the coarsest.

    codec = fit(wavs, sr, FitConfig(seed=0))      # k-means on the training split (seconds)
    codec.save(DIR)                               # DIR/offline_codec.npz + DIR/codec.json
    codec = get_codec({"name": "offline", "path": DIR})
    codes = codec.encode(wav, sr)                 # int16 [T, 8]
    wav = codec.decode(codes)                     # float32 [T * 320] at 24 kHz

    python -m valle_jax.codec.offline --corpus=CORPUS/train --out=CODEC_DIR   (fit from files)
    python scripts/codec_quality.py --codec=CODEC_DIR --corpus=CORPUS   (WER/SIM table)

**Analysis** (per frame, centred on sample t * 320; WORLD through `pyworld`): log F0 from
Harvest (or DIO + StoneMask: faster, worse), linearly interpolated through unvoiced frames,
a voicing flag, the spectral envelope (CheapTrick) coded as `sp_dims` mel-cepstral
coefficients, and band aperiodicity (D4C, 3 bands at 24 kHz). **Fitting data**: the training utterances plus
`FitConfig.augment` (3) copies of each as new voices (`augment`: frequency-warped envelope,
shifted F0, a random spectral colour), so the codebooks cover voices outside the training
split: on 30 utterances of 3 held-out voices of the demo corpus, similarity to the original
rose from 0.888 to 0.908 and the envelope's quantisation error fell by a third.
**Quantisation**: each block is scaled by one number
learnt from the (augmented) training frames (the cepstral block by one scale for all coefficients, so
Euclidean distance there is a log-spectral distance) and weighted; codebook q is k-means on
what codebooks 0..q-1 left over (Lloyd iterations on up to `max_frames` frames, empty
clusters re-seeded from the worst-coded frames; numpy, deterministic from the seed).
With `Features.content_first`, codebook 0 is fitted to, and chooses for, the frames less
their utterance's mean log F0 and envelope: the voice's pitch level and timbre are left to the
later codebooks, so the first one, which the AR model predicts, codes what is said. On 30
held-out utterances (DIO F0) decoding codebook 0 alone gave WER 0.790 instead of 0.943, the
held-out voices used 424 of its entries instead of 181, and all 8 codebooks SIM 0.902 vs 0.912.
With `Features.voice_codebooks = n` as well, codebooks 1..n code that mean once per
utterance (residual k-means of the augmented training utterances' means), so every frame of
an utterance has the same codes 1..n, and codebooks n+1..7 code the frames' remaining detail:
the voice is n tokens, in the manner of FACodec's global timbre code (NaturalSpeech 3).
**Synthesis**: the sum of the chosen codewords, unscaled, through WORLD synthesis.

The fitted codec is one small `.npz` (8 x 1024 x 45 float32, ~1.5 MB); `describe()` names its
parameters and a SHA-256 of its arrays, which `valle_jax.codec.check_same_codec` compares.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from valle_jax.errors import UserError

NAME = "offline"
SAMPLE_RATE = 24000
HOP = 320                      # samples per frame at 24 kHz -> 75 frames/s
NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 1024
FILE = "offline_codec.npz"
# Fewer frames than ~8 per codeword leave later codebooks with nothing to code.
MIN_FRAMES = 8 * CODEBOOK_SIZE
_FFT_SIZE = 1024


def _pyworld():
  try:
    with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
      warnings.simplefilter("ignore")
      import pyworld  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("the offline codec needs pyworld; `pip install -e .[eval]` "
                    "(scripts/install.sh does).") from None
  return pyworld


@dataclasses.dataclass(frozen=True)
class Features:
  """What a frame holds and how blocks are weighted in the VQ distance."""
  # "harvest" (the whole analysis ~3x real time per core) or "dio" (DIO + StoneMask, ~29x).
  # Harvest measured better on held-out voices: SIM to the original 0.935 vs 0.912, WER
  # +0.012 vs +0.076 over the originals.
  f0_method: str = "harvest"
  f0_floor: float = 50.0
  f0_ceil: float = 600.0
  sp_dims: int = 40            # mel-cepstral coefficients of the spectral envelope
  f0_weight: float = 0.5       # block weights (after each block is scaled to unit spread);
                               # 0.5 for F0 measured best: WER 0.55 vs 0.63 at 1.0, SIM equal
  vuv_weight: float = 0.5
  sp_weight: float = 1.0
  ap_weight: float = 0.5
  # True: codebook 0 codes each frame relative to its utterance's mean log F0 and envelope
  # (the voice's pitch level and timbre), so that it carries what is said more than who says
  # it; codebooks 1..7 code the rest, that mean included. Off by default: in the full demo
  # the AR then lost the voice (numbers in docs/experiments/demo-history.md).
  content_first: bool = False
  # n > 0 (needs `content_first`): codebooks 1..n code that utterance mean itself (residual
  # VQ fitted to the augmented training utterances' means), once per utterance: every frame
  # of an utterance has the same codes 1..n, its voice. Codebooks n+1..7 code what is left
  # frame by frame. The voice is then n codes the NAR copies from the prompt instead of a
  # part of every frame's residual spread over 7 codebooks.
  voice_codebooks: int = 0

  def __post_init__(self):
    if not 0 <= self.voice_codebooks < NUM_CODEBOOKS - 1:
      raise ValueError(f"Features.voice_codebooks must be in [0, {NUM_CODEBOOKS - 2}], "
                       f"got {self.voice_codebooks}")
    if self.voice_codebooks and not self.content_first:
      raise ValueError("Features.voice_codebooks code what content_first leaves out of "
                       "codebook 0: set content_first=True too.")

  def is_voice_codebook(self, q: int) -> bool:
    """Whether codebook q codes the utterance's voice (one code per utterance)."""
    return 1 <= q <= self.voice_codebooks

  def analysis_settings(self) -> dict[str, Any]:
    """The fields `analyze` reads (the rest only weigh or choose codes)."""
    return {"f0_method": self.f0_method, "f0_floor": self.f0_floor, "f0_ceil": self.f0_ceil,
            "sp_dims": self.sp_dims}

  @property
  def ap_dims(self) -> int:
    return _pyworld().get_num_aperiodicities(SAMPLE_RATE)

  @property
  def dim(self) -> int:
    return 2 + self.sp_dims + self.ap_dims

  def columns(self, name: str) -> slice:
    """The columns of block `name` ("f0", "vuv", "sp" or "ap") in a feature frame."""
    return {n: cols for n, cols, _ in self.blocks()}[name]

  def blocks(self) -> list[tuple[str, slice, float]]:
    """(name, columns, weight) of each block of a feature frame."""
    s = 2 + self.sp_dims
    return [("f0", slice(0, 1), self.f0_weight), ("vuv", slice(1, 2), self.vuv_weight),
            ("sp", slice(2, s), self.sp_weight), ("ap", slice(s, s + self.ap_dims), self.ap_weight)]


def utterance_offset(z: np.ndarray, feat: Features) -> np.ndarray:
  """What codebook 0 does not code of an utterance's scaled features z [T, D]: the mean
  over frames of its log F0 and envelope columns (zeros elsewhere, and everywhere unless
  `feat.content_first`). [D]"""
  offset = np.zeros(z.shape[1], dtype=np.float32)
  if feat.content_first:
    for name in ("f0", "sp"):
      cols = feat.columns(name)
      offset[cols] = z[:, cols].mean(axis=0)
  return offset


def num_frames(num_samples: int) -> int:
  """Frames the codec gives for `num_samples` at 24 kHz: ceil(samples / 320)."""
  return max(1, -(-num_samples // HOP))


def analyze(wav: np.ndarray, feat: Features) -> np.ndarray:
  """24 kHz float waveform [N] -> float32 features [ceil(N / 320), feat.dim]:
  [log F0 (interpolated), voiced flag, coded envelope, coded aperiodicity]."""
  pw = _pyworld()
  x = np.asarray(wav, dtype=np.float64)
  t_frames = num_frames(len(x))
  x = np.pad(x, (0, t_frames * HOP - len(x)))
  fp = 1000.0 * HOP / SAMPLE_RATE
  if feat.f0_method == "harvest":
    f0, t = pw.harvest(x, SAMPLE_RATE, f0_floor=feat.f0_floor, f0_ceil=feat.f0_ceil,
                       frame_period=fp)
  elif feat.f0_method == "dio":
    f0, t = pw.dio(x, SAMPLE_RATE, f0_floor=feat.f0_floor, f0_ceil=feat.f0_ceil,
                   frame_period=fp)
    f0 = pw.stonemask(x, f0, t, SAMPLE_RATE)
  else:
    raise UserError(f"unknown f0_method {feat.f0_method!r}; use 'dio' or 'harvest'.")
  sp = pw.cheaptrick(x, f0, t, SAMPLE_RATE, fft_size=_FFT_SIZE)
  ap = pw.d4c(x, f0, t, SAMPLE_RATE, fft_size=_FFT_SIZE)
  f0, sp, ap = f0[:t_frames], sp[:t_frames], ap[:t_frames]
  voiced = f0 > 0
  lf0 = np.zeros(t_frames)
  if voiced.any():
    idx = np.arange(t_frames)
    lf0 = np.interp(idx, idx[voiced], np.log(f0[voiced]))
  else:
    lf0[:] = np.log(100.0)
  coded_sp = pw.code_spectral_envelope(sp, SAMPLE_RATE, feat.sp_dims)
  coded_ap = pw.code_aperiodicity(ap, SAMPLE_RATE)
  return np.concatenate([lf0[:, None], voiced[:, None], coded_sp, coded_ap],
                        axis=1).astype(np.float32)


def analyze_cached(wav: np.ndarray, feat: Features, cache_dir: str = "") -> np.ndarray:
  """`analyze`, remembered in `cache_dir` (if set) under a SHA-256 of the waveform and the
  analysis settings (codecs that differ only in VQ settings share entries), so a corpus analysed to fit the codec is not analysed again to encode it.
  An unreadable cache entry is recomputed."""
  if not cache_dir:
    return analyze(wav, feat)
  wav = np.ascontiguousarray(wav, dtype="<f4")
  h = hashlib.sha256(json.dumps(feat.analysis_settings(), sort_keys=True).encode())
  h.update(wav.tobytes())
  key = h.hexdigest()
  path = os.path.join(cache_dir, key[:2], key + ".npy")
  try:
    cached = np.load(path)
    if cached.shape == (num_frames(len(wav)), feat.dim):
      return cached
  except (OSError, ValueError, EOFError):   # missing, truncated or empty: analyse again
    pass
  out = analyze(wav, feat)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buf = io.BytesIO()
  np.save(buf, out)
  _atomic_write(path, buf.getvalue())
  return out


def synthesize(feats: np.ndarray, feat: Features) -> np.ndarray:
  """Features [T, D] -> float32 waveform [T * 320] at 24 kHz (WORLD synthesis)."""
  pw = _pyworld()
  f = np.asarray(feats, dtype=np.float64)
  blocks = {name: f[:, cols] for name, cols, _ in feat.blocks()}
  f0 = np.where(blocks["vuv"][:, 0] > 0.5,
                np.exp(np.clip(blocks["f0"][:, 0], np.log(feat.f0_floor), np.log(feat.f0_ceil))),
                0.0)
  sp = pw.decode_spectral_envelope(np.ascontiguousarray(blocks["sp"]), SAMPLE_RATE, _FFT_SIZE)
  ap = pw.decode_aperiodicity(np.ascontiguousarray(np.minimum(blocks["ap"], 0.0)),
                              SAMPLE_RATE, _FFT_SIZE)
  wav = pw.synthesize(np.ascontiguousarray(f0), sp, ap, SAMPLE_RATE,
                      frame_period=1000.0 * HOP / SAMPLE_RATE)
  n = len(f) * HOP
  wav = np.pad(wav[:n], (0, max(0, n - len(wav))))
  return np.clip(wav, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Residual VQ
# ----------------------------------------------------------------------------------------

def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 4096) -> np.ndarray:
  """Index of the nearest centroid (Euclidean) for each row of x."""
  c2 = np.einsum("kd,kd->k", centroids, centroids)
  out = np.empty(len(x), dtype=np.int64)
  for i in range(0, len(x), chunk):
    d = x[i:i + chunk] @ (-2.0 * centroids.T)
    d += c2
    out[i:i + chunk] = np.argmin(d, axis=1)
  return out


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
  """Lloyd's k-means of rows of x into k centroids; an empty cluster is re-seeded with the
  frames worst served by their centroid. Deterministic for a given rng state."""
  n = len(x)
  if n < k:
    raise ValueError(f"k-means of {n} points into {k} clusters")
  centroids = x[rng.choice(n, k, replace=False)].copy()
  for _ in range(iters):
    assign = _nearest(x, centroids)
    counts = np.bincount(assign, minlength=k)
    live = counts > 0
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[live]
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    centroids[live] = (sums / counts[live, None]).astype(np.float32)
    dead = np.flatnonzero(~live)
    if len(dead):
      err = np.einsum("nd,nd->n", x - centroids[assign], x - centroids[assign])
      centroids[dead] = x[np.argsort(-err, kind="stable")[:len(dead)]]
  return centroids


# ----------------------------------------------------------------------------------------
# The codec
# ----------------------------------------------------------------------------------------

class OfflineCodec:
  """A fitted offline codec (see the module doc); implements `valle_jax.codec.base.Codec`."""

  sample_rate = SAMPLE_RATE
  frame_rate = SAMPLE_RATE / HOP
  num_codebooks = NUM_CODEBOOKS
  codebook_size = CODEBOOK_SIZE

  def __init__(self, codebooks: np.ndarray, mean: np.ndarray, scale: np.ndarray,
               features: Features, fit_info: Mapping[str, Any] | None = None):
    codebooks = np.asarray(codebooks, dtype=np.float32)
    if codebooks.shape != (NUM_CODEBOOKS, CODEBOOK_SIZE, features.dim):
      raise ValueError(f"codebooks of shape {codebooks.shape}, expected "
                       f"{(NUM_CODEBOOKS, CODEBOOK_SIZE, features.dim)}")
    self.codebooks = codebooks
    self.mean = np.asarray(mean, dtype=np.float32)
    self.scale = np.asarray(scale, dtype=np.float32)
    self.features = features
    self.fit_info = dict(fit_info or {})
    self.path = ""   # the directory it was saved to / loaded from (where to find it again)
    self.feature_cache = ""   # a directory of analysed features (`analyze_cached`); not identity

  # -- Codec protocol --------------------------------------------------------------------
  def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
    return self.quantize(self.analyze(wav, sr))

  def decode(self, codes: np.ndarray) -> np.ndarray:
    """Codes [T, q] -> waveform [T * 320]; q < 8 decodes from the coarsest q codebooks."""
    return synthesize(self.dequantize(codes), self.features)

  def encode_batch(self, wavs: Sequence[np.ndarray], sr: int) -> list[np.ndarray]:
    return [self.encode(w, sr) for w in wavs]

  def decode_batch(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [self.decode(c) for c in codes]

  def describe(self) -> dict[str, Any]:
    return {
        "name": NAME,
        "sample_rate": SAMPLE_RATE,
        "frame_rate": self.frame_rate,
        "num_codebooks": NUM_CODEBOOKS,
        "codebook_size": CODEBOOK_SIZE,
        "features": dataclasses.asdict(self.features),
        # one code per utterance (the aligned variant copies them from the prompt)
        "utterance_codebooks": list(range(1, 1 + self.features.voice_codebooks)),
        "weights": self.checksum(),
        "fit": self.fit_info,
        "path": self.path,   # not part of the identity: `get_codec` reloads from here
    }

  # -- pieces ------------------------------------------------------------------------------
  def analyze(self, wav: np.ndarray, sr: int) -> np.ndarray:
    """Waveform at `sr` -> unquantised features [T, D]."""
    from valle_jax.audio import as_mono, resample  # pylint: disable=g-import-not-at-top
    return analyze_cached(resample(as_mono(wav), sr, SAMPLE_RATE), self.features,
                          self.feature_cache)

  def quantize(self, feats: np.ndarray, num_codebooks: int = NUM_CODEBOOKS) -> np.ndarray:
    """One utterance's features [T, D] -> int16 codes [T, num_codebooks] (greedy residual
    VQ; codebook 0 chooses for the frames less the utterance's mean, see `Features`)."""
    residual = (np.asarray(feats, np.float32) - self.mean) / self.scale
    offset = utterance_offset(residual, self.features)
    codes = np.empty((len(residual), num_codebooks), dtype=np.int16)
    for q in range(num_codebooks):
      if q == 0:
        idx = _nearest(residual - offset, self.codebooks[q])
      elif self.features.is_voice_codebook(q):   # the voice: what is left of the offset
        voice = _nearest(offset[None], self.codebooks[q])
        offset = offset - self.codebooks[q][voice[0]]
        idx = np.repeat(voice, len(residual))
      else:
        idx = _nearest(residual, self.codebooks[q])
      codes[:, q] = idx
      residual = residual - self.codebooks[q][idx]
    return codes

  def dequantize(self, codes: np.ndarray) -> np.ndarray:
    """Codes [T, q] (the first q <= 8 codebooks) -> features [T, D]."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] > NUM_CODEBOOKS or codes.shape[0] == 0:
      raise ValueError(f"expected codes [T, <= {NUM_CODEBOOKS}] with T > 0, got {codes.shape}")
    if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
      raise ValueError(f"codes must lie in [0, {CODEBOOK_SIZE})")
    z = sum(self.codebooks[q][codes[:, q].astype(np.int64)] for q in range(codes.shape[1]))
    return z * self.scale + self.mean

  def checksum(self) -> str:
    h = hashlib.sha256()
    for a in (self.codebooks, self.mean, self.scale):
      h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return "sha256:" + h.hexdigest()[:32]

  # -- files -------------------------------------------------------------------------------
  def save(self, directory: str) -> str:
    """Writes DIR/offline_codec.npz and DIR/codec.json (the `describe()` dict); returns DIR."""
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.abspath(directory)
    buf = io.BytesIO()
    np.savez(buf, codebooks=self.codebooks, mean=self.mean, scale=self.scale,
             features=json.dumps(dataclasses.asdict(self.features)),
             fit_info=json.dumps(self.fit_info))
    _atomic_write(os.path.join(directory, FILE), buf.getvalue())
    _atomic_write(os.path.join(directory, "codec.json"),
                  json.dumps(self.describe(), indent=1).encode())
    return directory

  @classmethod
  def load(cls, path: str) -> "OfflineCodec":
    """Reads a codec saved by `save` (the directory, or the .npz in it)."""
    if os.path.isdir(path):
      path = os.path.join(path, FILE)
    if not os.path.exists(path):
      raise UserError(f"no offline codec at {path}; fit one with "
                      "`python -m valle_jax.codec.offline --corpus=DIR --out=DIR`.")
    with np.load(path) as z:
      features = Features(**json.loads(str(z["features"])))
      codec = cls(z["codebooks"], z["mean"], z["scale"], features,
                  json.loads(str(z["fit_info"])))
    codec.path = os.path.dirname(os.path.abspath(path))
    return codec


def _atomic_write(path: str, data: bytes) -> None:
  """Writes `path` whole or not at all, also when other writers write it at the same time
  (each through its own temporary file, created with the usual permissions)."""
  tmp = f"{path}.{uuid.uuid4().hex}.tmp"
  try:
    with open(tmp, "xb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def build(config: Mapping[str, Any]) -> OfflineCodec:
  """Registry entry point: `{"name": "offline", "path": DIR}` loads the codec fitted in DIR;
  `"feature_cache": DIR2` reuses features analysed into DIR2 (e.g. by `fit`).

  A saved `describe()` dict works too (it carries the path); the loaded codebooks must then
  have the described checksum."""
  path = config.get("path")
  if not path:
    raise UserError("the offline codec needs codec.path: the directory it was fitted into.")
  codec = OfflineCodec.load(path)
  # A saved description's weights are the codebooks' checksum; a prepare config's are
  # EnCodec's choice ("pretrained" / "random"), which says nothing about this codec.
  weights = str(config.get("weights") or "")
  if weights.startswith("sha256:") and weights != codec.checksum():
    raise UserError(f"the offline codec in {path} is not the one the data was made with "
                    f"(checksum {codec.checksum()} vs {config['weights']}); point to the "
                    "codec the dataset was prepared with.")
  codec.feature_cache = config.get("feature_cache", "")
  return codec


# ----------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FitConfig:
  seed: int = 0
  iters: int = 10              # Lloyd iterations per codebook
  max_frames: int = 200_000    # frames sampled (after augmentation) for k-means
  workers: int = 0             # processes for feature analysis; 0 = one per core
  features: Features = Features()
  # Voice augmentation (see `augment`): extra copies of each training utterance with a
  # warped frequency axis, a shifted F0 and a random spectral colour, so the codebooks also
  # cover voices that are not in the training split. 0 turns it off.
  augment: int = 3
  warp: tuple[float, float] = (0.85, 1.18)   # frequency-axis scale range (log-uniform)
  f0_shift: float = 5.0                      # F0 shift range, +- semitones (uniform)
  colour: float = 1.0                        # spectral colour, x the spread of utterance means


def _analyze_file(args) -> np.ndarray:
  path, feat, cache_dir = args
  from valle_jax.audio import load_audio  # pylint: disable=g-import-not-at-top
  return analyze_cached(load_audio(path, SAMPLE_RATE), feat, cache_dir)


def analyze_files(paths: Sequence[str], feat: Features, workers: int = 0,
                  progress: bool = True, cache_dir: str = "") -> list[np.ndarray]:
  """Features of each audio file, in order, over `workers` processes (cached in
  `cache_dir` if set: see `analyze_cached`)."""
  workers = workers if workers > 0 else (os.cpu_count() or 1)
  jobs = [(p, feat, cache_dir) for p in paths]
  with ProcessPoolExecutor(workers) as pool:
    return list(tqdm(pool.map(_analyze_file, jobs, chunksize=4), total=len(jobs),
                     desc="codec features", unit="utt", disable=not progress))


def augment(feats: Sequence[np.ndarray], cfg: FitConfig, progress: bool = True
            ) -> list[np.ndarray]:
  """`cfg.augment` new voices per utterance: features [T, D] -> the originals followed by
  the copies. Each copy keeps the frames' timing and content but has (1) its spectral
  envelope's frequency axis scaled by a factor from `cfg.warp` (vocal tract length),
  (2) its F0 shifted by up to `cfg.f0_shift` semitones, (3) one random offset added to every
  frame's cepstrum (a fixed filter: another voice's timbre), drawn per coefficient from a
  normal with `cfg.colour` x the spread of the utterances' mean cepstra. Deterministic in
  `cfg.seed`."""
  if cfg.augment <= 0:
    return list(feats)
  pw = _pyworld()
  feat = cfg.features
  sp_cols = feat.columns("sp")
  rng = np.random.default_rng([cfg.seed, 1])
  colour = cfg.colour * np.std([f[:, sp_cols].mean(axis=0) for f in feats], axis=0)
  freqs = np.linspace(0.0, SAMPLE_RATE / 2, _FFT_SIZE // 2 + 1)
  lo, hi = np.log(cfg.warp[0]), np.log(cfg.warp[1])
  out = list(feats)
  for f in tqdm(feats, desc="codec augmentation", unit="utt", disable=not progress):
    log_sp = np.log(pw.decode_spectral_envelope(
        np.ascontiguousarray(f[:, sp_cols], dtype=np.float64), SAMPLE_RATE, _FFT_SIZE))
    for _ in range(cfg.augment):
      source = np.clip(freqs / np.exp(rng.uniform(lo, hi)), 0.0, SAMPLE_RATE / 2)
      warped = np.stack([np.interp(source, freqs, row) for row in log_sp])
      g = f.copy()
      g[:, sp_cols] = pw.code_spectral_envelope(np.exp(warped), SAMPLE_RATE, feat.sp_dims)
      g[:, sp_cols] += rng.standard_normal(feat.sp_dims) * colour
      g[:, 0] += rng.uniform(-cfg.f0_shift, cfg.f0_shift) * np.log(2.0) / 12.0
      out.append(g.astype(np.float32))
  return out


def _voice_codebook(offsets: np.ndarray, iters: int, rng: np.random.Generator) -> np.ndarray:
  """A voice codebook [1024, D]: k-means of what is left of the utterances' mean offsets
  [U, D]; with no more utterances than entries, those themselves (repeated to fill it)."""
  if len(offsets) > CODEBOOK_SIZE:
    return kmeans(offsets.astype(np.float32), CODEBOOK_SIZE, iters, rng)
  fill = np.resize(np.arange(len(offsets)), CODEBOOK_SIZE)
  return offsets[fill].astype(np.float32)


def fit_features(feats: Iterable[np.ndarray], cfg: FitConfig = FitConfig(),
                 progress: bool = True) -> OfflineCodec:
  """Fits scales and the 8 residual codebooks to training features [T_i, D] (augmented
  with `cfg.augment` new voices per utterance first)."""
  feats = list(feats)
  frames = sum(len(f) for f in feats)
  if frames < MIN_FRAMES:
    raise UserError(f"the offline codec needs at least {MIN_FRAMES} training frames "
                    f"({MIN_FRAMES / 75:.0f} s of audio), got {frames}; fit it on more audio.")
  utterances = augment(feats, cfg, progress)
  x = np.concatenate(utterances, axis=0).astype(np.float32)
  utterance_of_frame = np.repeat(np.arange(len(utterances)), [len(u) for u in utterances])
  feat = cfg.features
  mean = x.mean(axis=0)
  scale = np.ones(feat.dim, dtype=np.float32)
  for _, cols, weight in feat.blocks():
    spread = float(np.sqrt(np.mean((x[:, cols] - mean[cols]) ** 2))) or 1.0
    scale[cols] = spread / weight
  offsets = np.stack([utterance_offset((u.mean(axis=0, keepdims=True) - mean) / scale, feat)
                      for u in utterances])   # [utterances, D]: the mean is linear
  rng = np.random.default_rng(cfg.seed)
  if len(x) > cfg.max_frames:
    keep = np.sort(rng.choice(len(x), cfg.max_frames, replace=False))
    x, utterance_of_frame = x[keep], utterance_of_frame[keep]
  residual = (x - mean) / scale
  codebooks = []
  for q in tqdm(range(NUM_CODEBOOKS), desc="codec k-means", unit="codebook",
                disable=not progress):
    if feat.is_voice_codebook(q):
      c = _voice_codebook(offsets, cfg.iters, rng)
      voice = c[_nearest(offsets, c)]    # [utterances, D]
      offsets = offsets - voice
      residual = residual - voice[utterance_of_frame]
    else:
      target = residual - offsets[utterance_of_frame] if q == 0 else residual
      c = kmeans(target, CODEBOOK_SIZE, cfg.iters, rng)
      residual = residual - c[_nearest(target, c)]
    codebooks.append(c)
  info = {"seed": cfg.seed, "iters": cfg.iters, "frames": frames, "augment": cfg.augment,
          "warp": list(cfg.warp), "f0_shift": cfg.f0_shift, "colour": cfg.colour}
  return OfflineCodec(np.stack(codebooks), mean, scale, feat, info)


def fit(paths: Sequence[str], cfg: FitConfig = FitConfig(), progress: bool = True,
        cache_dir: str = "") -> OfflineCodec:
  """Fits the codec to audio files (the training split only). With `cache_dir`, their
  features are kept there for a codec loaded with the same `feature_cache` to encode them
  without analysing them again."""
  if not paths:
    raise UserError("no training audio to fit the offline codec on.")
  feats = analyze_files(paths, cfg.features, cfg.workers, progress, cache_dir)
  return fit_features(feats, cfg, progress)


def _main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; pass options as --flags.")
  if not (f.corpus and f.out):
    raise UserError("pass --corpus (a folder of audio files, e.g. CORPUS/train) and --out.")
  paths = sorted(os.path.join(d, n) for d, _, files in os.walk(f.corpus) for n in files
                 if n.lower().endswith((".wav", ".flac", ".ogg", ".mp3")))
  feat = Features(f0_method=f.f0_method, sp_dims=f.sp_dims, content_first=f.content_first,
                  voice_codebooks=f.voice_codebooks)
  codec = fit(paths, FitConfig(seed=f.seed, iters=f.iters, max_frames=f.max_frames,
                               workers=f.workers, features=feat))
  codec.save(f.out)
  print(f"fitted on {len(paths)} files; wrote {os.path.join(f.out, FILE)} ({codec.checksum()})")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("corpus", None, "Directory of training audio (searched recursively).")
  flags.DEFINE_string("out", None, "Directory to write the fitted codec to.")
  flags.DEFINE_integer("seed", FitConfig.seed, "k-means seed.")
  flags.DEFINE_integer("iters", FitConfig.iters, "Lloyd iterations per codebook.")
  flags.DEFINE_integer("max_frames", FitConfig.max_frames, "Frames sampled for k-means.")
  flags.DEFINE_integer("workers", 0, "Processes for feature analysis (0 = one per core).")
  flags.DEFINE_enum("f0_method", Features.f0_method, ["dio", "harvest"], "F0 estimator.")
  flags.DEFINE_integer("sp_dims", Features.sp_dims, "Mel-cepstral coefficients per frame.")
  flags.DEFINE_bool("content_first", Features.content_first, "Codebook 0 codes frames less "
                    "their utterance's mean log F0 and envelope (see Features).")
  flags.DEFINE_integer("voice_codebooks", Features.voice_codebooks, "Codebooks 1..n code "
                       "that mean, once per utterance (needs --content_first; see Features).")

  def _run(argv):
    try:
      _main(argv)
    except UserError as e:
      raise SystemExit(f"error: {e}") from None

  app.run(_run)
