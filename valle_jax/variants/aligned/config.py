"""The aligned variant's configs (docs/variants/aligned.md).

    valle-jax train --config=valle_jax/variants/aligned/config.py --config.data.dataset=DIR
    valle-jax demo --variant=aligned            (`demo_config`)

`get_config()` is the paper's model sizes (configs/base.py) as this variant; `aligned(c)`
makes any training config one. `demo_config(quick)` is the toy demo (configs/demo.py) with
this variant's settings; why each has its value: docs/variants/aligned.md.
"""
import ml_collections

from configs import demo
from configs.base import base


def aligned(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Training config `c` made the aligned variant's (in place; returned)."""
  c.variant = "aligned"
  # How synthesis moves the AR's phoneme pointer (sampling.PointerController fields).
  c.pointer = ml_collections.ConfigDict()
  c.pointer.max_dwell = 0.0       # x the prompt's frames per phoneme (0: no bound)
  c.pointer.advance = "sample"    # "sample" | "median" | "mean"
  return c


def get_config() -> ml_collections.ConfigDict:
  return aligned(base())


def demo_config(quick: bool = False) -> ml_collections.ConfigDict:
  """`valle-jax demo --variant=aligned`: configs/demo.py with this variant's settings."""
  c = demo.get_config(quick)
  aligned(c.train)
  c.codec.voice_codebooks = 1     # codebook 2: the utterance's mean voice, copied from the prompt
  c.train.data.nar_stage_weights = (1, 0, 0, 0, 0, 0, 0, 0)   # the NAR learns codebook 1 only
  c.synthesis.codebooks = 2        # decode codebooks 1-2
  c.train.pointer.max_dwell = 8.0  # x the prompt's frames per phoneme
  c.train.pointer.advance = "median"
  c.report.notes = (
      "Aligned variant (docs/variants/aligned.md): the AR moves a phoneme pointer, and the "
      "NAR makes codebook 1 for all frames at once on the pointer's timing; codebook 2, the "
      "codec's voice code, is copied from the prompt; codebooks 1-2 are decoded.",
      "The pointer moves on at the median phoneme length the AR's move-on probabilities "
      "give, not by a draw per frame (pointer.advance=median).")
  return c
