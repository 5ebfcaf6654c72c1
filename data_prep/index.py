"""`valle-jax index`: writes the index of a dataset prepared without one (by a valle-jax
from before indexes):

    valle-jax index /data/valle_folder/1.0.0

Reads every record once, writes `index-<split>.npz` beside each split's shards (what training
then reads at start-up instead of the records) and prints the lengths summary `valle-jax
prepare` prints. `prepare` writes the index itself.
"""
from __future__ import annotations

import sys
from typing import Sequence

from data_prep import pipeline
from valle_jax import data
from valle_jax.errors import UserError


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise UserError("usage: valle-jax index DATASET_DIR (the <builder>/<version> directory "
                    "`valle-jax prepare` wrote).")
  dataset = data.open_dataset(argv[1])
  indexes = pipeline.index_dataset(dataset)
  print(f"[index] wrote {', '.join(f'index-{s}.npz' for s in indexes)} in {dataset.path}",
        file=sys.stderr)
  print(pipeline.format_lengths(pipeline.long_material(indexes, dataset.codec_description)),
        file=sys.stderr)
