"""`valle-jax prepare`: build a VALL-E dataset (phonemes + codec codes) from a corpus.

    valle-jax prepare --config=configs/data/folder.py --config.source=DIR --config.output=OUT
    valle-jax prepare --config=configs/data/librispeech.py --config.source=LibriSpeech \
        --config.output=OUT --config.beam.options="--direct_num_workers=2 \
        --direct_running_mode=multi_processing"

See `data_prep.pipeline` for what is written and `configs/data/` for the options.
"""
from __future__ import annotations

import logging
from typing import Sequence

from ml_collections import config_flags

from data_prep import pipeline
from valle_jax import config_check, io_check
from valle_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data/folder.py",
                                          "Data prep config file (configs/data/*.py).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; options go in --config.x=value.")
  config_check.check(config_check.prepare(_CONFIG.value), "config")
  if _CONFIG.value.output:
    io_check.output_dir(_CONFIG.value.output, "--config.output")
  logging.getLogger("apache_beam").setLevel(logging.WARNING)  # per-bundle chatter
  pipeline.prepare(_CONFIG.value)
