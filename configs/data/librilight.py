"""LibriLight: <source>/<subset>/<speaker>/<book>/*.flac with a TSV transcript manifest
(LibriLight ships no transcripts; header `path`, `text` [, id, speaker, split], paths
relative to config.source). Use segmented clips: max_duration_s applies. For Libriheavy's
transcripts (segments of these recordings) use configs/data/libriheavy.py instead.

    valle-jax prepare --config=configs/data/librilight.py --config.source=librilight \
      --config.manifest=librilight/transcripts.tsv --config.output=OUT \
      --config.beam.runner=DataflowRunner --config.beam.options="--project=P --region=R ..."
"""
from configs.data import base


def get_config():
  c = base("librilight")
  c.manifest = ""
  return c
