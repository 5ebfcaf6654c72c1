"""The unigram baseline of held-out codec-token prediction: a model that predicts each
codebook's codes from their frequencies in the training split alone (no text, no prompt, no
context), scored like the AR and NAR (cross-entropy in nats per token, top-1 and top-10
accuracy). A model that does not beat it has learned nothing beyond the codes' histogram.

    scores = dataset_baseline("DIR/data/.../1.0.0", heldout_split="test")
    scores[0]   # {"codebook": 1, "tokens": ..., "loss": ..., "top1_acc": ..., "top10_acc": ...}
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def code_counts(codes: Iterable[np.ndarray], num_codebooks: int, codebook_size: int
                ) -> np.ndarray:
  """How often each code occurs in each codebook: [num_codebooks, codebook_size] int64, from
  utterances' codes, each [T, >= num_codebooks]."""
  counts = np.zeros((num_codebooks, codebook_size), np.int64)
  for utterance in codes:
    utterance = np.asarray(utterance)
    for q in range(num_codebooks):
      counts[q] += np.bincount(utterance[:, q], minlength=codebook_size)
  return counts


def scores(train_counts: np.ndarray, heldout_counts: np.ndarray, smoothing: float = 1.0
           ) -> list[dict[str, Any]]:
  """Per codebook q (1-based): the held-out cross-entropy of the training frequencies
  (add-`smoothing` estimate, so a code unseen in training costs a finite loss), and the
  held-out share of the training split's most frequent code (top-1) and 10 most frequent
  codes (top-10; ties: the lower code first). Counts are [Q, V] (`code_counts`)."""
  train = train_counts.astype(np.float64) + smoothing
  log_p = np.log(train / train.sum(axis=-1, keepdims=True))            # [Q, V]
  order = np.argsort(-train_counts, axis=-1, kind="stable")             # [Q, V]
  rows = []
  for q, heldout in enumerate(heldout_counts):
    tokens = int(heldout.sum())
    n = max(tokens, 1)
    rows.append({"codebook": q + 1, "tokens": tokens,
                 "loss": float(-(heldout * log_p[q]).sum() / n),
                 "top1_acc": float(heldout[order[q, :1]].sum() / n),
                 "top10_acc": float(heldout[order[q, :10]].sum() / n)})
  return rows


def dataset_baseline(dataset_path: str, heldout_split: str, train_split: str = "train"
                     ) -> list[dict[str, Any]]:
  """`scores` of a prepared dataset: frequencies from `train_split`'s codes, scored on
  `heldout_split`'s."""
  from valle_jax import data  # pylint: disable=g-import-not-at-top
  dataset = data.open_dataset(dataset_path)
  size = int(dataset.codec_description["codebook_size"])

  def counts(split: str) -> np.ndarray:
    source = dataset.split(split)
    codes = (np.asarray(source[i]["codes"]) for i in range(len(source)))
    return code_counts(codes, int(dataset.codec_description["num_codebooks"]), size)
  return scores(counts(train_split), counts(heldout_split))
