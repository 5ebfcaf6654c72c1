"""`valle-jax make-corpus`: writes the built-in synthetic corpus (see `data_prep.synthetic`).

    valle-jax make-corpus --config=configs/corpus/synthetic.py --out=DIR
    valle-jax make-corpus --config=configs/corpus/synthetic.py --config.num_utterances=2000 --out=DIR
    valle-jax make-corpus --config=configs/corpus/synthetic.py --measure_voices
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from data_prep import synthetic
from valle_jax import config_check, io_check
from valle_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/corpus/synthetic.py",
                                          "Corpus config file.")
_OUT = flags.DEFINE_string("out", None, "Directory to write the corpus to.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an existing --out.")
_MEASURE = flags.DEFINE_boolean(
    "measure_voices", False, "Instead of writing a corpus: print the pairwise speaker "
    "similarity of config.candidate_voices and the distinct set chosen from them.")


def measure_voices(cfg) -> None:
  """Prints the similarity table of `cfg.candidate_voices` and the greedy distinct set."""
  specs = list(cfg.candidate_voices)
  sentences = synthetic.kjv_sentences(cfg.min_words, cfg.max_words)
  picks = np.random.default_rng(cfg.seed).choice(len(sentences), 4, replace=False)
  sim = synthetic.voice_similarity(specs, [sentences[i] for i in picks], cfg.workers)
  print(synthetic.similarity_table(specs, sim))
  print(f"\ndistinct set (pairwise similarity <= {cfg.max_voice_similarity}):")
  for i in synthetic.pick_distinct(sim, cfg.max_voice_similarity):
    print(f"  {specs[i]}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; pass options as --flags.")
  cfg = _CONFIG.value
  config_check.check(config_check.corpus(cfg), "config")
  if _MEASURE.value:
    measure_voices(cfg)
    return
  if not _OUT.value:
    raise UserError("--out is required: the directory to write the corpus to.")
  io_check.output_dir(_OUT.value, "--out")
  info = synthetic.make_corpus(cfg, _OUT.value, _OVERWRITE.value)
  for split, s in info["splits"].items():
    print(f"{split}: {s['utterances']} utterances, {s['hours'] * 60:.1f} min, "
          f"{len(s['speakers'])} speakers")
  print(f"wrote {os.path.abspath(_OUT.value)}")
