"""Phoneme-to-frame forced alignment of a prepared dataset, learnt from the dataset alone.

    valle-jax align --dataset=DIR/valle_folder/1.0.0     (align_cli.py; writes
                                                          DIR/.../alignments.npz)
    align_dataset(dataset_path)                           (from Python)
    load_alignments(open_dataset(dataset_path), "train")[i]   (record i's, data.py)

Each utterance's codec frames are split into one run of >= 1 frames per phoneme, in order,
by Viterbi training of a left-to-right model whose emissions are discrete: P(code | phoneme)
for the first `num_codebooks` codebooks (independent given the phoneme), counted over the
training split, less any the codec codes once per utterance (`utterance_codebooks`,
the offline codec's voice code): a code that is the same at every frame cannot tell which
phoneme a frame is in, and its P(code | phoneme) would act as a per-phoneme length bias,
wrong on voices the counts never saw (on the demo's held-out voices, with it, word
boundaries and stress marks took 6 frames each, 3.5 and 3.7 without). Start: each
utterance cut evenly (phoneme l gets frames near l * T / L); then `iterations` rounds of
(count emissions, re-align every utterance). No acoustic model, lexicon or download is
needed: the codes themselves are the observations.

The result, per record, is `phoneme_of_frame` int32 [T]: the phoneme index (0..L-1) each
frame is spoken in, non-decreasing, stepping by 0 or 1, from 0 to L - 1. The variant's AR
phoneme pointer and its NAR's codebook-1 timing (models.py) are trained on it. A record with more
phonemes than frames cannot be aligned; it keeps the even split and is counted.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from tqdm import tqdm

from valle_jax.data import open_dataset
from valle_jax.errors import UserError
from valle_jax.text import SymbolTable
from valle_jax.variants.aligned.data import ALIGNMENTS_FILE, even_split, utterance_codebooks

@dataclasses.dataclass(frozen=True)
class AlignConfig:
  iterations: int = 4
  num_codebooks: int = 2      # the first codebooks, less per-utterance ones: observations
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


def observed_codebooks(num_codebooks: int, per_utterance: Sequence[int] = ()
                       ) -> tuple[int, ...]:
  """The codebooks (0-based) whose codes the aligner observes: the first `num_codebooks`,
  less those coded once per utterance (`per_utterance`)."""
  observed = tuple(q for q in range(num_codebooks) if q not in set(per_utterance))
  if not observed:
    raise UserError(f"the first {num_codebooks} codebooks are all coded once per utterance; "
                    "align on more (--num_codebooks).")
  return observed


def _log_emissions(records, paths, num_phonemes: int, codebook_size: int,
                   cfg: AlignConfig, codebooks: Sequence[int]) -> np.ndarray:
  """[len(codebooks), P, V] log P(code | phoneme), counted over `records` aligned by `paths`
  and mixed with P(code) (weight `cfg.floor`) so that an unseen pair is unlikely, not
  impossible."""
  counts = np.zeros((len(codebooks), num_phonemes, codebook_size))
  for r, path in zip(records, paths):
    phonemes, codes = np.asarray(r["phonemes"]), np.asarray(r["codes"])
    for i, q in enumerate(codebooks):
      np.add.at(counts[i], (phonemes[path], codes[:, q]), 1)
  counts += cfg.smoothing
  given = counts / counts.sum(-1, keepdims=True)
  marginal = counts.sum(1, keepdims=True) / counts.sum((1, 2), keepdims=True)
  return np.log((1 - cfg.floor) * given + cfg.floor * marginal)


def _realign(records, paths: list[np.ndarray], log_p: np.ndarray, codebooks: Sequence[int]
             ) -> int:
  """Re-aligns each record in place in `paths` (`log_p` from `_log_emissions` over
  `codebooks`); returns how many cannot be (L > T)."""
  unaligned = 0
  for i, r in enumerate(records):
    phonemes, codes = np.asarray(r["phonemes"]), np.asarray(r["codes"])
    if not 0 < len(phonemes) <= len(codes):
      unaligned += 1
      continue
    emission = sum(log_p[j][phonemes][:, codes[:, q]]                      # [L, T]
                   for j, q in enumerate(codebooks))
    paths[i] = viterbi(emission.T)
  return unaligned


def fit_alignments(train_records: Sequence[dict], num_phonemes: int, codebook_size: int,
                   cfg: AlignConfig = AlignConfig(), progress: bool = True,
                   codebooks: Sequence[int] | None = None
                   ) -> tuple[list[np.ndarray], np.ndarray, int]:
  """Viterbi training on `train_records`, observing `codebooks` (default: the first
  `cfg.num_codebooks`): (their alignments, the final log emissions [len(codebooks), P, V]
  for aligning other records with `_realign`, records left unaligned)."""
  codebooks = tuple(observed_codebooks(cfg.num_codebooks) if codebooks is None else codebooks)
  if any(np.asarray(r["codes"]).shape[1] <= max(codebooks) for r in train_records):
    raise UserError(f"aligning needs {max(codebooks) + 1} codebooks per record.")
  paths = [even_split(len(r["codes"]), len(r["phonemes"])) for r in train_records]
  unaligned = 0
  emissions = lambda: _log_emissions(train_records, paths, num_phonemes, codebook_size, cfg,
                                     codebooks)
  for _ in tqdm(range(cfg.iterations), desc="aligning (Viterbi rounds)", disable=not progress):
    unaligned = _realign(train_records, paths, emissions(), codebooks)
  return paths, emissions(), unaligned


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
  codebooks = observed_codebooks(cfg.num_codebooks,
                                 utterance_codebooks(dataset.codec_description))
  train = read("train")
  paths, log_p, unaligned = fit_alignments(train, num_phonemes, codebook_size, cfg, progress,
                                           codebooks)
  aligned = {"train": paths}
  for split in sorted(set(dataset.splits) - {"train"}):
    records = read(split)
    aligned[split] = [even_split(len(r["codes"]), len(r["phonemes"])) for r in records]
    unaligned += _realign(records, aligned[split], log_p, codebooks)
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
