"""A folder corpus: <source>/**/<name>.wav|.flac + <name>.txt, or a TSV manifest.

    valle-jax prepare --config=configs/data/folder.py --config.source=DIR --config.output=OUT
"""
from configs.data import base


def get_config():
  c = base("folder")
  c.manifest = ""   # TSV with header `path` (or `audio`), `text` [, id, speaker, lang, split]
  c.split = "train"  # split of every item (unless the manifest has a `split` column)
  return c
