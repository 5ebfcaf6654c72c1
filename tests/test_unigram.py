"""The unigram baseline (valle_jax/unigram.py) on tiny arrays with known answers."""
import numpy as np
import pytest

from valle_jax import unigram


def test_code_counts_per_codebook():
  utterances = [np.array([[0, 2], [1, 2]]), np.array([[0, 0]])]   # [T, Q]
  np.testing.assert_array_equal(unigram.code_counts(utterances, 2, 3),
                                [[2, 1, 0], [1, 0, 2]])


def test_scores_known_answer():
  # Training: code c occurs c + 1 times (code 11 most frequent; top-10 = codes 2..11).
  train = unigram.code_counts([np.repeat(np.arange(12), np.arange(1, 13))[:, None]], 1, 12)
  heldout = unigram.code_counts([np.array([[11], [0], [1], [5]])], 1, 12)
  (row,) = unigram.scores(train, heldout, smoothing=0.0)
  assert row["codebook"] == 1 and row["tokens"] == 4
  assert row["top1_acc"] == 0.25 and row["top10_acc"] == 0.5
  assert row["loss"] == pytest.approx(-np.mean(np.log(np.array([12, 1, 2, 6]) / 78)))
  # Add-one smoothing: a code never seen in training costs log(77 + 12), not infinity.
  (row,) = unigram.scores(np.array([[0] + [7] * 11]), np.array([[1] + [0] * 11]))
  assert row["loss"] == pytest.approx(np.log(77 + 12))


def test_scores_ties_go_to_the_lower_code():
  (row,) = unigram.scores(np.array([[0, 3, 3, 1]]), np.array([[0, 1, 0, 0]]))
  assert row["top1_acc"] == 1.0
