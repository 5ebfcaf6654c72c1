"""The one codec interface every backend implements (EnCodec, the offline codec, ...).

Token format (VALL-E / EnCodec 24 kHz at 6 kbps): `codes` is int16[T, Q] with Q residual
codebooks of `codebook_size` entries, codebook 0 the coarsest; T = ceil(samples / hop).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Codec(Protocol):
  """A neural (or signal-processing) audio codec producing residual-VQ tokens."""

  sample_rate: int          # waveform rate the codec works at (Hz)
  frame_rate: float         # token frames per second
  num_codebooks: int        # Q
  codebook_size: int        # entries per codebook

  def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
    """float mono waveform [N] at rate `sr` (resampled if needed) -> int16 codes [T, Q]."""

  def decode(self, codes: np.ndarray) -> np.ndarray:
    """int codes [T, q] -> float32 waveform [N] at `sample_rate`; q <= Q decodes from the
    first (coarsest) q codebooks, a lower bandwidth."""

  def encode_batch(self, wavs: Sequence[np.ndarray], sr: int) -> list[np.ndarray]:
    """Batch variant of `encode`; equals encoding one by one."""

  def decode_batch(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Batch variant of `decode`; equals decoding one by one."""

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable identity (name + parameters + weights checksum) saved with a dataset
    and a checkpoint, so training and inference can refuse a mismatched codec."""
