"""Audio file reading, resampling and spectrograms shared by data prep, the codecs,
synthesis, scoring and reports.

`load_audio` returns mono float32 at the rate asked for, or raises `AudioError` whose
`reason` says what is wrong with the file (data prep counts skipped items by it).
"""
from __future__ import annotations

import os
import struct

import numpy as np

# AudioError.reason values.
MISSING = "missing"          # no such file
EMPTY = "empty_file"         # zero bytes
NOT_AUDIO = "not_audio"      # not a format libsndfile can open
TRUNCATED = "truncated"      # header promises more data than the file has, or decoding failed
UNREADABLE = "unreadable"    # permissions or other I/O error
NO_SAMPLES = "no_samples"    # a valid file with zero samples
OUTSIDE = "span_outside_file"  # a segment (start, duration) not inside the file
# A segment may end this far past the file's end (manifests round times to the millisecond);
# what is there is read.
SPAN_TOLERANCE_S = 0.01


class AudioError(Exception):
  """An audio file that cannot be used; `reason` is one of the constants above."""

  def __init__(self, reason: str, path: str | os.PathLike, detail: str = ""):
    self.reason = reason
    self.path = os.fspath(path)
    super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """float waveform [N] at `sr_in` -> float32 [round(N * sr_out / sr_in)] at `sr_out` (soxr HQ)."""
  wav = np.asarray(wav, dtype=np.float32)
  if wav.ndim != 1:
    raise ValueError(f"expected a mono waveform [N], got shape {wav.shape}")
  if sr_in == sr_out:
    return wav
  import soxr  # pylint: disable=g-import-not-at-top
  return soxr.resample(wav, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def _wav_data_truncated(path: str) -> bool:
  """True when a RIFF/WAVE file's `data` chunk declares more bytes than the file holds
  (libsndfile silently reads what is there, so a cut-off download would pass unnoticed)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return False
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
      if chunk_id == b"data":
        # 0 and 0xFFFFFFFF are what streaming writers put when the size was unknown.
        return chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size
      pos += 8 + chunk_size + (chunk_size & 1)
  return False


def audio_duration(path: str | os.PathLike) -> float:
  """Seconds of audio from the file header (cheap; no decoding). Raises `AudioError`."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  _check_file(path)
  try:
    info = sf.info(path)
  except sf.LibsndfileError as e:
    raise AudioError(NOT_AUDIO, path, str(e)) from None
  return info.frames / info.samplerate


def _check_file(path: str) -> None:
  try:
    size = os.path.getsize(path)
  except FileNotFoundError:
    raise AudioError(MISSING, path) from None
  except OSError as e:
    raise AudioError(UNREADABLE, path, str(e)) from None
  if size == 0:
    raise AudioError(EMPTY, path)


def load_audio(path: str | os.PathLike, sample_rate: int, start_s: float | None = None,
               duration_s: float | None = None) -> np.ndarray:
  """Reads any libsndfile format (wav, flac, ogg, ...), mixes to mono and resamples.

  With `start_s` / `duration_s`, reads only that segment (seeking, so a segment of an
  hour-long flac costs its own length); a segment starting past the end of the file or
  ending more than SPAN_TOLERANCE_S after it raises `AudioError(OUTSIDE)`.

  Returns float32 [N] at `sample_rate`. Raises `AudioError` for a missing, empty,
  non-audio, truncated or unreadable file, or one with no samples.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  _check_file(path)
  try:
    with sf.SoundFile(path) as f:
      sr = f.samplerate
      first, count = 0, -1  # frames; -1 = to the end
      if start_s is not None or duration_s is not None:
        first = round((start_s or 0.0) * sr)
        end = f.frames if duration_s is None else first + round(duration_s * sr)
        if first < 0 or first >= f.frames or end > f.frames + SPAN_TOLERANCE_S * sr:
          raise AudioError(OUTSIDE, path, f"{first / sr:.3f}-{end / sr:.3f} s of a "
                           f"{f.frames / sr:.3f} s file")
        count = min(end, f.frames) - first
      try:
        if first:
          f.seek(first)
        wav = f.read(count, dtype="float32", always_2d=True)  # [N, C]
      except sf.LibsndfileError as e:
        raise AudioError(TRUNCATED, path, str(e)) from None
  except sf.LibsndfileError as e:
    raise AudioError(NOT_AUDIO, path, str(e)) from None
  except OSError as e:
    raise AudioError(UNREADABLE, path, str(e)) from None
  if path.lower().endswith((".wav", ".wave")) and _wav_data_truncated(path):
    raise AudioError(TRUNCATED, path, "data chunk shorter than its header says")
  if wav.shape[0] == 0:
    raise AudioError(NO_SAMPLES, path)
  return resample(wav.mean(axis=1), sr, sample_rate)


def as_mono(wav: np.ndarray) -> np.ndarray:
  """A non-empty mono waveform [N] as float32; a `ValueError` for any other shape."""
  wav = np.asarray(wav, dtype=np.float32)
  if wav.ndim != 1 or wav.size == 0:
    raise ValueError(f"expected a non-empty mono waveform [N], got shape {wav.shape}")
  return wav


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
  wav = as_mono(wav).astype(np.float64)
  padded = np.pad(wav, (n_fft // 2, n_fft // 2), mode="reflect" if len(wav) > n_fft // 2
                  else "constant")
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
  power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2
  mel = power @ _mel_filterbank(sr, n_fft, n_mels).T
  return (10.0 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32)

