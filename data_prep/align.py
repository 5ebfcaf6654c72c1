"""Phoneme-to-frame forced alignment of a prepared dataset, learnt from the dataset alone.

    valle-jax align --dataset=DIR/valle_folder/1.0.0     (data_prep/align_cli.py; writes
                                                          DIR/.../alignments.npz)
    align_dataset(dataset_path)                           (from Python)
    open_dataset(dataset_path).alignments("train")[i]     (record i's, valle_jax/data.py)

Each utterance's codec frames are split into one run of >= 1 frames per phoneme, in order,
by Viterbi training of a left-to-right model whose emissions are discrete: P(code | phoneme)
for the first `num_codebooks` codebooks (independent given the phoneme), counted over the
training split. Start: each utterance cut evenly (phoneme l gets frames near l * T / L);
then `iterations` rounds of (count emissions, re-align every utterance). No acoustic model,
lexicon or download is needed: the codes themselves are the observations.

The result, per record, is `phoneme_of_frame` int32 [T]: the phoneme index (0..L-1) each
frame is spoken in, non-decreasing, stepping by 0 or 1, from 0 to L - 1. The AR's phoneme
pointer (`model.ar_phoneme_pointer`, models/ar.py) is trained on it. A record with more
phonemes than frames cannot be aligned; it keeps the even split and is counted.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from tqdm import tqdm

from valle_jax.data import ALIGNMENTS_FILE, even_split, open_dataset
from valle_jax.errors import UserError
from valle_jax.text import SymbolTable

@dataclasses.dataclass(frozen=True)
class AlignConfig:
  iterations: int = 4
  num_codebooks: int = 2      # codebooks whose codes are the observations
  smoothing: float = 0.05     # added to every emission count
  floor: float = 0.2          # weight of the phoneme-independent code distribution


def viterbi(log_emission: np.ndarray) -> np.ndarray:
  """The best monotonic path through log_emission [T, L] (T >= L): each phoneme gets >= 1
  frame, in order, from phoneme 0 at frame 0 to L - 1 at frame T - 1. Returns int32 [T]."""
  num_frames, num_phon = log_emission.shape
  if num_phon > num_frames:
    raise ValueError(f"{num_phon} phonemes cannot be aligned to {num_frames} frames.")
  neg = -np.inf
  score = np.full(num_phon, neg)
  score[0] = log_emission[0, 0]
  advanced = np.zeros((num_frames, num_phon), bool)      # frame t entered phoneme l from l-1
  for t in range(1, num_frames):
    enter = np.concatenate([[neg], score[:-1]])
    advanced[t] = enter > score
    score = np.maximum(score, enter) + log_emission[t]
  path = np.empty(num_frames, np.int32)
  l = num_phon - 1
  for t in range(num_frames - 1, -1, -1):
    path[t] = l
    if t and advanced[t, l]:
      l -= 1
  return path


def _log_emissions(records, paths, num_phonemes: int, codebook_size: int,
                   cfg: AlignConfig) -> np.ndarray:
  """[Q, P, V] log P(code | phoneme), counted over `records` aligned by `paths` and mixed
  with P(code) (weight `cfg.floor`) so that an unseen pair is unlikely, not impossible."""
  counts = np.zeros((cfg.num_codebooks, num_phonemes, codebook_size))
  for r, path in zip(records, paths):
    phonemes, codes = np.asarray(r["phonemes"]), np.asarray(r["codes"])
    for q in range(cfg.num_codebooks):
      np.add.at(counts[q], (phonemes[path], codes[:, q]), 1)
  counts += cfg.smoothing
  given = counts / counts.sum(-1, keepdims=True)
  marginal = counts.sum(1, keepdims=True) / counts.sum((1, 2), keepdims=True)
  return np.log((1 - cfg.floor) * given + cfg.floor * marginal)


def _realign(records, paths: list[np.ndarray], log_p: np.ndarray) -> int:
  """Re-aligns each record in place in `paths`; returns how many cannot be (L > T)."""
  unaligned = 0
  for i, r in enumerate(records):
    phonemes, codes = np.asarray(r["phonemes"]), np.asarray(r["codes"])
    if not 0 < len(phonemes) <= len(codes):
      unaligned += 1
      continue
    emission = sum(log_p[q][phonemes][:, codes[:, q]] for q in range(len(log_p)))  # [L, T]
    paths[i] = viterbi(emission.T)
  return unaligned


def fit_alignments(train_records: Sequence[dict], num_phonemes: int, codebook_size: int,
                   cfg: AlignConfig = AlignConfig(), progress: bool = True
                   ) -> tuple[list[np.ndarray], np.ndarray, int]:
  """Viterbi training on `train_records`: (their alignments, the final log emissions
  [Q, P, V] for aligning other records with `_realign`, records left unaligned)."""
  if any(np.asarray(r["codes"]).shape[1] < cfg.num_codebooks for r in train_records):
    raise UserError(f"aligning needs {cfg.num_codebooks} codebooks per record.")
  paths = [even_split(len(r["codes"]), len(r["phonemes"])) for r in train_records]
  unaligned = 0
  for _ in tqdm(range(cfg.iterations), desc="aligning (Viterbi rounds)", disable=not progress):
    log_p = _log_emissions(train_records, paths, num_phonemes, codebook_size, cfg)
    unaligned = _realign(train_records, paths, log_p)
  return paths, _log_emissions(train_records, paths, num_phonemes, codebook_size, cfg), unaligned


def align_dataset(path: str, cfg: AlignConfig = AlignConfig(), progress: bool = True
                  ) -> dict[str, int]:
  """Aligns every split of the prepared dataset at `path` (emissions counted on `train`)
  and writes `path/alignments.npz`. Returns records aligned per split."""
  dataset = open_dataset(path)
  num_phonemes = len(SymbolTable.load(dataset.symbols_path).symbols)
  codebook_size = int(dataset.codec_description["codebook_size"])
  def read(split):
    source = dataset.split(split)
    return [source[i] for i in tqdm(range(len(source)), desc=f"reading {split}",
                                    disable=not progress, unit="rec", mininterval=2.0)]
  train = read("train")
  paths, log_p, unaligned = fit_alignments(train, num_phonemes, codebook_size, cfg, progress)
  aligned = {"train": paths}
  for split in sorted(set(dataset.splits) - {"train"}):
    records = read(split)
    aligned[split] = [even_split(len(r["codes"]), len(r["phonemes"])) for r in records]
    unaligned += _realign(records, aligned[split], log_p)
  arrays = {}
  for split, split_paths in aligned.items():
    arrays[f"{split}/frames"] = np.concatenate(split_paths).astype(np.int32)
    arrays[f"{split}/offsets"] = np.cumsum([0] + [len(p) for p in split_paths]).astype(np.int64)
  out = os.path.join(dataset.path, ALIGNMENTS_FILE)
  tmp = out + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, out)
  counts = {split: len(p) for split, p in aligned.items()}
  counts["unaligned"] = unaligned
  return counts
