"""LibriTTS or LibriTTS-R: <source>/<subset>/<speaker>/<chapter>/<utt>.wav + .normalized.txt.

    valle-jax prepare --config=configs/data/libritts.py --config.source=LibriTTS_R --config.output=OUT
"""
from configs.data import base


def get_config():
  c = base("libritts")
  c.subsets = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean",
               "test-clean"]   # one split each ("-" becomes "_"); [] = every subset present
  c.transcript = "normalized"  # or "original"
  return c
