"""The aligned variant's configs (docs/variants/aligned.md).

    valle-jax train --config=valle_jax/variants/aligned/config.py --config.data.dataset=DIR
    valle-jax demo --variant=aligned            (`demo_config`)

`get_config()` is the paper's model sizes (configs/base.py) as this variant; `aligned(c)`
makes any training config one. `demo_config(quick)` is the toy demo (configs/demo.py) as it
was before the demo went back to VALL-E (docs/experiments/demo-history.md): WER 1.18 -> 0.93 on it.
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
  # Codebook 1 codes each frame less its utterance's mean voice (content_first), and
  # codebook 2 that mean, one code per utterance (voice_codebooks), which synthesis copies
  # from the prompt (the voice is the prompt's). Without the voice code, codebook 1 carried
  # no voice and the NAR did not learn codebooks 3-8 in this budget: SIM 0.537 to the prompt
  # and to the other voices alike.
  c.codec.voice_codebooks = 1
  # The NAR never learns the copied voice code (weight 0): trained at weight 2, its guess
  # never named the prompt's code for a held-out voice (0 of 15). Codebooks 3-8 stay at
  # chance on held-out voices in this budget (6.9-7.0 nats) and synthesis decodes codebooks
  # 1-2 only, so the NAR spends every step on codebook 1: it carried 173 words of 836
  # instead of 160 on the same timing (full demo, 2026-12-02).
  c.train.data.nar_stage_weights = (1, 0, 0, 0, 0, 0, 0, 0)
  c.synthesis.codebooks = 2
  # The pointer moves on after 8 x the prompt's frames per phoneme, and on the last phoneme
  # the utterance ends: without it 2 of the 60 outputs never chose EOS there and ran to the
  # 20 s limit (87 inserted words of the 836); at 4 x it cut words short.
  c.train.pointer.max_dwell = 8.0
  # It moves on at the median phoneme length its move-on probabilities give, not by a draw
  # per frame: drawn, outputs were 5.1 s for 4.6 s targets; at the median 4.3 s, the
  # closest (153 heard, 90 inserted, WER 0.925; full demo, 2026-12-02).
  c.train.pointer.advance = "median"
  c.report.notes = (
      "Aligned variant (docs/variants/aligned.md): the AR moves a phoneme pointer, and the "
      "NAR makes codebook 1 for all frames at once on the pointer's timing; codebook 2, the "
      "codec's voice code, is copied from the prompt; codebooks 1-2 are decoded.",
      "The pointer moves on at the median phoneme length the AR's move-on probabilities "
      "give, not by a draw per frame (pointer.advance=median).")
  return c
