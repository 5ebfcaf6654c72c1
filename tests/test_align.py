"""Forced alignment (data_prep/align.py) and the phoneme pointer's batches (data.py)."""
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from data_prep import align
from valle_jax import data, text
from valle_jax.errors import UserError

NUM_PHONEMES, V = 8, 64


def _planted(n=40, seed=0):
  """Records whose phoneme p emits codes in its own band [8p, 8p + 8) (10% noise anywhere),
  with random durations of 1-7 frames: the true alignment is known (no phoneme follows
  itself, which would make the boundary between the two unknowable)."""
  rng = np.random.default_rng(seed)
  records, truth = [], []
  for _ in range(n):
    steps = rng.integers(1, NUM_PHONEMES, int(rng.integers(4, 12)))
    phonemes = (np.cumsum(steps) % NUM_PHONEMES).astype(np.int32)
    durations = rng.integers(1, 8, len(phonemes))
    path = np.repeat(np.arange(len(phonemes)), durations).astype(np.int32)
    codes = 8 * phonemes[path][:, None] + rng.integers(0, 8, (len(path), 2))
    noisy = rng.random(codes.shape) < 0.1
    codes = np.where(noisy, rng.integers(0, V, codes.shape), codes)
    records.append({"phonemes": phonemes, "codes": codes})
    truth.append(path)
  return records, truth


def test_viterbi_is_a_monotonic_path_through_every_phoneme():
  rng = np.random.default_rng(1)
  path = align.viterbi(rng.normal(size=(30, 9)))
  assert path[0] == 0 and path[-1] == 8
  assert set(np.diff(path).tolist()) <= {0, 1}
  with pytest.raises(ValueError, match="cannot be aligned"):
    align.viterbi(np.zeros((3, 5)))


def test_viterbi_training_recovers_a_planted_alignment():
  """From an even split, Viterbi training finds the true phoneme of >= 95% of frames (the
  even split: far fewer); a record with more phonemes than frames is counted, not aligned."""
  records, truth = _planted()
  short = {"phonemes": np.arange(6, dtype=np.int32), "codes": np.zeros((4, 2), np.int64)}
  paths, log_p, unaligned = align.fit_alignments(records + [short], NUM_PHONEMES, V,
                                                 progress=False)
  assert unaligned == 1
  frames = np.concatenate(truth)
  found = np.mean(np.concatenate(paths[:-1]) == frames)
  even = np.mean(np.concatenate([data.even_split(len(p), p.max() + 1) for p in truth]) == frames)
  assert found >= 0.95 > even + 0.2, (found, even)
  assert log_p.shape == (2, NUM_PHONEMES, V)


def test_align_dataset_writes_what_training_reads(tiny_dataset, tmp_path):
  """`valle-jax align` on a real prepared dataset: one alignment per record, one phoneme
  index per frame, in range; a dataset without one gives an error that says what to run."""
  path = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, path)
  with pytest.raises(UserError, match="valle-jax align"):
    data.open_dataset(path).alignments("train")
  from valle_jax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["valle-jax", "align", f"--dataset={path}", "--iterations=2"])
  assert exit_info.value.code in (0, None)
  dataset = data.open_dataset(path)
  source = dataset.split("train")
  assert os.path.isfile(os.path.join(path, "alignments.npz"))
  alignments = dataset.alignments("train")
  for i in range(len(source)):
    a, record = alignments[i], source[i]
    assert len(a) == len(record["codes"])
    assert a[0] == 0 and a[-1] == len(record["phonemes"]) - 1
    assert set(np.diff(a).tolist()) <= {0, 1}
  # A NAR that learns codebook 1 on them (model.nar_codebook1) trains every stage from it.
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from valle_jax import train  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  cfg.data.dataset, cfg.train.model, cfg.model.nar_codebook1 = path, "nar", True
  cfg.data.frame_buckets, cfg.data.phoneme_buckets, cfg.data.max_tokens = (200,), (64,), 1600
  cfg.data.nar_stage_weights = (1, 0, 0, 0, 0, 0, 0, 0)   # codebook 1 only
  cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every = 2, 1, 100
  metrics = train.train(cfg, str(tmp_path / "run"))["metrics"]
  assert np.isfinite(metrics["nar/loss_codebook1"])
  assert metrics["nar/tokens"] > 0 and "nar/loss_codebook2" not in metrics


def test_codebooks_coded_once_per_utterance_are_not_observed(tiny_dataset, tmp_path):
  """A codec whose codebook 2 is one code per utterance (the offline codec's voice code):
  `align_dataset` aligns on codebook 1 alone, exactly as `fit_alignments` observing only it,
  which differs from observing both. With nothing left to observe the error says what to do."""
  assert align.observed_codebooks(2) == (0, 1)
  assert align.observed_codebooks(3, (1,)) == (0, 2)
  with pytest.raises(UserError, match="--num_codebooks"):
    align.observed_codebooks(1, (0,))
  path = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset, path)
  with open(os.path.join(path, "codec.json"), encoding="utf-8") as f:
    description = json.load(f)
  with open(os.path.join(path, "codec.json"), "w", encoding="utf-8") as f:
    json.dump({**description, "utterance_codebooks": [1]}, f)
  cfg = align.AlignConfig(iterations=2)
  align.align_dataset(path, cfg, progress=False)
  dataset = data.open_dataset(path)
  source = dataset.split("train")
  records = [source[i] for i in range(len(source))]
  num_phonemes = len(text.SymbolTable.load(dataset.symbols_path).symbols)
  codebook_size = int(description["codebook_size"])
  first_only, _, _ = align.fit_alignments(records, num_phonemes, codebook_size, cfg, False,
                                          codebooks=(0,))
  both, _, _ = align.fit_alignments(records, num_phonemes, codebook_size, cfg, False)
  written = dataset.alignments("train")
  for i, path_i in enumerate(first_only):
    np.testing.assert_array_equal(written[i], path_i)
  assert any((a != b).any() for a, b in zip(first_only, both))


def test_pointer_batches_split_the_partner_evenly():
  """With alignments the AR batch carries `phoneme_of_frame`: a pair's partner (the prompt)
  split evenly over its phonemes, then the utterance's alignment after them, and
  `target_start` at the utterance's first frame."""
  records, truth = _planted(12)
  for i, r in enumerate(records):
    r["speaker"] = f"s{i % 2}".encode()
    r["codes"] = np.pad(r["codes"], [(0, 0), (0, 6)])
  alignments = data.Alignments(np.concatenate(truth),
                               np.cumsum([0] + [len(t) for t in truth]))
  cfg = ml_collections.ConfigDict({
      "frame_buckets": (200,), "phoneme_buckets": (64,), "max_tokens": 800,
      "max_batch_size": 4, "prompt_seconds": 1.0, "nar_prompt": "prefix",
      "same_speaker_pairs": 1.0})
  plan = data.BatchPlan(data.scan_lengths(records, progress=False), cfg, seed=0)
  symbols = text.SymbolTable.default()
  loader = data.BatchLoader(records, plan, cfg, kind="ar", num_codebooks=8, frame_rate=75.0,
                            alignments=alignments, symbols=symbols)
  batch = loader(0)["ar"]
  for row, (partner, index) in enumerate(plan.batch(0)[1]):
    if index < 0:
      continue
    first = records[partner]
    _, heard = text.join_prompt_and_text(first["phonemes"], records[index]["phonemes"],
                                         symbols)
    expected = np.concatenate([data.even_split(len(first["codes"]), heard),
                               truth[index] + heard])
    np.testing.assert_array_equal(batch["phoneme_of_frame"][row, :len(expected)], expected)
    assert batch["target_start"][row] == len(first["codes"])
