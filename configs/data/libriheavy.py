"""Libriheavy: LibriLight's long recordings (<source>/<subset>/<speaker>/<book>/*.flac) cut
into utterances by Libriheavy's cut manifests (k2-fsa/libriheavy: lhotse MonoCuts with
`start` / `duration` into a recording, cased and punctuated text, speaker). Each manifest is
one split named after its file: libriheavy_cuts_small.jsonl.gz -> `small`, ...
`libriheavy_cuts_test_clean.jsonl.gz` -> `test_clean`. Segments are cut at prepare time;
a missing recording or a span outside it is skipped and counted.

    valle-jax prepare --config=configs/data/libriheavy.py --config.source=librilight \
      --config.manifests=libriheavy/libriheavy_cuts_small.jsonl.gz \
      --config.manifests=libriheavy/libriheavy_cuts_dev.jsonl.gz \
      --config.output=OUT --config.beam.runner=DataflowRunner --config.beam.options="..."
"""
from configs.data import base


def get_config():
  c = base("libriheavy")
  c.manifests = ()  # cut manifest files (.jsonl or .jsonl.gz); repeat the flag for several
  # The release's audio paths start with this folder; it stands for config.source (the
  # LibriLight root holding small/, medium/, large/). Absolute paths are used as they are.
  c.path_prefix = "download/librilight"
  return c
