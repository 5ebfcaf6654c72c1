"""VALL-E 2 (arXiv 2406.05370) on the paper's models and recipe (configs/paper.py):
grouped code modeling with G = 2 (the AR reads and writes two frames per step, halving its
sequence), the NAR stage given as a code-ID token, and repetition-aware sampling (K = 10,
t_r = 0.1) on top of top-p."""
import ml_collections

from configs import paper


def get_config():
  c = paper.get_config()
  c.model.ar_group_size = 2
  c.model.nar_stage_conditioning = "token"
  # Fields of `valle_jax.sampling.SampleOptions`; fields left out keep its defaults.
  c.sample = ml_collections.ConfigDict()
  c.sample.top_p = 0.8
  c.sample.ras = True
  c.sample.ras_window = 10
  c.sample.ras_threshold = 0.1
  return c
