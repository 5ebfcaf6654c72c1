"""LibriSpeech: <source>/<subset>/<speaker>/<chapter>/*.flac + <speaker>-<chapter>.trans.txt.
test-clean also yields `test_clean_4_10s`, the VALL-E paper's 4-10 s evaluation subset.

    valle-jax prepare --config=configs/data/librispeech.py --config.source=LibriSpeech --config.output=OUT
"""
from configs.data import base


def get_config():
  c = base("librispeech")
  c.subsets = ["test-clean"]   # one split each ("-" becomes "_"); [] = every subset present
  c.test_4_10s = True          # add the 4-10 s test-clean split
  return c
