"""`valle-jax align --dataset=DIR`: forced alignments of a prepared dataset (align.py), for
the aligned variant."""
from __future__ import annotations

import os

from absl import flags

from valle_jax.errors import UserError
from valle_jax.variants.aligned import align
from valle_jax.variants.aligned.data import ALIGNMENTS_FILE

_DATASET = flags.DEFINE_string("dataset", None, "A prepared dataset: the <builder>/<version> "
                               "directory `valle-jax prepare` printed.")
_ITERATIONS = flags.DEFINE_integer("iterations", align.AlignConfig.iterations,
                                   "Viterbi training rounds.")
_NUM_CODEBOOKS = flags.DEFINE_integer("num_codebooks", align.AlignConfig.num_codebooks,
                                      "Codebooks whose codes are the observations (the "
                                      "first N, less those coded once per utterance).")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; pass everything as --flags.")
  if not _DATASET.value:
    raise UserError("--dataset is required: the prepared dataset to align.")
  if _ITERATIONS.value < 1 or _NUM_CODEBOOKS.value < 1:
    raise UserError("--iterations and --num_codebooks must be >= 1.")
  counts = align.align_dataset(_DATASET.value, align.AlignConfig(
      iterations=_ITERATIONS.value, num_codebooks=_NUM_CODEBOOKS.value))
  unaligned = counts.pop("unaligned")
  print(f"aligned {counts} -> {os.path.join(os.path.abspath(_DATASET.value), ALIGNMENTS_FILE)}"
        + (f"; {unaligned} records with more phonemes than frames keep an even split"
           if unaligned else ""))
